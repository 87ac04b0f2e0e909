"""Pack preprocessed Human3.6M (SPIN or mmhuman3d HumanData npz + images) into WebDataset shards.

    python shards/pack.py --source spin --npz h36m_train.npz h36m_valid.npz --images ROOT --out DIR

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
    p = argparse.ArgumentParser(
        prog="pack.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--source", required=True, choices=("spin", "humandata"),
                   help="layout of the npz files: SPIN's h36m npz (also meshrec's generated data; "
                        "imgname center scale and the labels it has: optional SMPL pose+shape "
                        "[has_smpl transl], optional joints S (3D) and part (2D) — SPIN's "
                        "h36m_train.npz has no SMPL) or mmhuman3d HumanData (image_path bbox_xywh and smpl, "
                        "keypoints3d/keypoints2d with their masks as its H36M converter writes "
                        "them, or both)")
    p.add_argument("--npz", required=True, nargs="+", metavar="FILE", help="source npz file(s)")
    p.add_argument("--images", required=True, metavar="ROOT",
                   help="folder the npz image paths are relative to")
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> int:
        from meshrec.shards.pack import PackConfig, pack

        if args.workers is not None and args.workers < 1:
            raise MeshrecError(f"--workers {args.workers} must be at least 1")
        cfg = PackConfig(source=args.source, size=args.size, context=args.context,
                         quality=args.quality, shard_size_mb=args.shard_size_mb)
        result = pack(args.npz, args.images, args.out, cfg, workers=args.workers,
                      progress=not args.no_progress)
        print(result.summary())
        return 0

    return report_errors("pack", run, on_interrupt="interrupted; re-run the same command to resume")

if __name__ == "__main__":
    sys.exit(main())
