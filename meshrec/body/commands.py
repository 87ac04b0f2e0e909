"""`meshrec body …` subcommands: thin wrappers over meshrec.body functions."""

from __future__ import annotations

import argparse

REGRESSOR_FILE = "J_regressor_h36m.npy"   # SPIN's name, beside the model file


def _convert(args: argparse.Namespace) -> int:
    from meshrec.body import model_file

    arrays = model_file.convert(args.input, args.output)
    print(f"wrote {args.output} ({arrays['v_template'].shape[0]} vertices, "
          f"{arrays['f'].shape[0]} faces, {arrays['J_regressor'].shape[0]} joints)")
    return 0


def _info(args: argparse.Namespace) -> int:
    from meshrec.body import model_file

    arrays = model_file.load_arrays(args.path)
    report = model_file.check(arrays)
    for line in report.lines:
        print(line)
    return 0 if report.ok else 1


def _standin(args: argparse.Namespace) -> int:
    from pathlib import Path

    from meshrec.body import standin
    from meshrec.body.standin import h36m as standin_h36m
    from meshrec.body.load import write_npy
    from meshrec.fileio import save_npz

    arrays = standin.build_standin(args.seed)
    digest = save_npz(args.output, arrays)
    regressor = Path(args.output).parent / REGRESSOR_FILE
    write_npy(regressor, standin_h36m.h36m_regressor(arrays))
    print(f"wrote stand-in body model {args.output} (seed {args.seed}, sha256 {digest}) and its "
          f"Human3.6M joint regressor {regressor} (17 x {arrays['v_template'].shape[0]})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    body = sub.add_parser("body", help="body model files: convert, inspect, generate the stand-in",
                          description="Body model files in SMPL's format.")
    bsub = body.add_subparsers(dest="body_command", metavar="ACTION", required=True)

    p = bsub.add_parser("convert", help="convert an official SMPL .pkl (chumpy inside) to .npz",
                        description="Read an SMPL .pkl safely (no code runs) and write the same arrays "
                                    "to .npz, which loads without pickle.")
    p.add_argument("input", help="SMPL_{NEUTRAL,MALE,FEMALE}.pkl or an .npz")
    p.add_argument("output", help="output .npz path")
    p.set_defaults(func=_convert)

    p = bsub.add_parser("info", help="print sizes and consistency checks of a body model file",
                        description="Print array sizes and checks; exit 1 if a check fails.")
    p.add_argument("path", help=".pkl or .npz body model")
    p.set_defaults(func=_info)

    p = bsub.add_parser("standin", help="generate the licence-free stand-in body model",
                        description="Generate a licence-free humanoid body model in SMPL's exact "
                                    "format and sizes (deterministic per seed), and beside it "
                                    f"{REGRESSOR_FILE}: its (17, 6890) regressor of Human3.6M's "
                                    "17 joints, as SPIN ships for SMPL (use it as "
                                    "body.h36m_regressor).")
    p.add_argument("output", help=f"output .npz path ({REGRESSOR_FILE} goes in the same folder)")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    p.set_defaults(func=_standin)
