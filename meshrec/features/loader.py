"""Batches from a feature cache, with the image loaders' rules (meshrec.data.torch_loader):

train  epoch e reads view e mod K (the centre crops when not augmenting). Samples are in shard
       order, the image loaders' own; the epoch's order, each rank's share and the batch count
       come from meshrec.data.split, as the torch loader's do: without augmentation a run from
       the cache steps through the same batches as one from images. State = (epoch, batches
       done): mid-epoch resume.
val/test  the centre view in shard order, unshuffled, every sample exactly once over all ranks.

Batches are the image loaders' dicts with `features` (float32 [B, D]) in place of `image`. The
whole cache of the needed views is held in memory (2048 float16 = 4 KB per crop).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from meshrec.config import Config
from meshrec.data.augment import Aug
from meshrec.data.batch import Batch
from meshrec.data.split import batch_rows, batches_per_epoch, epoch_order, rank_samples
from meshrec.errors import MeshrecError
from meshrec.features import cache as fc


def shard_keys(cfg: Config, subjects: tuple[str, ...]) -> list[str]:
    """The sample keys of `subjects` in the image loaders' order (shards in manifest order)."""
    from meshrec.data import shardset

    root = shardset.shard_dir(cfg)
    chosen = shardset.select(root, shardset.load_manifest(root), subjects)
    return [ref.key for ref in shardset.all_samples(chosen)]


def load_view(root: Path, manifest: dict, view: str, keys: list[str]) -> dict[str, np.ndarray]:
    """One view's rows, from every rank's part, in the order of `keys` (keys the view lacks,
    e.g. a training pass's dropped tail, are left out)."""
    parts = [p for p in manifest["parts"] if p["view"] == view]
    if not parts:
        raise MeshrecError(f"feature cache {root} has no view {view!r}")
    arrays: dict[str, list[np.ndarray]] = {}
    for part in parts:
        with np.load(root / fc.PARTS / part["file"], allow_pickle=False) as z:
            for name in z.files:
                arrays.setdefault(name, []).append(z[name])
    rows = {k: np.concatenate(v) for k, v in arrays.items()}
    where = {str(k): i for i, k in enumerate(rows["key"])}
    order = np.asarray([where[k] for k in keys if k in where], dtype=np.int64)
    return {k: v[order] for k, v in rows.items()}


class FeatureLoader:
    """Iterable of feature `Batch`es for one rank; `len()` = batches per epoch (equal on every rank)."""

    def __init__(self, cfg: Config, split: str, subjects: tuple[str, ...], batch_size: int,
                 rank: int, world_size: int, device: torch.device, state: dict | None = None) -> None:
        reason = fc.check(cfg)
        if reason is not None:
            raise MeshrecError(str(reason))
        self.root = fc.cache_dir(cfg)
        manifest = fc.read_manifest(self.root)
        assert manifest is not None  # check() found it
        self.train = split == "train"
        self.views = fc.train_views(cfg) if self.train else [fc.CENTRE]
        keys = shard_keys(cfg, subjects)
        self.data = [load_view(self.root, manifest, v, keys) for v in self.views]
        counts = {len(d["key"]) for d in self.data}
        if 0 in counts:
            raise MeshrecError(f"feature cache {self.root} holds no samples of {', '.join(subjects)}")
        self.seed, self.batch_size = cfg.data.seed, batch_size
        self.rank, self.world_size, self.device = rank, world_size, device
        n = min(counts)
        self.batches = batches_per_epoch(n, world_size, batch_size, self.train)
        self.samples = rank_samples(n, rank, world_size, batch_size, self.train)
        self.epoch, self.position = 0, 0
        if state is not None:
            if state.get("backend") != "features":
                raise MeshrecError(f"loader state is from the {state.get('backend')!r} backend; "
                                   "this run reads a feature cache (features.enabled: true)")
            self.epoch, self.position = int(state["epoch"]), int(state["batch"])

    def __len__(self) -> int:
        return self.batches

    def _order(self, epoch: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        data = self.data[epoch % len(self.data)]
        return data, epoch_order(len(data["key"]), self.seed, epoch, self.train)[0]

    def __iter__(self) -> Iterator[Batch]:
        if self.position >= self.batches:  # a state saved at the very end of an epoch
            self.epoch, self.position = self.epoch + 1, 0
        data, order = self._order(self.epoch)
        while self.position < self.batches:
            rows = batch_rows(len(order), self.rank, self.world_size, self.batch_size,
                              self.position)
            self.position += 1
            yield self._batch(data, order[rows])
        self.epoch, self.position = self.epoch + 1, 0

    def _batch(self, data: dict[str, np.ndarray], rows: np.ndarray) -> Batch:
        dev = self.device
        take = lambda name: torch.from_numpy(data[name][rows]).to(dev)  # noqa: E731
        batch: Batch = {name: take(name) for name in fc.LABELS}
        batch.update(features=take("features").float(), flipped=batch["aug"][:, Aug.FLIP] > 0.5,
                     key=[str(k) for k in data["key"][rows]])
        return batch

    def state_dict(self) -> dict:
        return {"backend": "features", "epoch": self.epoch, "batch": self.position}
