"""Turn the stand-in's signed-distance body into a 6,890-vertex closed triangle mesh.

Recipe: sample the distance on a ~5 mm grid (only near the surface) → marching cubes → quadric
decimation to exactly 13,776 faces (a closed genus-0 mesh then has 6,890 vertices, F = 2V − 4) →
a few rounds of Delaunay edge flips and tangential smoothing with re-projection onto the surface,
which removes the decimator's slivers without changing counts.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from meshrec.errors import MeshrecError

Sdf = Callable[[np.ndarray], np.ndarray]

# A fraction of a voxel so no round-number size lands exactly on grid nodes (which gives
# zero-length edges that survive decimation).
_GRID_SHIFT = np.array([0.371, 0.613, 0.229])


def sample_grid(sdf: Sdf, lo: np.ndarray, hi: np.ndarray, h: float,
                block: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Distance on a regular grid; blocks far from the surface get only a sign (±4h).

    Returns (volume, origin). Values that are exactly zero are pushed off zero so that marching
    cubes never puts a vertex on a grid node.
    """
    origin = lo - (1.0 - _GRID_SHIFT) * h
    n = np.ceil((hi - origin) / h).astype(int) + 2
    nb = -(-n // block)
    # Coarse pass: distance at block centres decides which blocks need the fine values.
    cidx = [(np.arange(nb[k]) * block + 0.5 * (block - 1)) * h + origin[k] for k in range(3)]
    C = np.stack(np.meshgrid(*cidx, indexing="ij"), axis=-1).reshape(-1, 3)
    dc = sdf(C).reshape(tuple(nb))
    reach = 0.5 * block * h * np.sqrt(3.0) * 1.5 + 2 * h
    vol = np.where(dc > 0, 4 * h, -4 * h)
    vol = np.repeat(np.repeat(np.repeat(vol, block, 0), block, 1), block, 2)[:n[0], :n[1], :n[2]]
    vol = np.ascontiguousarray(vol)
    near = np.argwhere(np.abs(dc) < reach)
    axes = [np.arange(n[k]) * h + origin[k] for k in range(3)]
    # Fine pass over the near blocks, gathered into one call per slab of blocks along x.
    for bx in range(nb[0]):
        sel = near[near[:, 0] == bx]
        if len(sel) == 0:
            continue
        xs = slice(bx * block, min((bx + 1) * block, n[0]))
        pts, where = [], []
        for _, by, bz in sel:
            ys = slice(by * block, min((by + 1) * block, n[1]))
            zs = slice(bz * block, min((bz + 1) * block, n[2]))
            g = np.stack(np.meshgrid(axes[0][xs], axes[1][ys], axes[2][zs], indexing="ij"), -1)
            pts.append(g.reshape(-1, 3))
            where.append((xs, ys, zs, g.shape[:3]))
        d = sdf(np.concatenate(pts))
        off = 0
        for xs_, ys, zs, shape in where:
            m = shape[0] * shape[1] * shape[2]
            vol[xs_, ys, zs] = d[off:off + m].reshape(shape)
            off += m
    vol[np.abs(vol) < 1e-9] = 1e-9
    return vol, origin


def extract(sdf: Sdf, lo: np.ndarray, hi: np.ndarray, h: float) -> tuple[np.ndarray, np.ndarray]:
    """Marching cubes of sdf's zero level; faces wound so normals point outward."""
    from skimage.measure import marching_cubes

    vol, origin = sample_grid(sdf, lo, hi, h)
    verts, faces, _, _ = marching_cubes(vol, level=0.0, spacing=(h, h, h),
                                        allow_degenerate=False)
    verts = verts + origin
    faces = faces.astype(np.int64)
    if signed_volume(verts, faces) < 0:
        faces = faces[:, ::-1].copy()
    return verts, faces


def decimate(verts: np.ndarray, faces: np.ndarray, n_faces: int) -> tuple[np.ndarray, np.ndarray]:
    import fast_simplification

    v, f = fast_simplification.simplify(np.ascontiguousarray(verts, dtype=np.float64),
                                        np.ascontiguousarray(faces, dtype=np.int32),
                                        target_count=n_faces)
    return np.asarray(v, dtype=np.float64), np.asarray(f, dtype=np.int64)


# ----------------------------------------------------------------------------------------------
# Mesh measures (pure functions).
# ----------------------------------------------------------------------------------------------

def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.stack([a[:, 1] * b[:, 2] - a[:, 2] * b[:, 1],
                     a[:, 2] * b[:, 0] - a[:, 0] * b[:, 2],
                     a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]], axis=1)


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a[:, 0] * b[:, 0] + a[:, 1] * b[:, 1] + a[:, 2] * b[:, 2]


def _norm(a: np.ndarray) -> np.ndarray:
    return np.sqrt(_dot(a, a))


def face_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unnormalized face normals (length = twice the area)."""
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    return _cross(b - a, c - a)


def vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    fn = face_normals(verts, faces)
    vn = np.zeros_like(verts)
    for k in range(3):  # np.add.at keeps a fixed accumulation order
        np.add.at(vn, faces[:, k], fn)
    return vn / np.maximum(_norm(vn), 1e-30)[:, None]


def signed_volume(verts: np.ndarray, faces: np.ndarray) -> float:
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    return float(np.sum(_dot(a, _cross(b, c)))) / 6.0


def angles(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(F, 3) interior angles in degrees, at corners 0, 1, 2."""
    out = np.empty(faces.shape, dtype=np.float64)
    for k in range(3):
        p = verts[faces[:, k]]
        u = verts[faces[:, (k + 1) % 3]] - p
        w = verts[faces[:, (k + 2) % 3]] - p
        out[:, k] = np.degrees(np.arctan2(_norm(_cross(u, w)), _dot(u, w)))
    return out


def aspect_ratios(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Circumradius / (2 · inradius): 1 for an equilateral triangle, large for slivers."""
    a = _norm(verts[faces[:, 1]] - verts[faces[:, 2]])
    b = _norm(verts[faces[:, 2]] - verts[faces[:, 0]])
    c = _norm(verts[faces[:, 0]] - verts[faces[:, 1]])
    s = 0.5 * (a + b + c)
    area = np.sqrt(np.maximum(s * (s - a) * (s - b) * (s - c), 1e-300))
    return (a * b * c / (4 * area)) / (2 * area / s)


def edges_with_faces(faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Directed half-edges (3F, 2) and the face each belongs to."""
    he = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    fid = np.concatenate([np.arange(len(faces))] * 3)
    return he, fid


def topology_report(faces: np.ndarray, n_verts: int) -> dict[str, int | bool]:
    """Closedness, orientation consistency, Euler characteristic and component count."""
    he, _ = edges_with_faces(faces)
    key = he[:, 0] * n_verts + he[:, 1]
    rev = he[:, 1] * n_verts + he[:, 0]
    uniq, counts = np.unique(key, return_counts=True)
    directed_unique = bool(np.all(counts == 1))
    paired = bool(np.all(np.isin(rev, key)))
    und = np.unique(np.sort(he, axis=1), axis=0)
    euler = n_verts - len(und) + len(faces)
    # connected components by union-find over edges
    parent = np.arange(n_verts)

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for u, v in und:
        ru, rv = find(int(u)), find(int(v))
        if ru != rv:
            parent[max(ru, rv)] = min(ru, rv)
    roots = {find(i) for i in range(n_verts)}
    used = np.zeros(n_verts, dtype=bool)
    used[faces.ravel()] = True
    return {"closed_oriented": directed_unique and paired, "euler": int(euler),
            "components": len(roots), "unused_vertices": int(np.sum(~used)),
            "degenerate": int(np.sum((faces[:, 0] == faces[:, 1]) | (faces[:, 1] == faces[:, 2])
                                     | (faces[:, 2] == faces[:, 0])))}


# ----------------------------------------------------------------------------------------------
# Cleanup: Delaunay flips + tangential smoothing, vertices kept on the surface.
# ----------------------------------------------------------------------------------------------

def project(P: np.ndarray, sdf: Sdf, grad: Callable[[np.ndarray], np.ndarray],
            steps: int = 3) -> np.ndarray:
    """Newton steps along the distance gradient onto the zero level."""
    for _ in range(steps):
        d = sdf(P)
        g = grad(P)
        P = P - (d / np.maximum(_dot(g, g), 1e-12))[:, None] * g
    return P


def _cot(p: np.ndarray, q: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Cotangent of the angle at p in triangle (p, q, r)."""
    u, w = q - p, r - p
    return _dot(u, w) / np.maximum(_norm(_cross(u, w)), 1e-30)


def flip_round(verts: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, int]:
    """One round of Delaunay edge flips on non-adjacent edges; returns new faces and the count.

    Edge (a, b) shared by faces (a, b, c) and (b, a, d) is flipped to (c, d) when the angles
    opposite it sum to more than 180° (cot c + cot d < 0), unless that folds the surface, creates
    an edge that already exists, or leaves a or b with fewer than 4 neighbours.
    """
    faces = faces.copy()
    nv = len(verts)
    he, fid = edges_with_faces(faces)
    third = np.concatenate([faces[:, 2], faces[:, 0], faces[:, 1]])
    key = he[:, 0] * nv + he[:, 1]
    order = np.argsort(key, kind="stable")
    skey = key[order]
    rkey = he[:, 1] * nv + he[:, 0]
    twin = order[np.searchsorted(skey, rkey)]
    one = np.nonzero(he[:, 0] < he[:, 1])[0]  # each undirected edge once
    a, b = he[one, 0], he[one, 1]
    c, d = third[one], third[twin[one]]
    A, B, Cc, D = verts[a], verts[b], verts[c], verts[d]
    s = _cot(Cc, A, B) + _cot(D, B, A)
    n1 = _cross(B - A, Cc - A)
    n2 = _cross(A - B, D - B)
    m1 = _cross(D - A, Cc - A)
    m2 = _cross(B - D, Cc - D)
    nn = n1 / np.maximum(_norm(n1), 1e-30)[:, None] + n2 / np.maximum(_norm(n2), 1e-30)[:, None]
    ok = (s < -1e-6) & (_dot(m1, nn) > 0) & (_dot(m2, nn) > 0)
    ok &= _dot(n1, n2) > 0.7 * _norm(n1) * _norm(n2)
    cand = np.nonzero(ok)[0]
    cand = cand[np.argsort(s[cand], kind="stable")]
    valence = np.bincount(np.sort(he, axis=1)[he[:, 0] < he[:, 1]].ravel(), minlength=nv)
    edge_set = set((np.minimum(he[one, 0], he[one, 1]) * nv
                    + np.maximum(he[one, 0], he[one, 1])).tolist())
    used = np.zeros(len(faces), dtype=bool)
    flips = 0
    for i in cand.tolist():
        e = one[i]
        f1, f2 = fid[e], fid[twin[e]]
        if used[f1] or used[f2]:
            continue
        ai, bi, ci, di = int(a[i]), int(b[i]), int(c[i]), int(d[i])
        if valence[ai] <= 4 or valence[bi] <= 4:
            continue
        nk = min(ci, di) * nv + max(ci, di)
        if nk in edge_set:
            continue
        used[f1] = used[f2] = True
        edge_set.discard(min(ai, bi) * nv + max(ai, bi))
        edge_set.add(nk)
        valence[ai] -= 1
        valence[bi] -= 1
        valence[ci] += 1
        valence[di] += 1
        faces[f1] = (ai, di, ci)
        faces[f2] = (di, bi, ci)
        flips += 1
    return faces, flips


def surface_agreement(verts: np.ndarray, faces: np.ndarray,
                      grad: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Cosine between each face's normal and the surface normal at its centroid."""
    cen = (verts[faces[:, 0]] + verts[faces[:, 1]] + verts[faces[:, 2]]) / 3.0
    fn, g = face_normals(verts, faces), grad(cen)
    return _dot(fn, g) / np.maximum(_norm(fn) * _norm(g), 1e-30)


def smooth_round(verts: np.ndarray, faces: np.ndarray, sdf: Sdf,
                 grad: Callable[[np.ndarray], np.ndarray], step: float = 0.5) -> np.ndarray:
    """Move each vertex toward the area-weighted centroid of its faces, within the tangent plane,
    then back onto the surface. Moves that would tilt a face away from the surface (where the
    mesh is coarse for the curvature, e.g. a thumb tip) are undone."""
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    area = _norm(_cross(b - a, c - a))
    cen = (a + b + c) / 3.0
    acc = np.zeros_like(verts)
    wsum = np.zeros(len(verts))
    for k in range(3):
        np.add.at(acc, faces[:, k], cen * area[:, None])
        np.add.at(wsum, faces[:, k], area)
    target = acc / np.maximum(wsum, 1e-30)[:, None]
    g = grad(verts)
    n = g / np.maximum(_norm(g), 1e-30)[:, None]
    delta = target - verts
    delta = delta - _dot(delta, n)[:, None] * n
    moved = project(verts + step * delta, sdf, grad)
    before = surface_agreement(verts, faces, grad)
    for _ in range(20):
        after = surface_agreement(moved, faces, grad)
        bad = (after < 0.7) & (after < before)
        if not np.any(bad):
            break
        back = np.unique(faces[bad].ravel())
        moved[back] = verts[back]
    return moved


def cleanup(verts: np.ndarray, faces: np.ndarray, sdf: Sdf,
            grad: Callable[[np.ndarray], np.ndarray],
            rounds: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Remove the decimator's slivers: flips and smoothing, keeping vertex and face counts.
    Raw output here has 0.001° angles; after cleanup the smallest is over 10°."""
    verts = project(verts, sdf, grad)
    for _ in range(rounds):
        for _ in range(4):
            faces, flips = flip_round(verts, faces)
            if flips == 0:
                break
        verts = smooth_round(verts, faces, sdf, grad)
    for _ in range(4):
        faces, flips = flip_round(verts, faces)
        if flips == 0:
            break
    return verts, faces


def check_surface(verts: np.ndarray, faces: np.ndarray, n_verts: int, n_faces: int) -> None:
    """Raise if the mesh is not one closed, oriented, genus-0 surface of the expected size."""
    rep = topology_report(faces, len(verts))
    problems = []
    if len(verts) != n_verts or len(faces) != n_faces:
        problems.append(f"{len(verts)} vertices / {len(faces)} faces")
    if not rep["closed_oriented"]:
        problems.append("not closed and consistently oriented")
    if rep["euler"] != 2 or rep["components"] != 1:
        problems.append(f"euler {rep['euler']}, {rep['components']} components")
    if rep["degenerate"] or rep["unused_vertices"]:
        problems.append("degenerate faces or unused vertices")
    if problems:
        raise MeshrecError("stand-in mesh generation failed: " + "; ".join(problems))
