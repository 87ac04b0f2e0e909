"""What both loaders yield: a dict per batch (all tensors on the loader's device).

    image    (B, 3, S, S) ImageNet-normalised; float16 on GPU, float32 on CPU
    features (B, D) float32 cached frozen-encoder features, instead of `image`
             (meshrec.features: a feature cache's batches)
    params   (B, 82|85) float32 SMPL parameters (meshrec.body.params), following the image:
             rotated with it and mirrored where `flipped`
    joints   (B, 24, 4) float32 camera-frame joints + confidence, same treatment (when packed)
    flipped  (B,) bool
    aug      (B, 8) float32 augmentation numbers (meshrec.data.augment.Aug; identity at eval)
    key      list of B sample keys

Tensors may be reused by the loader for a later batch: clone what you keep.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from meshrec.data.augment import Aug
from meshrec.data.labels import Pelvis, follow_image

Batch = dict[str, Any]


def finish(image: torch.Tensor, params: torch.Tensor, joints: Optional[torch.Tensor],
           aug: torch.Tensor, keys: list[str], pelvis: Optional[Pelvis] = None) -> Batch:
    """Apply the batch's rotations and flips to its labels and assemble the dict."""
    params = params.to(torch.float32)
    joints = None if joints is None else joints.to(torch.float32)
    aug = aug.to(device=params.device, dtype=torch.float32)
    flipped = aug[:, Aug.FLIP] > 0.5
    params, joints = follow_image(params, joints, aug[:, Aug.ANGLE], flipped, pelvis)
    batch: Batch = {"image": image, "params": params, "flipped": flipped, "aug": aug, "key": keys}
    if joints is not None:
        batch["joints"] = joints
    return batch


def model_input(batch: Batch) -> torch.Tensor:
    """What the model takes: cached features when the batch has them, else the image."""
    return batch["features"] if "features" in batch else batch["image"]
