"""Augmentation as explicit numbers, shared by both loaders.

One sample's augmentation is a vector of `NUM_PARAMS` floats (`Aug` names the slots):

    scale     crop side multiplier (1 = the base crop)
    tx, ty    shift of the crop centre, as a fraction of the crop side (x right, y down)
    angle     in-plane rotation of the image content, degrees, counter-clockwise on screen
    flip      1.0 = mirrored left/right after the rotation, else 0.0
    brightness, contrast, saturation   factors, 1 = unchanged

The base crop is the central `CROP_FRACTION` of the packed image (224 of 256 px: the packer's
context margin leaves room for the random scale and shift), resized to `image_size`.

The image transform is one affine warp (crop, scale, shift, rotation; bilinear, pixel centres at
+0.5, zero outside the image), then the colour affine, then the flip, then ImageNet normalisation.
The DALI pipeline draws the numbers with its own random operators and outputs them; the torch
fallback draws them with `draw` from a seed. Either way `affine_matrix` and `color_matrix` turn
them into the same pixels (tests compare the two backends on the same numbers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

    from meshrec.config import Augment

CROP_FRACTION = 224.0 / 256.0
CHUNK_BYTES = 1 << 20  # Normalizer's float32 work per step (fits a core's L2)
NUM_PARAMS = 8
IDENTITY = np.array([1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0], dtype=np.float32)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LUMA = (0.299, 0.587, 0.114)  # grey level of the saturation change (as DALI's color_twist)
CONTRAST_CENTER = 128.0       # grey that contrast scales around (as DALI's color_twist)


class Aug:
    SCALE, TX, TY, ANGLE, FLIP, BRIGHTNESS, CONTRAST, SATURATION = range(NUM_PARAMS)


def ranges(aug: "Augment") -> dict[int, tuple[float, float]]:
    """Uniform ranges of every continuous slot under config `aug` (flip is a coin)."""
    return {
        Aug.SCALE: (1.0 - aug.scale, 1.0 + aug.scale),
        Aug.TX: (-aug.translate, aug.translate),
        Aug.TY: (-aug.translate, aug.translate),
        Aug.ANGLE: (-aug.rotate_deg, aug.rotate_deg),
        Aug.BRIGHTNESS: (1.0 - aug.color_jitter, 1.0 + aug.color_jitter),
        Aug.CONTRAST: (1.0 - aug.color_jitter, 1.0 + aug.color_jitter),
        Aug.SATURATION: (1.0 - aug.color_jitter, 1.0 + aug.color_jitter),
    }


def draw(rng: np.random.Generator, n: int, aug: "Augment") -> np.ndarray:
    """(n, NUM_PARAMS) float32 augmentation numbers drawn from `rng` under config `aug`."""
    out = np.tile(IDENTITY, (n, 1))
    if not aug.enabled:
        return out
    for slot, (lo, hi) in ranges(aug).items():
        out[:, slot] = rng.uniform(lo, hi, n)
    out[:, Aug.FLIP] = rng.random(n) < aug.flip_prob
    return out


def affine_matrix(params: np.ndarray, src_w: float, src_h: float, out_size: int) -> np.ndarray:
    """2×3 float64 matrix mapping output pixel coordinates to source ones (pixel centres at +0.5).

    Output point p maps to C + side/out · R(angle)⁻¹ (p − out/2), with C the shifted crop centre:
    rotating where we sample by −angle shows the content rotated by +angle.
    """
    import torch

    p = torch.from_numpy(np.asarray(params, dtype=np.float64).reshape(1, NUM_PARAMS))
    return affine_matrices(p, src_w, src_h, out_size)[0].numpy()


def affine_matrices(params: "torch.Tensor", src_w: float, src_h: float,
                    out_size: int) -> "torch.Tensor":
    """`affine_matrix` for a batch: (B, 8) numbers → (B, 2, 3) float64 (the labels use it too)."""
    import torch

    p = params.to(torch.float64)
    side = CROP_FRACTION * min(src_w, src_h) * p[:, Aug.SCALE]
    k = side / out_size
    cx = src_w / 2.0 + p[:, Aug.TX] * side
    cy = src_h / 2.0 + p[:, Aug.TY] * side
    a = torch.deg2rad(p[:, Aug.ANGLE])
    c, s = torch.cos(a), torch.sin(a)
    # Screen counter-clockwise rotation with y down is [[c, s], [-s, c]]; its inverse:
    lin = k[:, None, None] * torch.stack([c, -s, s, c], dim=-1).view(-1, 2, 2)
    half = out_size / 2.0
    t = torch.stack([cx, cy], dim=-1) - lin.sum(dim=-1) * half
    return torch.cat([lin, t[:, :, None]], dim=-1)


def exact_crop(src_size: int | None, out_size: int) -> int | None:
    """Offset of the unaugmented crop when it is a plain pixel copy (base crop side = out_size
    at an integral offset, e.g. 224 of 256), else None: then no resampling is needed."""
    if not src_size or (src_size - out_size) % 2 or CROP_FRACTION * src_size != out_size:
        return None
    return (src_size - out_size) // 2


def color_matrix(params: np.ndarray) -> tuple[np.ndarray, float]:
    """(3×3 matrix, offset) of the colour change on RGB in 0..255: out = M @ rgb + offset.

    brightness · (contrast · (saturation mix) + (1 − contrast) · 128), the saturation mix being
    s·rgb + (1 − s)·luma(rgb) — what DALI's `color_twist` computes for the same three factors.
    """
    p = np.asarray(params, dtype=np.float64)
    b, c, s = p[Aug.BRIGHTNESS], p[Aug.CONTRAST], p[Aug.SATURATION]
    sat = s * np.eye(3) + (1.0 - s) * np.tile(np.asarray(LUMA), (3, 1))
    return b * c * sat, b * (1.0 - c) * CONTRAST_CENTER


def apply(image: "torch.Tensor", params: np.ndarray, out_size: int) -> "torch.Tensor":
    """CHW uint8 RGB image → CHW uint8 `out_size`² augmented crop (the torch backend's transform).

    Flip is applied here too; normalisation is left to `Normalizer` (done once per batch).
    """
    import torch
    import torch.nn.functional as F

    h, w = int(image.shape[1]), int(image.shape[2])
    offset = exact_crop(w, out_size) if h == w and np.array_equal(params, IDENTITY) else None
    if offset is not None:  # the warp would copy these pixels exactly
        return image[:, offset:offset + out_size, offset:offset + out_size].contiguous()
    m = affine_matrix(params, w, h, out_size)
    centres = (np.arange(out_size, dtype=np.float64) + 0.5)
    px, py = np.meshgrid(centres, centres)
    qx = m[0, 0] * px + m[0, 1] * py + m[0, 2]
    qy = m[1, 0] * px + m[1, 1] * py + m[1, 2]
    # grid_sample(align_corners=False) puts pixel centres at -1 + (2i + 1) / size.
    grid = np.stack([qx / w * 2.0 - 1.0, qy / h * 2.0 - 1.0], axis=-1)
    src = image.unsqueeze(0).to(torch.float32)
    out = F.grid_sample(src, torch.from_numpy(grid).to(torch.float32).unsqueeze(0),
                        mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    cm, offset = color_matrix(params)
    if not (np.allclose(cm, np.eye(3)) and offset == 0.0):
        out = torch.einsum("ij,jhw->ihw", torch.from_numpy(cm).to(torch.float32), out) + offset
    out = out.round_().clamp_(0, 255).to(torch.uint8)
    if params[Aug.FLIP] > 0.5:
        out = out.flip(-1)
    return out


class Normalizer:
    """uint8 RGB batches → ImageNet-normalised (B, 3, H, W) images in `dtype`.

    Input NCHW (the torch fallback) or NHWC (`hwc=True`: DALI on the CPU). The output keeps the
    input's memory order (NHWC gives an NCHW tensor in channels-last memory), so the work is one
    cast and one fused multiply-add over contiguous memory: ~60 µs per 224² image on one core
    here, against ~190 µs for DALI's CPU `crop_mirror_normalize` (a scalar loop with a
    permute), which had cost as much as the JPEG decode (bench/RESULTS.md). On the CPU the output memory is reused,
    `slots` buffers in turn (a fresh 38 MB tensor per batch costs more in page faults than the
    arithmetic); see meshrec.data.batch: clone what you keep.
    """

    def __init__(self, dtype: "torch.dtype", slots: int = 2) -> None:
        self.dtype, self.slots = dtype, slots
        self._buffers: list = [None] * slots
        self._turn = 0
        self._consts: dict = {}

    def __call__(self, images: "torch.Tensor", hwc: bool = False) -> "torch.Tensor":
        import torch

        if images.device.type != "cpu":
            return self._normalize(images, hwc)
        # One thread: the loader's own threads or workers hold the other cores, and a second
        # OpenMP team spinning against them cost more than it saved (measured).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self._normalize(images, hwc)
        finally:
            torch.set_num_threads(threads)

    def _normalize(self, images: "torch.Tensor", hwc: bool) -> "torch.Tensor":
        import torch

        b = images.shape[0]
        h, w = (images.shape[1], images.shape[2]) if hwc else (images.shape[2], images.shape[3])
        out = self._buffer(images.device, tuple(images.shape))[:b]
        scale, shift = self._affine(images.device, w, hwc)
        # NHWC rows repeat (r, g, b) along W·3 values: a row-long pattern broadcasts contiguously.
        rows = out.view(b, h, w * 3) if hwc else out
        # About 1 MB at a time, so the multiply-add reads the cast's output from the core's cache.
        step = max(1, CHUNK_BYTES // (h * w * 3 * 4))
        for i in range(0, b, step):
            part = rows[i:i + step]
            part.copy_(images[i:i + step].view(part.shape))
            torch.addcmul(shift, part, scale, out=part)
        out = out.permute(0, 3, 1, 2) if hwc else out
        return out if self.dtype == torch.float32 else out.to(self.dtype)

    def _buffer(self, device: "torch.device", shape: tuple) -> "torch.Tensor":
        import torch

        if device.type != "cpu":  # the CUDA caching allocator already reuses memory
            return torch.empty(shape, dtype=torch.float32, device=device)
        buf = self._buffers[self._turn]
        if buf is None or buf.shape[1:] != shape[1:] or buf.shape[0] < shape[0]:
            buf = self._buffers[self._turn] = torch.empty(shape, dtype=torch.float32)
        self._turn = (self._turn + 1) % self.slots
        return buf

    def _affine(self, device: "torch.device", w: int, hwc: bool) -> tuple:
        import torch

        key = (device, w, hwc)
        if key not in self._consts:
            std = torch.tensor(IMAGENET_STD, dtype=torch.float64) * 255.0
            mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64) * 255.0
            scale, shift = (1.0 / std), (-mean / std)
            if hwc:
                scale, shift = scale.repeat(w), shift.repeat(w)
            else:
                scale, shift = scale.view(3, 1, 1), shift.view(3, 1, 1)
            self._consts[key] = (scale.to(device, torch.float32), shift.to(device, torch.float32))
        return self._consts[key]
