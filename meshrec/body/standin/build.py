"""The licence-free stand-in body model, in SMPL's exact format and sizes.

`build_standin(seed)` returns the arrays an SMPL model file holds, under SMPL's names:

    v_template   (6890, 3)      float64  rest vertices, metres
    f            (13776, 3)     uint32   faces of one closed, outward-oriented genus-0 surface
    J            (24, 3)        float64  rest joints (SMPL's joint order and kinematic tree)
    kintree_table (2, 24)       int64    row 0 parents (root: 4294967295), row 1 = arange(24)
    weights      (6890, 24)     float64  skinning weights, ≥ 0, rows sum to 1
    shapedirs    (6890, 3, 10)  float64  displacement per unit beta (see SHAPE_NAMES)
    posedirs     (6890, 3, 207) float64  pose correctives, used as (R_j − I) flattened, j = 1..23
    J_regressor  (24, 6890)     float64  dense, rows ≥ 0 summing to 1, J_regressor @ v_template = J
    model_kind   "standin"               marks the file as the stand-in (runs are tagged with it)
    seed         int64                   the seed it was generated from

Rest pose as SMPL's: y up, facing +z, the body's left on +x, T-pose, 1.70 m tall with the soles
at y = −1.17 and the crown at y = +0.53 (the pelvis joint at y ≈ −0.22, near the origin).

Shape directions, per unit beta (betas are meant for ±3): stature (+4 cm height), girth, leg
length, arm length, shoulder width, hip width, torso length, head size, belly, limb thickness —
each a few cm at most (see rig.SHAPE_NAMES).

Left/right symmetry, as SMPL's: the skeleton J exactly; the surface up to where the decimator put
the vertices (each vertex's reflection lies 0.41 mm from the surface on average, 7 mm at most, at a
thumb tip); the rig — weights, shape and pose blend shapes, joint regressor — is averaged with its
own mirror image on that surface (sym.py), so the mesh of flipped parameters is the mirrored
mesh to about the surface's own asymmetry (tests/test_mirror.py).

The seed: 0 is the default body. Any other seed jitters bone lengths and radii by at most ±3 %
(one factor per body region: legs, arms, torso width, girth, shoulder width, limb radius), giving
a slightly different person with the same topology. Same seed → identical arrays and bytes.
"""

from __future__ import annotations

import os

import numpy as np

from meshrec.body import mirror
from meshrec.body import params as layout
from meshrec.body.standin import mesh, rig, shape, sym
from meshrec.errors import MeshrecError
from meshrec.fileio import save_npz

# Bump when the generator changes its output: cached stand-ins are named by it.
VERSION = 2

NUM_VERTS = 6890
NUM_FACES = 13776          # a closed genus-0 surface has F = 2V − 4
GRID_STEP = 0.005          # marching-cubes voxel, metres
ROOT_PARENT = 4294967295   # how SMPL's files mark the root's parent (uint32 −1)
SHAPE_NAMES = rig.SHAPE_NAMES


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise MeshrecError(f"stand-in seed must be an integer, got {seed!r}")
    if not 0 <= int(seed) < 2**32:
        raise MeshrecError(f"stand-in seed must be between 0 and 2**32 - 1, got {seed}")
    return int(seed)


def build_mesh(seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict[str, shape.Primitive],
                                       shape.Skeleton]:
    """Rest vertices and faces of the stand-in surface, plus the primitives and skeleton."""
    p = shape.proportions(seed)
    prims = shape.primitives(p)
    sk = shape.skeleton(p)

    def sdf(P: np.ndarray) -> np.ndarray:
        return shape.body_sdf(P, prims)

    def grad(P: np.ndarray) -> np.ndarray:
        return shape.sdf_gradient(P, prims)

    reach_x = p.fingertip_x + 0.03
    lo = np.array([-reach_x, p.sole_y - 0.03, p.heel_z - 0.08])
    hi = np.array([reach_x, p.crown_y + 0.03, p.toe_z + 0.04])
    verts, faces = mesh.extract(sdf, lo, hi, GRID_STEP)
    verts, faces = mesh.decimate(verts, faces, NUM_FACES)
    verts, faces = mesh.cleanup(verts, faces, sdf, grad)
    mesh.check_surface(verts, faces, NUM_VERTS, NUM_FACES)
    # Every face must face the way the surface does (no folds from decimation or flips).
    cen = (verts[faces[:, 0]] + verts[faces[:, 1]] + verts[faces[:, 2]]) / 3.0
    fn, g = mesh.face_normals(verts, faces), grad(cen)
    if np.any(fn[:, 0] * g[:, 0] + fn[:, 1] * g[:, 1] + fn[:, 2] * g[:, 2] <= 0):
        raise MeshrecError("stand-in mesh generation failed: folded faces")
    return verts, faces, prims, sk


def build_standin(seed: int = 0) -> dict[str, np.ndarray]:
    """All arrays of the stand-in model for `seed` (pure, deterministic)."""
    seed = _check_seed(seed)
    verts, faces, prims, sk = build_mesh(seed)
    labels = rig.bone_labels(verts, shape.owner(verts, prims), prims, sk)
    A = rig.adjacency(faces, len(verts))
    # The rig is made left/right symmetric (see sym.py): each vertex's counterpart point.
    corr = mirror.surface_mirror(verts, faces)
    weights = sym.symmetric_weights(
        rig.skinning_weights(rig.separate_siblings(labels, A), A), corr)
    J_regressor = sym.symmetric_regressor(rig.joint_regressor(verts, labels, sk.joints), verts,
                                          sk.joints, corr)
    normals = sym.symmetric_normals(mesh.vertex_normals(verts, faces), corr)
    radii = sym.symmetric_joint_values(rig.bend_radii(verts, weights, sk.joints))
    kintree = np.array([[ROOT_PARENT if p < 0 else p for p in layout.PARENTS],
                        list(range(layout.NUM_JOINTS))], dtype=np.int64)
    return {
        "v_template": verts.astype(np.float64),
        "f": faces.astype(np.uint32),
        "J": sk.joints.astype(np.float64),
        "kintree_table": kintree,
        "weights": weights,
        "shapedirs": sym.symmetric_vectors(rig.shapedirs(verts, labels, A, sk), corr),
        "posedirs": rig.posedirs(verts, normals, weights, sk.joints, radii),
        "J_regressor": J_regressor,
        "model_kind": np.array("standin"),
        "seed": np.array(seed, dtype=np.int64),
    }


def write_standin(path: str | os.PathLike, seed: int = 0) -> str:
    """Generate the stand-in for `seed`, write it as a deterministic .npz, return its sha256."""
    return save_npz(path, build_standin(seed))
