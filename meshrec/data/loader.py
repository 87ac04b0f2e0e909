"""`build_loader`: the one entry to the data loaders (DALI or the torch fallback, by config)."""

from __future__ import annotations

from typing import Iterable, Protocol

import torch

from meshrec.config import Config
from meshrec.data import shardset
from meshrec.data.batch import Batch, LabelLayout
from meshrec.data.labels import Pelvis
from meshrec.data.split import rank_batch, rank_samples
from meshrec.shards import manifest as shard_manifest
from meshrec.errors import MeshrecError


class Loader(Protocol):
    samples: int  # samples this rank yields per epoch (padding and dropped tails excluded)
    labels: dict[str, int]  # samples of the split carrying each label: smpl, j3d, kp2d

    def __len__(self) -> int: ...
    def __iter__(self) -> Iterable[Batch]: ...
    def state_dict(self) -> dict: ...


def body_pelvis(cfg: Config) -> Pelvis:
    """Rest pelvis of the configured body (flipping and rotating translations need it)."""
    from meshrec.body import mirror
    from meshrec.body.load import resolve_model_path
    from meshrec.body.model_file import load_arrays

    return Pelvis(*mirror.pelvis_affine(load_arrays(resolve_model_path(cfg.body))))


def build_loader(cfg: Config, split: str, rank: int = 0, world_size: int = 1,
                 device: torch.device | str = "cpu", state: dict | None = None) -> Loader:
    """Batches of `split` (train | val | test) for global `rank` of `world_size`.

    Training splits are shuffled and augmented (data.augment); val/test are centre crops, each
    sample exactly once over all ranks. `len()` is the number of batches per epoch, equal on
    every rank. `state` (from `loader.state_dict()` after k batches) resumes mid-epoch.
    With `features.enabled` the batches come from the feature cache (`features`, no `image`).
    `loader.labels` counts the split's samples carrying each label (shardset.split_labels), so
    a caller can refuse a loss on a label the shards lack before training.
    """
    if not 0 <= rank < world_size:
        raise MeshrecError(f"rank {rank} is outside world size {world_size}")
    device = torch.device(device)
    train = split == "train"
    subjects = shardset.split_subjects(cfg, split)
    root = shardset.shard_dir(cfg)
    manifest = shardset.load_manifest(root)
    shards = shardset.select(root, manifest, subjects)
    counts = shard_manifest.labels(manifest, subjects)
    batch = rank_batch(cfg.data.batch_size if train else cfg.eval.batch_size, world_size,
                       "data.batch_size" if train else "eval.batch_size")
    total = sum(s.samples for s in shards)
    if rank_samples(total, 0, world_size, batch, train) == 0:
        raise MeshrecError(f"{total} samples of {', '.join(subjects)} over {world_size} ranks "
                           f"give no full batch of {batch} per rank")
    loader: Loader
    if cfg.features.enabled:  # cached frozen-encoder features instead of images
        from meshrec.features.loader import FeatureLoader

        loader = FeatureLoader(cfg, split, subjects, batch, rank, world_size, device, state)
        loader.labels = counts
        return loader
    pelvis = body_pelvis(cfg) if manifest.get("layout", {}).get("with_transl") else None
    # Packed crops all have the manifest's size: kp2d maps from it, and an unaugmented crop can
    # skip resampling.
    held = LabelLayout.of(manifest, cfg.data.image_size, pelvis)
    if cfg.data.backend == "dali":
        from meshrec.data.dali import DaliLoader

        loader = DaliLoader(cfg, shards, held, train, batch, rank, world_size, device, state)
    else:
        from meshrec.data.torch_loader import TorchLoader

        loader = TorchLoader(cfg, shards, held, train, batch, rank, world_size, device, state)
    loader.samples = rank_samples(total, rank, world_size, batch, train)
    loader.labels = counts
    return loader
