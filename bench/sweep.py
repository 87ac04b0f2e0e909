"""A frozen-encoder sweep with the feature cache vs without it (issue 7), through the real sweep.

Usage: python bench/sweep.py [--encoder resnet152] [--image-size 224] [--frames 8] [--epochs 10]
                             [--batch 32] [--threads 2] [--work DIR] [--quick]

The same 8-cell grid (loss.w_body × loss.w_shape × loss.type) over configs/study.yaml (frozen
ResNet-152 at 224 px, iterative head, Adam, no augmentation), on generated Human3.6M-like data
(stand-in body; `--frames` frames × 4 cameras per subject: train S1 S5 S6, validate S7 S8 every
epoch). Encoder weights: ImageNet's cannot be downloaded here, and a random-init ResNet-152 in
eval mode puts out features of ~1e8 (beyond float16, and no network one would train from), so the
bench calibrates a random init's BatchNorm statistics on a few batches of the training crops and
saves that file (`model.weights=<file>`): features of ImageNet-like size, the same compute. Every sweep is `launch/sweep.py --local` as a user without SLURM runs it: submitit's
local executor, one cell at a time, each cell one process with `--threads` CPU threads, its own
MLflow SQLite store. Runs, in this order:

  cached   N epochs   cold cache: the feature job builds it, then the 8 cells train from it
  naive    N epochs   --no-feature-cache: every cell runs the encoder over every image, every epoch
  naive    1 epoch
  cached   1 epoch    warm cache: reused, no feature job (what re-running a sweep costs)

Printed: the fixed cost of a cell (process start, imports, MLflow, model, loaders) and the cost of
an epoch in each mode, fitted from the N- and 1-epoch runs (a cell's wall = fixed + epochs ×
per-epoch); the feature job's wall; how a sweep's wall grows with cells (2/4/8: the time at which
the k-th cell finished in the 8-cell run, cells running one after another, plus that run's closing
seconds) and epochs; every cell's validation metrics in both modes and their largest difference
(features are cached as float16). The cells are the same configs in both modes apart from
`features.enabled`, so the best cell must be the same.

Last line: `speedup=… naive_s=… cached_s=… same_best=… max_pve_diff_mm=… overhead_s=…`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
import headline

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GRID = {"loss.w_body": [0.0, 1.0], "loss.w_shape": [0.0, 0.1], "loss.type": ["l2", "l1"]}
METRIC = "val_pve_mm"


@dataclass
class Cell:
    name: str
    started: float = math.nan      # seconds since the sweep command started
    finished: float = math.nan
    metrics: dict = field(default_factory=dict)

    @property
    def wall(self) -> float:
        return self.finished - self.started


@dataclass
class Sweep:
    label: str
    epochs: int
    cached: bool
    wall: float = math.nan
    load: tuple = ()
    feature_s: float = 0.0         # the feature job's wall (0: none ran)
    first_start: float = math.nan  # first job (feature job or cell) started
    cells: dict = field(default_factory=dict)
    log: list = field(default_factory=list)

    def ordered(self) -> list[Cell]:
        return sorted(self.cells.values(), key=lambda c: c.finished)

    def cost(self, k: int) -> float:
        """Wall of a sweep of the first k cells (cells run one after another)."""
        done = self.ordered()
        return done[k - 1].finished + (self.wall - done[-1].finished)


def grid_file(work: Path) -> Path:
    import yaml

    path = work / "grid.yaml"
    path.write_text(yaml.safe_dump({"defaults": [str(REPO / "configs" / "study.yaml")],
                                    "grid": GRID}, sort_keys=False))
    return path


def weights_file(args: argparse.Namespace, work: Path) -> Path:
    return work / f"{args.encoder}-bnstats-seed0.pt"


def overrides(args: argparse.Namespace, work: Path, run: str, epochs: int) -> list[str]:
    out = work / run
    return [f"model.encoder={args.encoder}", f"model.weights={weights_file(args, work)}",
            "model.freeze_encoder=true",
            f"data.image_size={args.image_size}", "data.shards=", "data.augment.enabled=false",
            f"data.synth.frames_per_subject={args.frames}", f"data.synth.size={args.crop}",
            "data.backend=torch", "data.num_threads=1", f"data.batch_size={args.batch}",
            f"eval.batch_size={args.batch}", f"train.epochs={epochs}", "train.device=cpu",
            "train.checkpoint_every=0", "train.log_every=1000", "track.overlays=0",
            f"body.cache_dir={work / 'cache'}", f"train.output_dir={out / 'runs'}",
            f"launch.log_dir={out / 'submitit'}", f"track.uri=sqlite:///{out / 'mlflow.db'}",
            f"track.experiment=bench-{run}", "launch.executor=local",
            "launch.slurm.gpus_per_node=0", "launch.slurm.tasks_per_node=1",
            f"launch.slurm.cpus_per_task={args.threads}", "launch.slurm.array_parallelism=1"]


def calibrate(cfg, path: Path, batches: int = 2) -> float:
    """Save a random init (seed 0) of cfg's encoder whose BatchNorm running statistics are the
    averages over `batches` training batches; return the largest |feature| it then gives."""
    import torch
    from torch import nn

    from meshrec.data import build_loader
    from meshrec.model.encoder import ARCHS

    torch.manual_seed(0)
    net = ARCHS[cfg.model.encoder].build(weights=None)
    net.fc = nn.Identity()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the calibration batches
    loader = build_loader(cfg, "train")
    images = [b["image"] for _, b in zip(range(batches), loader)]
    net.train()
    with torch.no_grad():
        for image in images:
            net(image)
        net.eval()
        largest = float(net(images[0]).abs().max())
    torch.save({k: v for k, v in net.state_dict().items()}, path)
    return largest


def prepare(args: argparse.Namespace, work: Path) -> tuple[Path, str]:
    """Generate the data and the encoder weights (not timed); return the grid file and the
    feature cache directory."""
    from meshrec.features import cache as features
    from meshrec.config import with_overrides
    from meshrec.data.demo import with_shards
    from meshrec.launch.grid import load_sweep

    grid = grid_file(work)
    weights = weights_file(args, work)
    plain = [o for o in overrides(args, work, "prepare", 1) if not o.startswith("model.weights=")]
    sweep = load_sweep(grid, [*plain, "model.weights=none"])
    assert len(sweep.cells) == 8
    cfg = with_shards(sweep.base, progress=sys.stderr.isatty())
    if not weights.is_file():
        largest = calibrate(cfg, weights)
        print(f"encoder weights: {weights} (largest feature {largest:.3g})", flush=True)
    cfg = with_overrides(cfg, [f"model.weights={weights}"])
    return grid, str(features.cache_dir(cfg))


def run_sweep(args: argparse.Namespace, work: Path, grid: Path, label: str, epochs: int,
              cached: bool) -> Sweep:
    out = work / label
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = [sys.executable, "-u", str(REPO / "launch" / "sweep.py"), "--grid", str(grid), "--local",
           *overrides(args, work, label, epochs), *([] if cached else ["--no-feature-cache"])]
    result = Sweep(label, epochs, cached, load=os.getloadavg())
    print(f"[{time.strftime('%H:%M:%S')}] {label}: {epochs} epoch(s), "
          f"{'feature cache' if cached else 'no feature cache'}, load {result.load[0]:.2f}",
          flush=True)
    feature_started = math.nan
    t0 = time.perf_counter()
    with open(out / "stderr.txt", "w") as err:
        proc = subprocess.Popen(cmd, cwd=out, stdout=subprocess.PIPE, stderr=err, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        for line in proc.stdout:
            t = time.perf_counter() - t0
            result.log.append((t, line.rstrip()))
            words = line.split()
            if line.startswith("building the feature cache"):
                feature_started = t
                result.first_start = t
            elif "feature cache built in" in line:
                result.feature_s = t - feature_started
            elif line.startswith("  started cell"):
                result.cells[words[2]] = Cell(words[2], started=t)
                if math.isnan(result.first_start):
                    result.first_start = t
            elif line.startswith("  cell ") and " finished: " in line:
                result.cells[words[1]].finished = t
        code = proc.wait()
    result.wall = time.perf_counter() - t0
    if code != 0 or len(result.cells) != 8 or any(math.isnan(c.finished)
                                                  for c in result.cells.values()):
        tail = "\n".join(l for _, l in result.log[-15:])
        sys.exit(f"{label}: the sweep failed (exit {code}); its output:\n{tail}\n"
                 f"stderr: {out / 'stderr.txt'}")
    for cell in result.cells.values():
        folder = out / "runs" / "cells" / cell.name
        cell.metrics = json.loads((folder / "metrics.json").read_text())
        # Each holds the frozen encoder too (~240 MB for ResNet-152, 3 kept): gigabytes a run.
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)
    print(f"  {result.wall:.1f} s (feature job {result.feature_s:.1f} s)", flush=True)
    return result


def fit(long: Sweep, short: Sweep) -> tuple[float, float]:
    """Per-cell fixed cost and per-epoch cost from the medians of the cells' walls."""
    import statistics

    w_long = statistics.median(c.wall for c in long.cells.values())
    w_short = statistics.median(c.wall for c in short.cells.values())
    per_epoch = (w_long - w_short) / (long.epochs - short.epochs)
    return w_short - short.epochs * per_epoch, per_epoch


def compare(naive: Sweep, cached: Sweep) -> tuple[dict[str, float], float, bool, str, str]:
    """Largest |difference| of each validation metric over the cells, the largest relative
    difference of any; same best cell?"""
    diffs: dict[str, float] = {}
    rel = 0.0
    for name, cell in naive.cells.items():
        other = cached.cells[name].metrics
        for key, value in cell.metrics.items():
            if key.startswith("val_") and "baseline" not in key and key != "val_samples":
                diffs[key] = max(diffs.get(key, 0.0), abs(value - other[key]))
                rel = max(rel, abs(value - other[key]) / max(abs(value), 1e-12))
    best_n = min(naive.cells.values(), key=lambda c: c.metrics[METRIC]).name
    best_c = min(cached.cells.values(), key=lambda c: c.metrics[METRIC]).name
    return diffs, rel, best_n == best_c, best_n, best_c


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoder", default="resnet152")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--crop", type=int, default=256, help="side of the packed crops")
    parser.add_argument("--frames", type=int, default=8, help="generated frames per subject "
                                                               "(× 4 cameras)")
    parser.add_argument("--epochs", type=int, default=10, help="the study's 10 by default")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of each job")
    parser.add_argument("--work", default="/tmp/meshrec-bench-sweep")
    parser.add_argument("--quick", action="store_true",
                        help="a check that it runs: ResNet-18 at 64 px, 2 frames, 2 epochs")
    headline.add_flag(parser)
    args = parser.parse_args()
    if args.quick:
        args.encoder, args.image_size, args.crop, args.frames, args.epochs, args.batch = (
            "resnet18", 64, 64, 2, 2, 8)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the 1-epoch runs give the fixed costs)")
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)

    grid, cache = prepare(args, work)
    print(f"sweep: 8 cells of {', '.join(GRID)}; {args.encoder} frozen at {args.image_size} px, "
          f"{args.frames} frames × 4 cameras per subject (train 3 subjects, validate 2 every "
          f"epoch), batch {args.batch}, {args.threads} thread(s) per job; cache {cache}",
          flush=True)
    shutil.rmtree(cache, ignore_errors=True)  # the cached sweep pays for its cache
    cached = run_sweep(args, work, grid, "cached", args.epochs, True)
    naive = run_sweep(args, work, grid, "naive", args.epochs, False)
    naive1 = run_sweep(args, work, grid, "naive-1", 1, False)
    cached1 = run_sweep(args, work, grid, "cached-1-warm", 1, True)
    if cached1.feature_s:
        sys.exit("the warm-cache sweep ran a feature job: the cache was not reused")

    o_naive, e_naive = fit(naive, naive1)
    o_cached, e_cached = fit(cached, cached1)
    launcher = first_job_at(cached, naive, naive1, cached1)
    print()
    print(f"fixed cost of a cell (process, imports, MLflow, model, loaders, closing): "
          f"naive {o_naive:.1f} s, cached {o_cached:.1f} s; the launcher before the first job "
          f"{launcher:.1f} s")
    print(f"cost of one epoch of one cell: naive {e_naive:.2f} s, cached {e_cached:.2f} s "
          f"({e_naive / max(e_cached, 1e-9):.0f}×); feature job (cold cache) {cached.feature_s:.1f} s")
    print()
    print(f"| cells | naive, 1 epoch | naive, {args.epochs} epochs | cached, 1 epoch (warm) | "
          f"cached, {args.epochs} epochs (cold) | speedup, {args.epochs} epochs |")
    print("|---|---|---|---|---|---|")
    for k in (2, 4, 8):
        print(f"| {k} | {naive1.cost(k):.0f} s | {naive.cost(k):.0f} s | {cached1.cost(k):.0f} s "
              f"| {cached.cost(k):.0f} s | {naive.cost(k) / cached.cost(k):.1f}× |")
    print()
    diffs, rel, same_best, best_n, best_c = compare(naive, cached)
    diffs1, rel1, _, _, _ = compare(naive1, cached1)
    print(f"| cell | {' | '.join(GRID)} | naive {METRIC} | cached {METRIC} | difference |")
    print("|---|" + "---|" * len(GRID) + "---|---|---|")
    values = _grid_values(grid, args, work)
    for cell in naive.ordered():
        a, b = cell.metrics[METRIC], cached.cells[cell.name].metrics[METRIC]
        print(f"| {cell.name} | {' | '.join(str(v) for v in values[cell.name])} | {a:.4f} | "
              f"{b:.4f} | {b - a:+.2e} |")
    print()
    for label, d, r in ((f"{args.epochs} epochs", diffs, rel), ("1 epoch", diffs1, rel1)):
        print(f"largest |naive − cached| over the cells after {label}: " +
              ", ".join(f"{k} {v:.2e}" for k, v in sorted(d.items())) +
              f"; relative {r:.1e} (float16 unit roundoff 4.9e-04)")
    print(f"best cell: naive {best_n}, cached {best_c}")
    print("load average at the starts: " + ", ".join(
        f"{s.label} {s.load[0]:.2f}" for s in (cached, naive, naive1, cached1)))
    speedup = naive.wall / cached.wall
    headline.emit(f"speedup={speedup:.1f} naive_s={naive.wall:.1f} cached_s={cached.wall:.1f} "
                  f"same_best={same_best} max_pve_diff_mm={diffs.get(METRIC, math.nan):.2e} "
                  f"overhead_s={o_cached:.1f}", args.json)
    return 0


def first_job_at(*sweeps: Sweep) -> float:
    """Median time from the command's start to its first job (preflight, MLflow runs)."""
    import statistics

    return statistics.median(s.first_start for s in sweeps)


def _grid_values(grid: Path, args: argparse.Namespace, work: Path) -> dict[str, list]:
    from meshrec.launch.grid import load_sweep

    sweep = load_sweep(grid, overrides(args, work, "prepare", args.epochs))
    return {c.name: [c.values[k] for k in GRID] for c in sweep.cells}


if __name__ == "__main__":
    sys.exit(main())
