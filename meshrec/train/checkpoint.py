"""Training checkpoints: atomic files of plain dicts and tensors, the last K kept, RNG states.

A checkpoint directory holds `step_000001000.pt` files and `last.pt`, the most recent one (a hard
link to it, or a copy where links are not supported). Every file is written to a temporary name,
fsynced and renamed, so a crash leaves the previous `last.pt` whole. Contents are plain Python
containers, numbers, strings, bytes (DALI's GPU reader checkpoint) and tensors only, so `torch.load(weights_only=True)` reads them;
`save_checkpoint` refuses anything else before writing.

A frozen encoder is not stored (233 MB for ResNet-152, every save, every grid cell): its
weights are what the config builds, so the checkpoint keeps their sha256 and the model that loads
it must build the same encoder (`model_state`, `load_model_state`).

The loop's state dict carries `checkpoint_meta(cfg)` (the resolved config as a dict and its hash),
which `check_resume` compares with the config of the run that wants to continue from it.

A training run's checkpoints (last section): `checkpoint_state(run)` is everything the next step
depends on, `save_run` writes it to OUT/checkpoints on rank 0, `find_resume` picks the file a run
continues from (train.resume), `restore_run` puts it back, `init_from` loads another run's weights
to fine-tune.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch

from meshrec.config import Config, config_hash, to_dict
from meshrec.errors import MeshrecError
from meshrec.fileio import atomic_open
from meshrec.mapping import flatten
from meshrec.train.run import Run

CHECKPOINTS = "checkpoints"  # a run's checkpoint directory, in train.output_dir
LAST = "last.pt"
_STEP = re.compile(r"step_(\d+)\.pt")
_PLAIN = (str, bytes, int, float, bool, type(None), torch.Tensor)


def step_name(step: int) -> str:
    return f"step_{step:09d}.pt"


def _check_plain(obj: Any, where: str = "state") -> None:
    """Raise TypeError naming the first value torch.load(weights_only=True) would refuse."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"checkpoint key {where}[{key!r}] is a {type(key).__name__}")
            _check_plain(value, f"{where}[{key!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            _check_plain(value, f"{where}[{i}]")
    elif not isinstance(obj, _PLAIN):
        raise TypeError(f"checkpoint value {where} is a {type(obj).__name__}; store plain "
                        "dicts, lists, numbers, strings, bytes and tensors only")


def _fsync_dir(path: Path) -> None:
    # Makes the renames themselves durable; not every filesystem allows opening a directory.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _steps(ckpt_dir: Path) -> list[tuple[int, Path]]:
    found = []
    for path in ckpt_dir.glob("step_*.pt"):
        match = _STEP.fullmatch(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def _point_last(ckpt_dir: Path, target: Path) -> None:
    """Atomically make last.pt the same bytes as `target` (hard link, else copy)."""
    tmp = ckpt_dir / f".{LAST}.{os.getpid()}.link.tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        os.link(target, tmp)
        os.replace(tmp, ckpt_dir / LAST)
    except OSError:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        with open(target, "rb") as src, atomic_open(ckpt_dir / LAST, "wb", perms=0o644) as dst:
            shutil.copyfileobj(src, dst, 1 << 24)


def save_checkpoint(ckpt_dir: str | os.PathLike, state: Mapping[str, Any], step: int,
                    keep_last: int) -> Path:
    """Write `state` as step_<step>.pt and last.pt; keep the newest `keep_last` step files.

    The file just written is always kept. Returns the step file's path.
    """
    if keep_last < 1:
        raise ValueError(f"keep_last must be at least 1, got {keep_last}")
    _check_plain(dict(state))
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    # Temporaries left by a writer that was killed mid-save (only rank 0 writes here).
    for stale in ckpt_dir.glob(".*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
    path = ckpt_dir / step_name(step)
    with atomic_open(path, "wb", perms=0o644) as fh:
        torch.save(dict(state), fh)
    _point_last(ckpt_dir, path)
    older = [p for s, p in _steps(ckpt_dir) if p != path]
    for old in older[: max(0, len(older) - (keep_last - 1))]:
        with contextlib.suppress(FileNotFoundError):
            old.unlink()
    _fsync_dir(ckpt_dir)
    return path


ENCODER = "encoder."  # MeshRegressor.encoder's keys in a model state dict


def model_state(core: torch.nn.Module, encoder_sha256: str) -> dict[str, torch.Tensor]:
    """The model's weights to store: without the encoder when it is frozen (`encoder_sha256`
    names its weights then; empty when it trains)."""
    state = core.state_dict()
    if not encoder_sha256:
        return state
    return {k: v for k, v in state.items() if not k.startswith(ENCODER)}


def load_model_state(core: torch.nn.Module, state: Mapping[str, Any], where: str) -> None:
    """Load a checkpoint's weights into `core`; a frozen encoder that the checkpoint does not
    store must be the one `core` was built with (same sha256), else MeshrecError."""
    from meshrec.model.hashing import state_sha256

    weights = dict(state["model"])
    saved = str(state.get("encoder_sha256") or "")
    if saved:
        mine = state_sha256(core.encoder)
        if mine != saved:
            raise MeshrecError(
                f"{where} was trained on a frozen encoder with other weights (sha256 {saved[:12]}, "
                f"this config builds {mine[:12]}): model.encoder, model.weights, train.seed or "
                "the weights file differ")
        weights.update({k: v for k, v in core.state_dict().items() if k.startswith(ENCODER)})
    mine = core.state_dict()
    odd = [k for k, v in weights.items() if k in mine and tuple(v.shape) != tuple(mine[k].shape)]
    if odd:
        raise MeshrecError(
            f"{where} does not fit this model: {odd[0]} has shape {tuple(weights[odd[0]].shape)}, "
            f"the model's is {tuple(mine[odd[0]].shape)} (a checkpoint from before the head "
            f"predicted a camera, or another model config)")
    core.load_state_dict(weights)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint onto the CPU with weights_only=True; unreadable files → MeshrecError."""
    path = Path(path)
    if not path.is_file():
        raise MeshrecError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, foreign pickle, ...: one line for the user
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise MeshrecError(f"checkpoint {path} cannot be read: {first[:200]}") from None
    if not isinstance(state, dict):
        raise MeshrecError(f"checkpoint {path} holds a {type(state).__name__}, not a state dict")
    return state


def find_last(ckpt_dir: str | os.PathLike) -> Path | None:
    """last.pt, else the highest step file (a save killed between the two), else None."""
    ckpt_dir = Path(ckpt_dir)
    if (ckpt_dir / LAST).is_file():
        return ckpt_dir / LAST
    steps = _steps(ckpt_dir) if ckpt_dir.is_dir() else []
    return steps[-1][1] if steps else None


# ---------------------------------------------------------------- config identity

def checkpoint_meta(cfg: Config) -> dict[str, Any]:
    """What a state dict carries about its config: `config` (plain dict) and `config_hash`."""
    return {"config": to_dict(cfg), "config_hash": config_hash(cfg)}


def check_resume(state: Mapping[str, Any], cfg: Config, fine_tune: bool) -> None:
    """Refuse to continue a checkpoint made with another config hash, unless fine-tuning."""
    old = state.get("config_hash")
    if not isinstance(old, str):
        raise MeshrecError("checkpoint records no config hash; it was not written by "
                           "meshrec train")
    new = config_hash(cfg)
    if old == new or fine_tune:
        return
    changed = ""
    if isinstance(state.get("config"), Mapping):
        then, now = flatten(state["config"]), flatten(to_dict(cfg, hashed_only=True))
        keys = [k for k in now if k in then and then[k] != now[k]]
        keys += [k for k in now if k not in then]
        if keys:
            changed = f" (differs in {', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
    raise MeshrecError(f"checkpoint config hash {old} != this run's config hash {new}{changed}; "
                       "resume with the same config, or fine-tune from it with train.init_from")


# ---------------------------------------------------------------- random number generators

def capture_rng(generators: Mapping[str, np.random.Generator] | None = None) -> dict[str, Any]:
    """States of python `random`, numpy's global RNG, torch CPU and CUDA, and named Generators."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        # Bit-generator states hold 128-bit ints and arrays: JSON keeps them exact and plain.
        "generators": {k: json.dumps(g.bit_generator.state, default=_jsonable)
                       for k, g in (generators or {}).items()},
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in an RNG state")


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if "__ndarray__" in value:
            return np.asarray(value["__ndarray__"], dtype=value["dtype"])
        return {k: _from_json(v) for k, v in value.items()}
    return value


def restore_rng(state: Mapping[str, Any],
                generators: Mapping[str, np.random.Generator] | None = None) -> None:
    """Put back what capture_rng took; named Generators are restored in place."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["internal"]), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"],
                         npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        if len(cuda) != torch.cuda.device_count():
            # Another GPU count: seed what exists from the saved states rather than fail.
            cuda = [cuda[i % len(cuda)] for i in range(torch.cuda.device_count())]
        torch.cuda.set_rng_state_all(cuda)
    saved = state.get("generators", {})
    for name, gen in (generators or {}).items():
        if name not in saved:
            raise MeshrecError(f"checkpoint has no state for random generator {name!r}")
        gen.bit_generator.state = _from_json(json.loads(saved[name]))


# ---------------------------------------------------------------- a training run's checkpoints

def checkpoint_state(run: Run) -> dict:
    """Everything the next step of `run` depends on (the keys every checkpoint has); the
    counters as `guard.settle` last read them."""
    from meshrec.train import guard

    return {"model": model_state(run.core, run.encoder_sha256),
            "encoder_sha256": run.encoder_sha256,
            "optimizer": guard.optimizer_state(run.optimizer),
            "scheduler": run.scheduler.state_dict(), "scaler": run.scaler.state_dict(),
            "rng": capture_rng(), "loader": run.loader.state_dict(), "step": run.step,
            "bad_in_row": run.bad_in_row, "bad_total": run.bad_total,
            "trained_s": run.training_seconds(), "config": to_dict(run.cfg),
            "config_hash": run.chash, "manifest_sha256": run.manifest_sha256,
            "mean_params": run.mean_params.tolist(),
            "mlflow_run_id": (run.tracker.run_id if run.tracker else None) or run.run_id or ""}


def save_run(run: Run) -> None:
    """Rank 0 writes OUT/checkpoints/step-N.pt and last.pt; every rank waits for it."""
    from meshrec.train import dist, guard

    if run.guard is not None:
        guard.settle(run)  # the device's counters and the LR schedule, read into `run`
    if run.env.is_main:
        save_checkpoint(run.out / CHECKPOINTS, checkpoint_state(run), run.step,
                        run.cfg.train.keep_last)
    dist.barrier()


def find_resume(cfg: Config) -> Optional[Path]:
    """The checkpoint a run of `cfg` continues from (train.resume: never, auto, a file) or None."""
    setting = cfg.train.resume
    if setting == "never":
        return None
    if setting == "auto":
        return find_last(Path(cfg.train.output_dir) / CHECKPOINTS)
    path = Path(setting).expanduser()
    if not path.is_file():
        raise MeshrecError(f"train.resume: no such checkpoint {path}")
    return path


def restore_run(run: Run, state: dict) -> None:
    """Put `run` back where `checkpoint_state` took it (weights, optimizer, RNGs, counters)."""
    load_model_state(run.core, state, "the checkpoint to resume")
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])
    run.step, run.bad_in_row, run.bad_total = (int(state["step"]), int(state["bad_in_row"]),
                                               int(state["bad_total"]))
    run.run_id = state.get("mlflow_run_id") or None
    run.trained_s = float(state.get("trained_s", 0.0))  # absent before it was kept
    restore_rng(state["rng"])
    if run.guard is not None:  # the device's view: updates made = schedule steps
        run.guard.attach(run.optimizer)
        run.guard.load(run.scheduler.last_epoch, run.bad_in_row, run.bad_total)


def init_from(run: Run, path: str) -> None:
    """Fine-tune: start from another run's weights (its config may differ)."""
    state = load_checkpoint(Path(path).expanduser())
    check_resume(state, run.cfg, fine_tune=True)
    load_model_state(run.core, state, f"train.init_from {path}")
