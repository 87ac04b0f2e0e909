"""Independent, reproducible random streams keyed by what they are for."""

from __future__ import annotations

import zlib

import numpy as np


def stream(seed: int, *keys: int | str) -> np.random.Generator:
    """A Generator that depends only on the run's seed and the keys (e.g. "S1", "Walking", "camera").

    Each piece of the data draws from its own stream, so a frame is the same whichever worker
    renders it, in whatever order, and whichever other subjects are generated in the same run.
    """
    words = [int(seed)]
    for k in keys:
        words.append(zlib.crc32(k.encode()) if isinstance(k, str) else int(k))
    return np.random.default_rng(np.random.SeedSequence(words))
