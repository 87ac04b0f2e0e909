"""Human3.6M frame names → (subject, action, camera, frame) and sample keys safe for DALI.

Accepted image paths (relative to the image root; any leading folders are allowed):
  S1/Directions_1.54138969/frame_000123.jpg    meshrec's generated data
  images/S1_Directions_1.54138969_000001.jpg   SPIN's preprocessed H36M
  S1/images/S1_Directions_1.54138969/S1_Directions_1.54138969_000001.jpg   mmhuman3d
The action keeps its sub-action suffix ("Directions_1"); the camera is H36M's 8-digit id.
WebDataset and DALI split a member name at its first dot, so keys carry no dots:
`S1-Directions_1-54138969-000123`.
"""

from __future__ import annotations

import hashlib

import re
from typing import NamedTuple

from meshrec.errors import MeshrecError

_IMAGE_EXT = r"\.(?:jpe?g|png)$"
_PATTERNS = (
    # S1/Directions_1.54138969/frame_000123.jpg
    re.compile(r"(?:^|/)(?P<subject>S\d+)/(?P<action>[^/.]+)\.(?P<camera>\d{8})/"
               r"(?:frame_)?(?P<frame>\d+)" + _IMAGE_EXT, re.IGNORECASE),
    # S1_Directions_1.54138969_000001.jpg (SPIN, mmhuman3d basenames)
    re.compile(r"(?:^|/)(?P<subject>S\d+)_(?P<action>[^/.]+)\.(?P<camera>\d{8})_"
               r"(?P<frame>\d+)" + _IMAGE_EXT, re.IGNORECASE),
)
_UNSAFE = re.compile(r"[^A-Za-z0-9_]")
MAX_KEY = 80

EXPECTED = ("S1/Directions_1.54138969/frame_000123.jpg or "
            "images/S1_Directions_1.54138969_000001.jpg")


class FrameName(NamedTuple):
    subject: str  # "S1"
    action: str   # "Directions_1" (action and sub-action)
    camera: str   # "54138969"
    frame: int


def parse(path: str) -> FrameName | None:
    """The H36M fields of an image path, or None when it is not named like Human3.6M."""
    text = path.replace("\\", "/")
    for pattern in _PATTERNS:
        m = pattern.search(text)
        if m:
            return FrameName(m["subject"].upper(), m["action"], m["camera"], int(m["frame"]))
    return None


def parse_or_fail(path: str, source: str) -> FrameName:
    name = parse(path)
    if name is None:
        raise MeshrecError(f"{source}: unknown subject naming in image path '{path}' "
                           f"(expected Human3.6M names such as {EXPECTED})")
    return name


def clean(action: str) -> str:
    """An action name safe in a key: anything but letters, digits and _ becomes _ ("Walk Dog")."""
    return _UNSAFE.sub("_", action)


def sample_key(name: FrameName) -> str:
    """`S1-Directions_1-54138969-000123`: no dots, no slashes; sorts by action, camera, frame."""
    action = clean(name.action)
    key = f"{name.subject}-{action}-{name.camera}-{name.frame:06d}"
    if len(key) > MAX_KEY:  # tar (USTAR) member names are at most 100 characters
        raise MeshrecError(f"sample key '{key}' is longer than {MAX_KEY} characters")
    return key


def subject_order(subject: str) -> tuple[int, str]:
    """Natural order: S1, S5, S9, S11."""
    digits = subject[1:]
    return (int(digits) if digits.isdigit() else 1 << 30, subject)


def shard_order(key: str) -> str:
    """Sort key of samples inside a subject's shards: a fixed pseudo-random order (sha256 of the
    sample key), so a reader's shuffle buffer mixes actions and cameras, not consecutive frames."""
    return hashlib.sha256(key.encode()).hexdigest()
