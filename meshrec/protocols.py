"""Evaluation protocols: which samples count and how joints are compared (pure functions).

smpl      vertex and joint errors against meshes made from SMPL labels (meshrec.metrics; samples
          with an SMPL label only).
h36m-p1   SPIN's Human3.6M protocol 1 (eval.py): the 17 joints regressed from the predicted mesh
          with J_regressor_h36m, pelvis (row 0) subtracted, rows H36M_TO_J14, against the sample's
          mocap joints (pelvis-centred, as SPIN's h36m_valid_protocol*.npz hold them), rows
          J24_TO_J14 there = H36M_TO_J14 here. MPJPE = mean Euclidean distance over the 14 joints;
          PA-MPJPE ("reconstruction error") the same after a similarity Procrustes alignment;
          both in mm. All four cameras.
h36m-p2   the same on camera 60457274 only.
h36m-moon Moon's test set (I2L-MeshNet, Hand4Whole: Human36M.py): camera 60457274, every 64th
          frame (frame_idx % 64 == 0, frame_idx = the file's frame number − 1), MPJPE and PA-MPJPE
          on `eval_joint` (1..6, 8, 10..16): the same 14 joints, pelvis-centred, the same numbers.
SPIN's files sample every 5th frame of S9 and S11; meshrec scores the samples the shards hold.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from meshrec import metrics
from meshrec.body import h36m

PROTOCOLS = ("smpl", "h36m-p1", "h36m-p2", "h36m-moon")
MOON_STRIDE = 64
SMPL_NAMES = ("mse", "pve_mm", "mpjpe_mm", "pa_mpjpe_mm")
H36M_NAMES = ("mpjpe_mm", "pa_mpjpe_mm")


def is_h36m(protocol: str) -> bool:
    return protocol.startswith("h36m-")


def label_of(protocol: str) -> str:
    """The shard label a protocol scores against: mocap joints (h36m-*) or SMPL parameters."""
    return "j3d" if is_h36m(protocol) else "smpl"


def metric_names(protocol: str) -> tuple[str, ...]:
    return H36M_NAMES if is_h36m(protocol) else SMPL_NAMES


def metric_key(protocol: str, name: str) -> str:
    """Name under which a metric is logged: `pve_mm` (smpl), `p2_mpjpe_mm` (h36m-p2)."""
    return f"{protocol[len('h36m-'):]}_{name}" if is_h36m(protocol) else name


def selection_metric(protocol: str) -> str:
    """The validation metric that picks the best run: PVE (smpl), else the protocol's MPJPE."""
    return "val_" + metric_key(protocol, "mpjpe_mm" if is_h36m(protocol) else "pve_mm")


def counts(protocol: str, camera: str, frame: int) -> bool:
    """Whether the sample of `camera` (Human3.6M id) and frame number `frame` (1-based, as file
    names give it) belongs to the protocol's test set."""
    if protocol == "h36m-p2":
        return camera == h36m.PROTOCOL2_CAMERA
    if protocol == "h36m-moon":
        return camera == h36m.PROTOCOL2_CAMERA and (frame - 1) % MOON_STRIDE == 0
    return True


def j14(joints17: Any, centre: bool) -> np.ndarray:
    """[B, 17, 3] → [B, 14, 3] float64 (H36M_TO_J14), the pelvis subtracted first if `centre`."""
    j = metrics.as_float64(joints17)
    if centre:
        j = j - j[:, h36m.PELVIS:h36m.PELVIS + 1]
    return j[:, list(h36m.H36M_TO_J14)]


def h36m_errors(pred17: Any, true17: Any) -> dict[str, np.ndarray]:
    """Per-sample MPJPE and PA-MPJPE (mm) of regressed joints `pred17` against the mocap joints
    `true17` (pelvis-centred already, as the protocol files store them)."""
    p, t = j14(pred17, centre=True), j14(true17, centre=False)
    return {"mpjpe_mm": metrics.mpjpe_mm_per_sample(p, t, root=None),
            "pa_mpjpe_mm": metrics.pa_mpjpe_mm_per_sample(p, t)}
