"""Image encoders: torchvision ResNets with the classifier removed (`fc` = Identity).

Weights come from torchvision's ImageNet enum (read from TORCH_HOME's hub cache only: compute
nodes have no internet, `prefetch_weights` fills the cache on a machine that has), from a local
state-dict file, or nowhere ('none': random init, for tests and the demo).

The ImageNet weights are the IMAGENET1K_V1 set, what `pretrained=True` gave the reference study.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, NamedTuple

import torch
import torchvision.models as tvm
from torch import Tensor, nn

from meshrec.errors import MeshrecError


class _Arch(NamedTuple):
    build: Callable[..., tvm.ResNet]
    weights: type[tvm.WeightsEnum]
    dim: int  # feature width after global pooling


ARCHS: dict[str, _Arch] = {
    "resnet18": _Arch(tvm.resnet18, tvm.ResNet18_Weights, 512),
    "resnet34": _Arch(tvm.resnet34, tvm.ResNet34_Weights, 512),
    "resnet50": _Arch(tvm.resnet50, tvm.ResNet50_Weights, 2048),
    "resnet101": _Arch(tvm.resnet101, tvm.ResNet101_Weights, 2048),
    "resnet152": _Arch(tvm.resnet152, tvm.ResNet152_Weights, 2048),
}


def _arch(name: str) -> _Arch:
    if name not in ARCHS:
        raise MeshrecError(f"unknown encoder '{name}' (expected one of {', '.join(ARCHS)})")
    return ARCHS[name]


def imagenet_weights(name: str) -> tvm.WeightsEnum:
    return _arch(name).weights.IMAGENET1K_V1


def cached_weights_path(name: str) -> Path:
    """Where torch.hub keeps (or would keep) the ImageNet weights of encoder `name`."""
    url = imagenet_weights(name).url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def prefetch_weights(names: list[str] | tuple[str, ...] | None = None) -> list[Path]:
    """Download the ImageNet weights of `names` (default: every encoder) into the hub cache.

    Run where there is internet (a login node); compute nodes sharing TORCH_HOME then load
    them offline. Returns the cached files.
    """
    paths = []
    for name in names or ARCHS:
        weights = imagenet_weights(name)
        try:
            weights.get_state_dict(progress=True, check_hash=True)
        except OSError as exc:  # URLError is an OSError
            raise MeshrecError(f"cannot download {name} ImageNet weights from {weights.url}: "
                               f"{exc}") from None
        paths.append(cached_weights_path(name))
    return paths


def _read_state_dict(path: Path, what: str) -> dict[str, Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise MeshrecError(f"{what}: no such file: {path}") from None
    except Exception as exc:  # unpickling errors have no common base class
        raise MeshrecError(f"{what}: cannot read {path} as a PyTorch state dict: "
                           f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise MeshrecError(f"{what}: {path} is not a state dict of tensors")
    # DDP-saved files carry a 'module.' prefix; the classifier is not part of the encoder.
    state = {k.removeprefix("module."): v for k, v in state.items()}
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def _load_weights(net: tvm.ResNet, name: str, weights: str) -> None:
    if weights == "none":
        return
    if weights == "imagenet":
        path = cached_weights_path(name)
        if not path.is_file():
            raise MeshrecError(f"model.weights: ImageNet weights of {name} are not cached "
                               f"({path}); run `meshrec prefetch` on a machine with internet "
                               f"(same TORCH_HOME), or set model.weights to a file or 'none'")
        state = _read_state_dict(path, "model.weights")
    else:
        state = _read_state_dict(Path(weights).expanduser(), "model.weights")
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # tensors of the wrong shape
        raise MeshrecError(f"model.weights: {weights} does not fit {name}: "
                           f"{str(exc).splitlines()[-1].strip()}") from None
    if missing or unexpected:
        bad = (missing or unexpected)[0]
        raise MeshrecError(f"model.weights: {weights} does not fit {name}: "
                           f"{len(missing)} missing keys, {len(unexpected)} unexpected (e.g. {bad})")


class Encoder(nn.Module):
    """image [B,3,S,S] (normalised) → features [B, dim]. Frozen: eval mode and no grad, always."""

    def __init__(self, name: str, weights: str = "none", frozen: bool = False) -> None:
        super().__init__()
        arch = _arch(name)
        self.name, self.dim, self.frozen = name, arch.dim, frozen
        # Residual branches start at zero (their last BatchNorm scale 0): a random-init deep
        # ResNet stays bounded (ResNet-152's features reach ~1e8 otherwise: float16 overflows).
        # Loaded weights replace every tensor, so this changes random-init encoders only.
        self.net = arch.build(weights=None, zero_init_residual=True)
        self.net.fc = nn.Identity()
        _load_weights(self.net, name, weights)
        if frozen:
            self.net.requires_grad_(False)
            self.net.eval()

    def train(self, mode: bool = True) -> "Encoder":
        # A frozen encoder keeps its BatchNorm running stats and drops nothing in training.
        super().train(mode)
        if self.frozen:
            self.net.eval()
        return self

    def forward(self, image: Tensor) -> Tensor:
        if self.frozen:
            with torch.no_grad():
                return self.net(image)
        return self.net(image)


def build_encoder(name: str, weights: str, frozen: bool) -> Encoder:
    return Encoder(name, weights, frozen)
