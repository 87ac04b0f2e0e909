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
from pathlib import Path
from typing import Any, NamedTuple, Optional

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import nn

from meshrec.config import Config, config_hash, from_dict, to_dict
from meshrec.data.batch import model_input
from meshrec.errors import MeshrecError
from meshrec.precision import amp_dtype, autocast
from meshrec.track import TRAINING_METRIC
from meshrec.train import checkpoint, guard, timing, tracking
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
    from meshrec.shards import manifest as shard_manifest
    from meshrec.train import preflight

    cfg = with_shards(cfg, progress=env.is_main and sys.stderr.isatty())
    manifest = shard_manifest.load(cfg.data.shards)
    device = env.device
    preflight.check(cfg)
    # The loader first: its workers (or DALI's pipeline) start while the model is built.
    loader_state = resume_state.get("loader") if resume_state else None
    loader = build_loader(cfg, "train", env.rank, env.world_size, device, state=loader_state)

    from meshrec.model import build_model
    from meshrec.model.hashing import encoder_sha256, state_sha256
    from meshrec.model.mean import resolve_mean_params
    from meshrec.train.evaluate import body_joints

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
    optimizer = guard.build_optimizer(params, o.name, o.lr, o.momentum, o.weight_decay)
    amp = amp_dtype(cfg.train.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp is torch.float16)
    spe = len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg, spe))
    # The LR of update s, for the device to look up (as LambdaLR computes it: base × factor).
    table = [o.lr * lr_factor(s, cfg, spe) for s in range(cfg.train.epochs * spe + 1)]
    step_guard = guard.StepGuard(optimizer, table, device)
    return Run(cfg, env, Path(cfg.train.output_dir), config_hash(cfg),
               str(manifest.get("manifest_sha256", "")), body, joints, mean, core, model,
               optimizer, scheduler, scaler, amp, loader, spe, encoder_sha256=encoder_sha,
               guard=step_guard)


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


def finite_everywhere(value: torch.Tensor) -> torch.Tensor:
    """0-d bool on the device: `value` is finite on every rank (an all-reduce, no host read)."""
    ok = torch.isfinite(value.detach()).all().to(torch.int32)
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.all_reduce(ok, op=torch_dist.ReduceOp.MIN)
    return ok > 0


class StepTerms(NamedTuple):
    """One step's loss terms, still on the device: `values[i]` is term `names[i]`."""
    names: tuple[str, ...]
    values: torch.Tensor  # float32 [len(names)]
    ok: torch.Tensor      # 0-d bool: the step was applied (finite loss on every rank)


def device_step(run: Run, batch: dict) -> StepTerms:
    """Forward, backward and update on one rank batch without reading anything back from the
    device: a non-finite step is skipped there (meshrec.train.guard) and counted, and the loss
    terms stay tensors. `guard.settle(run)` reads the counters (and aborts on too many bad
    steps in a row); the loop does it every log window."""
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
    sums: list[torch.Tensor] = []
    names: tuple[str, ...] = ()
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
        names = ("loss", *micro_terms)
        values = torch.stack([loss.detach().float(), *(v.float() for v in micro_terms.values())])
        sums.append(values / parts)
    total = torch.stack(sums).sum(0) if parts > 1 else sums[0]

    run.step += 1
    ok = finite_everywhere(total[0])
    clip = cfg.optim.grad_clip
    if run.scaler.is_enabled():
        # fp16: GradScaler sets the fused optimizer's found_inf itself, so the loss check is
        # read here (one host read per step; bf16 and float32 have none).
        if bool(ok):
            if clip > 0:
                run.scaler.unscale_(run.optimizer)
                torch.nn.utils.clip_grad_norm_(run.core.parameters(), clip)
            run.guard.set_lr()
            run.scaler.step(run.optimizer)
            run.scaler.update()
    else:
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(run.core.parameters(), clip)
        run.guard.step(run.optimizer, ~ok)
    guard.restore_buffers(run.core, buffers, ok)
    run.guard.count(ok)
    return StepTerms(names, total, ok)


def train_step(run: Run, batch: dict) -> Optional[dict[str, float]]:
    """`device_step`, then its outcome read back at once: loss terms, or None for a skipped
    step (MeshrecError after train.max_bad_steps in a row). One host read per step: for tests
    and benchmarks; the loop reads only every log window."""
    before = run.bad_total
    terms = device_step(run, batch)
    guard.settle(run)
    if run.bad_total > before:
        return None
    return dict(zip(terms.names, terms.values.tolist()))


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


def window_row(run: Run, names: tuple[str, ...], sums: Optional[torch.Tensor],
               applied: torch.Tensor, window: "timing.Window") -> dict[str, float]:
    """A log window's metrics: train_<term> = mean over the window's applied steps and over
    ranks (one all-reduce, one host read), LR, img/s, where the time went (this rank's)."""
    from meshrec.train import dist

    env = run.env
    stats = torch.cat([torch.zeros(len(names), device=env.device) if sums is None else sums,
                       applied.float().reshape(1)])
    if env.world_size > 1:
        stats = dist.all_reduce_mean(stats)  # the ratios below are the same
    values = stats.tolist()
    guard.settle(run)  # bad-step counters; aborts after train.max_bad_steps in a row
    row = {f"train_{k}": v / values[-1] for k, v in zip(names, values)} if values[-1] else {}
    steps = window.steps
    times = window.close()  # after the reads: the window's device work is done
    img_s = steps * run.cfg.data.batch_size / times.pop("elapsed_s")
    row.update({"img_s": img_s, "lr": float(run.scheduler.get_last_lr()[0]),
                "bad_steps": float(run.bad_total), "epoch": run.step / run.steps_per_epoch,
                TRAINING_METRIC: run.training_seconds(), **times})
    if env.device.type == "cuda":
        row["gpu_mem_gb"] = torch.cuda.max_memory_allocated(env.device) / 2**30
    return row


def report_first_step(run: Run) -> None:
    """Once per job: seconds from the process's start to its first optimizer step done."""
    if run.env.device.type == "cuda":
        torch.cuda.synchronize(run.env.device)  # done, not just launched (once)
    seconds = timing.process_age_s()
    if run.env.is_main:
        run.tracker.log_metrics({"time_to_first_step_s": seconds}, run.step)
        say(run, f"first step done {seconds:.1f} s after the process started")


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
    window = timing.Window()
    run.started = window.start
    sums: Optional[torch.Tensor] = None  # the window's loss terms over its applied steps
    applied = torch.zeros((), device=env.device)
    first_step = True
    stopped = False
    saved_at = run.step
    for epoch in range(run.step // run.steps_per_epoch, cfg.train.epochs):
        batches = isolated(run.loader)
        while (batch := window.next_batch(batches)) is not None:
            terms = device_step(run, batch)
            window.steps += 1
            sums = torch.where(terms.ok, terms.values, 0.0) + (0.0 if sums is None else sums)
            applied = applied + terms.ok
            if first_step:
                first_step = False
                report_first_step(run)
            if bar is not None:
                bar.update(1)
            if run.step % log_every == 0:
                row = window_row(run, terms.names, sums, applied, window)
                sums, applied = None, torch.zeros((), device=env.device)
                if env.is_main:
                    run.tracker.log_metrics(row, run.step)
                    if bar is not None and "train_loss" in row:
                        bar.set_postfix(loss=f"{row['train_loss']:.4g}", refresh=False)
                    if bar is None:
                        say(run, f"epoch {epoch} step {run.step}/{total_steps} "
                                 f"loss={row.get('train_loss', float('nan')):.5g} "
                                 f"lr={row['lr']:.3g} {row['img_s']:.1f} img/s, "
                                 f"data wait {row['data_wait_frac']:.0%}")
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
    guard.settle(run)  # the last steps' bad-step counts
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
