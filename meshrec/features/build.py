"""Build a feature cache: the frozen encoder once over every crop a config needs.

Every rank of the process group reads its share through the normal loaders (DALI `mixed` decode
on a GPU), runs the encoder under the run's autocast, and writes its own part per view; rank 0
writes the manifest last, so a cache without `features.json` is unfinished and never used. The
old manifest is removed first: a rebuild killed half way leaves no stale cache behind.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meshrec.config import Config, with_overrides
from meshrec.errors import MeshrecError
from meshrec.features import cache as fc
from meshrec.fileio import atomic_open, save_npz
from meshrec.precision import amp_dtype, autocast

log = logging.getLogger("meshrec.features")


def _view_loader(cfg: Config, view: str, env: Any):
    """The loader whose batches make `view`: centre crops of every subject, or one augmented
    training pass (view k uses the training loader's own epoch k)."""
    from meshrec.data import build_loader

    base = replace(cfg, features=replace(cfg.features, enabled=False))
    if view == fc.CENTRE:
        subjects = "[" + ",".join(fc.subjects(cfg)) + "]"
        return build_loader(with_overrides(base, [f"data.val_subjects={subjects}"]), "val",
                            env.rank, env.world_size, env.device)
    return build_loader(base, "train", env.rank, env.world_size, env.device)


def _encode(encoder, loader, amp, epochs: int, bar) -> list[dict[str, np.ndarray]]:
    """Per epoch of `loader`: features (float16) and labels of every sample this rank sees."""
    out = []
    for _ in range(epochs):
        rows: dict[str, list] = {"key": [], "features": [], **{name: [] for name in fc.LABELS}}
        for batch in loader:
            if not batch["key"]:
                continue
            image = batch["image"]
            if image.is_cuda:
                image = image.contiguous(memory_format=torch.channels_last)
            with torch.no_grad(), autocast(image.device, amp):
                feats = encoder(image)
            half = feats.to(torch.float16)
            if not torch.isfinite(half).all():
                raise MeshrecError(f"features: the encoder's outputs do not fit float16 (largest "
                                   f"magnitude {float(feats.float().abs().max()):.3g}); the "
                                   "cache cannot hold them")
            rows["features"].append(half.cpu().numpy())
            for name in fc.LABELS:
                rows[name].append(batch[name].cpu().numpy())
            rows["key"] += list(batch["key"])
            if bar is not None:
                bar.update(len(batch["key"]))
        part = {k: np.concatenate(v) for k, v in rows.items() if k != "key" and v}
        part["key"] = np.asarray(rows["key"], dtype=np.str_)
        out.append(part)
    return out


def build_features(cfg: Config, env: Any, force: bool = False) -> Path:
    """Write the cache of `cfg` (data.shards resolved) with every rank of `env`; return its dir."""
    from meshrec.model import build_model
    from meshrec.model.hashing import state_sha256
    from meshrec.model.mean import resolve_mean_params
    from meshrec.shards import manifest as shard_manifest
    from meshrec.train import dist

    if not cfg.model.freeze_encoder:
        raise MeshrecError("features: model.freeze_encoder is false: a trained encoder's "
                           "features change every step and cannot be cached")
    root = fc.cache_dir(cfg)
    if not force and fc.check(cfg) is None:
        return root
    ident = fc.identity(cfg)
    mean = resolve_mean_params(cfg, shard_manifest.load(cfg.data.shards))
    torch.manual_seed(cfg.train.seed)  # the same encoder weights training will build
    encoder = build_model(cfg, mean).encoder.to(env.device)
    if env.device.type == "cuda":
        encoder = encoder.to(memory_format=torch.channels_last)
    if state_sha256(encoder) != ident["encoder_sha256"]:
        raise MeshrecError("features: the encoder built for the cache differs from the one a run "
                           "builds (weights changed while building?)")
    amp = amp_dtype(cfg.train.amp, env.device)

    if env.is_main:
        (root / fc.MANIFEST).unlink(missing_ok=True)
        shutil.rmtree(root / fc.PARTS, ignore_errors=True)
        (root / fc.PARTS).mkdir(parents=True, exist_ok=True)
    dist.barrier()

    views = [fc.CENTRE] + [v for v in fc.train_views(cfg) if v != fc.CENTRE]
    started = time.time()
    count = 0
    bar = None
    if env.is_main and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(desc=f"features {cfg.model.encoder}", unit="img", dynamic_ncols=True)
    try:
        centre = _encode(encoder, _view_loader(cfg, fc.CENTRE, env), amp, 1, bar)
        trained = []
        if len(views) > 1:
            trained = _encode(encoder, _view_loader(cfg, views[1], env), amp, len(views) - 1, bar)
    finally:
        if bar is not None:
            bar.close()
    for view, part in zip(views, centre + trained):
        save_npz(root / fc.PARTS / f"{view}-r{env.rank:03d}.npz", part)
        count += len(part["key"])
    dist.barrier()
    if env.is_main:
        parts = []
        for view in views:
            for rank in range(env.world_size):
                path = root / fc.PARTS / f"{view}-r{rank:03d}.npz"
                with np.load(path) as z:
                    samples = len(z["key"])
                parts.append({"file": path.name, "view": view, "rank": rank, "samples": samples,
                              "bytes": path.stat().st_size})
        seconds = time.time() - started
        manifest = {"identity": ident, "parts": parts, "views": views,
                    "built": {"seconds": round(seconds, 2), "ranks": env.world_size,
                              "device": env.device.type, "decoder": cfg.data.backend,
                              "amp": fc.amp_name(cfg, env.device),
                              "samples": sum(p["samples"] for p in parts),
                              "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}}
        with atomic_open(root / fc.MANIFEST, "w") as fh:
            json.dump(manifest, fh, indent=1, sort_keys=True)
    dist.barrier()
    log.info("rank %d encoded %d crops", env.rank, count)
    return root


def run_features(cfg: Config, force: bool = False) -> Path:
    """One task's whole job (a submitit task, a SLURM step or a plain process): join the process
    group, resolve the shards, build (or find) the cache, leave."""
    from meshrec.data.demo import with_shards
    from meshrec.train import dist

    env = dist.init_distributed(cfg)
    try:
        cfg = with_shards(cfg, progress=env.is_main and sys.stderr.isatty())
        return build_features(cfg, env, force)
    finally:
        dist.cleanup()
