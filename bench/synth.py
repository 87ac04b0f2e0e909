"""Data generation per core: meshrec.synth.writer.synthesize with 1 and with N worker processes.

Usage: python bench/synth.py [--frames F] [--size PX] [--workers 1,2] [--json FILE]

Renders F frames a subject × 4 cameras of S1 and S5 (stand-in body, --size px frames, JPEG) into
a fresh temporary directory per worker count, end to end as the demo builder runs it (worker
start-up, rendering, the npz files), and reports frames/s and frames/s per worker.
Last line: `per_core_1=… per_core_N=… scaling=<per_core_N / per_core_1> fps_1=… fps_N=…`
(scaling 1.0 = perfect; on a shared machine, cores busy with other work lower it).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

import headline  # noqa: E402
from meshrec.body.standin import build_standin  # noqa: E402
from meshrec.synth.settings import Settings  # noqa: E402
from meshrec.synth.writer import synthesize  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=24, help="frames per subject (× 4 cameras)")
    ap.add_argument("--size", type=int, default=256, help="frame side, px")
    ap.add_argument("--workers", default="1,2", help="worker counts to compare")
    headline.add_flag(ap)
    args = ap.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    arrays = build_standin(0)
    print(f"{headline.machine()}, {args.frames} frames × 4 cameras × 2 subjects at {args.size} px, "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    fps = {}
    for workers in counts:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            summary = synthesize(tmp, ["S1", "S5"], Settings(0, args.size, args.frames), arrays,
                                 workers=workers, progress=False)
            took = time.perf_counter() - start
        fps[workers] = summary.rendered / took
        print(f"workers {workers}: {summary.rendered} frames in {took:.1f} s, {fps[workers]:.1f} "
              f"frames/s, {fps[workers] / workers:.1f} per worker", flush=True)
    one, many = counts[0], counts[-1]
    per = {w: fps[w] / w for w in counts}
    headline.emit(f"per_core_{one}={per[one]:.2f} per_core_{many}={per[many]:.2f} "
                  f"scaling={per[many] / per[one]:.2f} fps_{one}={fps[one]:.2f} "
                  f"fps_{many}={fps[many]:.2f}", args.json)


if __name__ == "__main__":
    main()
