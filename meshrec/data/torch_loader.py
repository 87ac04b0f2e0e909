"""Fallback loader (`data.backend: torch`) for machines without DALI: the same WebDataset tars,
a torch DataLoader, and the same crop / colour / flip / normalisation as the DALI pipeline.

The tars are read through their DALI index files by random access (two `pread`s a sample)
rather than by webdataset's streaming reader: that gives what a streaming reader cannot give
without resampling — an exact split of every sample over ranks, a global shuffle, and
resuming mid-epoch without decoding the skipped samples.

Order, rank shares and batch counts follow meshrec.data.split (the feature loader follows the
same rule). Per training epoch `e` the generator that drew the order (from `data.seed` and `e`
only) then draws the epoch's table of augmentation numbers (`augment.draw`), so every rank
agrees on them and a resumed run recomputes them; val/test are unaugmented.

Workers (`data.num_threads`; 0 = none, the rank decodes itself) decode (torchvision's
libjpeg-turbo) and warp to uint8; normalisation runs once per batch in the main process
(shipping uint8 between processes is 4× cheaper than float32). A JPEG that does not decode is
skipped: it is left out of its batch, listed in the batch's `skipped` keys and counted in
`loader.skipped`.
"""

from __future__ import annotations

import io
import warnings
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_jpeg  # imported once, in the forkserver too

from meshrec import forkserver
from meshrec.config import Config
from meshrec.data import augment
from meshrec.data.batch import Batch, LabelLayout, finish
from meshrec.data.shardset import SampleRef, Shard, all_samples, read_member
from meshrec.data.split import batch_rows, batches_per_epoch, epoch_order
from meshrec.errors import MeshrecError

Item = tuple[int, tuple[float, ...]]  # (sample number, augmentation numbers)


def epoch_plan(n: int, seed: int, epoch: int, train: bool, cfg_aug: Any) -> tuple[np.ndarray, np.ndarray]:
    """(order of sample numbers, (n, 8) augmentation numbers in that order) of one epoch."""
    order, rng = epoch_order(n, seed, epoch, shuffle=train)
    if not train:
        return order, np.tile(augment.IDENTITY, (n, 1))
    return order, augment.draw(rng, n, cfg_aug)


def _npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


class ShardSamples(Dataset):
    """Item (sample number, augmentation numbers) → decoded, augmented uint8 sample or a skip."""

    def __init__(self, shards: Sequence[Shard], refs: Sequence[SampleRef], size: int,
                 members: dict[str, str]) -> None:
        self.shards, self.refs, self.size, self.members = list(shards), list(refs), size, members

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, item: Item) -> dict[str, Any]:
        number, numbers = item
        ref = self.refs[number]
        tar = self.shards[ref.shard].tar
        member = lambda ext: read_member(tar, *ref.members[ext])  # noqa: E731
        params = np.asarray(numbers, dtype=np.float32)
        try:
            raw = torch.frombuffer(bytearray(member("jpg")), dtype=torch.uint8)
            with warnings.catch_warnings():  # torchvision 0.29 announces a move to torchcodec
                warnings.simplefilter("ignore", DeprecationWarning)
                image = decode_jpeg(raw, mode=ImageReadMode.RGB)
        except (RuntimeError, ValueError) as exc:
            return {"key": ref.key, "skip": f"{tar} key {ref.key}: {exc}"}
        out = {"key": ref.key, "image": augment.apply(image, params, self.size),
               "aug": torch.from_numpy(params)}
        for name, ext in self.members.items():
            out[name] = torch.from_numpy(_npy(member(ext)).astype(np.float32))
        return out


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    kept = [it for it in items if "skip" not in it]
    out: dict[str, Any] = {"key": [it["key"] for it in kept],
                           "skipped": [it["skip"] for it in items if "skip" in it]}
    for name in kept[0] if kept else ():
        if name != "key":
            out[name] = torch.stack([it[name] for it in kept])
    return out


class _Plan:
    """Batch sampler the loader refills each epoch (the workers only ever see single items)."""

    def __init__(self) -> None:
        self.batches: list[list[Item]] = []

    def __iter__(self) -> Iterator[list[Item]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class TorchLoader:
    """Iterable of `Batch` for one rank; `len()` = batches per epoch (equal on every rank)."""

    def __init__(self, cfg: Config, shards: Sequence[Shard], labels: LabelLayout, train: bool,
                 batch_size: int, rank: int, world_size: int, device: torch.device,
                 state: dict | None = None) -> None:
        self.cfg, self.train, self.batch_size = cfg, train, batch_size
        self.rank, self.world_size, self.device = rank, world_size, device
        self.label_layout = labels
        self.dataset = ShardSamples(shards, all_samples(shards), cfg.data.image_size, labels.members)
        self.batches = batches_per_epoch(len(self.dataset), world_size, batch_size, train)
        self.epoch, self.position = 0, 0  # next batch to yield
        if state is not None:
            if state.get("backend") != "torch":
                raise MeshrecError(f"loader state is from the {state.get('backend')!r} backend; "
                                   "this run uses data.backend: torch")
            self.epoch, self.position = int(state["epoch"]), int(state["batch"])
        self.skipped = 0
        self._plan = _Plan()
        self._loader: DataLoader | None = None
        self.image_dtype = torch.float16 if device.type == "cuda" else torch.float32
        self._normalize = augment.Normalizer(self.image_dtype)
        if cfg.data.num_threads > 0:
            forkserver.start()  # imports torch while the caller builds the model

    def __len__(self) -> int:
        return self.batches

    def _batches(self, epoch: int) -> list[list[Item]]:
        """This rank's batches of `epoch`: lists of (sample number, augmentation numbers)."""
        order, numbers = epoch_plan(len(self.dataset), self.cfg.data.seed, epoch, self.train,
                                    self.cfg.data.augment)
        out = []
        for b in range(self.batches):
            rows = batch_rows(len(order), self.rank, self.world_size, self.batch_size, b)
            out.append([(int(order[i]), tuple(float(x) for x in numbers[i]))
                        for i in range(rows.start, rows.stop)])
        return out

    def __iter__(self) -> Iterator[Batch]:
        if self.position >= self.batches:  # a state saved at the very end of an epoch
            self.epoch, self.position = self.epoch + 1, 0
        self._plan.batches = self._batches(self.epoch)[self.position:]
        if self._loader is None:  # one pool of workers for the loader's life
            workers = self.cfg.data.num_threads
            pool = dict(persistent_workers=True, prefetch_factor=4,
                        multiprocessing_context=forkserver.context()) if workers else {}
            self._loader = DataLoader(self.dataset, batch_sampler=self._plan, collate_fn=collate,
                                      num_workers=workers, pin_memory=self.device.type == "cuda",
                                      # its worker seed drawn from here, not from the
                                      # training RNG (dropout draws stay the same with a
                                      # feature cache, which starts no workers)
                                      generator=torch.Generator().manual_seed(self.cfg.data.seed),
                                      **pool)
        for raw in self._loader:
            self.position += 1
            self.skipped += len(raw["skipped"])
            yield self._finish(raw)
        self.epoch, self.position = self.epoch + 1, 0

    def _finish(self, raw: dict[str, Any]) -> Batch:
        size = self.cfg.data.image_size
        dev = self.device
        if "image" not in raw:  # an empty batch (evaluation tail) or every sample skipped
            raw["image"] = torch.zeros(0, 3, size, size, dtype=torch.uint8)
            raw["aug"] = torch.zeros(0, augment.NUM_PARAMS)
        image = self._normalize(raw["image"].to(dev, non_blocking=True))
        # Pinned on CUDA (pin_memory): copies that do not wait for the GPU's queue.
        held = {name: raw[name].to(dev, non_blocking=True)
                for name in self.label_layout.members if name in raw}
        batch = finish(image, held, raw["aug"].to(dev, non_blocking=True), raw["key"],
                       self.label_layout)
        batch["skipped"] = raw["skipped"]
        return batch

    def state_dict(self) -> dict:
        """Position after the batches yielded so far: (epoch, batches done in it)."""
        return {"backend": "torch", "epoch": self.epoch, "batch": self.position}
