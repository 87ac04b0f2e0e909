"""mmhuman3d HumanData keypoints → Human3.6M's 17 joints in meshrec's order (body/h36m.py).

mmhuman3d's H36M converter (data_converters/h36m.py) picks the 17 joints with SPIN's own index
list (`h36m_idx = [11, 6, 7, 8, 1, 2, ...]`), so its 'h36m' convention (keypoints_mapping/h36m.py
H36M_KEYPOINTS) is row for row meshrec's 17, under other names: pelvis_extra, left_hip_extra,
..., neck_extra (meshrec's thorax), head_extra (nose), headtop (head). It then writes them in
the 190-joint 'human_data' convention (`convert_kps(..., 'h36m', 'human_data')`, matched by
name) with one (190,) mask, and `compress_keypoints_by_mask` keeps only the joints whose mask
is 1, in 'human_data' order; `__keypoints_compressed__` records that.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from meshrec.body import h36m
from meshrec.errors import MeshrecError

# mmhuman3d's names of meshrec's 17 rows (H36M_KEYPOINTS) and their 'human_data' rows
# (keypoints_mapping/human_data.py HUMAN_DATA.index(name)).
MMHUMAN3D_NAMES: tuple[str, ...] = (
    "pelvis_extra", "left_hip_extra", "left_knee", "left_ankle", "right_hip_extra", "right_knee",
    "right_ankle", "spine_extra", "neck_extra", "head_extra", "headtop", "left_shoulder",
    "left_elbow", "left_wrist", "right_shoulder", "right_elbow", "right_wrist",
)
HUMAN_DATA_ROWS: tuple[int, ...] = (148, 145, 4, 7, 144, 5, 8, 150, 146, 152, 147, 16, 18, 20,
                                    17, 19, 21)
HUMAN_DATA_SIZE = 190
# convention → (its joint count, the row of each of meshrec's 17 joints)
CONVENTIONS: dict[str, tuple[int, tuple[int, ...]]] = {
    "human_data": (HUMAN_DATA_SIZE, HUMAN_DATA_ROWS),
    "h36m": (h36m.NUM_JOINTS, tuple(range(h36m.NUM_JOINTS))),
}
KEYS = ("keypoints3d", "keypoints2d")


def _text(entries: dict[str, Any], key: str, default: str, path: str) -> str:
    value = entries.get(key, default)
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "US":
        value = str(value)
    if not isinstance(value, str):
        raise MeshrecError(f"{path}: '{key}' must be a string")
    return value


def _mask(entries: dict[str, Any], key: str, size: int, path: str) -> np.ndarray:
    """The (size,) per-joint mask of `key` (all ones when the file has none)."""
    if f"{key}_mask" not in entries:
        return np.ones(size)
    mask = np.asarray(entries[f"{key}_mask"])
    if mask.dtype.kind not in "biuf" or mask.shape != (size,):
        raise MeshrecError(f"{path}: '{key}_mask' has shape {mask.shape} dtype {mask.dtype}, "
                           f"expected ({size},) numbers")
    return mask.astype(np.float64)


def keypoints(entries: dict[str, Any], key: str, width: int, path: str,
              n: int) -> np.ndarray | None:
    """`keypoints3d` (width 4) / `keypoints2d` (width 3) → (N, 17, width), meshrec's order,
    confidence = the file's confidence × mask; None when the file has no `key`."""
    if key not in entries:
        return None
    convention = _text(entries, f"{key}_convention", "human_data", path)
    if convention not in CONVENTIONS:
        raise MeshrecError(f"{path}: '{key}_convention' is '{convention}'; meshrec reads "
                           f"{' or '.join(CONVENTIONS)}")
    size, rows = CONVENTIONS[convention]
    mask = _mask(entries, key, size, path)
    compressed = bool(np.asarray(entries.get("__keypoints_compressed__", False)))
    # A compressed array holds only the joints whose mask is 1, in the convention's order.
    kept = np.flatnonzero(mask == 1) if compressed else np.arange(size)
    arr = np.asarray(entries[key])
    if arr.dtype.kind not in "fiu" or arr.shape != (n, kept.size, width):
        raise MeshrecError(f"{path}: '{key}' has shape {arr.shape} dtype {arr.dtype}, expected "
                           f"({n}, {kept.size}, {width}) numbers ({convention} convention"
                           f"{', compressed by its mask' if compressed else ''})")
    full = np.zeros((n, size, width))
    full[:, kept] = arr
    full[..., -1] *= mask
    return full[:, list(rows)]
