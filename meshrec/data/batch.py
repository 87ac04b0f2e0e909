"""What every loader yields: a dict per batch (all tensors on the loader's device).

    image    (B, 3, S, S) ImageNet-normalised; float16 on GPU, float32 on CPU (S = data.image_size)
    features (B, D) float32 cached frozen-encoder features, instead of `image`
             (meshrec.features: a feature cache's batches)
    params   (B, 82|85) float32 SMPL parameters (meshrec.body.params), following the image:
             rotated with it and mirrored where `flipped`; zeros where not `has_smpl`
             ((B, 82) zeros when the shards hold no SMPL at all)
    has_smpl (B,) bool: `params` is a label
    j3d      (B, 17, 4) float32 Human3.6M joints (meshrec.body.h36m order), pelvis-centred metres
             + confidence, rotated with the image and mirrored (rows swapped by h36m.FLIP_PERM,
             x negated) where `flipped`
    kp2d     (B, 17, 3) float32 the 17 keypoints in the network input's pixels (S², OpenCV
             convention: pixel i's centre at i) + confidence, moved with the pixels (warp, then
             flip: x → S − 1 − x, rows swapped)
    flipped  (B,) bool
    aug      (B, 8) float32 augmentation numbers (meshrec.data.augment.Aug; identity at eval)
    key      list of B sample keys
j3d and kp2d rows without a label (confidence 0, or shards without them) are all zeros.
The torch loader adds `skipped` (keys of undecodable JPEGs left out of the batch).

Tensors may be reused by the loader for a later batch: clone what you keep.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from meshrec.body import h36m
from meshrec.body import params as layout
from meshrec.data.augment import Aug
from meshrec.data.labels import Pelvis, follow_image

Batch = dict[str, Any]

# Batch label → tar member (meshrec.shards.encode); a member the shards lack gives its default.
MEMBERS = {"params": "smpl.npy", "has_smpl": "has_smpl.npy", "j3d": "j3d.npy", "kp2d": "kp2d.npy"}


@dataclass(frozen=True)
class LabelLayout:
    """What a shard directory holds and the geometry its labels are moved through."""

    members: dict[str, str]   # batch label → tar member, for the labels these shards hold
    param_size: int           # manifest layout size (82 or 85)
    src_size: Optional[int]   # side of the packed crops (manifest config.size)
    image_size: int           # side of the network input
    pelvis: Optional[Pelvis] = None

    @classmethod
    def of(cls, manifest: dict, image_size: int, pelvis: Optional[Pelvis] = None) -> "LabelLayout":
        held = set(manifest.get("members", []))
        size = manifest.get("config", {}).get("size")
        return cls({name: ext for name, ext in MEMBERS.items() if ext in held},
                   int(manifest.get("layout", {}).get("size", layout.SIZE)),
                   size if isinstance(size, int) else None, image_size, pelvis)

    def defaults(self, n: int, device: Any = None) -> dict[str, torch.Tensor]:
        """The labels of n samples whose shards lack them (old shards: every smpl.npy a label),
        made on `device` (a copy from pageable memory would wait for the GPU)."""
        return {"params": torch.zeros(n, self.param_size, device=device),
                "has_smpl": torch.full((n,), "params" in self.members, dtype=torch.bool,
                                       device=device),
                "j3d": torch.zeros(n, h36m.NUM_JOINTS, 4, device=device),
                "kp2d": torch.zeros(n, h36m.NUM_JOINTS, 3, device=device)}


def finish(image: torch.Tensor, raw: dict[str, torch.Tensor], aug: torch.Tensor, keys: list[str],
           labels: LabelLayout) -> Batch:
    """Fill the labels the shards lack, move them with the batch's warps and flips, assemble."""
    device = image.device
    filled = {**labels.defaults(len(keys), device), **raw}
    params = filled["params"].to(device, torch.float32)
    has_smpl = filled["has_smpl"].to(device).reshape(-1) > 0.5
    j3d = filled["j3d"].to(device, torch.float32)
    kp2d = filled["kp2d"].to(device, torch.float32)
    aug = aug.to(device=device, dtype=torch.float32)
    params, j3d, kp2d = follow_image(params, has_smpl, j3d, kp2d, aug, labels.src_size,
                                     labels.image_size, labels.pelvis)
    return {"image": image, "params": params, "has_smpl": has_smpl, "j3d": j3d, "kp2d": kp2d,
            "flipped": aug[:, Aug.FLIP] > 0.5, "aug": aug, "key": keys}


def model_input(batch: Batch) -> torch.Tensor:
    """What the model takes: cached features when the batch has them, else the image."""
    return batch["features"] if "features" in batch else batch["image"]
