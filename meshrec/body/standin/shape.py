"""The stand-in body's skeleton and its signed-distance surface (pure NumPy, deterministic).

Coordinates follow SMPL's rest pose: metres, y up, the body faces +z, its LEFT side is on +x,
arms held out horizontally (T-pose), soles at y = -1.17 and the crown at y = +0.53 (1.70 m), so the
pelvis joint sits near the origin as in SMPL's template.

The surface is a union of simple primitives (ellipsoids, tapered capsules, a rounded box for each
hand) merged with polynomial smooth-min blends. Every primitive belongs to one group of bones: the
skinning weights later ask "which primitive is this vertex on, and which of its bones is nearest".

Norms are written as sqrt(x*x + y*y + z*z) on purpose: numpy's reductions may pick different
summation paths on different CPUs/threads, elementwise products do not.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from meshrec.body.params import NUM_JOINTS, PARENTS



def children_of(j: int) -> tuple[int, ...]:
    return tuple(c for c, p in enumerate(PARENTS) if p == j)


# ----------------------------------------------------------------------------------------------
# Proportions: every length the generator uses, for the default (seed 0) body.
# Left-side values; the right side mirrors x.
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Proportions:
    """Joint positions and primitive radii, metres. Left side given; right side mirrors x."""

    pelvis: tuple[float, float, float] = (0.0, -0.225, 0.0)
    spine1: tuple[float, float, float] = (0.0, -0.105, -0.01)
    spine2: tuple[float, float, float] = (0.0, 0.015, -0.005)
    spine3: tuple[float, float, float] = (0.0, 0.085, -0.005)
    neck: tuple[float, float, float] = (0.0, 0.29, -0.02)
    head: tuple[float, float, float] = (0.0, 0.36, 0.02)
    crown_y: float = 0.53
    collar: tuple[float, float, float] = (0.075, 0.205, -0.015)
    shoulder: tuple[float, float, float] = (0.19, 0.225, -0.02)
    elbow: tuple[float, float, float] = (0.45, 0.215, -0.03)
    wrist: tuple[float, float, float] = (0.71, 0.215, -0.03)
    hand: tuple[float, float, float] = (0.795, 0.211, -0.03)
    fingertip_x: float = 0.885
    hip: tuple[float, float, float] = (0.082, -0.315, 0.0)
    knee: tuple[float, float, float] = (0.11, -0.69, 0.01)
    ankle: tuple[float, float, float] = (0.11, -1.085, -0.03)
    ball: tuple[float, float, float] = (0.118, -1.145, 0.09)
    sole_y: float = -1.17
    heel_z: float = -0.085
    toe_z: float = 0.175
    # radii
    upper_arm_r: tuple[float, float] = (0.049, 0.037)
    forearm_r: tuple[float, float] = (0.037, 0.026)
    thigh_r: tuple[float, float] = (0.076, 0.05)
    shin_r: tuple[float, float] = (0.048, 0.031)
    neck_r: float = 0.056
    chest: tuple[float, float, float] = (0.155, 0.17, 0.105)
    waist: tuple[float, float, float] = (0.135, 0.15, 0.1)
    hips: tuple[float, float, float] = (0.16, 0.12, 0.105)
    head_r: tuple[float, float, float] = (0.078, 0.105, 0.095)


def proportions(seed: int) -> Proportions:
    """Seed 0: the default body. Other seeds: the same body with bone lengths and radii jittered by
    at most ±3 % (one factor per body region), so different seeds give slightly different people
    with the same topology."""
    base = Proportions()
    if seed == 0:
        return base
    rng = np.random.default_rng(seed)
    f = 1.0 + rng.uniform(-0.03, 0.03, size=6)
    leg, arm, torso_w, girth, shoulder_w, limb_r = (float(v) for v in f)

    def s3(v: tuple[float, float, float], sx: float = 1.0, sy: float = 1.0,
           sz: float = 1.0) -> tuple[float, float, float]:
        return (v[0] * sx, v[1] * sy, v[2] * sz)

    hip_y = base.hip[1]

    def leg_pt(v: tuple[float, float, float]) -> tuple[float, float, float]:
        # stretch below the hips, keep the pelvis where it is
        return (v[0], hip_y + (v[1] - hip_y) * leg, v[2])

    sh_x = base.shoulder[0]

    def arm_pt(v: tuple[float, float, float]) -> tuple[float, float, float]:
        # shoulder moves with shoulder width, the rest of the arm also stretches
        return (sh_x * shoulder_w + (v[0] - sh_x) * arm, v[1], v[2])

    return replace(
        base,
        collar=s3(base.collar, shoulder_w),
        shoulder=arm_pt(base.shoulder), elbow=arm_pt(base.elbow), wrist=arm_pt(base.wrist),
        hand=arm_pt(base.hand),
        fingertip_x=sh_x * shoulder_w + (base.fingertip_x - sh_x) * arm,
        knee=leg_pt(base.knee), ankle=leg_pt(base.ankle), ball=leg_pt(base.ball),
        sole_y=hip_y + (base.sole_y - hip_y) * leg,
        upper_arm_r=tuple(r * limb_r for r in base.upper_arm_r),  # type: ignore[arg-type]
        forearm_r=tuple(r * limb_r for r in base.forearm_r),  # type: ignore[arg-type]
        thigh_r=tuple(r * limb_r for r in base.thigh_r),  # type: ignore[arg-type]
        shin_r=tuple(r * limb_r for r in base.shin_r),  # type: ignore[arg-type]
        chest=s3(base.chest, torso_w * girth, 1.0, girth),
        waist=s3(base.waist, torso_w * girth, 1.0, girth),
        hips=s3(base.hips, torso_w * girth, 1.0, girth),
    )


def _mirror(v: tuple[float, float, float]) -> np.ndarray:
    return np.array([-v[0], v[1], v[2]], dtype=np.float64)


@dataclass(frozen=True)
class Skeleton:
    joints: np.ndarray                 # (24, 3) rest joints
    bone_end: np.ndarray               # (24, 3) end of each bone's segment (child joint or tip)
    landmarks: dict[str, np.ndarray] = field(default_factory=dict)


def skeleton(p: Proportions) -> Skeleton:
    J = np.zeros((NUM_JOINTS, 3))
    left = {1: p.hip, 4: p.knee, 7: p.ankle, 10: p.ball, 13: p.collar, 16: p.shoulder,
            18: p.elbow, 20: p.wrist, 22: p.hand}
    for j, v in left.items():
        J[j] = v
        J[j + 1] = _mirror(v)
    for j, v in {0: p.pelvis, 3: p.spine1, 6: p.spine2, 9: p.spine3, 12: p.neck,
                 15: p.head}.items():
        J[j] = v
    end = np.zeros_like(J)
    # Segments used to tell which bone a surface point belongs to.
    crotch = np.array([0.0, p.hip[1] - 0.06, 0.0])
    end[0] = crotch
    end[3], end[6], end[9], end[12] = J[6], J[9], J[12], J[15]
    end[15] = np.array([0.0, p.crown_y - 0.04, p.head[2] - 0.01])
    for side, sx in ((0, 1.0), (1, -1.0)):
        end[1 + side], end[4 + side] = J[4 + side], J[7 + side]
        end[7 + side] = J[10 + side]
        end[10 + side] = np.array([sx * p.ball[0], p.ball[1], p.toe_z - 0.03])
        end[13 + side] = J[16 + side]
        end[16 + side], end[18 + side], end[20 + side] = J[18 + side], J[20 + side], J[22 + side]
        end[22 + side] = np.array([sx * (p.fingertip_x - 0.02), p.hand[1], p.hand[2]])
    landmarks = {"crown": np.array([0.0, p.crown_y, 0.0]), "crotch": crotch,
                 "sole_y": np.array(p.sole_y)}
    return Skeleton(joints=J, bone_end=end, landmarks=landmarks)


# ----------------------------------------------------------------------------------------------
# Primitive distance functions (vectorized over points (N, 3)).
# ----------------------------------------------------------------------------------------------

def _len3(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    return np.sqrt(x * x + y * y + z * z)


def sd_ellipsoid(P: np.ndarray, c: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Signed-distance bound of an axis-aligned ellipsoid (exact on the surface, smooth)."""
    qx, qy, qz = (P[:, 0] - c[0]) / r[0], (P[:, 1] - c[1]) / r[1], (P[:, 2] - c[2]) / r[2]
    k0 = _len3(qx, qy, qz)
    k1 = _len3(qx / r[0], qy / r[1], qz / r[2])
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-12)


def sd_round_cone(P: np.ndarray, a: np.ndarray, b: np.ndarray, ra: float, rb: float) -> np.ndarray:
    """Exact signed distance of a tapered capsule: spheres of radius ra at a and rb at b, hulled."""
    ba = b - a
    l2 = float(ba[0] * ba[0] + ba[1] * ba[1] + ba[2] * ba[2])
    rr = ra - rb
    a2 = l2 - rr * rr
    il2 = 1.0 / l2
    pax, pay, paz = P[:, 0] - a[0], P[:, 1] - a[1], P[:, 2] - a[2]
    y = pax * ba[0] + pay * ba[1] + paz * ba[2]
    z = y - l2
    wx, wy, wz = pax * l2 - ba[0] * y, pay * l2 - ba[1] * y, paz * l2 - ba[2] * y
    x2 = wx * wx + wy * wy + wz * wz
    y2 = y * y * l2
    z2 = z * z * l2
    k = np.sign(rr) * rr * rr * x2
    side = (np.sqrt(x2 * a2 * il2) + y * rr) * il2 - ra
    cap_b = np.sqrt(x2 + z2) * il2 - rb
    cap_a = np.sqrt(x2 + y2) * il2 - ra
    out = np.where(np.sign(y) * a2 * y2 < k, cap_a, side)
    return np.where(np.sign(z) * a2 * z2 > k, cap_b, out)


def sd_round_box(P: np.ndarray, c: np.ndarray, half: np.ndarray, rounding: float) -> np.ndarray:
    qx = np.abs(P[:, 0] - c[0]) - half[0]
    qy = np.abs(P[:, 1] - c[1]) - half[1]
    qz = np.abs(P[:, 2] - c[2]) - half[2]
    outside = _len3(np.maximum(qx, 0.0), np.maximum(qy, 0.0), np.maximum(qz, 0.0))
    inside = np.minimum(np.maximum(qx, np.maximum(qy, qz)), 0.0)
    return outside + inside - rounding


def smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum: equals min(a, b) where |a - b| >= k, rounds the crease inside."""
    h = np.maximum(k - np.abs(a - b), 0.0) / k
    return np.minimum(a, b) - h * h * k * 0.25


# ----------------------------------------------------------------------------------------------
# The body: primitives, their bone groups, and the blend tree.
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Primitive:
    name: str
    kind: str                      # "ellipsoid" | "cone" | "box"
    args: tuple                    # kind-specific arguments
    bones: tuple[int, ...]         # bones a point on this primitive may belong to

    def distance(self, P: np.ndarray) -> np.ndarray:
        if self.kind == "ellipsoid":
            return sd_ellipsoid(P, *self.args)
        if self.kind == "cone":
            return sd_round_cone(P, *self.args)
        return sd_round_box(P, *self.args)


TORSO_BONES = (0, 3, 6, 9, 13, 14)


def primitives(p: Proportions) -> dict[str, Primitive]:
    sk = skeleton(p)
    J = sk.joints
    a = np.asarray
    prims: dict[str, Primitive] = {}

    def add(name: str, kind: str, args: tuple, bones: tuple[int, ...]) -> None:
        prims[name] = Primitive(name, kind, args, bones)

    add("chest", "ellipsoid", (a([0.0, 0.10, -0.005]), a(p.chest)), TORSO_BONES)
    add("waist", "ellipsoid", (a([0.0, -0.08, 0.0]), a(p.waist)), TORSO_BONES)
    add("hips", "ellipsoid", (a([0.0, p.pelvis[1] - 0.035, -0.012]), a(p.hips)), TORSO_BONES)
    add("girdle", "cone", (J[17], J[16], 0.05, 0.05), TORSO_BONES)
    add("neck", "cone", (a([0.0, 0.24, p.neck[2]]), a([0.0, 0.38, 0.0]), p.neck_r,
                         p.neck_r - 0.006), (12,))
    head_c = a([0.0, p.crown_y - p.head_r[1], 0.01])
    add("head", "ellipsoid", (head_c, a(p.head_r)), (15,))
    add("jaw", "ellipsoid", (head_c + a([0.0, -0.075, 0.035]), a([0.058, 0.042, 0.062])), (15,))
    add("nose", "ellipsoid", (head_c + a([0.0, -0.015, 0.09]), a([0.014, 0.024, 0.022])), (15,))
    for s, sx, tag in ((0, 1.0, "L"), (1, -1.0, "R")):  # s: offset from L_ to R_ joint ids
        add(f"upper_arm_{tag}", "cone", (J[16 + s], J[18 + s], *p.upper_arm_r), (16 + s,))
        add(f"forearm_{tag}", "cone", (J[18 + s], J[20 + s], *p.forearm_r), (18 + s,))
        # a mitten, palm down, and a thumb pointing forward (+z)
        palm_len = p.fingertip_x - p.wrist[0]
        palm_c = a([sx * (p.wrist[0] + 0.5 * palm_len), p.hand[1], p.hand[2]])
        add(f"hand_{tag}", "box", (palm_c, a([0.5 * palm_len - 0.016, 0.003, 0.028]), 0.016),
            (20 + s, 22 + s))
        thumb_a = a([sx * (p.wrist[0] + 0.03), p.hand[1] - 0.004, p.hand[2] + 0.045])
        thumb_b = a([sx * (p.wrist[0] + 0.085), p.hand[1] - 0.012, p.hand[2] + 0.098])
        add(f"thumb_{tag}", "cone", (thumb_a, thumb_b, 0.0155, 0.013), (20 + s,))
        add(f"thigh_{tag}", "cone", (J[1 + s], J[4 + s], *p.thigh_r), (1 + s,))
        add(f"shin_{tag}", "cone", (J[4 + s], J[7 + s], *p.shin_r), (4 + s,))
        knee, ankle = J[4 + s], J[7 + s]
        calf_c = knee + 0.28 * (ankle - knee) + a([0.0, 0.0, -0.022])
        add(f"calf_{tag}", "ellipsoid", (calf_c, a([0.043, 0.11, 0.042])), (4 + s,))
        foot_len = p.toe_z - p.heel_z
        foot_c = a([sx * 0.5 * (p.ankle[0] + p.ball[0]), p.sole_y + 0.036,
                    p.heel_z + 0.47 * foot_len])
        add(f"foot_{tag}", "ellipsoid", (foot_c, a([0.043, 0.036, 0.47 * foot_len])), (7 + s,))
        toe_c = a([sx * p.ball[0], p.sole_y + 0.02, p.toe_z - 0.05])
        add(f"toes_{tag}", "ellipsoid", (toe_c, a([0.045, 0.02, 0.05])), (7 + s, 10 + s))
    return prims


def body_sdf(P: np.ndarray, prims: dict[str, Primitive]) -> np.ndarray:
    """Signed distance (negative inside) of the whole body at points P (N, 3)."""
    d = {name: prim.distance(P) for name, prim in prims.items()}
    torso = smin(smin(d["chest"], d["waist"], 0.07), d["hips"], 0.07)
    torso = smin(torso, d["girdle"], 0.06)
    torso = smin(torso, d["neck"], 0.04)
    head = smin(smin(d["head"], d["jaw"], 0.04), d["nose"], 0.012)
    body = smin(torso, head, 0.03)
    arms, legs = [], []
    for tag in ("L", "R"):
        arm = smin(d[f"upper_arm_{tag}"], d[f"forearm_{tag}"], 0.02)
        hand = smin(d[f"hand_{tag}"], d[f"thumb_{tag}"], 0.015)
        arms.append(smin(arm, hand, 0.02))
        shin = smin(d[f"shin_{tag}"], d[f"calf_{tag}"], 0.03)
        leg = smin(d[f"thigh_{tag}"], shin, 0.02)
        foot = smin(d[f"foot_{tag}"], d[f"toes_{tag}"], 0.02)
        legs.append(smin(leg, foot, 0.03))
    # Left and right limbs join by a hard union: a smooth one would bridge the gap between the
    # thighs. Only limb-to-trunk joins are blended.
    body = smin(body, np.minimum(arms[0], arms[1]), 0.035)
    legs_d = np.minimum(legs[0], legs[1])
    return smin(body, legs_d, 0.04)


def owner(P: np.ndarray, prims: dict[str, Primitive]) -> list[str]:
    """Name of the primitive nearest to each point (the one whose surface it lies on)."""
    names = list(prims)
    D = np.stack([prims[n].distance(P) for n in names])
    return [names[i] for i in np.argmin(D, axis=0)]


def sdf_gradient(P: np.ndarray, prims: dict[str, Primitive], eps: float = 1e-5) -> np.ndarray:
    """Central-difference gradient of body_sdf (N, 3)."""
    g = np.empty_like(P)
    for k in range(3):
        e = np.zeros(3)
        e[k] = eps
        g[:, k] = (body_sdf(P + e, prims) - body_sdf(P - e, prims)) / (2 * eps)
    return g
