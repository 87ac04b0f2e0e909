"""Pictures of predictions: the input crop beside the true and the predicted mesh drawn over it.

The meshes are drawn root-centred with a fixed camera looking down +z (the parameters' global
orientation is in the camera frame, so the body faces the way it does in the image), at the
distance where a person of PERSON_M metres fills the crop as the packer framed it. It shows pose
and shape, not the exact image alignment (that needs the crop's intrinsics and translation).
"""

from __future__ import annotations

import numpy as np
import torch

from meshrec.data.augment import IMAGENET_MEAN, IMAGENET_STD
from meshrec.render import Camera, overlay, render_mesh

PERSON_M = 1.8
CONTEXT = 1.2        # the packer's box = person box × CONTEXT
TRUE_RGB = (120, 200, 120)
PRED_RGB = (230, 150, 90)


def crop_pixels(image: torch.Tensor) -> np.ndarray:
    """One normalised (3,S,S) network input → (S,S,3) uint8."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    pix = (image.detach().float().cpu() * std + mean).clamp(0, 1) * 255
    return pix.round().to(torch.uint8).permute(1, 2, 0).numpy()


def crop_camera(size: int, focal_per_px: float = 5.0) -> tuple[Camera, float]:
    """(camera, depth) showing a root-centred person at the scale the packed crop has."""
    f = focal_per_px * size
    depth = f * PERSON_M * CONTEXT / size
    return Camera(f, f, size / 2, size / 2, size, size), depth


def draw(vertices: np.ndarray, faces: np.ndarray, background: np.ndarray, rgb) -> np.ndarray:
    """Root-centred vertices (V,3) over `background` (S,S,3)."""
    size = background.shape[0]
    camera, depth = crop_camera(size)
    v = np.asarray(vertices, dtype=np.float64) + np.array([0.0, 0.0, depth])
    colors = np.tile(np.asarray(rgb, dtype=np.uint8), (len(v), 1))
    result = render_mesh(v, faces, camera, vertex_colors=colors, supersample=2)
    return overlay(background, result, alpha=0.6)


def panel(image: torch.Tensor, true_v: np.ndarray | None, pred_v: np.ndarray,
          faces: np.ndarray, root_true: np.ndarray | None = None,
          root_pred: np.ndarray | None = None) -> np.ndarray:
    """[crop | true mesh on crop | predicted mesh on crop] (or [crop | prediction] without truth)."""
    crop = crop_pixels(image)
    tiles = [crop]
    if true_v is not None:
        rt = true_v.mean(0) if root_true is None else root_true
        tiles.append(draw(true_v - rt, faces, crop, TRUE_RGB))
    rp = pred_v.mean(0) if root_pred is None else root_pred
    tiles.append(draw(pred_v - rp, faces, crop, PRED_RGB))
    return np.concatenate(tiles, axis=1)
