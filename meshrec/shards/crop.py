"""Person crops: box geometry, the matching camera intrinsics, and the image resampling.

Coordinates are OpenCV's: pixel (i, j) has its centre at x=i, y=j and covers i±0.5, j±0.5.
The crop is a square of side L = 200 · scale · context centred on `center`; its box in
full-frame pixels is (x0, y0, L, L) with x0 = cx − L/2, y0 = cy − L/2 (pixel *edges*). It is
resampled to size×size, s = size / L pixels per full-frame pixel, so a full-frame point u maps to

    u' = s · (u − x0) − 0.5        v' = s · (v − y0) − 0.5

(the box centre lands on the crop centre ((size−1)/2, (size−1)/2)). The crop's intrinsics
follow from the full-frame K as K' = A · K with

    A = [[s, 0, −s·x0 − 0.5],
         [0, s, −s·y0 − 0.5],
         [0, 0, 1          ]]

— `crop_intrinsics`. Where the box overhangs the frame the crop is padded with PAD_RGB (black,
as SPIN's crop pads); a box entirely outside the frame is rejected.

Speed: a JPEG is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, PIL's
`Image.draft`) when the box is at least that many times larger than the output, which is
deterministic and cuts most of the decode cost of full camera frames.
"""

from __future__ import annotations

import io
import math
from typing import NamedTuple

import numpy as np
from PIL import Image

PAD_RGB = (0, 0, 0)
BOX_BASE_PX = 200.0  # SPIN's convention: box side = 200 · scale
MAX_SIDE_FACTOR = 20.0  # a box wider than 20 frames is a broken scale, not a person


class Box(NamedTuple):
    x0: float
    y0: float
    side: float

    def as_list(self) -> list[float]:
        return [self.x0, self.y0, self.side, self.side]


class CropError(Exception):
    """This sample's image cannot give a crop (the message is the reject reason)."""


def crop_box(center: tuple[float, float], scale: float, context: float) -> Box:
    side = BOX_BASE_PX * scale * context
    return Box(center[0] - side / 2, center[1] - side / 2, side)


def crop_intrinsics(K: np.ndarray, box: Box | list[float], size: int) -> np.ndarray:
    """Full-frame intrinsics → the intrinsics of the size×size crop of `box` (see module doc)."""
    x0, y0, side = float(box[0]), float(box[1]), float(box[2])
    s = size / side
    A = np.array([[s, 0.0, -s * x0 - 0.5], [0.0, s, -s * y0 - 0.5], [0.0, 0.0, 1.0]])
    return A @ np.asarray(K, dtype=np.float64)


def to_crop(points: np.ndarray, box: Box | list[float], size: int) -> np.ndarray:
    """Full-frame pixel coordinates (…, 2) → crop pixel coordinates."""
    x0, y0, side = float(box[0]), float(box[1]), float(box[2])
    s = size / side
    return (np.asarray(points, dtype=np.float64) - np.array([x0, y0])) * s - 0.5


def draft_factor(side: float, size: int) -> int:
    """Largest JPEG DCT scale (8, 4, 2, 1) that still leaves ≥ `size` pixels across the box."""
    for k in (8, 4, 2):
        if side / k >= size:
            return k
    return 1


def crop_image(path: str, box: Box, size: int) -> Image.Image:
    """Read `path` and return the size×size RGB crop of `box`. Raises CropError, OSError."""
    with Image.open(path) as im:
        width, height = im.size
        # The box in PIL's continuous coordinates, where pixel i covers [i, i+1]: OpenCV + 0.5.
        ex0, ey0, side = box.x0 + 0.5, box.y0 + 0.5, box.side
        if not (side > 0 and side <= MAX_SIDE_FACTOR * max(width, height)):
            raise CropError(f"crop side {side:.1f} px is implausible for a {width}×{height} image")
        if ex0 + side <= 0 or ey0 + side <= 0 or ex0 >= width or ey0 >= height:
            raise CropError(f"crop box {[round(v, 1) for v in box.as_list()]} lies entirely "
                            f"outside the {width}×{height} image")
        k = draft_factor(side, size)
        if k > 1 and min(width, height) // k >= 1:
            drafted = im.draft("RGB", (width // k, height // k))
            k = round(width / drafted[1][2]) if drafted is not None else 1
        else:
            k = 1
        im.load()
        rgb = im if im.mode == "RGB" else im.convert("RGB")
    x0, y0, x1, y1 = ex0 / k, ey0 / k, (ex0 + side) / k, (ey0 + side) / k
    w, h = rgb.size
    ix0, iy0, ix1, iy1 = math.floor(x0), math.floor(y0), math.ceil(x1), math.ceil(y1)
    if ix0 < 0 or iy0 < 0 or ix1 > w or iy1 > h:
        # Overhang: paste the visible part on a padded canvas covering the whole box.
        canvas = Image.new("RGB", (ix1 - ix0, iy1 - iy0), PAD_RGB)
        vx0, vy0, vx1, vy1 = max(ix0, 0), max(iy0, 0), min(ix1, w), min(iy1, h)
        canvas.paste(rgb.crop((vx0, vy0, vx1, vy1)), (vx0 - ix0, vy0 - iy0))
        rgb, x0, y0, x1, y1 = canvas, x0 - ix0, y0 - iy0, x1 - ix0, y1 - iy0
    # Antialiased bilinear (triangle) filter: after draft decoding the remaining downscale is
    # under 2× (unless the box is over 16× the output); about half the cost of bicubic here.
    return rgb.resize((size, size), Image.Resampling.BILINEAR, box=(x0, y0, x1, y1))


def encode_jpeg(image: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
