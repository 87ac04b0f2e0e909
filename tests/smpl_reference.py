"""Test helpers: a random but valid SMPL-format model, and the SMPL equations in float64 NumPy.

The reference is written from the SMPL paper's equations (Loper et al. 2015), independently
of smplx: shape blend shapes, joint regression, pose blend shapes from (R − I), forward
kinematics along the kinematic tree, linear blend skinning. Rotations come from scipy.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

SMPL_PARENTS = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21]
# SMPL files store the root's parent as uint32(-1).
ROOT_PARENT_IN_FILE = 4294967295


def uv_sphere(rings: int, segments: int) -> tuple[np.ndarray, np.ndarray]:
    """Closed, outward-oriented sphere: V = 2 + rings·segments, F = 2·rings·segments.

    rings=84, segments=82 gives SMPL's 6,890 vertices and 13,776 faces.
    """
    polar = np.pi * np.arange(1, rings + 1) / (rings + 1)
    azim = 2 * np.pi * np.arange(segments) / segments
    p, a = np.meshgrid(polar, azim, indexing="ij")
    ring_pts = np.stack([np.sin(p) * np.cos(a), np.cos(p), np.sin(p) * np.sin(a)], -1).reshape(-1, 3)
    verts = np.concatenate([[[0.0, 1.0, 0.0]], ring_pts, [[0.0, -1.0, 0.0]]])
    south = verts.shape[0] - 1

    def ring(i: int, j: int) -> int:
        return 1 + i * segments + (j % segments)

    faces = []
    for j in range(segments):
        faces.append((0, ring(0, j + 1), ring(0, j)))
        faces.append((south, ring(rings - 1, j), ring(rings - 1, j + 1)))
        for i in range(rings - 1):
            a0, a1 = ring(i, j), ring(i, j + 1)
            b0, b1 = ring(i + 1, j), ring(i + 1, j + 1)
            faces.append((a0, a1, b1))
            faces.append((a0, b1, b0))
    return verts, np.asarray(faces, dtype=np.uint32)


def random_smpl_arrays(seed: int = 0, rings: int = 84, segments: int = 82) -> dict[str, np.ndarray]:
    """A random SMPL-format model: valid weights/J_regressor (rows sum to 1), SMPL's tree."""
    rng = np.random.default_rng(seed)
    sphere, faces = uv_sphere(rings, segments)
    v_template = sphere * np.array([0.25, 0.85, 0.15]) + rng.normal(0.0, 0.003, sphere.shape)
    nv, nj = v_template.shape[0], 24

    j_regressor = np.zeros((nj, nv))
    for j in range(nj):
        target = rng.uniform(-1, 1, 3) * np.array([0.2, 0.7, 0.1])
        near = np.argsort(((v_template - target) ** 2).sum(1))[:8]
        j_regressor[j, near] = rng.dirichlet(np.ones(near.size))
    joints = j_regressor @ v_template

    weights = np.zeros((nv, nj))
    dist = ((v_template[:, None, :] - joints[None]) ** 2).sum(-1)
    nearest = np.argsort(dist, axis=1)[:, :3]
    np.put_along_axis(weights, nearest, rng.dirichlet(np.ones(3), size=nv), axis=1)

    kintree = np.stack([np.asarray(SMPL_PARENTS), np.arange(nj)]).astype(np.int64)
    kintree[0, 0] = ROOT_PARENT_IN_FILE
    return {
        "v_template": v_template,
        "f": faces,
        "shapedirs": rng.normal(0.0, 0.02, (nv, 3, 10)),
        "posedirs": rng.normal(0.0, 0.01, (nv, 3, 9 * (nj - 1))),
        "J_regressor": j_regressor,
        "weights": weights,
        "kintree_table": kintree,
        "J": joints,
    }


def smpl_forward_np(arrays: dict[str, np.ndarray], pose: np.ndarray, betas: np.ndarray,
                    transl: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """pose [B, 72] axis-angle, betas [B, 10], transl [B, 3] → vertices [B, V, 3], joints [B, 24, 3]."""
    v_template = np.asarray(arrays["v_template"], np.float64)
    shapedirs = np.asarray(arrays["shapedirs"], np.float64)[:, :, : betas.shape[1]]
    posedirs = np.asarray(arrays["posedirs"], np.float64)
    j_regressor = np.asarray(arrays["J_regressor"], np.float64)
    weights = np.asarray(arrays["weights"], np.float64)
    parents = SMPL_PARENTS
    nj = j_regressor.shape[0]
    out_v, out_j = [], []
    for b in range(pose.shape[0]):
        v_shaped = v_template + np.einsum("vck,k->vc", shapedirs, betas[b])
        rest_joints = j_regressor @ v_shaped
        rot = Rotation.from_rotvec(pose[b].reshape(nj, 3)).as_matrix()
        pose_feature = (rot[1:] - np.eye(3)).reshape(-1)
        v_posed = v_shaped + np.einsum("vcp,p->vc", posedirs, pose_feature)

        world = np.zeros((nj, 4, 4))
        for j in range(nj):
            local = np.eye(4)
            local[:3, :3] = rot[j]
            offset = rest_joints[j] - (rest_joints[parents[j]] if j > 0 else 0.0)
            local[:3, 3] = offset
            world[j] = local if j == 0 else world[parents[j]] @ local
        posed_joints = world[:, :3, 3].copy()
        # Skinning transform of joint j: move the rest joint to the origin, then apply world[j].
        skin = world.copy()
        skin[:, :3, 3] -= np.einsum("jab,jb->ja", world[:, :3, :3], rest_joints)
        blended = np.einsum("vj,jab->vab", weights, skin)
        verts = np.einsum("vab,vb->va", blended[:, :3, :3], v_posed) + blended[:, :3, 3]
        if transl is not None:
            verts = verts + transl[b]
            posed_joints = posed_joints + transl[b]
        out_v.append(verts)
        out_j.append(posed_joints)
    return np.stack(out_v), np.stack(out_j)
