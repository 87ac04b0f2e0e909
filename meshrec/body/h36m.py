"""Human3.6M's 17 joints as the field uses them, and SPIN's 24-joint (J24) layout that carries them.

The 17 rows are those of `J_regressor_h36m.npy` (SPIN, HMR, I2L-MeshNet), in SPIN's naming
(nkolot/SPIN constants.py: H36M_TO_J17 maps row 6 to "Right Ankle", row 1 to "Left Hip", ...).
SPIN's preprocessing (datasets/preprocess/h36m.py, h36m_train.py) writes them into J24 rows
`J24_OF_H36M` (its `global_idx`), pelvis-centred, metres, confidence 1; the other J24 rows stay 0.

Protocols 1 and 2 (SPIN eval.py) score the 14 joints `H36M_TO_J14` of the joints regressed from
the predicted mesh (pelvis = row 0 subtracted) against the file's J24 rows `J24_TO_J14`.
"""

from __future__ import annotations

import numpy as np

NUM_JOINTS = 17
NAMES: tuple[str, ...] = (
    "pelvis", "left_hip", "left_knee", "left_ankle", "right_hip", "right_knee", "right_ankle",
    "spine", "thorax", "nose", "head", "left_shoulder", "left_elbow", "left_wrist",
    "right_shoulder", "right_elbow", "right_wrist",
)
PELVIS = 0

# The skeleton drawn over 2D keypoints: 16 bones joining the 17 joints into one tree.
BONES: tuple[tuple[int, int], ...] = tuple((NAMES.index(a), NAMES.index(b)) for a, b in (
    ("pelvis", "left_hip"), ("left_hip", "left_knee"), ("left_knee", "left_ankle"),
    ("pelvis", "right_hip"), ("right_hip", "right_knee"), ("right_knee", "right_ankle"),
    ("pelvis", "spine"), ("spine", "thorax"), ("thorax", "nose"), ("nose", "head"),
    ("thorax", "left_shoulder"), ("left_shoulder", "left_elbow"), ("left_elbow", "left_wrist"),
    ("thorax", "right_shoulder"), ("right_shoulder", "right_elbow"),
    ("right_elbow", "right_wrist"),
))

# SPIN's J24 order (constants.py, the 24 "ground truth" joints).
J24_NAMES: tuple[str, ...] = (
    "right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle",
    "right_wrist", "right_elbow", "right_shoulder", "left_shoulder", "left_elbow", "left_wrist",
    "neck_lsp", "head_top_lsp", "pelvis_mpii", "thorax_mpii", "spine_h36m", "jaw_h36m",
    "head_h36m", "nose", "left_eye", "right_eye", "left_ear", "right_ear",
)
# H36M row k is stored in J24 row J24_OF_H36M[k] (SPIN's `global_idx`).
J24_OF_H36M: tuple[int, ...] = (14, 3, 4, 5, 2, 1, 0, 16, 12, 17, 18, 9, 10, 11, 8, 7, 6)
# SPIN constants.py
H36M_TO_J17: tuple[int, ...] = (6, 5, 4, 1, 2, 3, 16, 15, 14, 11, 12, 13, 8, 10, 0, 7, 9)
H36M_TO_J14: tuple[int, ...] = H36M_TO_J17[:14]
J24_TO_J17: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 18, 14, 16, 17)
J24_TO_J14: tuple[int, ...] = J24_TO_J17[:14]

# Moon's release (I2L-MeshNet Human36M.py `h36m_joints_name`, its _joint_3d.json and
# J_regressor_h36m_correct.npy) lists the same 17 joints with the legs right first: its row k is
# meshrec's row MOON_ORDER[k] (names matched; an involution, so it maps both ways).
MOON_NAMES: tuple[str, ...] = (
    "Pelvis", "R_Hip", "R_Knee", "R_Ankle", "L_Hip", "L_Knee", "L_Ankle", "Torso", "Neck", "Nose",
    "Head_top", "L_Shoulder", "L_Elbow", "L_Wrist", "R_Shoulder", "R_Elbow", "R_Wrist")
MOON_ORDER: tuple[int, ...] = (0, 4, 5, 6, 1, 2, 3, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16)

# Left/right swap of the 17 rows under a horizontal flip.
FLIP_PERM: tuple[int, ...] = tuple(
    NAMES.index(n.replace("left_", "@").replace("right_", "left_").replace("@", "right_"))
    for n in NAMES)

# Human3.6M's cameras: index 1..4 (Moon's cam_idx) ↔ the ids in its file names.
CAMERA_IDS: tuple[str, ...] = ("54138969", "55011271", "58860488", "60457274")
PROTOCOL2_CAMERA = "60457274"   # SPIN's protocol 2: the frontal camera only


def reorder_moon(joints: np.ndarray) -> np.ndarray:
    """(..., 17, C) rows in Moon's order → meshrec's (or back: the permutation is its own inverse)."""
    joints = np.asarray(joints)
    if joints.shape[-2] != NUM_JOINTS:
        raise ValueError(f"expected [..., 17, C] joints, got {joints.shape}")
    return joints[..., list(MOON_ORDER), :]


def j24_to_h36m(j24: np.ndarray) -> np.ndarray:
    """(..., 24, C) SPIN J24 rows → (..., 17, C) in H36M order (the rows h36m.py filled)."""
    j24 = np.asarray(j24)
    if j24.shape[-2] != len(J24_NAMES):
        raise ValueError(f"expected [..., 24, C] J24 joints, got {j24.shape}")
    return j24[..., list(J24_OF_H36M), :]


def h36m_to_j24(h36m: np.ndarray) -> np.ndarray:
    """(..., 17, C) → (..., 24, C) J24 with the other rows 0 (as SPIN's preprocessing writes)."""
    h36m = np.asarray(h36m)
    if h36m.shape[-2] != NUM_JOINTS:
        raise ValueError(f"expected [..., 17, C] H36M joints, got {h36m.shape}")
    out = np.zeros(h36m.shape[:-2] + (len(J24_NAMES), h36m.shape[-1]), dtype=h36m.dtype)
    out[..., list(J24_OF_H36M), :] = h36m
    return out
