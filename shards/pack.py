"""Pack preprocessed Human3.6M (SPIN or HumanData npz, or Moon's JSON; + images) into WebDataset shards.

    python shards/pack.py --source spin --npz h36m_train.npz h36m_valid.npz --images ROOT --out DIR
    python shards/pack.py --source h36m-moon --annotations ANN --body SMPL_NEUTRAL.pkl
        --images ROOT --out DIR [--subjects S1,S5,S6,S7,S8 --every 5 | --eval-set h36m-moon]
    python shards/pack.py --source spin --npz h36m_train.npz --annotations ANN --body SMPL_NEUTRAL.pkl
        --subjects S9 --images ROOT --moon-images ROOT/images --out DIR   # two sources, one DIR

h36m-moon reads Moon's per-subject JSON (I2L-MeshNet's layout) with NeuralAnnot's SMPL fits,
moved into each camera as NeuralAnnot's demo_smpl.py does (frames without a fit: joints only).
Evaluation sets (test subjects S9 S11): h36m-p1 every 5th frame, all cameras (SPIN's protocol
1); h36m-p2 every 5th frame, camera 4 = 60457274 (protocol 2); h36m-moon every 64th frame,
camera 4 (I2L-MeshNet's test set).

Writes DIR/S1/S1-000000.tar (+ .idx for DALI) per subject, DIR/manifest.json (last) and
DIR/rejects.jsonl. Re-running the same command keeps complete shards and redoes the rest.
Exit codes: 0 done, 2 bad input (one line on stderr), 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from meshrec.errors import MeshrecError, report_errors  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    from meshrec.shards.moon import EVAL_SETS
    from meshrec.shards.pack import SOURCE_KINDS

    head, _, rest = __doc__.partition("\n\n")
    p = argparse.ArgumentParser(
        prog="pack.py", description=head, epilog=rest,
        formatter_class=_Formatter)
    p.add_argument("--source", required=True, choices=SOURCE_KINDS,
                   help="layout of the input: SPIN's h36m npz (also meshrec's generated data; "
                        "imgname center scale and the labels it has: optional SMPL pose+shape "
                        "[has_smpl transl], optional joints S (3D) and part (2D) — SPIN's "
                         "h36m_train.npz has no SMPL), mmhuman3d HumanData (image_path bbox_xywh "
                         "and smpl, keypoints3d/keypoints2d with their masks as its H36M converter "
                         "writes them, or both), or Moon's Human3.6M JSON + NeuralAnnot fits "
                         "(h36m-moon: --annotations)")
    p.add_argument("--npz", nargs="+", metavar="FILE", help="source npz file(s) (spin, humandata)")
    p.add_argument("--images", required=True, metavar="ROOT",
                   help="folder the image paths are relative to (h36m-moon: Moon's images/)")
    moon = p.add_argument_group("h36m-moon")
    moon.add_argument("--annotations", metavar="DIR",
                      help="folder of Human36M_subjectN_{data,camera,joint_3d,SMPL_NeuralAnnot}.json")
    moon.add_argument("--body", metavar="FILE",
                      help="SMPL-format model the fits were made with (NeuralAnnot: neutral SMPL); "
                           "needed to move the fits into each camera")
    moon.add_argument("--subjects", metavar="LIST",
                      help="comma-separated subjects (default: S1,S5,S6,S7,S8, the training set)")
    moon.add_argument("--every", type=int, metavar="N",
                      help="keep frames with frame_idx %% N == 0 (default: 5, as Moon's training)")
    moon.add_argument("--cameras", metavar="LIST", help="camera indices 1..4 (default: 1,2,3,4)")
    moon.add_argument("--moon-images", metavar="DIR",
                      help="Moon's images/ folder, inside --images, when --annotations joins --npz "
                           "files of another source (other subjects) in one pack")
    moon.add_argument("--eval-set", choices=tuple(EVAL_SETS),
                      help="a test set instead of --subjects/--every/--cameras (see below)")
    p.add_argument("--out", required=True, metavar="DIR", help="output shard directory")
    p.add_argument("--size", type=int, default=256, help="side of the square crop in pixels")
    p.add_argument("--context", type=float, default=1.2,
                   help="crop side = context × 200 × scale (room around the person box)")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality of the crops")
    p.add_argument("--shard-size-mb", type=float, default=256.0, help="target size of one shard")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes (default: every core this process may use)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    def _get_help_string(self, action: argparse.Action) -> str:
        # An option whose default depends on others says so itself: no "(default: None)".
        return action.help if action.default is None else super()._get_help_string(action)


_MOON_OPTIONS = ("annotations", "body", "subjects", "every", "cameras", "eval_set", "moon_images")


def _moon_source(args: argparse.Namespace):
    """The h36m-moon input the options name (None for the npz sources); one-line errors."""
    from meshrec.shards import moon

    def flag(name: str) -> str:
        return "--" + name.replace("_", "-")

    given = [flag(k) for k in _MOON_OPTIONS if getattr(args, k) is not None]
    if args.source != moon.KIND:
        if not args.npz:
            raise MeshrecError(f"--source {args.source} needs --npz FILE ...")
        if not given:
            return None
        if args.annotations is None:  # Moon's options without Moon's JSON
            raise MeshrecError(f"{given[0]} is for --source {moon.KIND} (or --annotations beside --npz)")
    elif args.npz:
        raise MeshrecError(f"--source {moon.KIND} reads --annotations, not --npz")
    for name in ("annotations", "body"):
        if getattr(args, name) is None:
            raise MeshrecError(f"--source {moon.KIND} needs {flag(name)}")
    if args.eval_set is not None:
        chosen = [f for f in ("--subjects", "--every", "--cameras") if f in given]
        if chosen:
            raise MeshrecError(f"--eval-set {args.eval_set} fixes subjects, frames and cameras; "
                               f"drop {chosen[0]}")
        selection = moon.EVAL_SETS[args.eval_set]
    else:
        try:
            cameras = tuple(int(c) for c in (args.cameras or "1,2,3,4").split(",") if c.strip())
        except ValueError:
            raise MeshrecError(f"--cameras '{args.cameras}': give indices 1..4, e.g. 4 or 1,2,3,4") from None
        subjects = args.subjects.split(",") if args.subjects else moon.TRAIN_SUBJECTS
        selection = moon.Selection(tuple(s.strip() for s in subjects if s.strip()),
                                   5 if args.every is None else args.every, cameras)
    selection.check()
    prefix = ""
    if args.moon_images is not None:
        prefix = os.path.relpath(args.moon_images, args.images)
        if prefix.startswith(".."):
            raise MeshrecError(f"--moon-images {args.moon_images} must be inside --images {args.images}")
    return moon.MoonSource(args.annotations, selection, args.body, prefix)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> int:
        from meshrec.shards.pack import PackConfig, pack

        if args.workers is not None and args.workers < 1:
            raise MeshrecError(f"--workers {args.workers} must be at least 1")
        cfg = PackConfig(source=args.source, size=args.size, context=args.context,
                         quality=args.quality, shard_size_mb=args.shard_size_mb)
        moon_source = _moon_source(args)
        result = pack(args.npz or [], args.images, args.out, cfg, workers=args.workers,
                      progress=not args.no_progress, moon_source=moon_source)
        print(result.summary())
        return 0

    return report_errors("pack", run, on_interrupt="interrupted; re-run the same command to resume")

if __name__ == "__main__":
    sys.exit(main())
