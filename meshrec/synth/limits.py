"""Per-joint angle limits of the body's 23 local joints, as Euler-angle boxes, and conversions.

Each joint's local rotation (SMPL: relative to its parent, in the rest T-pose frame: y up, the
body facing +z, its left on +x) is written as intrinsic Euler angles in a per-joint axis order;
the limit is a box [lo, hi] per axis, in degrees. A box is convex, so any convex blend of poses
inside it (key-pose interpolation) stays inside: generated sequences respect the limits by
construction, and `euler_of` recovers the angles to check it.

The table is written once, for the body's left side and the centre line, in anatomical terms:
  hip       x: flexion (thigh forward) < 0 < extension; z: abduction (leg outward) > 0
  knee      x: flexion (shin backward) > 0 only — no knee bends backwards
  ankle     x: plantar flexion (toes down) > 0
  spine/neck/head  x: bending forward > 0; y: twist; z: side bend
  collar    z: shrug up > 0
  shoulder  z: arm raised above the T-pose > 0, lowered towards the side < 0;
            y: arm forward < 0 (left side)
  elbow     y: flexion only (left side < 0, forearm towards the front)
  wrist, hand  z: hand down (palm side) < 0 (left side)
The right side is the mirror image (x → −x): its x angles equal the left's, its y and z angles
are negated, so a right elbow flexes with y > 0.

Middle Euler angles stay strictly inside ±90°, so the decomposition is unique and a pose's
angles can be read back exactly.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from meshrec.body.params import JOINT_NAMES, NUM_JOINTS

# joint (left/centre) -> (intrinsic axis order, (x lo, x hi), (y lo, y hi), (z lo, z hi)), degrees.
_LEFT_AND_CENTRE: dict[str, tuple[str, tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    "left_hip":      ("XZY", (-125, 30), (-40, 40), (-25, 50)),
    "left_knee":     ("XYZ", (0, 150), (-10, 10), (-5, 5)),
    "left_ankle":    ("XYZ", (-30, 50), (-20, 20), (-25, 25)),
    "left_foot":     ("XYZ", (-40, 20), (-5, 5), (-5, 5)),
    "spine1":        ("XZY", (-20, 45), (-25, 25), (-20, 20)),
    "spine2":        ("XZY", (-15, 30), (-20, 20), (-15, 15)),
    "spine3":        ("XZY", (-15, 30), (-20, 20), (-15, 15)),
    "neck":          ("XZY", (-35, 45), (-45, 45), (-30, 30)),
    "head":          ("XZY", (-30, 35), (-40, 40), (-25, 25)),
    "left_collar":   ("ZYX", (-15, 15), (-20, 15), (-15, 25)),
    "left_shoulder": ("ZYX", (-60, 60), (-85, 35), (-85, 80)),
    "left_elbow":    ("YXZ", (-50, 50), (-150, 0), (-10, 10)),
    "left_wrist":    ("XZY", (-60, 60), (-30, 30), (-70, 70)),
    "left_hand":     ("XZY", (-10, 10), (-10, 10), (-40, 15)),
}

AXES = "xyz"


def mirror_range(axis: int, lo: float, hi: float) -> tuple[float, float]:
    """A left-side range of axis 0/1/2 (x/y/z) as seen on the right side (y and z negated)."""
    return (lo, hi) if axis == 0 else (-hi, -lo)


def _build_table() -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    orders, lo, hi = [""] * NUM_JOINTS, np.zeros((NUM_JOINTS, 3)), np.zeros((NUM_JOINTS, 3))
    orders[0] = "XZY"  # the root: no limit (global orientation), order used for body tilts only
    lo[0], hi[0] = -180.0, 180.0
    for j, name in enumerate(JOINT_NAMES[1:], start=1):
        right = name.startswith("right_")
        order, *ranges = _LEFT_AND_CENTRE[name.replace("right_", "left_")]
        orders[j] = order
        for a, (r_lo, r_hi) in enumerate(ranges):
            lo[j, a], hi[j, a] = mirror_range(a, r_lo, r_hi) if right else (r_lo, r_hi)
    return tuple(orders), lo, hi


ORDERS, LIMIT_LO, LIMIT_HI = _build_table()  # per joint; (24, 3) degrees, columns x, y, z


def joint_index(name: str) -> int:
    return JOINT_NAMES.index(name)


def _order_columns(order: str) -> list[int]:
    return [AXES.index(c.lower()) for c in order]


def rotation_of(joint: int, euler_xyz_deg: np.ndarray) -> Rotation:
    """Rotations of one joint from angles (..., 3) given in x, y, z columns (degrees)."""
    e = np.asarray(euler_xyz_deg, dtype=np.float64).reshape(-1, 3)
    cols = _order_columns(ORDERS[joint])
    return Rotation.from_euler(ORDERS[joint], e[:, cols], degrees=True)


def euler_to_axis_angle(euler_deg: np.ndarray) -> np.ndarray:
    """(..., 24, 3) angles (x, y, z columns, degrees, each joint in its own order) -> (..., 72)."""
    e = np.asarray(euler_deg, dtype=np.float64)
    lead = e.shape[:-2]
    e = e.reshape(-1, NUM_JOINTS, 3)
    out = np.empty((e.shape[0], NUM_JOINTS, 3))
    for j in range(NUM_JOINTS):
        out[:, j] = rotation_of(j, e[:, j]).as_rotvec()
    return out.reshape(lead + (3 * NUM_JOINTS,))


def euler_of(pose: np.ndarray) -> np.ndarray:
    """(..., 72) axis-angle -> (..., 24, 3) angles in x, y, z columns (degrees), per joint order."""
    p = np.asarray(pose, dtype=np.float64)
    lead = p.shape[:-1]
    p = p.reshape(-1, NUM_JOINTS, 3)
    out = np.empty_like(p)
    for j in range(NUM_JOINTS):
        cols = _order_columns(ORDERS[j])
        ang = Rotation.from_rotvec(p[:, j]).as_euler(ORDERS[j], degrees=True)
        out[:, j][:, cols] = ang
    return out.reshape(lead + (NUM_JOINTS, 3))


def violations(pose: np.ndarray, tol_deg: float = 1e-6) -> list[str]:
    """Joints 1..23 outside their box in any pose row: 'frame 3 left_knee x=-4.2 (0..150)'."""
    e = euler_of(np.asarray(pose).reshape(-1, 3 * NUM_JOINTS))
    bad = (e < LIMIT_LO - tol_deg) | (e > LIMIT_HI + tol_deg)
    bad[:, 0] = False
    out = []
    for f, j, a in zip(*np.nonzero(bad)):
        out.append(f"frame {f} {JOINT_NAMES[j]} {AXES[a]}={e[f, j, a]:.1f} "
                   f"({LIMIT_LO[j, a]:g}..{LIMIT_HI[j, a]:g})")
    return out
