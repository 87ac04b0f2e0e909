"""Generate Human3.6M-like stand-in data in SPIN's layout (images + h36m_train.npz / h36m_valid.npz).

Renders the body model (the licence-free stand-in, or --body FILE in SMPL's format) for each
subject doing eight actions, seen by four cameras. --frames-per-subject counts time steps: each
is rendered by all four cameras, so a subject gives 4 x N images. Deterministic per --seed (the
same command gives the same bytes, whatever --workers); re-running it skips images already
written.

npz keys: imgname center scale part S pose shape transl cam_K. S (N,24,4) and part (N,24,3)
are SPIN's: Human3.6M's 17 "mocap" joints (the H36M regressor on the mesh + a few mm of marker
noise) in SPIN's J24 rows, S pelvis-centred in metres, part in full-frame pixels.
--spin-files writes the files SPIN's users hold: h36m_train.npz as SPIN's h36m_train.py
(imgname center scale part S openpose, no SMPL), h36m_train_smpl.npz (+ pose shape has_smpl),
h36m_valid.npz (as without the flag), h36m_valid_protocol1.npz (all cameras) and
h36m_valid_protocol2.npz (camera 60457274), both imgname center scale S as SPIN's h36m.py.
--moon-files also writes Moon's layout (I2L-MeshNet's annotations/*.json with NeuralAnnot-style
world fits, images/ as links to the frames) for pack.py --source h36m-moon.
Conventions: meshrec/synth/writer.py, npz_files.py and generate.py.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from meshrec.errors import MeshrecError, report_errors  # noqa: E402

PROG = "synth.py"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, like every other error here
        self.exit(2, f"{PROG}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from meshrec.synth.subjects import SUBJECTS

    head, _, rest = __doc__.partition("\n\n")
    ap = _Parser(prog=PROG, description=head, epilog=rest,
                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, metavar="DIR", help="output directory (image root)")
    ap.add_argument("--subjects", default=",".join(SUBJECTS),
                    help="comma-separated subjects (default: all seven); S1 S5 S6 S7 S8 go to h36m_train.npz, "
                         "S9 S11 to h36m_valid.npz")
    ap.add_argument("--frames-per-subject", type=int, default=160, metavar="N",
                    help="time steps per subject, spread over the eight actions; each is seen by 4 cameras "
                         "(default: 160)")
    ap.add_argument("--size", type=int, default=1000, help="frame width and height in pixels (default: 1000)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    ap.add_argument("--body", metavar="PATH", default=None,
                    help="SMPL-format body model (.pkl or .npz) (default: the stand-in body, seed 0)")
    ap.add_argument("--h36m-regressor", metavar="FILE", default=None,
                    help="(17, V) Human3.6M joint regressor of --body, e.g. SPIN's J_regressor_h36m.npy "
                         "(default: the stand-in regressor built for the body)")
    ap.add_argument("--spin-files", action="store_true",
                    help="write SPIN's file set (h36m_train.npz without SMPL, h36m_train_smpl.npz, "
                         "h36m_valid.npz, h36m_valid_protocol1/2.npz); images are the same")
    ap.add_argument("--moon-files", action="store_true",
                    help="also write Moon's Human3.6M layout (annotations/Human36M_subjectN_{data,camera,"
                         "joint_3d,SMPL_NeuralAnnot}.json, images/ as hard links): for pack.py "
                         "--source h36m-moon; images are the same")
    ap.add_argument("--workers", type=int, default=None, metavar="N",
                    help="worker processes (default: all available cores)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


def load_body(path: str | None) -> dict:
    if path is not None:
        from meshrec.body.model_file import load_arrays

        return load_arrays(path)
    from meshrec.body.standin import build_standin

    return build_standin(0)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> int:
        from meshrec.synth.settings import Settings
        from meshrec.synth.subjects import parse_subjects

        subjects = parse_subjects(args.subjects)
        settings = Settings(seed=args.seed, size=args.size, frames_per_subject=args.frames_per_subject)
        settings.check()
        if args.workers is not None and args.workers <= 0:
            raise MeshrecError(f"--workers must be positive, got {args.workers}")
        arrays = load_body(args.body)
        regressor = None
        if args.h36m_regressor is not None:
            from meshrec.body.load import read_h36m_regressor

            regressor = read_h36m_regressor(args.h36m_regressor, len(arrays["v_template"]),
                                            what="--h36m-regressor")
        from meshrec.synth.writer import synthesize  # torch and the renderer: only once args are good

        summary = synthesize(args.out, subjects, settings, arrays, workers=args.workers,
                             progress=not args.quiet, regressor=regressor, spin_files=args.spin_files,
                             moon_files=args.moon_files)
        rows = ", ".join(f"{os.path.join(args.out, f.name)} ({summary.rows[f.name]:,} rows)"
                         for f in summary.files if f.name in summary.rows)
        print(f"{summary.images:,} images ({summary.rendered:,} rendered now, "
              f"{summary.images - summary.rendered:,} already there); {rows}")
        return 0

    return report_errors(PROG, run, on_interrupt="interrupted (re-run the same command to resume)")


if __name__ == "__main__":
    sys.exit(main())
