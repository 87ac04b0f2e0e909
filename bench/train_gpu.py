"""End-to-end training throughput on one device: does the model wait for its data?

Usage: python bench/train_gpu.py [--steps N] [--warmup N] [--threads N] [--quick] [--json FILE]

For each setup, the training loop's own step (meshrec.train.loop.device_step: forward, SMPL
vertex loss, backward, fused Adam; bf16 autocast and channels-last on CUDA) is timed fed three
ways, after --warmup steps, over --steps steps, the clock stopped only when the device is done:
  (a) model  the same device-resident batch every step (random pixels, real labels): the ceiling
  (b) dali   batches from meshrec's DALI loader (data.backend=dali; `mixed` decode and the
             training augmentation on a GPU; DALI's CPU operators on a CPU, or skipped there
             if they fail)
  (c) torch  batches from the torch loader (data.backend=torch, --threads workers)
Setups (GPU): the study's frozen ResNet-152 and a fine-tuned ResNet-50, 224 px, batch 64.
--quick (any machine, the CPU default): a fine-tuned ResNet-18 at 64 px, batch 8.
Data: generated stand-in shards (meshrec.data.demo, made once and cached under
~/.cache/meshrec), crops packed at 256 px (64 px with --quick).

first_step_s: `meshrec train` of the headline setup started as a subprocess, from its start to
its "first step done" line (shards and body cached by then).
Last line: `ratio_dali=b/a ratio_torch=c/a first_step_s=… <setup>_<feed>=img/s …`, the ratios of
the headline setup (fine-tuned ResNet-50; ResNet-18 with --quick).
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

import torch  # noqa: E402

import headline  # noqa: E402
from meshrec.config import load_config  # noqa: E402
from meshrec.data.demo import ensure_shards  # noqa: E402
from meshrec.train import dist, guard  # noqa: E402
from meshrec.train.loop import build_run, device_step  # noqa: E402

REPO = os.path.dirname(HERE)
SUBJECTS = "[S1,S5,S6,S7,S8]"


def setups(quick: bool) -> list[tuple[str, list[str]]]:
    if quick:
        return [("r18_finetune", ["model.encoder=resnet18", "model.freeze_encoder=false",
                                  "data.image_size=64", "data.batch_size=8"])]
    common = ["data.image_size=224", "data.batch_size=64"]
    return [("r152_frozen", ["model.encoder=resnet152", "model.freeze_encoder=true", *common]),
            ("r50_finetune", ["model.encoder=resnet50", "model.freeze_encoder=false", *common])]


def base_args(quick: bool, threads: int, device: str) -> list[str]:
    frames, size = (8, 64) if quick else (64, 256)
    return ["model.weights=none", f"data.synth.frames_per_subject={frames}",
            f"data.synth.size={size}", f"data.train_subjects={SUBJECTS}", "data.val_subjects=[S9]",
            "eval.subjects=[S9]", "data.augment.enabled=true", f"data.num_threads={threads}",
            f"train.device={device}", "train.amp=auto", "track.enabled=false",
            "train.output_dir=/tmp/meshrec-bench-train-gpu"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forever(loader):
    while True:
        yield from loader


def rate(run, batches, warmup: int, steps: int) -> float:
    """img/s of device_step over `steps` batches after `warmup` (the device's work included)."""
    device = run.env.device
    for _ in range(warmup):
        device_step(run, next(batches))
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        device_step(run, next(batches))
    sync(device)
    guard.settle(run)
    return steps * run.cfg.data.batch_size / (time.perf_counter() - start)


def measure(args_: list[str], backend: str, device: torch.device, warmup: int, steps: int,
            ceiling: bool) -> dict[str, float]:
    cfg = load_config(os.path.join(REPO, "configs", "demo.yaml"), [*args_, f"data.backend={backend}"])
    run = build_run(cfg, dist.DistEnv(0, 1, 0, device))
    run.core.train()
    out = {}
    if ceiling:
        first = next(iter(run.loader))
        fixed = {**first, "image": torch.randn_like(first["image"], dtype=torch.float32)
                 .to(first["image"].dtype)}
        out["model"] = rate(run, iter(lambda: fixed, None), warmup, steps)
    out[backend] = rate(run, forever(run.loader), warmup, steps)
    del run
    gc.collect()  # the loader's workers go before the next loader starts its own
    return out


def first_step_s(args_: list[str]) -> float:
    """Seconds from starting `meshrec train` to its "first step done" line."""
    cmd = [sys.executable, "-m", "meshrec.cli", "train", "--config",
           os.path.join(REPO, "configs", "demo.yaml"), *args_, "train.epochs=1",
           "train.resume=never", "track.overlays=0"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": REPO})
    try:
        for line in proc.stdout:
            if line.startswith("first step done"):
                return time.perf_counter() - start
        raise SystemExit(f"meshrec train ended without a first step (exit {proc.wait()})")
    finally:
        proc.kill()  # the one process started here
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=0, help="timed steps (default 50; 6 --quick)")
    ap.add_argument("--warmup", type=int, default=0, help="untimed steps (default 10; 2 --quick)")
    ap.add_argument("--threads", type=int, default=0,
                    help="loader workers / DALI threads (default: the cores, at most 12)")
    ap.add_argument("--quick", action="store_true", help="small sizes (the default on CPU)")
    headline.add_flag(ap)
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    quick = args.quick or not cuda
    steps = args.steps or (6 if quick else 50)
    warmup = args.warmup or (2 if quick else 10)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = args.threads or max(1, min(12, (cores or 2) - (0 if quick else 2)))
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    if not cuda:
        torch.set_num_threads(1)  # the loader's workers and the step share the few cores
    common = base_args(quick, threads, device.type)
    ensure_shards(load_config(os.path.join(REPO, "configs", "demo.yaml"), common))
    print(f"{headline.machine()}, torch {torch.__version__}, {threads} loader threads, "
          f"{steps} steps after {warmup}, load average {os.getloadavg()[0]:.2f}", flush=True)

    rates: dict[str, dict[str, float]] = {}
    for name, extra in setups(quick):
        r = measure([*common, *extra], "torch", device, warmup, steps, ceiling=True)
        try:
            r.update(measure([*common, *extra], "dali", device, warmup, steps, ceiling=False))
        except Exception as exc:  # DALI's CPU backend where it cannot run: say so, go on
            print(f"{name}: dali skipped ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
        rates[name] = r
        print(f"{name}: " + ", ".join(f"{k} {v:.1f} img/s" for k, v in r.items()), flush=True)

    head_name, head_extra = setups(quick)[-1]
    first = first_step_s([*common, *head_extra, "data.backend=" + ("dali" if cuda else "torch")])
    head = rates[head_name]
    ratio = lambda k: f"{head[k] / head['model']:.2f}" if k in head else "skipped"  # noqa: E731
    extra = " ".join(f"{n}_{k}={v:.1f}" for n, r in rates.items() for k, v in r.items())
    headline.emit(f"ratio_dali={ratio('dali')} ratio_torch={ratio('torch')} "
                  f"first_step_s={first:.1f} {extra}", args.json)


if __name__ == "__main__":
    main()
