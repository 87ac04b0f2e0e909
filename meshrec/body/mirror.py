"""Horizontal flips: what mirroring an image does to SMPL parameters, joints, keypoints and meshes.

Conventions (camera frame, as SMPL's: x right in the image, y down or up, z along the optical axis —
only x matters here). A horizontal image flip mirrors the 3D scene by M = diag(−1, 1, 1), x → −x,
provided the principal point sits on the image's vertical centre line (see "Pixels" below).

Pose. A rotation R seen in the mirror is M R M (M is its own inverse). In axis-angle, M R M has
axis-angle (a_x, −a_y, −a_z): the axis is a pseudovector, so mirroring negates the components
parallel to the mirror plane. The body's left joint takes the rotation of its right counterpart,
so each joint j gets (a_x, −a_y, −a_z) of joint JOINT_FLIP_PERM[j]. On the 72 pose entries this
is a signed permutation, hence linear and its own inverse.

Shape. Betas are unchanged: they describe a person, and the mirrored person is the same person
(exactly so for a model whose shape directions are left/right symmetric).

Translation. smplx adds `transl` to a body whose root joint sits at its rest pelvis J0(β) — the
root rotation turns the body about J0(β), not about the origin — so the posed pelvis is at
J0(β) + t whatever the pose. The flipped body must put its pelvis at the mirror of that point:

    J0(β) + t' = M (J0(β) + t)   ⇒   t' = M (t + J0(β)) − J0(β),
    i.e. t'_x = −t_x − 2·J0_x(β),  t'_y = t_y,  t'_z = t_z.

For a model symmetric about the plane x = J0_x (every model whose pelvis lies on its own symmetry
plane) the flipped mesh then equals the mirrored mesh exactly: the body mirrored about its own
plane, M_c(p) = M p + (2c, 0, 0) with c = J0_x, differs from the camera-frame mirror M by that
constant shift, which t' absorbs. The naive t' = M t is right only when J0_x(β) = 0; SMPL's rest
pelvis is a few millimetres off x = 0, so it would move the flipped body by twice that.

Meshes. Vertex i of the mirrored mesh is M applied to the point of the original mesh that is the
left/right counterpart of vertex i. `vertex_mirror_map` finds the counterpart vertex (exact for a
mesh built symmetric, like SMPL's template up to its asymmetries); `surface_mirror` finds the
counterpart point on the surface (a triangle and barycentrics), for meshes whose vertices are
not placed symmetrically, like the stand-in's (its vertex layout comes from a decimator).

Pixels. A pixel's column j covers u ∈ [j, j+1), its centre at u = j + 0.5. A horizontal flip of an
image W pixels wide moves column j to column W−1−j (what `torch.flip(img, [-1])`, `cv2.flip(img, 1)`
and DALI's `flip`/`crop_mirror_normalize(mirror=1)` do), which in continuous coordinates is
u → W − u for every point, pixel centres included. Keypoints stored as pixel indices (centre of
column j at u = j) flip as u → W − 1 − u instead. A pinhole camera's principal point flips the same
way, c_x → W − c_x; only when c_x = W/2 is the flipped image the scene mirrored by x → −x seen
through the SAME camera. A crop box centre flips as u → W − u too.

Everything takes NumPy arrays or torch tensors with any leading shape and returns the same kind;
inputs are never modified.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np

from meshrec.body import params as layout
from meshrec.errors import MeshrecError

try:  # torch stays optional: data tools may flip with NumPy alone
    import torch
except ImportError:  # pragma: no cover - torch is installed with meshrec
    torch = None  # type: ignore[assignment]

Array = Union[np.ndarray, "torch.Tensor"]

X_SIGN = np.array([-1.0, 1.0, 1.0])
MIRROR = np.diag(X_SIGN)                  # x → −x
AXIS_ANGLE_SIGN = np.array([1.0, -1.0, -1.0])  # axis-angle of M R M, from that of R


def flip_perm(names: Sequence[str]) -> np.ndarray:
    """Index of each name's left/right counterpart (`left_x` ↔ `right_x`; others map to themselves)."""
    index = {name: i for i, name in enumerate(names)}
    if len(index) != len(names):
        raise MeshrecError("joint names must be unique to pair left with right")
    perm = np.arange(len(names), dtype=np.int64)
    for i, name in enumerate(names):
        for side, other in (("left_", "right_"), ("right_", "left_")):
            if name.startswith(side):
                twin = other + name[len(side):]
                if twin not in index:
                    raise MeshrecError(f"joint '{name}' has no counterpart '{twin}'")
                perm[i] = index[twin]
    return perm


JOINT_FLIP_PERM: np.ndarray = flip_perm(layout.JOINT_NAMES)
JOINT_FLIP_PERM.setflags(write=False)


def _is_torch(x: object) -> bool:
    return torch is not None and isinstance(x, torch.Tensor)


def _const(x: Array, values: object) -> Array:
    """`values` (array-like) as an array of x's kind, dtype and device."""
    if _is_torch(x):
        return torch.as_tensor(values, dtype=x.dtype, device=x.device)
    return np.asarray(values, dtype=np.result_type(x.dtype, np.float32))


def _take(x: Array, index: np.ndarray, axis: int) -> Array:
    if _is_torch(x):
        return torch.index_select(x, axis, torch.tensor(np.asarray(index), device=x.device))
    return np.take(x, index, axis=axis)


# --- parameters --------------------------------------------------------------------------------

def _pose_index_and_sign(perm: np.ndarray = JOINT_FLIP_PERM) -> tuple[np.ndarray, np.ndarray]:
    index = (3 * perm[:, None] + np.arange(3)[None, :]).reshape(-1)
    sign = np.tile(AXIS_ANGLE_SIGN, len(perm))
    return index, sign


_POSE_INDEX, _POSE_SIGN = _pose_index_and_sign()


def flip_axis_angle(axis_angle: Array) -> Array:
    """[..., 3] axis-angle of R → axis-angle of M R M (x kept, y and z negated). No joint swap."""
    return axis_angle * _const(axis_angle, AXIS_ANGLE_SIGN)


def flip_rotmat(rotmat: Array) -> Array:
    """[..., 3, 3] rotation matrices R → M R M (entries with one x index change sign). No joint swap."""
    sign = np.outer(X_SIGN, X_SIGN)
    return rotmat * _const(rotmat, sign)


def flip_pose(pose: Array) -> Array:
    """[..., 72] axis-angle pose → the mirrored pose: joints swapped left/right, y and z negated."""
    if pose.shape[-1] != 3 * layout.NUM_JOINTS:
        raise MeshrecError(f"pose has {pose.shape[-1]} entries; expected {3 * layout.NUM_JOINTS}")
    return _take(pose, _POSE_INDEX, -1) * _const(pose, _POSE_SIGN)


def flip_transl(transl: Array, pelvis_rest: Array) -> Array:
    """[..., 3] translation → t' = M (t + J0) − J0, so the flipped pelvis is the mirrored pelvis.

    pelvis_rest: the body's rest pelvis J0(β) ([..., 3] or (3,), broadcast; see `pelvis_rest`).
    Only its x matters: t'_x = −t_x − 2·J0_x.
    """
    pelvis = _const(transl, pelvis_rest)
    if pelvis.shape[-1] != 3 or transl.shape[-1] != 3:
        raise MeshrecError("flip_transl expects 3-vectors on the last axis")
    shift = pelvis * _const(pelvis, np.array([-2.0, 0.0, 0.0]))
    return transl * _const(transl, X_SIGN) + shift


def flip_params(vec: Array, pelvis_rest: Array | None = None) -> Array:
    """Parameter vector [..., 82 | 85] of an image → that of the horizontally flipped image.

    Pose mirrored (`flip_pose`), betas unchanged, translation by `flip_transl`, which needs the
    body's rest pelvis J0(β): a vector with translation without `pelvis_rest` is refused (pass
    zeros only for a model whose pelvis lies on x = 0).
    """
    with_transl = layout.has_transl(vec)
    pose = flip_pose(vec[..., layout.POSE])
    parts = [pose, vec[..., layout.BETAS]]
    if with_transl:
        if pelvis_rest is None:
            raise MeshrecError("flipping a parameter vector with translation needs the body's rest "
                               "pelvis J0(betas) (mirror.pelvis_rest)")
        parts.append(flip_transl(vec[..., layout.TRANSL], pelvis_rest))
    if _is_torch(vec):
        return torch.cat(parts, dim=-1)
    return np.concatenate(parts, axis=-1)


def pelvis_affine(arrays: dict[str, np.ndarray], num_betas: int = layout.NUM_BETAS
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The body's rest pelvis as an affine function of betas: J0(β) = offset + basis @ β.

    offset (3,) = J_regressor[0] @ v_template, basis (3, num_betas) = J_regressor[0] @ shapedirs.
    """
    row = np.asarray(arrays["J_regressor"], dtype=np.float64)[0]
    offset = row @ np.asarray(arrays["v_template"], dtype=np.float64)
    basis = np.einsum("v,vck->ck", row, np.asarray(arrays["shapedirs"], np.float64)[:, :, :num_betas])
    return offset, basis


def pelvis_rest(arrays: dict[str, np.ndarray], betas: Array) -> Array:
    """J0(β) [..., 3] for betas [..., 10], the point the root rotation turns the body about."""
    offset, basis = pelvis_affine(arrays, betas.shape[-1])
    return _const(betas, offset) + betas @ _const(betas, basis.T)


# --- joints and keypoints ----------------------------------------------------------------------

def flip_joints(joints: Array, perm: np.ndarray = JOINT_FLIP_PERM) -> Array:
    """3D joints [..., K, 3 | 4] (4th column: confidence, kept) → swapped left/right, x negated.

    This mirrors about x = 0 of the joints' frame: camera-frame joints flip exactly; root-relative
    joints (pelvis subtracted) stay root-relative.
    """
    if joints.shape[-1] not in (3, 4) or joints.shape[-2] != len(perm):
        raise MeshrecError(f"joints of shape {tuple(joints.shape)}; expected [..., {len(perm)}, 3 or 4]")
    sign = np.ones(joints.shape[-1])
    sign[0] = -1.0
    return _take(joints, perm, -2) * _const(joints, sign)


def flip_keypoints_2d(uv: Array, width: float, perm: np.ndarray = JOINT_FLIP_PERM) -> Array:
    """2D keypoints [..., K, 2 | 3] in continuous pixel coordinates (pixel centres at j + 0.5):
    u → width − u, left/right swapped; v and a 3rd column (confidence) kept.

    For keypoints stored as pixel indices (centre of column j at u = j) pass `width − 1`.
    """
    if uv.shape[-1] not in (2, 3) or uv.shape[-2] != len(perm):
        raise MeshrecError(f"keypoints of shape {tuple(uv.shape)}; expected [..., {len(perm)}, 2 or 3]")
    sign = np.ones(uv.shape[-1])
    sign[0] = -1.0
    offset = np.zeros(uv.shape[-1])
    offset[0] = width
    return _take(uv, perm, -2) * _const(uv, sign) + _const(uv, offset)


# --- vertex correspondence ---------------------------------------------------------------------

def _reflect(points: np.ndarray, plane_x: float) -> np.ndarray:
    out = np.array(points, dtype=np.float64)
    out[:, 0] = 2.0 * plane_x - out[:, 0]
    return out


def vertex_mirror_map(v_template: np.ndarray, plane_x: float = 0.0) -> np.ndarray:
    """(V,) int64: for each vertex, the vertex nearest to its reflection about the plane x = plane_x.

    The mirrored mesh of a posed mesh Y is then M Y[map] (see `mirror_vertices`). Exact for a mesh
    whose vertices were placed symmetrically; `rest_residual` says how far from that a mesh is.
    """
    from scipy.spatial import cKDTree

    verts = np.asarray(v_template, dtype=np.float64)
    _, index = cKDTree(verts).query(_reflect(verts, plane_x))
    return index.astype(np.int64)


def _dot3(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Row-wise dot product of [..., 3] arrays, written out: the same bits on every CPU (the
    stand-in generator builds its symmetric rig on these closest points)."""
    return x[..., 0] * y[..., 0] + x[..., 1] * y[..., 1] + x[..., 2] * y[..., 2]


def closest_points_on_triangles(points: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray
                                ) -> np.ndarray:
    """Barycentrics (N, 3) of the point of triangle (a, b, c) closest to each point (all (N, 3)).

    Region tests on the Voronoi regions of the vertices, edges and face, in the order of
    Ericson's Real-Time Collision Detection §5.1.5; the first region that holds the point wins.
    """
    def dot(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return _dot3(x, y)

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        return num / np.where(den == 0.0, 1.0, den)  # den = 0 only in regions that lose anyway

    ab, ac = b - a, c - a
    d1, d2 = dot(ab, points - a), dot(ac, points - a)
    d3, d4 = dot(ab, points - b), dot(ac, points - b)
    d5, d6 = dot(ab, points - c), dot(ac, points - c)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2

    total = va + vb + vc
    v, w = ratio(vb, total), ratio(vc, total)
    bary = np.stack([1.0 - v - w, v, w], -1)                   # inside the face
    zero, one = np.zeros_like(d1), np.ones_like(d1)
    t = ratio(d4 - d3, (d4 - d3) + (d5 - d6))
    regions = [  # lowest priority first; later entries overwrite
        ((va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0), (zero, 1.0 - t, t)),  # edge bc
        ((vb <= 0) & (d2 >= 0) & (d6 <= 0), (1.0 - ratio(d2, d2 - d6), zero, ratio(d2, d2 - d6))),
        ((d6 >= 0) & (d5 <= d6), (zero, zero, one)),                         # vertex c
        ((vc <= 0) & (d1 >= 0) & (d3 <= 0), (1.0 - ratio(d1, d1 - d3), ratio(d1, d1 - d3), zero)),
        ((d3 >= 0) & (d4 <= d3), (zero, one, zero)),                         # vertex b
        ((d1 <= 0) & (d2 <= 0), (one, zero, zero)),                          # vertex a
    ]
    for mask, value in regions:
        bary = np.where(mask[:, None], np.stack(value, -1), bary)
    return bary


def closest_points_on_mesh(points: np.ndarray, verts: np.ndarray, faces: np.ndarray
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each point (N, 3): the closest point of the triangle mesh, exactly.

    Returns (face index (N,), barycentrics (N, 3), distance (N,)). Candidates are the faces whose
    centroid lies within d + r of the point, where d is its distance to the nearest vertex (a point
    of the surface, so the answer is no farther) and r the largest centroid-to-corner distance of
    any face: no face outside that ball can hold a closer point.
    """
    from scipy.spatial import cKDTree

    points = np.asarray(points, dtype=np.float64)
    verts = np.asarray(verts, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    tri = verts[faces]                                          # (F, 3, 3)
    centroid = tri.mean(1)
    spoke = tri - centroid[:, None]
    reach = np.sqrt(_dot3(spoke, spoke)).max()
    d_vertex, _ = cKDTree(verts).query(points)
    lists = cKDTree(centroid).query_ball_point(points, d_vertex + reach + 1e-12)
    counts = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(points))
    owner = np.repeat(np.arange(len(points)), counts)
    cand = np.concatenate([np.asarray(x, dtype=np.int64) for x in lists])
    bary = closest_points_on_triangles(points[owner], tri[cand, 0], tri[cand, 1], tri[cand, 2])
    corner = tri[cand]
    nearest = bary[:, 0, None] * corner[:, 0] + bary[:, 1, None] * corner[:, 1] \
        + bary[:, 2, None] * corner[:, 2]
    gap = nearest - points[owner]
    dist = np.sqrt(_dot3(gap, gap))
    # The smallest distance per point: sort by (owner, distance) and keep each owner's first row.
    order = np.lexsort((dist, owner))
    first = order[np.searchsorted(owner[order], np.arange(len(points)))]
    return cand[first], bary[first], dist[first]


@dataclass(frozen=True)
class SurfaceMirror:
    """Each vertex's left/right counterpart as a point of the surface: Σ_k bary[i,k] · V[tri[i,k]]."""

    triangles: np.ndarray  # (V, 3) int64 vertex ids of the triangle holding the counterpart
    bary: np.ndarray       # (V, 3) float64 barycentrics, ≥ 0, rows sum to 1
    distance: np.ndarray   # (V,) metres from the reflected rest vertex to the surface


def surface_mirror(v_template: np.ndarray, faces: np.ndarray, plane_x: float = 0.0) -> SurfaceMirror:
    """Counterpart of each vertex: the closest surface point to its reflection about x = plane_x."""
    verts = np.asarray(v_template, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    face, bary, dist = closest_points_on_mesh(_reflect(verts, plane_x), verts, faces)
    return SurfaceMirror(triangles=faces[face], bary=bary, distance=dist)


Correspondence = Union[np.ndarray, SurfaceMirror]


def counterpart_points(vertices: Array, corr: Correspondence) -> Array:
    """[..., V, 3] mesh → [..., V, 3] its point at each vertex's counterpart (not yet mirrored)."""
    if isinstance(corr, SurfaceMirror):
        gathered = _take(vertices, corr.triangles.reshape(-1), -2)
        gathered = gathered.reshape(tuple(vertices.shape[:-2]) + corr.triangles.shape + (3,))
        return (gathered * _const(vertices, corr.bary)[..., None]).sum(-2)
    return _take(vertices, np.asarray(corr, dtype=np.int64), -2)


def mirror_vertices(vertices: Array, corr: Correspondence) -> Array:
    """[..., V, 3] mesh → its mirror image about x = 0, in the mesh's own vertex order."""
    return counterpart_points(vertices, corr) * _const(vertices, X_SIGN)


def rest_residual(v_template: np.ndarray, corr: Correspondence, plane_x: float = 0.0) -> np.ndarray:
    """(V,) metres between each rest vertex and its counterpart reflected about x = plane_x."""
    verts = np.asarray(v_template, dtype=np.float64)
    mirrored = _reflect(counterpart_points(verts, corr), plane_x)
    return np.sqrt(((mirrored - verts) ** 2).sum(-1))


def symmetry_summary(v_template: np.ndarray, faces: np.ndarray, plane_x: float = 0.0
                     ) -> dict[str, float]:
    """How far a rest mesh is from left/right symmetric about x = plane_x, in metres.

    `vertex_*`: each vertex to the reflection of its nearest-vertex counterpart (0 for a mesh
    built symmetric; about the vertex spacing otherwise). `surface_*`: each vertex's reflection
    to the surface (the shape's own asymmetry, whatever the vertex layout).
    """
    vertex = rest_residual(v_template, vertex_mirror_map(v_template, plane_x), plane_x)
    surface = surface_mirror(v_template, faces, plane_x).distance
    stats: dict[str, float] = {}
    for name, values in (("vertex", vertex), ("surface", surface)):
        stats[f"{name}_mean"] = float(values.mean())
        stats[f"{name}_p99"] = float(np.percentile(values, 99))
        stats[f"{name}_max"] = float(values.max())
    return stats
