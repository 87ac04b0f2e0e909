"""How an epoch of N samples is split over ranks and batches: the one rule every loader follows.

Order: training epoch `e` visits the samples in a permutation drawn from `data.seed` and `e`
only (`epoch_order`), so every rank agrees on it and a resumed run recomputes it; val/test keep
the samples' own order. Rank `r` of `W` takes the contiguous share [⌊rN/W⌋, ⌊(r+1)N/W⌋) of that
order (DALI's split, `shares`). Training yields ⌊smallest share / batch⌋ full batches on every
rank (the rest is dropped); val/test yield ⌈largest share / batch⌉ batches on every rank (the
last short or empty), so all ranks together see every sample exactly once.

The torch loader (images) and the feature loader (a frozen encoder's cached outputs) both take
their order and batches from here: training from a cache steps through the same batches as
training from the images.
"""

from __future__ import annotations

import math

import numpy as np

from meshrec.errors import MeshrecError


def shares(n: int, world_size: int) -> list[tuple[int, int]]:
    """[begin, end) of each rank's contiguous share of n samples (DALI's split)."""
    return [(r * n // world_size, (r + 1) * n // world_size) for r in range(world_size)]


def _sizes(n: int, world_size: int) -> list[int]:
    return [end - begin for begin, end in shares(n, world_size)]


def rank_batch(global_batch: int, world_size: int, what: str) -> int:
    """Per-rank batch of a global batch; it must split evenly so every rank steps together."""
    if global_batch % world_size:
        raise MeshrecError(f"{what} {global_batch} does not split evenly over {world_size} ranks")
    return global_batch // world_size


def batches_per_epoch(n: int, world_size: int, batch: int, train: bool) -> int:
    """Batches every rank yields per epoch (equal on all ranks)."""
    sizes = _sizes(n, world_size)
    return min(sizes) // batch if train else math.ceil(max(sizes) / batch)


def rank_samples(n: int, rank: int, world_size: int, batch: int, train: bool) -> int:
    """Samples `rank` yields per epoch: full batches of the smallest share when training (the
    rest is dropped), its whole share when evaluating."""
    sizes = _sizes(n, world_size)
    return min(sizes) // batch * batch if train else sizes[rank]


def batch_rows(n: int, rank: int, world_size: int, batch: int, index: int) -> slice:
    """Positions in the epoch's order of batch `index` of `rank` (the last one of an evaluation
    may be short or empty)."""
    begin, end = shares(n, world_size)[rank]
    lo = begin + index * batch
    return slice(lo, max(lo, min(lo + batch, end)))


def epoch_order(n: int, seed: int, epoch: int,
                shuffle: bool) -> tuple[np.ndarray, np.random.Generator]:
    """The order in which epoch `epoch` visits n samples (a permutation from (seed, epoch) when
    shuffling, else 0..n-1), and the generator it came from, for the epoch's further draws."""
    rng = np.random.default_rng([seed, epoch])
    return (rng.permutation(n) if shuffle else np.arange(n)), rng
