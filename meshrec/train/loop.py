"""The training loop, top to bottom: one function per stage, `train(cfg)` at the end runs them.

    dist setup → data (generated on first use when data.shards is '') → config hash, manifest
    → body model → mean parameters → model (DDP when world > 1) → optimizer, LR schedule, AMP
    → resume from OUT/checkpoints/last.pt → epochs of steps → checkpoints → validation → MLflow

The run's state is a `Run` (meshrec.train.run); saving and resuming it is meshrec.train.checkpoint,
its MLflow glue meshrec.train.tracking, AMP meshrec.precision, Ψ_0 meshrec.model.mean. Only the
commands that run training import this module (meshrec.train.commands, meshrec.launch).

Conventions that the tests rely on:
- `data.batch_size` is the global batch of one optimizer step; each rank's loader yields its
  share, split into `optim.accumulate` micro-batches. The loss is a mean over the micro-batch,
  scaled by 1/accumulate, and DDP averages gradients over ranks, so W ranks × B/W equals one
  rank × B (exactly so with a frozen encoder; a fine-tuned encoder's BatchNorm uses per-rank
  batch statistics, as in HMR/SPIN training).
- A step whose loss is NaN/Inf on any rank is skipped on every rank (no optimizer or scheduler
  step, gradients dropped, BatchNorm statistics put back) and counted; `train.max_bad_steps` of
  them in a row abort the run.
- Loading batches and validating never draw from torch's global RNG (dropout's stream).
- A checkpoint holds everything the next step depends on (weights, optimizer, scaler,
  scheduler, RNG states, loader position, step, bad-step run, MLflow run id), so on CPU a run
  stopped after any step and resumed ends with bit-identical weights.
- Rank 0 alone prints, writes files and talks to MLflow.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import nn

from meshrec.config import Config, config_hash, from_dict, to_dict
from meshrec.data.batch import model_input
from meshrec.errors import MeshrecError
from meshrec.precision import amp_dtype, autocast
from meshrec.track import TRAINING_METRIC
from meshrec.train import checkpoint, tracking
from meshrec.train.run import Run

log = logging.getLogger("meshrec.train")

METRICS = "metrics.json"


# ------------------------------------------------------------------ learning-rate schedule

def lr_factor(step: int, cfg: Config, steps_per_epoch: int) -> float:
    """Multiplier of optim.lr at optimizer step `step` (0-based): linear warm-up, then the schedule."""
    o = cfg.optim
    if o.warmup_steps and step < o.warmup_steps:
        return (step + 1) / o.warmup_steps
    if o.schedule == "step":
        epoch = step // max(1, steps_per_epoch)
        return o.gamma ** sum(1 for e in o.step_epochs if epoch >= e)
    if o.schedule == "cosine":
        total = max(1, cfg.train.epochs * steps_per_epoch - o.warmup_steps)
        t = min(1.0, (step - o.warmup_steps) / total)
        floor = o.min_lr / o.lr
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
    return 1.0


def build_run(cfg: Config, env: Any, resume_state: Optional[dict] = None) -> Run:
    """Everything up to the first step: data, body, model, optimizer, schedule, AMP, loader."""
    from meshrec.body.load import load_body_model
    from meshrec.data import build_loader
    from meshrec.data.demo import with_shards
    from meshrec.model import build_model
    from meshrec.model.hashing import encoder_sha256, state_sha256
    from meshrec.model.mean import resolve_mean_params
    from meshrec.shards import manifest as shard_manifest
    from meshrec.train import preflight
    from meshrec.train.evaluate import body_joints

    cfg = with_shards(cfg, progress=env.is_main and sys.stderr.isatty())
    manifest = shard_manifest.load(cfg.data.shards)
    device = env.device
    preflight.check(cfg)

    body = load_body_model(cfg.body).to(device)
    joints = body_joints(cfg.body, body.num_vertices)
    preflight.check(cfg, has_regressor=joints.regressor is not None)
    if joints.regressor is not None:
        joints.regressor = joints.regressor.to(device)
    mean = resolve_mean_params(cfg, manifest)

    torch.manual_seed(cfg.train.seed)  # same initial weights on every rank
    core = build_model(cfg, mean).to(device)
    if device.type == "cuda" and cfg.train.channels_last:
        core = core.to(memory_format=torch.channels_last)
    encoder_sha = state_sha256(core.encoder) if cfg.model.freeze_encoder else ""
    if cfg.features.enabled:
        if encoder_sha != encoder_sha256(cfg):
            raise MeshrecError("features: this run's encoder differs from the one the feature "
                               "cache identity assumes; rebuild the cache with `meshrec features`")
    model: nn.Module = core
    if env.world_size > 1:
        model = nn.parallel.DistributedDataParallel(
            core, device_ids=[device.index] if device.type == "cuda" else None)
    if device.type == "cuda" and cfg.train.compile:
        model = torch.compile(model)

    params = [p for p in core.parameters() if p.requires_grad]
    o = cfg.optim
    if o.name == "adam":
        optimizer: torch.optim.Optimizer = torch.optim.Adam(params, lr=o.lr,
                                                            weight_decay=o.weight_decay)
    else:
        optimizer = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum,
                                    weight_decay=o.weight_decay)
    amp = amp_dtype(cfg.train.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp is torch.float16)

    loader_state = resume_state.get("loader") if resume_state else None
    loader = build_loader(cfg, "train", env.rank, env.world_size, device, state=loader_state)
    spe = len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg, spe))
    return Run(cfg, env, Path(cfg.train.output_dir), config_hash(cfg),
               str(manifest.get("manifest_sha256", "")), body, joints, mean, core, model,
               optimizer, scheduler, scaler, amp, loader, spe, encoder_sha256=encoder_sha)


# ------------------------------------------------------------------ one optimizer step

def isolated(loader: Any):
    """The loader's batches, drawn without touching torch's global RNG (DataLoader draws a seed
    from it whenever it starts iterating): dropout then sees the same random stream whether or
    not a run was stopped and resumed in the middle of an epoch."""
    it = iter(loader)
    while True:
        with torch.random.fork_rng(devices=[]):
            batch = next(it, None)
        if batch is None:
            return
        yield batch


def _finite_everywhere(value: torch.Tensor) -> bool:
    ok = torch.isfinite(value.detach()).all().float().reshape(1).cpu()
    if torch_dist.is_available() and torch_dist.is_initialized():
        ok = ok.to(value.device)
        torch_dist.all_reduce(ok, op=torch_dist.ReduceOp.MIN)
    return bool(ok.item() > 0)


def train_step(run: Run, batch: dict) -> Optional[dict[str, float]]:
    """Forward, backward and update on one rank batch; loss terms, or None for a skipped step."""
    from meshrec.loss import compute_loss

    cfg = run.cfg
    parts = cfg.optim.accumulate
    image = model_input(batch)
    n = image.shape[0]
    if n % parts:
        raise MeshrecError(f"rank batch {n} does not split into optim.accumulate={parts} parts")
    size = n // parts
    if run.env.device.type == "cuda" and cfg.train.channels_last and image.dim() == 4:
        image = image.contiguous(memory_format=torch.channels_last)
    run.optimizer.zero_grad(set_to_none=True)
    # BatchNorm running statistics change in the forward pass: kept to undo a bad step.
    buffers = [b.detach().clone() for b in run.core.buffers()]
    total = torch.zeros((), device=run.env.device)
    terms: dict[str, float] = {}
    for k in range(parts):
        micro = {key: (v[k * size:(k + 1) * size] if torch.is_tensor(v) or isinstance(v, list)
                       else v) for key, v in batch.items()}
        last = k == parts - 1
        sync = run.model.no_sync() if (not last and hasattr(run.model, "no_sync")) else _null()
        with sync:
            with autocast(run.env.device, run.amp):
                pred = run.model(image[k * size:(k + 1) * size])
            loss, micro_terms = compute_loss(pred, micro, run.body, cfg, run.joints.regressor)
            run.scaler.scale(loss.float() / parts).backward()
        total = total + loss.detach().float() / parts
        for name, value in micro_terms.items():
            terms[name] = terms.get(name, 0.0) + float(value) / parts

    run.step += 1
    if not _finite_everywhere(total):
        run.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for buf, saved in zip(run.core.buffers(), buffers):
                buf.copy_(saved)
        run.bad_in_row += 1
        run.bad_total += 1
        if run.bad_in_row >= cfg.train.max_bad_steps:
            raise MeshrecError(f"loss was NaN/Inf in {run.bad_in_row} steps in a row (up to step "
                               f"{run.step}); stopping. Lower optim.lr, set optim.grad_clip, or "
                               f"try train.amp=off")
        log.warning("step %d: non-finite loss, step skipped (%d in a row)", run.step,
                    run.bad_in_row)
        return None  # the LR schedule follows the updates made
    run.bad_in_row = 0
    if cfg.optim.grad_clip > 0:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.core.parameters(), cfg.optim.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    return {"loss": float(total), **terms}


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


# ------------------------------------------------------------------ validation

def validate(run: Run, split: str = "val", overlays: int = 0) -> tuple[dict[str, float], list]:
    """Metrics of the model and the mean-parameters baseline on `split` (all ranks take part);
    rank 0 also gets up to `overlays` pictures (name, array)."""
    from meshrec.data import build_loader
    from meshrec.train import evaluate

    cfg = run.cfg
    subjects = cfg.data.val_subjects if split == "val" else cfg.eval.subjects
    if not subjects:
        return {}, []
    if split not in run.val_loaders:  # kept: a loader starts worker processes
        run.val_loaders[split] = build_loader(cfg, split, run.env.rank, run.env.world_size,
                                              run.env.device)
    loader = run.val_loaders[split]
    first: list = []
    with torch.random.fork_rng(devices=[]):  # validation leaves the training RNG alone
        rec = evaluate.gather(evaluate.evaluate(run.core, loader, run.body, run.joints,
                                                run.mean_params, run.amp, run.env.device,
                                                first=first, protocol=cfg.eval.protocol))
        pictures = overlay_pictures(run, first[0], overlays) \
            if run.env.is_main and overlays and first else []
    run.core.train()
    return evaluate.summary(rec, f"{split}_"), pictures


@torch.no_grad()
def overlay_pictures(run: Run, batch: dict, count: int) -> list[tuple[str, np.ndarray]]:
    """[input | truth | prediction] pictures of the first `count` samples (meshrec.train.visual)."""
    from meshrec.train import visual

    if "image" not in batch:  # a feature cache holds no pixels to draw on
        return []
    run.core.eval()
    n = min(count, len(batch["key"]))
    with autocast(run.env.device, run.amp):
        pred = run.core(batch["image"][:n])
    return [(key, pic.image)
            for key, pic in visual.batch_pictures(batch, pred, run.body, run.joints.regressor, n)]


# ------------------------------------------------------------------ logging

def progress_bar(run: Run, start: int, total: int):
    """tqdm on rank 0 in an interactive terminal outside SLURM; None elsewhere (log lines)."""
    if not run.env.is_main or "SLURM_JOB_ID" in os.environ or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, desc="train")


def say(run: Run, text: str) -> None:
    if run.env.is_main:
        print(text, flush=True)


def log_validation(run: Run, epoch: int, metrics: dict[str, float], pictures: list) -> None:
    """Rank 0: to MLflow (meshrec.train.tracking) and one line on the terminal."""
    if not run.env.is_main:
        return
    tracking.log_validation(run.tracker, epoch, metrics, pictures)
    from meshrec import protocols

    protocol = run.cfg.eval.protocol
    best = protocols.selection_metric(protocol)
    shown = [protocols.metric_key(protocol, n) for n in protocols.metric_names(protocol)]
    values = " ".join(f"{k}={metrics.get('val_' + k, float('nan')):.6g}" for k in shown)
    say(run, f"epoch {epoch} step {run.step}: val ({protocol}) {values} "
             f"(mean params {best[4:]}={metrics.get('val_baseline_' + best[4:], float('nan')):.1f})")


# ------------------------------------------------------------------ the whole run

MIN_CURVE_POINTS = 20


def logging_interval(log_every: int, total_steps: int) -> int:
    """Steps between metric rows: train.log_every, or less in a run too short to draw a curve
    with it (at least MIN_CURVE_POINTS rows per run)."""
    return max(1, min(log_every, total_steps // MIN_CURVE_POINTS))


def train(cfg: Config, *, stop_after: Optional[int] = None,
          run_id: Optional[str] = None) -> dict[str, float]:
    """Train `cfg` into `train.output_dir`; returns the final metrics (rank 0; {} elsewhere).

    `run_id`: an MLflow run made beforehand (a sweep's child run) that a fresh run logs into; a
    resumed run keeps the one its checkpoint names.

    `train.processes > 1` outside any launcher runs that many local gloo/nccl processes.
    `stop_after`: return after that many optimizer steps in total, with a checkpoint written
    (what a preempted job leaves behind; the tests use it).
    """
    from meshrec.train import dist

    if cfg.train.processes > 1 and dist.detect_launch().source == "single":
        result = Path(cfg.train.output_dir) / METRICS
        result.unlink(missing_ok=True)
        dist.spawn_local(_spawned, cfg.train.processes, to_dict(cfg), stop_after, run_id)
        return json.loads(result.read_text()) if result.is_file() else {}
    env = dist.init_distributed(cfg)
    try:
        return _train(cfg, env, stop_after, run_id)
    finally:
        dist.cleanup()


def _spawned(cfg_dict: dict, stop_after: Optional[int], run_id: Optional[str] = None) -> None:
    """Entry of a process started by `train.processes=N` (module level: spawn pickles it)."""
    train(from_dict(cfg_dict, "train.processes"), stop_after=stop_after, run_id=run_id)


def _train(cfg: Config, env: Any, stop_after: Optional[int],
           run_id: Optional[str] = None) -> dict[str, float]:
    from meshrec.train import dist

    torch.manual_seed(cfg.train.seed)
    resume_path = checkpoint.find_resume(cfg)
    state = checkpoint.load_checkpoint(resume_path) if resume_path else None
    if state is not None:
        checkpoint.check_resume(state, cfg, fine_tune=False)
    run = build_run(cfg, env, state)
    if state is not None:
        checkpoint.restore_run(run, state)
        say(run, f"resumed from {resume_path} at step {run.step}")
    elif cfg.train.init_from:
        checkpoint.init_from(run, cfg.train.init_from)
    run.run_id = run.run_id or run_id
    tracking.start_tracking(run)
    say(run, f"config {run.chash}: {cfg.model.encoder} on {env.world_size} × {env.device}, "
             f"{run.steps_per_epoch} steps/epoch × {cfg.train.epochs} epochs, "
             f"global batch {cfg.data.batch_size}, amp {run.amp or 'off'}, "
             f"body {getattr(run.body, 'kind', 'smpl')}, joints {run.joints.label}")
    if cfg.features.enabled:
        say(run, f"inputs: cached encoder features from {run.loader.root}")

    total_steps = cfg.train.epochs * run.steps_per_epoch
    log_every = logging_interval(cfg.train.log_every, total_steps)
    bar = progress_bar(run, run.step, total_steps)
    run.core.train()
    metrics: dict[str, float] = {}
    window_t, window_steps = time.perf_counter(), 0
    run.started = window_t
    stopped = False
    saved_at = run.step
    for epoch in range(run.step // run.steps_per_epoch, cfg.train.epochs):
        for batch in isolated(run.loader):
            terms = train_step(run, batch)
            window_steps += 1
            if bar is not None:
                bar.update(1)
                if terms:
                    bar.set_postfix(loss=f"{terms['loss']:.4g}", refresh=False)
            if run.step % log_every == 0:
                elapsed = time.perf_counter() - window_t
                img_s = window_steps * cfg.data.batch_size / max(elapsed, 1e-9)
                window_t, window_steps = time.perf_counter(), 0
                if terms and env.world_size > 1:  # logged values: means over ranks
                    terms = {k: float(dist.all_reduce_mean(torch.tensor(v, device=env.device)))
                             for k, v in terms.items()}
                row = {f"train_{k}": v for k, v in (terms or {}).items()}
                row.update({"img_s": img_s, "lr": run.scheduler.get_last_lr()[0],
                            "bad_steps": float(run.bad_total),
                            "epoch": run.step / run.steps_per_epoch,
                            TRAINING_METRIC: run.training_seconds()})
                if env.device.type == "cuda":
                    row["gpu_mem_gb"] = torch.cuda.max_memory_allocated(env.device) / 2**30
                if env.is_main:
                    run.tracker.log_metrics(row, run.step)
                    if bar is None:
                        say(run, f"epoch {epoch} step {run.step}/{total_steps} "
                                 f"loss={row.get('train_loss', float('nan')):.5g} "
                                 f"lr={row['lr']:.3g} {img_s:.1f} img/s")
            every = cfg.train.checkpoint_every
            if (every and run.step % every == 0) or stop_after == run.step:
                checkpoint.save_run(run)
                saved_at = run.step
            if stop_after is not None and run.step >= stop_after:
                stopped = True
                break
        if stopped:
            break
        if saved_at != run.step:  # end of epoch
            checkpoint.save_run(run)
            saved_at = run.step
        last_epoch = epoch == cfg.train.epochs - 1
        every_epochs = cfg.eval.every_epochs
        if last_epoch or (every_epochs and (epoch + 1) % every_epochs == 0):
            metrics, pictures = validate(run, "val", cfg.track.overlays)
            log_validation(run, epoch, metrics, pictures)
    if bar is not None:
        bar.close()
    if not stopped and not metrics:  # resumed from a finished run: report its numbers again
        metrics, _ = validate(run, "val")

    metrics = {**metrics, "steps": float(run.step), "bad_steps": float(run.bad_total)}
    if env.is_main:
        path = run.out / METRICS
        path.write_text(json.dumps(metrics, indent=1, sort_keys=True) + "\n")
        if not stopped:
            run.tracker.log_artifact(path)
        run.tracker.log_metrics({TRAINING_METRIC: run.training_seconds()}, run.step)
        # A stopped run is continued by the next job (same MLflow run); only a real end is done.
        run.tracker.finish("FINISHED" if not stopped else "KILLED", done=not stopped)
    return metrics if env.is_main else {}
