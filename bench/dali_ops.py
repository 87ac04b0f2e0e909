"""CPU time per image of DALI's eval operators against DALI's bare decode, one pipeline per
process: what the loader's centre-crop path costs before labels, keys or the iterator.

Usage: python bench/dali_ops.py [--data DIR] [--rounds N] [--seconds S] [--threads N]

Data: bench/loader.py's packed 256 px crops under --data (made as it makes them when missing).
Pipelines, batches of 64 on `--threads` DALI CPU threads, each run alone in a fresh process for
`--seconds` after three warm-up batches, the kinds alternated `--rounds` times:
  decode    readers.webdataset → decoders.image (the whole 256 px crop; the loader benchmark's
            DALI ceiling)
  roi       decoders.image_crop of the centre 224 px (what the loader decodes)
  cmn       roi + DALI's crop_mirror_normalize to float32 CHW, ImageNet statistics (DALI's own
            way to normalise, which the loader used before: a scalar loop on the CPU)
  bare      roi + meshrec.data.augment.Normalizer (uint8 HWC → float32 NCHW, channels-last
            memory, in torch on the calling thread): the loader's image path with nothing else
  graph     meshrec.data.dali's eval pipeline itself (roi + the labels, the sample keys, the
            reader's exactly-once settings; its images leave as uint8), run with Pipeline.run()
  loader    build_loader(cfg, "val") with data.backend=dali: the graph + DALI's torch iterator +
            the Batch assembly, what bench/loader.py reports as `dali eval`
Printed per kind: the median over rounds of img/s, cores kept busy and the process's CPU time per
image (all threads), and each round's CPU time. The last line reads
`decode_cpu_us=… cmn_frac=… bare_frac=… graph_frac=… loader_frac=… loader_rate_frac=…` (medians over rounds;
*_frac = decode CPU time / that kind's CPU time: the fraction of the decode rate it would reach
with the cores as busy as the decoder keeps them; loader_rate_frac = loader img/s / decode img/s).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
import headline

KINDS = ("decode", "roi", "cmn", "bare", "graph", "loader")
BATCH, SIZE = 64, 224


def _batches(kind: str, shards: str, threads: int):
    """A callable that makes the next batch of `kind` and returns its number of images."""
    from nvidia.dali import pipeline_def

    from meshrec.config import Config, with_overrides
    from meshrec.data import build_loader, shardset

    manifest = shardset.load_manifest(Path(shards))
    subjects = list(manifest["subjects"])
    chosen = shardset.select(Path(shards), manifest, subjects)
    if kind in ("graph", "loader"):
        listed = "[" + ",".join(subjects) + "]"
        cfg = with_overrides(Config(), [f"data.shards={shards}", f"data.image_size={SIZE}",
                                        f"eval.batch_size={BATCH}", f"data.num_threads={threads}",
                                        f"data.val_subjects={listed}", "data.backend=dali"])
        if kind == "loader":
            loader = build_loader(cfg, "val")
            state = {"it": iter(loader)}

            def next_batch() -> int:
                try:
                    return len(next(state["it"])["image"])
                except StopIteration:
                    state["it"] = iter(loader)
                    return len(next(state["it"])["image"])
            return next_batch
        from meshrec.data.dali import _pipeline

        graph = pipeline_def(_pipeline, enable_checkpointing=True)(
            chosen, False, False, cfg, 0, 1, False, manifest["config"]["size"],
            batch_size=BATCH, num_threads=threads, device_id=None, seed=0)
        graph.build()
        return lambda: graph.run() and BATCH  # padding of the last batch decoded and counted

    from loader import DaliBare  # bench/loader.py

    batches = iter(DaliBare(chosen, threads, kind))
    return lambda: len(next(batches)[0])


def measure(kind: str, shards: str, threads: int, seconds: float) -> dict:
    """One pipeline of `kind` alone in this process: img/s, cores busy, CPU µs per image."""
    next_batch = _batches(kind, shards, threads)
    for _ in range(3):
        next_batch()
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        n += next_batch()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"img_s": n / wall, "cores": cpu / wall, "cpu_us": cpu / n * 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "meshrec-bench-pack"))
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--one", nargs=2, metavar=("KIND", "SHARDS"), help=argparse.SUPPRESS)
    headline.add_flag(ap)
    args = ap.parse_args()
    if args.one:  # child: one pipeline, result as JSON
        print(json.dumps(measure(args.one[0], args.one[1], args.threads, args.seconds)))
        return

    from loader import packed_shards  # bench/loader.py

    _, _, shards = packed_shards(args.data, args.frames, args.threads)
    print(f"{shards}: {args.threads} DALI threads, batch {BATCH}, {args.seconds:g} s per run, "
          f"{args.rounds} rounds; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    runs: dict[str, list[dict]] = {k: [] for k in KINDS}
    for _ in range(args.rounds):
        for kind in KINDS:
            child = subprocess.run(
                [sys.executable, __file__, "--one", kind, shards, "--threads", str(args.threads),
                 "--seconds", str(args.seconds)], capture_output=True, text=True, check=True)
            runs[kind].append(json.loads(child.stdout.strip().splitlines()[-1]))
    med = {k: {m: float(np.median([r[m] for r in v])) for m in ("img_s", "cores", "cpu_us")}
           for k, v in runs.items()}
    for kind in KINDS:
        each = " ".join(f"{r['cpu_us']:.0f}" for r in runs[kind])
        print(f"{kind:7s} {med[kind]['img_s']:7.0f} img/s  {med[kind]['cores']:.2f} cores busy  "
              f"{med[kind]['cpu_us']:4.0f} us CPU/img  (rounds: {each})")
    frac = {k: float(np.median([d["cpu_us"] / r["cpu_us"]
                                for d, r in zip(runs["decode"], runs[k])])) for k in KINDS}
    rate = float(np.median([r["img_s"] / d["img_s"] for d, r in zip(runs["decode"], runs["loader"])]))
    headline.emit(f"decode_cpu_us={med['decode']['cpu_us']:.0f} cmn_frac={frac['cmn']:.2f} "
                  f"bare_frac={frac['bare']:.2f} "
                  f"graph_frac={frac['graph']:.2f} loader_frac={frac['loader']:.2f} "
                  f"loader_rate_frac={rate:.2f}", args.json)


if __name__ == "__main__":
    main()
