"""One `Sample` → the members of its tar entry, or the reason it is rejected.

Members (WebDataset extensions; the key carries no dots):
  jpg        the size×size RGB person crop, JPEG (quality from the pack config)
  smpl.npy   float32 parameter vector in meshrec's layout (82, or 85 with translation)
  joints.npy float32 (24, 4) camera-frame joints + confidence, when the source has them
  json       metadata: key, subject, action, camera, frame, image (source path), source
             {file, row}, center, scale, box [x0, y0, side, side] (full-frame px, see crop.py),
             size, and cam_K (full-frame intrinsics) when the source has them — the crop's
             intrinsics are `crop.crop_intrinsics(cam_K, box, size)`.
All bytes are deterministic: fixed JPEG settings, sorted JSON keys, NumPy's .npy format.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import asdict, dataclass
from typing import Any, Optional, Union

import numpy as np
from PIL import Image

from meshrec.errors import MeshrecError
from meshrec.shards import crop
from meshrec.shards.sample import Sample, check_row


@dataclass(frozen=True)
class EncodeConfig:
    size: int = 256
    context: float = 1.2
    quality: int = 95

    def validate(self) -> None:
        if not 16 <= self.size <= 4096:
            raise MeshrecError(f"--size {self.size} is out of range (16–4096 px)")
        if not (0.5 <= self.context <= 10.0):
            raise MeshrecError(f"--context {self.context} is out of range (0.5–10)")
        if not 1 <= self.quality <= 100:
            raise MeshrecError(f"--quality {self.quality} is out of range (1–100)")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Reject:
    key: str
    subject: str
    image: str
    source: str
    row: int
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def smpl_vector(sample: Sample) -> np.ndarray:
    """The float32 vector stored for a sample (and summed into the manifest's means)."""
    return np.asarray(sample.params, dtype=np.float32)


def metadata(sample: Sample, box: crop.Box, size: int) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "key": sample.key, "subject": sample.subject, "action": sample.action,
        "camera": sample.camera, "frame": sample.frame, "image": sample.image,
        "source": {"file": sample.source, "row": sample.row},
        "center": [float(sample.center[0]), float(sample.center[1])], "scale": float(sample.scale),
        "box": [float(v) for v in box.as_list()], "size": size,
    }
    if sample.cam_K is not None:
        meta["cam_K"] = np.asarray(sample.cam_K, dtype=np.float64).tolist()
    return meta


def encode(sample: Sample, images_root: str, cfg: EncodeConfig) -> Union[dict[str, bytes], Reject]:
    """The tar members of `sample`, or a Reject saying why it cannot be packed."""

    def reject(reason: str) -> Reject:
        return Reject(sample.key, sample.subject, sample.image, sample.source, sample.row, reason)

    reason: Optional[str] = check_row(sample)
    if reason:
        return reject(reason)
    path = os.path.join(images_root, sample.image)
    box = crop.crop_box(sample.center, sample.scale, cfg.context)
    try:
        image = crop.crop_image(path, box, cfg.size)
    except crop.CropError as exc:
        return reject(str(exc))
    except FileNotFoundError:
        return reject("image file is missing")
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        return reject(f"image cannot be decoded ({type(exc).__name__}: {exc})")
    members = {
        "jpg": crop.encode_jpeg(image, cfg.quality),
        "smpl.npy": npy_bytes(smpl_vector(sample)),
        "json": json.dumps(metadata(sample, box, cfg.size), sort_keys=True,
                           separators=(",", ":")).encode("utf-8"),
    }
    if sample.joints is not None:
        members["joints.npy"] = npy_bytes(np.asarray(sample.joints, dtype=np.float32))
    return members
