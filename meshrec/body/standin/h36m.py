"""A stand-in for SPIN's `J_regressor_h36m.npy`: Human3.6M's 17 joints as sparse vertex means.

`h36m_regressor(arrays)` works from any SMPL-format arrays (y up, facing +z, the body's left on
+x, T-pose): it places one target point per Human3.6M joint (rows in meshrec.body.h36m.NAMES
order) from the rest joints `J_regressor @ v_template` and the rest surface, then regresses each
target from the vertices nearest to it:

    pelvis, hips, knees, ankles, shoulders, elbows, wrists   the SMPL joint of the same name
    spine    halfway between SMPL's spine1 and spine3
    thorax   the mean of SMPL's neck and both shoulders (where the shoulders meet the trunk)
    nose     on the mid-line, 35 % of the way from SMPL's head joint up to the crown,
             NOSE_DEPTH behind the face's front surface at that height
    head     on the mid-line, 70 % of the way from the head joint up to the crown, centred
             front to back in the head at that height

Each row is non-negative, sums to 1 and has at most a few dozen non-zeros: the K nearest
vertices (K growing until the target lies inside their convex hull) weighted by the least-norm
weights whose mean is the target (spread evenly over the ring of the limb's cross-section, so
the regressed joint follows the limb when it bends). Pure and deterministic.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import nnls

from meshrec.body import h36m
from meshrec.body.params import JOINT_NAMES
from meshrec.errors import MeshrecError

NOSE_DEPTH = 0.015       # m behind the face's front surface: inside the head, as a marker would be
RING = 1.5              # candidate ball radius / the target's distance to the nearest vertex
MAX_VERTICES = 32       # candidates per joint (a row's non-zeros are at most this)
_GROWTHS = 12           # times the ball may grow by 20 % before the target counts as outside
FIT_TOL = 5e-4           # m: a target farther than this from the regressed point is not reached
_EXACT = 1e3             # weight of the "mean = target, sum = 1" rows against the least-norm rows
_PRUNE = 1e-3            # weights below this fraction of the row's largest are dropped
_SAME_NAME = ("pelvis", "left_hip", "left_knee", "left_ankle", "right_hip", "right_knee",
              "right_ankle", "left_shoulder", "left_elbow", "left_wrist", "right_shoulder",
              "right_elbow", "right_wrist")


def _dense(a: object) -> np.ndarray:
    return np.asarray(a.toarray() if hasattr(a, "toarray") else a, dtype=np.float64)


def targets(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """(17, 3) rest-pose target points of the 17 joints (see the module docstring)."""
    v = _dense(arrays["v_template"])
    J = _dense(arrays["J_regressor"]) @ v
    if J.shape[0] < len(JOINT_NAMES):
        raise MeshrecError(f"body model has {J.shape[0]} joints; the H36M regressor needs SMPL's 24")
    s = {name: J[i] for i, name in enumerate(JOINT_NAMES)}
    out = {name: s[name] for name in _SAME_NAME}
    out["spine"] = (s["spine1"] + s["spine3"]) / 2.0
    out["thorax"] = (s["neck"] + s["left_shoulder"] + s["right_shoulder"]) / 3.0
    head = s["head"]
    crown = v[:, 1].max()                                     # T-pose: the arms are lower
    out["nose"] = _on_midline(v, head, head[1] + 0.35 * (crown - head[1]), front=True)
    out["head"] = _on_midline(v, head, head[1] + 0.70 * (crown - head[1]), front=False)
    return np.stack([out[name] for name in h36m.NAMES])


def _on_midline(v: np.ndarray, head: np.ndarray, y: float, front: bool) -> np.ndarray:
    """A point at height y in the head's mid-plane: behind the face, or mid-way front to back."""
    near = v[(np.abs(v[:, 1] - y) < 0.015) & (np.abs(v[:, 0] - head[0]) < 0.03)]
    if len(near) < 2:
        raise MeshrecError("body model: no head surface found above the head joint")
    z_front, z_back = near[:, 2].max(), near[:, 2].min()
    z = z_front - NOSE_DEPTH if front else (z_front + z_back) / 2.0
    return np.array([head[0], y, z])


def regress_point(v: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(vertex ids, weights) whose weighted mean is `target`: non-negative, summing to 1.

    Candidates: the vertices within a ball around the target just wider than its distance to
    the surface (the ring of the limb's cross-section), thinned to MAX_VERTICES spread evenly
    over it; the ball grows until the target lies inside their convex hull.
    """
    dist = np.linalg.norm(v - target, axis=1)
    radius = RING * dist.min()
    for _ in range(_GROWTHS):
        ids = _spread(v, np.flatnonzero(dist < radius), MAX_VERTICES)
        w = _least_norm_weights(v[ids] - target)
        keep = w > _PRUNE * w.max()
        ids, w = ids[keep], w[keep] / w[keep].sum()
        if np.linalg.norm(w @ v[ids] - target) < FIT_TOL:
            order = np.argsort(ids)
            return ids[order], w[order]
        radius *= 1.2
    raise MeshrecError(f"body model: no vertices surround the point {np.round(target, 3).tolist()}")


def _spread(v: np.ndarray, ids: np.ndarray, n: int) -> np.ndarray:
    """At most n of `ids`, picked farthest-point first (from the first id), so they cover the set."""
    if len(ids) <= n:
        return ids
    pts = v[ids]
    chosen = [0]
    gap = np.linalg.norm(pts - pts[0], axis=1)
    while len(chosen) < n:
        i = int(np.argmax(gap))
        chosen.append(i)
        gap = np.minimum(gap, np.linalg.norm(pts - pts[i], axis=1))
    return ids[np.sort(chosen)]


def _least_norm_weights(offsets: np.ndarray) -> np.ndarray:
    """min |w|² subject to offsets^T w = 0, sum w = 1, w ≥ 0 (constraints as heavy NNLS rows)."""
    k = len(offsets)
    A = np.vstack([_EXACT * offsets.T, _EXACT * np.ones((1, k)), np.eye(k)])
    b = np.concatenate([np.zeros(3), [_EXACT], np.zeros(k)])
    w, _ = nnls(A, b)
    return w


def h36m_regressor(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """(17, V) float64 regressor of Human3.6M's joints from the vertices of this body."""
    v = _dense(arrays["v_template"])
    out = np.zeros((h36m.NUM_JOINTS, len(v)))
    for row, target in enumerate(targets(arrays)):
        ids, w = regress_point(v, target)
        out[row, ids] = w
    return out
