"""Make the stand-in's rig left/right symmetric about x = 0, as SMPL's is.

The stand-in's surface is symmetric up to where the decimator put its vertices (each vertex's
reflection lies within 0.4 mm of the surface on average), but a rig computed on that vertex
layout is not: a diffusion over the mesh graph and the bone masks land differently on the two
sides, so the mesh of flipped parameters would not be the mirrored mesh (`body.mirror`).

Each per-vertex quantity q is averaged with its own mirror image, read at the vertex's
counterpart point on the surface (the closest surface point to its reflection,
`mirror.surface_mirror`) by barycentric interpolation: q ← (q + m(q)) / 2, where m

  - swaps left and right bones of skinning weights (`mirror.JOINT_FLIP_PERM`),
  - negates x of displacements (shape directions, normals).

The joint regressor's rows are averaged the same way (a row read on the mirrored mesh) and then
moved back onto the convex weights that reproduce J exactly. Pose blend shapes are not averaged
but rebuilt from the symmetric weights, normals and per-joint radii (each joint's averaged with
its twin's), so they stay on the vertices blended across their joint.

As the two sides' vertices do not correspond one to one, m is not exactly an involution and
(q + m(q)) / 2 is symmetric up to the interpolation error of q over one triangle: small where q
is smooth. Pure functions; only +, ×, ÷ and square roots, so the same bits on every CPU.
"""

from __future__ import annotations

import numpy as np

from meshrec.body.standin import rig
from meshrec.body.mirror import JOINT_FLIP_PERM, X_SIGN, SurfaceMirror


def counterpart_values(values: np.ndarray, corr: SurfaceMirror) -> np.ndarray:
    """(V, ...) per-vertex values → their barycentric interpolation at each vertex's counterpart
    point (written out in a fixed order rather than as a contraction)."""
    t, b = corr.triangles, corr.bary
    shape = (-1,) + (1,) * (values.ndim - 1)
    return (b[:, 0].reshape(shape) * values[t[:, 0]] + b[:, 1].reshape(shape) * values[t[:, 1]]
            + b[:, 2].reshape(shape) * values[t[:, 2]])


def mirrored_weights(W: np.ndarray, corr: SurfaceMirror) -> np.ndarray:
    """(V, 24) skinning weights of the mirrored body: the counterpart's, left and right bones
    swapped."""
    return counterpart_values(W, corr)[:, JOINT_FLIP_PERM]


def mirrored_vectors(X: np.ndarray, corr: SurfaceMirror) -> np.ndarray:
    """(V, 3, ...) vectors per vertex (displacements, normals) of the mirrored body: the
    counterpart's, x negated."""
    return counterpart_values(X, corr) * X_SIGN.reshape((1, 3) + (1,) * (X.ndim - 2))


def symmetric_weights(W: np.ndarray, corr: SurfaceMirror, rounds: int = 2,
                      floor: float = 2e-3) -> np.ndarray:
    """Weights averaged with their mirror image, `rounds` times, each time put back under the
    blending rule (one bone's star, nothing below `floor`, rows summing to 1).

    A second round halves what is left where the weights change fast (a few rings around
    joints); more rounds gain little and blur the weights further."""
    for _ in range(rounds):
        W = rig.restrict_to_star(0.5 * (W + mirrored_weights(W, corr)), floor)
    return W


def symmetric_vectors(X: np.ndarray, corr: SurfaceMirror) -> np.ndarray:
    """(V, 3, ...) vectors averaged with their mirror image (shape directions)."""
    return 0.5 * (X + mirrored_vectors(X, corr))


def symmetric_normals(normals: np.ndarray, corr: SurfaceMirror) -> np.ndarray:
    """(V, 3) unit normals averaged with their mirror image and renormalized."""
    n = symmetric_vectors(normals, corr)
    length = np.sqrt(n[:, 0] * n[:, 0] + n[:, 1] * n[:, 1] + n[:, 2] * n[:, 2])
    return n / np.maximum(length, 1e-30)[:, None]


def symmetric_joint_values(values: np.ndarray) -> np.ndarray:
    """(24, ...) per-joint values averaged between each joint and its left/right counterpart."""
    return 0.5 * (values + values[JOINT_FLIP_PERM])


def mirrored_regressor(R: np.ndarray, corr: SurfaceMirror) -> np.ndarray:
    """(24, V) joint regressor of the mirrored body: row j is row JOINT_FLIP_PERM[j] moved from
    each vertex onto the corners of the triangle holding its counterpart point (the transpose of
    the interpolation), so it reads the mirrored mesh where the row of j's twin reads the mesh."""
    src = R[JOINT_FLIP_PERM]
    out = np.zeros_like(R)
    for k in range(3):  # np.add.at accumulates in a fixed order
        np.add.at(out.T, corr.triangles[:, k], (src * corr.bary[:, k]).T)
    return out


def symmetric_regressor(R: np.ndarray, verts: np.ndarray, joints: np.ndarray,
                        corr: SurfaceMirror) -> np.ndarray:
    """(24, V) regressor averaged with its mirror image, each row then moved to the nearest
    convex weights (on the same vertices) that reproduce its joint exactly; a row for which no
    such weights exist keeps its original."""
    prior = 0.5 * (R + mirrored_regressor(R, corr))
    out = R.copy()
    for j in range(len(R)):
        support = np.nonzero(prior[j] > 0)[0]
        row = rig.convex_weights(verts[support], prior[j, support] / np.sum(prior[j, support]),
                                 joints[j], 0.05)
        if row is not None:
            out[j] = 0.0
            out[j, support] = row
    return out
