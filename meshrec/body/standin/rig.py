"""Rig the stand-in mesh: skinning weights, joint regressor, shape and pose blend shapes.

All functions are pure and deterministic, also across CPUs: fixed iteration counts, no BLAS or
LAPACK calls and no exp/log/pow (numpy's versions of those differ in the last bit between
instruction sets; sums, products, quotients and square roots do not).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from meshrec.body.standin.shape import NUM_JOINTS, PARENTS, Primitive, Skeleton, children_of
from meshrec.errors import MeshrecError

SHAPE_NAMES: tuple[str, ...] = (
    "stature",          # whole body longer (all bones +2.5 %/unit), slightly thicker
    "girth",            # torso wider and deeper, limbs and neck thicker
    "leg_length",       # thighs and shins longer: the body's lower end moves down
    "arm_length",       # upper arms, forearms and hands longer
    "shoulder_width",   # collar bones longer (arms move outward), upper chest wider
    "hip_width",        # pelvis wider: legs move outward
    "torso_length",     # spine longer: chest, arms, neck and head move up
    "head_size",        # head larger
    "belly",            # lower abdomen pushed forward
    "limb_thickness",   # arms and legs thicker about their axes (torso unchanged)
)


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1] + a[..., 2] * b[..., 2]


def point_segment_distance(P: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ab = b - a
    t = np.clip(_dot(P - a, ab) / _dot(ab, ab), 0.0, 1.0)
    r = P - (a + t[:, None] * ab)
    return np.sqrt(_dot(r, r))


def bone_labels(verts: np.ndarray, owners: list[str], prims: dict[str, Primitive],
                sk: Skeleton) -> np.ndarray:
    """Driving joint of each vertex: among the bones of the primitive it lies on, the nearest
    bone segment (joint → child joint or tip)."""
    labels = np.empty(len(verts), dtype=np.int64)
    owners_arr = np.array(owners)
    for name, prim in prims.items():
        idx = np.nonzero(owners_arr == name)[0]
        if len(idx) == 0:
            continue
        if len(prim.bones) == 1:
            labels[idx] = prim.bones[0]
            continue
        D = np.stack([point_segment_distance(verts[idx], sk.joints[b], sk.bone_end[b])
                      for b in prim.bones])
        labels[idx] = np.asarray(prim.bones)[np.argmin(D, axis=0)]
    return labels


def adjacency(faces: np.ndarray, n: int) -> sp.csr_matrix:
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    e = np.concatenate([e, e[:, ::-1]])
    A = sp.coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n)).tocsr()
    A.data[:] = 1.0  # each undirected edge appears twice; keep it binary
    return A


def diffuse(A: sp.csr_matrix, X: np.ndarray, iterations: int) -> np.ndarray:
    """Lazy random-walk smoothing on the mesh graph: X <- (X + mean of neighbours) / 2."""
    deg = np.asarray(A.sum(axis=1)).ravel()
    for _ in range(iterations):
        X = 0.5 * X + 0.5 * (A @ X) / deg[:, None]
    return X


def allowed_bones() -> np.ndarray:
    """(24, 24) mask: a vertex driven by bone b may blend only with b, its parent, its children."""
    M = np.eye(NUM_JOINTS, dtype=bool)
    for j, p in enumerate(PARENTS):
        if p >= 0:
            M[j, p] = M[p, j] = True
    return M


def _toward(a: int, b: int) -> int:
    """The bone next to a on the kinematic tree's path from bone a to bone b (a != b)."""
    up = [b]
    while PARENTS[up[-1]] >= 0:
        up.append(PARENTS[up[-1]])
    if a in up:                      # b lies below a: step down toward it
        return up[up.index(a) - 1]
    return PARENTS[a]


def separate_siblings(labels: np.ndarray, A: sp.csr_matrix, rings: int = 2) -> np.ndarray:
    """Labels where no two bones that are not adjacent in the tree meet within `rings` edges.

    Skinning masks each vertex to its bone's neighbours, so where two such bones meet (the upper
    chest against a collar, the neck against a collar, the two thighs at the crotch) the weights
    jump from one bone to the other across a single edge, and a posed mesh tears there by however
    far the two bones move apart. Each vertex that close to a bone it may not blend with takes
    the bone between them on the tree instead (spine3 for the chest and neck against a collar,
    the pelvis at the crotch): the weights then pass through that bone over a few rings."""
    n = len(labels)
    near = np.zeros((n, NUM_JOINTS))
    near[np.arange(n), labels] = 1.0
    for _ in range(rings):           # counts of walks: small integers, exact in float64
        near = near + A @ near
    allowed = allowed_bones()
    out = labels.copy()
    for i in np.nonzero(np.any((near > 0) & ~allowed[labels], axis=1))[0]:
        b = int(np.nonzero((near[i] > 0) & ~allowed[labels[i]])[0][0])
        out[i] = _toward(int(labels[i]), b)
    return out


def restrict_to_star(W: np.ndarray, floor: float = 2e-3) -> np.ndarray:
    """Each row kept only on the bones of the star (a bone, its parent, its children) that holds
    most of its weight, entries below `floor` dropped, renormalized: the blending rule of
    `skinning_weights`, for weights that were mixed afterwards."""
    allowed = allowed_bones()
    mass = np.zeros_like(W)
    for c in range(NUM_JOINTS):
        for b in np.nonzero(allowed[c])[0]:  # fixed order, no BLAS
            mass[:, c] += W[:, b]
    W = W * allowed[np.argmax(mass, axis=1)]
    W[W < floor] = 0.0
    return W / W.sum(axis=1, keepdims=True)


def skinning_weights(labels: np.ndarray, A: sp.csr_matrix, iterations: int = 8,
                     floor: float = 2e-3) -> np.ndarray:
    """Weights ≥ 0 summing to 1, blended across joints over a few rings of the mesh and only
    between a vertex's own bone and the bones adjacent to it in the kinematic tree."""
    W = np.zeros((len(labels), NUM_JOINTS))
    W[np.arange(len(labels)), labels] = 1.0
    W = diffuse(A, W, iterations)
    W = W * allowed_bones()[labels]
    W[W < floor] = 0.0
    return W / W.sum(axis=1, keepdims=True)


# ----------------------------------------------------------------------------------------------
# Joint regressor
# ----------------------------------------------------------------------------------------------

def _solve3(A: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """3×3 solve by Cramer's rule in Python floats: bit-identical on every CPU (LAPACK kernels
    differ between instruction sets)."""
    a = [[float(A[i, k]) for k in range(3)] for i in range(3)]
    r = [float(v) for v in b]

    def det(m: list[list[float]]) -> float:
        return (m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
                - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
                + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]))

    d = det(a)
    if not abs(d) > 1e-30:
        return None
    out = []
    for k in range(3):
        m = [row[:] for row in a]
        for i in range(3):
            m[i][k] = r[i]
        out.append(det(m) / d)
    return np.array(out)


def convex_weights(X: np.ndarray, prior: np.ndarray, target: np.ndarray,
                    scale: float) -> np.ndarray | None:
    """Weights w ≥ 0 with Σw = 1 and Σ w x = target, close to `prior` (Σ prior = 1).

    The chi-square-nearest weights to the prior meeting both equalities have the closed form
    w = prior·(1 + b·(x − target − m)), m = prior mean of x − target, b = −Cov⁻¹ m. Points that
    come out negative are dropped and the rest re-solved. None if the points left no longer
    surround the target. Only +, ×, ÷ and sums: the same bits on every CPU."""
    D = (X - target) / scale
    p = prior.copy()
    for _ in range(100):
        live = p > 0
        p = p / np.sum(p)
        m = np.array([np.sum(p * D[:, k]) for k in range(3)])
        C = np.array([[np.sum(p * D[:, i] * D[:, k]) for k in range(3)] for i in range(3)])
        C = C - np.outer(m, m)
        b = _solve3(C, -m)
        if b is None:
            return None
        w = p * (1.0 + b[0] * (D[:, 0] - m[0]) + b[1] * (D[:, 1] - m[1])
                 + b[2] * (D[:, 2] - m[2]))
        neg = live & (w < 0)
        if not np.any(neg):
            w = np.where(live, w, 0.0)
            return w / np.sum(w)
        p = np.where(neg, 0.0, p)
        if np.count_nonzero(p) < 4:
            return None
    return None


def joint_regressor(verts: np.ndarray, labels: np.ndarray, joints: np.ndarray) -> np.ndarray:
    """(24, V): each joint a convex combination of the surface vertices around it (on the bone
    it starts and its parent's), weighted toward the nearest, reproducing the joint exactly."""
    R = np.zeros((NUM_JOINTS, len(verts)))
    for j in range(NUM_JOINTS):
        p = PARENTS[j]
        near = {j} | ({p} if p >= 0 else set(children_of(j)))
        cand = np.nonzero(np.isin(labels, sorted(near)))[0]
        d = verts[cand] - joints[j]
        dist = np.sqrt(_dot(d, d))
        # about one limb radius: the ring of vertices around the joint, not the whole limb;
        # widened when that ring does not enclose the joint
        sigma = max(0.015, 0.8 * float(dist.min()))
        for reach in (2.5, 3.5, 5.0):
            keep = dist < reach * sigma
            q = dist[keep] / (reach * sigma)
            prior = _bump(q * q)  # smooth, zero at the edge of the ring
            row = convex_weights(verts[cand[keep]], prior / np.sum(prior), joints[j], sigma)
            if row is not None:
                R[j, cand[keep]] = row
                break
        else:
            raise MeshrecError(f"stand-in joint regressor: joint {j} lies outside the surface "
                               "around it")
    return R


# ----------------------------------------------------------------------------------------------
# Shape blend shapes: each direction moves bones (stretch along the bone, scale across it); a
# vertex follows its bones, blended with smooth weights.
# ----------------------------------------------------------------------------------------------

LIMB_BONES = (1, 2, 4, 5, 16, 17, 18, 19)
SPINE_BONES = (0, 3, 6, 9)


def _direction_params(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-bone axial stretch s (fraction per unit beta) and radial scale (3 per-axis fractions,
    world axes) for shape direction k."""
    s = np.zeros(NUM_JOINTS)
    r = np.zeros((NUM_JOINTS, 3))
    name = SHAPE_NAMES[k]
    if name == "stature":
        s[:] = 0.025
        r[:] = 0.008
    elif name == "girth":
        r[list(SPINE_BONES)] = (0.09, 0.0, 0.11)
        r[[13, 14]] = 0.05
        r[list(LIMB_BONES)] = 0.07
        r[12] = 0.05
        r[[20, 21, 22, 23]] = 0.02
    elif name == "leg_length":
        s[[1, 2, 4, 5]] = 0.03
    elif name == "arm_length":
        s[[16, 17, 18, 19, 20, 21, 22, 23]] = 0.03
    elif name == "shoulder_width":
        s[[13, 14]] = 0.12
        r[9] = (0.04, 0.0, 0.0)
    elif name == "hip_width":
        r[0] = (0.08, 0.0, 0.0)
        r[3] = (0.04, 0.0, 0.0)
        r[[1, 2]] = 0.03
    elif name == "torso_length":
        s[[3, 6, 9]] = 0.06
        s[0] = 0.02
    elif name == "head_size":
        s[15] = 0.08
        r[15] = 0.08
        r[12] = 0.04
    elif name == "limb_thickness":
        r[list(LIMB_BONES)] = 0.12
        r[[20, 21, 22, 23]] = 0.05
    return s, r


def bone_displacements(P: np.ndarray, sk: Skeleton, s: np.ndarray,
                       r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Displacement of points P (N, 3) as carried by each bone: (24, N, 3); and of the joints
    (24, 3). A bone's origin moves with its parent's displacement of that point, so joints
    stay connected."""
    J, E = sk.joints, sk.bone_end
    out = np.zeros((NUM_JOINTS, len(P), 3))
    t = np.zeros((NUM_JOINTS, 3))

    def carry(b: int, X: np.ndarray) -> np.ndarray:
        u = E[b] - J[b]
        L = float(np.sqrt(_dot(u, u)))
        u = u / L
        rel = X - J[b]
        a = _dot(rel, u)
        rho = rel - a[:, None] * u
        return t[b] + s[b] * np.clip(a, 0.0, L)[:, None] * u + rho * r[b]

    for b in range(NUM_JOINTS):  # parents precede children in SMPL's order
        p = PARENTS[b]
        if p >= 0:
            t[b] = carry(p, J[b][None])[0]
        out[b] = carry(b, P)
    return out, t


def shape_blend_weights(labels: np.ndarray, A: sp.csr_matrix) -> np.ndarray:
    """Wider, unmasked blend of the bone labels, used only to make shape directions smooth."""
    W = np.zeros((len(labels), NUM_JOINTS))
    W[np.arange(len(labels)), labels] = 1.0
    W = diffuse(A, W, 24)
    return W / W.sum(axis=1, keepdims=True)


def shapedirs(verts: np.ndarray, labels: np.ndarray, A: sp.csr_matrix,
              sk: Skeleton) -> np.ndarray:
    """(V, 3, 10) displacement per unit beta for each direction in SHAPE_NAMES."""
    Ws = shape_blend_weights(labels, A)
    out = np.zeros((len(verts), 3, len(SHAPE_NAMES)))
    for k, name in enumerate(SHAPE_NAMES):
        if name == "belly":
            out[:, :, k] = _belly(verts, Ws)
            continue
        s, r = _direction_params(k)
        per_bone, _ = bone_displacements(verts, sk, s, r)
        acc = np.zeros((len(verts), 3))
        for b in range(NUM_JOINTS):  # explicit sum: fixed order, no BLAS
            acc += Ws[:, b, None] * per_bone[b]
        out[:, :, k] = acc
    return out


def _bump(r2: np.ndarray) -> np.ndarray:
    """Smooth bump of squared radius: 1 at 0, 0 (with zero slope) from 1 on. Polynomials only,
    because numpy's exp differs in the last bit between CPUs."""
    t = np.clip(1.0 - r2, 0.0, 1.0)
    return t * t * t


def _smoothstep(x: np.ndarray) -> np.ndarray:
    t = np.clip(x, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _belly(verts: np.ndarray, Ws: np.ndarray) -> np.ndarray:
    """Smooth forward bulge of the lower abdomen, 2.5 cm per unit at its centre."""
    x, y, z = verts[:, 0], verts[:, 1], verts[:, 2]
    torso = Ws[:, 0] + Ws[:, 3] + Ws[:, 6] + Ws[:, 9]
    front = _smoothstep((z + 0.03) / 0.1)
    u, w = (y + 0.1) / 0.22, x / 0.24
    env = torso * front * _bump(u * u + w * w)
    d = np.zeros_like(verts)
    d[:, 2] = 0.025 * env
    d[:, 1] = -0.006 * env  # a belly also sags a little
    return d


# ----------------------------------------------------------------------------------------------
# Pose blend shapes: a small outward bulge around a bending joint (LBS loses volume there).
# ----------------------------------------------------------------------------------------------

def bend_radii(verts: np.ndarray, W: np.ndarray, joints: np.ndarray) -> np.ndarray:
    """(24,) local radius at each joint: the median distance from it of the vertices blended
    between its bone and its parent's (0 where there are none, and for the root)."""
    out = np.zeros(NUM_JOINTS)
    for j in range(1, NUM_JOINTS):
        sel = 4.0 * W[:, j] * W[:, PARENTS[j]] > 0.5
        if np.any(sel):
            d = verts[sel] - joints[j]
            out[j] = float(np.median(np.sqrt(_dot(d, d))))
    return out


def posedirs(verts: np.ndarray, normals: np.ndarray, W: np.ndarray,
             joints: np.ndarray, radii: np.ndarray | None = None) -> np.ndarray:
    """(V, 3, 207). Rotating joint j by θ (any axis) pushes the vertices blended between j and
    its parent out along their normals by 0.12 · (local radius) · (1 − cos θ) · 4·w_j·w_parent.

    smplx multiplies these by (R_j − I) flattened; trace(R − I) = −2(1 − cos θ), so the
    direction sits on the three diagonal entries of each joint with factor −1/2.
    radii: the local radius per joint (default `bend_radii`)."""
    if radii is None:
        radii = bend_radii(verts, W, joints)
    out = np.zeros((len(verts), 3, 9 * (NUM_JOINTS - 1)))
    for j in range(1, NUM_JOINTS):
        env = 4.0 * W[:, j] * W[:, PARENTS[j]]
        sel = env > 0.5
        if not np.any(sel):
            continue
        amp = 0.12 * float(radii[j]) * env
        for c in (0, 4, 8):
            out[:, :, 9 * (j - 1) + c] = -0.5 * amp[:, None] * normals
    return out
