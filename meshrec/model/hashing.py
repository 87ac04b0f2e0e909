"""Which encoder weights a run starts from, as a sha256: a frozen encoder is not stored in
checkpoints (meshrec.train.checkpoint) and names a feature cache (meshrec.features.cache), so both
prove by this hash that the encoder a config builds is the one they were made with."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import torch

from meshrec.config import Config


def state_sha256(module: torch.nn.Module) -> str:
    """sha256 over a module's state (names, dtypes, shapes and bytes, in order)."""
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _weights_stamp(weights: str) -> tuple:
    """What identifies a weights setting's content cheaply (a file by path, size and mtime)."""
    if weights in ("none", "imagenet"):
        return (weights,)
    path = Path(weights).expanduser()
    try:
        st = path.stat()
    except OSError:
        return (weights,)
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _encoder_sha256(name: str, weights: str, seed: int, stamp: tuple) -> str:
    from meshrec.model.encoder import build_encoder

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # as build_run seeds build_model, whose first module is this
        encoder = build_encoder(name, weights, frozen=True)
    return state_sha256(encoder)


def encoder_sha256(cfg: Config) -> str:
    """sha256 of the encoder weights a run of `cfg` starts from."""
    m = cfg.model
    seed = cfg.train.seed if m.weights == "none" else 0  # loaded weights replace every tensor
    return _encoder_sha256(m.encoder, m.weights, seed, _weights_stamp(m.weights))
