"""The one SMPL parameter vector layout, used everywhere (shards, model heads, losses, flips).

    [ global_orient 3 | body_pose 69 | betas 10 | transl 3 (optional) ]
      joint 0           joints 1..23   shape      translation (metres)

Rotations are axis-angle, one 3-vector per joint of SMPL's kinematic tree (joint j's
rotation occupies entries 3j..3j+2 of the first 72). Works on NumPy arrays and torch
tensors with any leading shape; the layout is on the last axis.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Union

import numpy as np

from meshrec.errors import MeshrecError

if TYPE_CHECKING:  # torch stays optional here so data tools can use the layout cheaply
    import torch

Array = Union[np.ndarray, "torch.Tensor"]

NUM_JOINTS = 24
NUM_BETAS = 10

# SMPL's joints in kinematic-tree order, and each joint's parent (-1: the root).
JOINT_NAMES: tuple[str, ...] = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2",
    "left_ankle", "right_ankle", "spine3", "left_foot", "right_foot", "neck",
    "left_collar", "right_collar", "head", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hand", "right_hand",
)
PARENTS: tuple[int, ...] = (
    -1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21,
)
HAND_JOINTS: tuple[int, ...] = (20, 21, 22, 23)  # wrists and hands

GLOBAL_ORIENT = slice(0, 3)
BODY_POSE = slice(3, 3 * NUM_JOINTS)                       # 3:72
POSE = slice(0, 3 * NUM_JOINTS)                            # 0:72, all 24 joint rotations
BETAS = slice(3 * NUM_JOINTS, 3 * NUM_JOINTS + NUM_BETAS)  # 72:82
TRANSL = slice(BETAS.stop, BETAS.stop + 3)                 # 82:85

SIZE = BETAS.stop                # 82: the study's P (pose 72 + betas 10)
SIZE_WITH_TRANSL = TRANSL.stop   # 85


def size(with_transl: bool = False) -> int:
    """Length of the parameter vector: 82, or 85 with translation."""
    return SIZE_WITH_TRANSL if with_transl else SIZE


def has_transl(vec: Array) -> bool:
    """Whether a vector (last axis) carries translation; refuses any other length."""
    n = vec.shape[-1]
    if n not in (SIZE, SIZE_WITH_TRANSL):
        raise MeshrecError(f"SMPL parameter vector has {n} entries; expected {SIZE} "
                           f"(orient 3 + body pose 69 + betas 10) or {SIZE_WITH_TRANSL} (+ transl 3)")
    return n == SIZE_WITH_TRANSL


def split(vec: Array) -> dict[str, Array]:
    """Named views of a parameter vector: global_orient, body_pose, betas [, transl]."""
    parts = {
        "global_orient": vec[..., GLOBAL_ORIENT],
        "body_pose": vec[..., BODY_POSE],
        "betas": vec[..., BETAS],
    }
    if has_transl(vec):
        parts["transl"] = vec[..., TRANSL]
    return parts


def join(global_orient: Array, body_pose: Array, betas: Array, transl: Array | None = None) -> Array:
    """Inverse of `split`: concatenate the parts on the last axis (NumPy or torch alike)."""
    parts = [global_orient, body_pose, betas] + ([transl] if transl is not None else [])
    for name, part, want in zip(("global_orient", "body_pose", "betas", "transl"), parts,
                                (3, 3 * (NUM_JOINTS - 1), NUM_BETAS, 3)):
        if part.shape[-1] != want:
            raise MeshrecError(f"{name} has {part.shape[-1]} entries on its last axis; expected {want}")
    if isinstance(global_orient, np.ndarray):
        return np.concatenate(parts, axis=-1)
    import torch

    return torch.cat(parts, dim=-1)


def _joint_indices(joints) -> np.ndarray:
    return np.asarray([3 * j + k for j in joints for k in range(3)], dtype=np.int64)


def groups(with_transl: bool = False) -> dict[str, np.ndarray]:
    """Index arrays into the vector for the weighted loss terms; together they cover it once.

    shape: betas · body: rotations of joints 1..19 (all but wrists and hands) ·
    hand: rotations of joints 20..23 (wrists and hands) · loc: global orientation [+ transl].
    """
    body = [j for j in range(1, NUM_JOINTS) if j not in HAND_JOINTS]
    loc = _joint_indices([0])
    if with_transl:
        loc = np.concatenate([loc, np.arange(TRANSL.start, TRANSL.stop)])
    return {
        "shape": np.arange(BETAS.start, BETAS.stop),
        "body": _joint_indices(body),
        "hand": _joint_indices(HAND_JOINTS),
        "loc": loc,
    }


def neutral_params() -> np.ndarray:
    """An upright body facing an OpenCV camera (x right, y down, z forward): global orientation
    π about x, zero body pose and betas. The start of a regressor without SMPL labels to average."""
    out = np.zeros(SIZE, dtype=np.float64)
    out[GLOBAL_ORIENT] = (np.pi, 0.0, 0.0)
    return out


def _read_mean_file(path: str | os.PathLike) -> tuple[str, dict[str, np.ndarray]]:
    name = os.fspath(path)
    try:
        with np.load(name, allow_pickle=False) as data:
            return name, {k: np.asarray(data[k]) for k in data.files}
    except FileNotFoundError:
        raise MeshrecError(f"mean parameters file {name} does not exist") from None
    except (OSError, ValueError) as exc:
        raise MeshrecError(f"cannot read mean parameters {name}: {exc}") from None


def load_spin_mean_camera(path: str | os.PathLike) -> np.ndarray:
    """`cam` (3: weak-perspective s, tx, ty) of SPIN/HMR's `smpl_mean_params.npz`, float64."""
    name, arrays = _read_mean_file(path)
    cam = arrays.get("cam")
    if cam is None or cam.size != 3 or not np.isfinite(cam).all():
        raise MeshrecError(f"mean parameters {name}: 'cam' must be 3 finite numbers "
                           f"(SPIN's smpl_mean_params.npz has pose, shape, cam)")
    return cam.astype(np.float64).reshape(3)


def load_spin_mean_params(path: str | os.PathLike) -> np.ndarray:
    """SPIN/HMR's `smpl_mean_params.npz` → float64 vector of length 82 in our layout.

    The file holds `pose` (144 = 24 joints × 6D in SPIN's layout), `shape` (10) and `cam`
    (3, a weak-perspective camera, not a translation: not part of the returned vector).
    """
    import torch

    from meshrec.body.rotations import rot6d_to_axis_angle

    name, arrays = _read_mean_file(path)
    for key, want in (("pose", 6 * NUM_JOINTS), ("shape", NUM_BETAS)):
        if key not in arrays:
            raise MeshrecError(f"mean parameters {name} has no key '{key}' "
                               f"(SPIN's smpl_mean_params.npz has pose, shape, cam)")
        if arrays[key].size != want:
            raise MeshrecError(f"mean parameters {name}: '{key}' has {arrays[key].size} values, "
                               f"expected {want}")
    rot6d = torch.from_numpy(arrays["pose"].astype(np.float64).reshape(NUM_JOINTS, 6))
    pose = rot6d_to_axis_angle(rot6d).reshape(-1).numpy()
    betas = arrays["shape"].astype(np.float64).reshape(-1)
    if not (np.isfinite(pose).all() and np.isfinite(betas).all()):
        raise MeshrecError(f"mean parameters {name} contain NaN or Inf")
    return join(pose[GLOBAL_ORIENT], pose[BODY_POSE], betas)
