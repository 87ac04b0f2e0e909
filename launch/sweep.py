#!/usr/bin/env python3
"""Train every cell of a sweep file: one submitit job array on SLURM (or local processes), one
MLflow parent run for the sweep and one child run per cell. See meshrec/launch/run.py (and
plan.py, executor.py, runs.py, report.py beside it).

    python launch/sweep.py --grid configs/loss_weights.yaml --dry-run   # cells + sbatch header
    python launch/sweep.py --grid configs/loss_weights.yaml             # submit (again: resubmit
                                                                        # only what is not done)
    python launch/sweep.py --grid configs/loss_weights.yaml --status    # table of cells
    python launch/sweep.py --grid configs/loss_weights.yaml --report    # plots to MLflow, best cell
    python launch/sweep.py --grid configs/loss_weights.yaml --demo      # 4 small cells here
    python launch/sweep.py --grid configs/loss_weights.yaml --no-feature-cache  # every cell
                                                     # runs its frozen encoder over the images
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout runs without install

from meshrec.errors import report_errors  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sweep.py",
        description="Train every cell of a sweep file (a config plus a `grid:` of dotted keys "
                    "to lists of values) as one SLURM job array, tracked in MLflow. Running the "
                    "same command again submits only the cells not finished or in flight.")
    parser.add_argument("--grid", required=True, metavar="FILE", help="sweep file")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted overrides of the sweep's base config (e.g. "
                             "launch.slurm.partition=gpu track.uri=http://host:5000)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true",
                      help="print the cells and the sbatch parameters; submit nothing")
    mode.add_argument("--status", action="store_true",
                      help="table of cells: pending/running/finished/failed, best validation "
                           "metric")
    mode.add_argument("--report", action="store_true",
                      help="log a table and plots of the validation metric vs each grid key "
                           "to the sweep's MLflow run and name the best cell")
    parser.add_argument("--local", action="store_true",
                        help="run the cells on this machine (submitit's local executor; also "
                             "chosen when there is no sbatch)")
    parser.add_argument("--demo", action="store_true",
                        help="a few cells of the grid with configs/demo.yaml layered over the "
                             "base (ResNet-18, small images, generated data), run here, MLflow "
                             "store under the demo's output directory")
    parser.add_argument("--no-feature-cache", action="store_true",
                        help="do not build or use the shared frozen-encoder feature cache: every "
                             "cell pushes the images through its encoder itself (by default, "
                             "cells sharing a frozen encoder train from one cache, built first "
                             "by one feature job when it is missing)")
    return parser


def run(args: argparse.Namespace) -> int:
    from meshrec.launch.plan import plan
    from meshrec.launch.report import dry_run, report, status
    from meshrec.launch.run import launch

    p = plan(args.grid, args.overrides, demo=args.demo, local=args.local,
             feature_cache=not args.no_feature_cache)
    if args.dry_run:
        dry_run(p)
        return 0
    if args.status:
        status(p)
        return 0
    if args.report:
        report(p)
        return 0
    result = launch(p, progress=sys.stderr.isatty())
    return 1 if result["failed"] else 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # `kill` stops local cells as Ctrl-C does


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    args = build_parser().parse_args(argv)
    return report_errors("sweep.py", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
