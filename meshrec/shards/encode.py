"""One `Sample` → the members of its tar entry, or the reason it is rejected.

Members (WebDataset extensions; the key carries no dots). Which label members a directory has
is decided for the whole source set (`Members`), so every sample has the same ones (DALI reads
one extension list):
  jpg          the size×size RGB person crop, JPEG (quality from the pack config)
  smpl.npy     float32 parameter vector in meshrec's layout (82, or 85 with translation);
               zeros for a sample without SMPL label        } when any sample of the source
  has_smpl.npy float32 (1,): 1.0 labelled, 0.0 not          } set has SMPL parameters
  j3d.npy      float32 (17, 4) Human3.6M joints (meshrec.body.h36m order), pelvis-centred
               metres + confidence, when the source set has `S`
  kp2d.npy     float32 (17, 3) Human3.6M keypoints in the crop's pixels (OpenCV convention,
               crop.to_crop) + confidence, when it has `part`; keypoints outside the crop keep
               their coordinates
  json         metadata: key, subject, action, camera, frame, image (source path), source
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
from meshrec.shards.sample import Sample, SampleTable, check_row


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
class Members:
    """The label members of a source set (decided once for every sample)."""

    smpl: bool
    j3d: bool
    kp2d: bool

    @classmethod
    def of(cls, table: SampleTable) -> "Members":
        return cls(bool(table.has_smpl.any()), table.j3d is not None, table.kp2d is not None)

    def names(self) -> list[str]:
        """Every member name, sorted (the manifest's `members`)."""
        labels = (["smpl.npy", "has_smpl.npy"] if self.smpl else []) + \
            (["j3d.npy"] if self.j3d else []) + (["kp2d.npy"] if self.kp2d else [])
        return sorted(["jpg", "json", *labels])


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


def label_counts(sample: Sample) -> dict[str, int]:
    """Which labels a sample carries (the manifest counts them): 1 or 0 each."""
    def seen(joints: Optional[np.ndarray]) -> int:
        return int(joints is not None and bool((np.asarray(joints)[:, -1] > 0).any()))

    return {"smpl": int(sample.has_smpl), "j3d": seen(sample.j3d), "kp2d": seen(sample.kp2d)}


def encode(sample: Sample, images_root: str, cfg: EncodeConfig,
           members: Members) -> Union[dict[str, bytes], Reject]:
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
    out = {
        "jpg": crop.encode_jpeg(image, cfg.quality),
        "json": json.dumps(metadata(sample, box, cfg.size), sort_keys=True,
                           separators=(",", ":")).encode("utf-8"),
    }
    if members.smpl:
        out["smpl.npy"] = npy_bytes(smpl_vector(sample))
        out["has_smpl.npy"] = npy_bytes(np.array([float(sample.has_smpl)], dtype=np.float32))
    if members.j3d:
        out["j3d.npy"] = npy_bytes(np.asarray(sample.j3d, dtype=np.float32))
    if members.kp2d:
        kp = np.array(sample.kp2d, dtype=np.float64)
        kp[:, :2] = crop.to_crop(kp[:, :2], box, cfg.size)
        out["kp2d.npy"] = npy_bytes(kp.astype(np.float32))
    return out
