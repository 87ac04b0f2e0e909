"""A small z-buffer triangle rasterizer in NumPy: body pictures, synthetic frames, overlays.

No OpenGL, no system library: every step is a vectorized NumPy operation, so it runs the same on
a login node, in a DataLoader worker and in CI.

Conventions (OpenCV):
  * camera frame: x right, y down, z forward; a world point X maps to the camera as R @ X + t.
  * pixel (row i, column j) covers [j, j+1) x [i, i+1); its centre is (j + 0.5, i + 0.5), and a
    point projects to u = fx * x / z + cx, v = fy * y / z + cy.
  * depth is the camera z of the surface (not the Euclidean distance); background depth is +inf.

Public API:
  Camera(fx, fy, cx, cy, width, height, R=I, t=0)         intrinsics + world->camera extrinsics
  look_at(eye, target, up=(0, 1, 0)) -> (R, t)              camera at `eye` looking at `target`
  project(points_world, camera) -> (uv (N,2), depth (N,))   pinhole projection
  rasterize(vertices_cam, faces, camera, near=1e-3, cull_backfaces=False) -> Raster
      Raster.face_index (H,W) int32, -1 = background; .depth (H,W) float32; .barycentrics (H,W,3)
      float32, perspective-correct.
  vertex_normals(vertices, faces) -> (V,3)                  area-weighted, unit length
  render_mesh(vertices_world, faces, camera, vertex_colors=None, face_colors=None,
              light_dir=(0.3, -0.5, -1.0), ambient=0.35, background=None, smooth=True,
              supersample=1, cull_backfaces=False) -> RenderResult
      RenderResult.image (H,W,3) uint8 composited over the background; .mask (H,W) bool (coverage
      >= 0.5); .depth (H,W) float32 (nearest sample per pixel, +inf = none); .rgba (H,W,4) uint8,
      the mesh alone with coverage as alpha.
  overlay(image, result, alpha=0.7) -> (H,W,3) uint8       blend a render over a photo
  part_colors(weights (V,24)) -> (V,3) uint8               one colour per SMPL part (argmax weight)
  save_png(path, image)                                     atomic PNG write (Pillow)

Clipping: triangles with any vertex closer than `near` (or behind the camera) are dropped, not
clipped. Bodies and boxes here never cross the camera plane, and dropping keeps the code short.
Triangles are two-sided unless `cull_backfaces` (counter-clockwise = front, as trimesh and SMPL).

Method: triangles are grouped by screen bounding box size (rounded up to a few sizes; boxes over
128 px are cut into 128 px tiles, and tiles wholly outside the triangle are skipped), so each
group's candidate pixel centres form one dense (n, h, w) grid evaluated by broadcasting. The
screen-space barycentrics and 1/z are linear in screen space, evaluated as planes; edge tests keep
the centres inside. The z-buffer keeps the largest 1/z per pixel (np.maximum.at); exact ties
(shared edges, vertices) go to the first fragment in a fixed order, so output is deterministic.
Perspective-correct barycentrics are computed only at the visible fragments.
Speed, one core: bench/RESULTS.md (bench/render.py, a closed 13,776-face mesh). A NumPy-for-torch
port of the hot loop was about 2x slower on CPU, so this stays NumPy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

import numpy as np

from meshrec.errors import MeshrecError
from meshrec.fileio import atomic_open

# Candidate pixel centres evaluated at once: bounds the temporary arrays to a few tens of MB.
_CHUNK = 1 << 18
# Boxes are rounded up to one of these sizes (per axis) so that each size forms one dense grid;
# boxes larger than _TILE pixels are cut into tiles first.
_TILE = 128
_BOX_SIZES = np.array([1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128])
# Pixel centres this far outside an edge (in barycentric units) still count as inside, so that
# round-off cannot open holes along edges shared by two triangles.
_EDGE_EPS = 1e-6


@dataclass(eq=False)
class Camera:
    """Pinhole camera: focal lengths and principal point in pixels, image size, world->camera pose."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    R: np.ndarray = field(default_factory=lambda: np.eye(3))
    t: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def __post_init__(self) -> None:
        self.R = np.asarray(self.R, dtype=np.float64)
        self.t = np.asarray(self.t, dtype=np.float64).reshape(-1)
        if self.R.shape != (3, 3) or self.t.shape != (3,):
            raise MeshrecError(f"camera R must be 3x3 and t length 3, got {self.R.shape}, {self.t.shape}")
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise MeshrecError(f"camera image size must be positive, got {self.width}x{self.height}")
        if not (self.fx > 0 and self.fy > 0):
            raise MeshrecError(f"camera focal lengths must be positive, got {self.fx}, {self.fy}")
        self.width, self.height = int(self.width), int(self.height)

    def to_camera(self, points: np.ndarray) -> np.ndarray:
        """World points (N,3) -> camera-frame points (N,3)."""
        return np.asarray(points, dtype=np.float64) @ self.R.T + self.t

    def scaled(self, k: int) -> "Camera":
        """The same view at k times the resolution (pixel centres stay consistent)."""
        return Camera(self.fx * k, self.fy * k, self.cx * k, self.cy * k,
                      self.width * k, self.height * k, self.R, self.t)


def look_at(eye: Sequence[float], target: Sequence[float],
            up: Sequence[float] = (0.0, 1.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """Extrinsics (R, t) of a camera at `eye` looking at `target`, with world `up` shown upwards."""
    eye, target, up = (np.asarray(a, dtype=np.float64) for a in (eye, target, up))
    z = target - eye
    if np.linalg.norm(z) < 1e-12:
        raise MeshrecError("look_at: eye and target coincide")
    z = z / np.linalg.norm(z)
    x = np.cross(z, up)  # image right; y = z x x then points down the image (OpenCV)
    if np.linalg.norm(x) < 1e-9:
        raise MeshrecError("look_at: viewing direction is parallel to the up vector")
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    return R, -R @ eye


def project(points: np.ndarray, camera: Camera) -> tuple[np.ndarray, np.ndarray]:
    """World points (N,3) -> pixel coordinates (N,2) and camera depth z (N,)."""
    pc = camera.to_camera(_as_points(points, "points"))
    z = pc[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = np.stack([camera.fx * pc[:, 0] / z + camera.cx, camera.fy * pc[:, 1] / z + camera.cy], axis=1)
    return uv, z


class Raster(NamedTuple):
    face_index: np.ndarray    # (H,W) int32, -1 where no triangle
    depth: np.ndarray         # (H,W) float32 camera z, +inf where no triangle
    barycentrics: np.ndarray  # (H,W,3) float32 perspective-correct weights of the face's vertices


def rasterize(vertices_cam: np.ndarray, faces: np.ndarray, camera: Camera, *,
              near: float = 1e-3, cull_backfaces: bool = False) -> Raster:
    """Visible face, depth and barycentrics per pixel of triangles given in the camera frame.

    Only the intrinsics and image size of `camera` are used. Triangles with a vertex at z <= near
    are dropped. With `cull_backfaces`, triangles whose counter-clockwise normal points away from
    the camera are skipped (right for closed meshes only).
    """
    v = _as_points(vertices_cam, "vertices")
    f = _as_faces(faces, len(v))
    hits = _visible(v, f, camera, near, cull_backfaces)
    H, W = camera.height, camera.width
    face = np.full(H * W, -1, dtype=np.int32)
    depth = np.full(H * W, np.inf, dtype=np.float32)
    bary = np.zeros((H * W, 3), dtype=np.float32)
    face[hits.pixel] = hits.face
    depth[hits.pixel] = hits.depth
    bary[hits.pixel] = hits.bary.T
    return Raster(face.reshape(H, W), depth.reshape(H, W), bary.reshape(H, W, 3))


class _Hits(NamedTuple):
    pixel: np.ndarray  # (P,) flat index of each covered pixel, increasing
    face: np.ndarray   # (P,) visible face
    bary: np.ndarray   # (3,P) float32 perspective-correct barycentrics
    depth: np.ndarray  # (P,) float32 camera z


def _visible(v: np.ndarray, f: np.ndarray, camera: Camera, near: float, cull_backfaces: bool) -> _Hits:
    """The z-buffer, kept sparse: what is visible at each covered pixel."""
    if not near > 0:
        raise MeshrecError(f"near must be positive, got {near}")
    W, H = camera.width, camera.height
    empty = _Hits(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((3, 0), np.float32),
                  np.zeros(0, np.float32))
    tri = v[f]                                         # (F,3,3) camera frame
    z = tri[:, :, 2]
    keep = np.all(z > near, axis=1)
    if cull_backfaces:
        n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        keep &= np.einsum("ij,ij->i", n, tri[:, 0]) < 0.0
    fid = np.nonzero(keep)[0]
    tri, z = tri[fid], z[fid]
    x = camera.fx * tri[:, :, 0] / z + camera.cx       # (F,3) screen coordinates, float64
    y = camera.fy * tri[:, :, 1] / z + camera.cy

    # Range of pixel centres (j + 0.5) inside each bounding box, clipped to the image.
    x0 = np.maximum(np.ceil(x.min(1) - 0.5), 0).astype(np.int64)
    x1 = np.minimum(np.floor(x.max(1) - 0.5), W - 1).astype(np.int64)
    y0 = np.maximum(np.ceil(y.min(1) - 0.5), 0).astype(np.int64)
    y1 = np.minimum(np.floor(y.max(1) - 0.5), H - 1).astype(np.int64)
    area2 = (x[:, 1] - x[:, 0]) * (y[:, 2] - y[:, 0]) - (y[:, 1] - y[:, 0]) * (x[:, 2] - x[:, 0])
    ok = (x1 >= x0) & (y1 >= y0) & (np.abs(area2) > 1e-12)
    fid, x, y, z, area2 = fid[ok], x[ok], y[ok], z[ok], area2[ok]
    x0, x1, y0, y1 = x0[ok], x1[ok], y0[ok], y1[ok]
    if len(fid) == 0:
        return empty

    # Planes a*dx + b*dy + c over pixel offsets (dx, dy) from the box's first centre, for the
    # screen barycentrics l0, l1 and for 1/z; c is evaluated per triangle in float64.
    ox, oy = x0 + 0.5, y0 + 0.5
    planes = np.empty((len(fid), 3, 3))
    for i in range(2):
        j, k = (i + 1) % 3, (i + 2) % 3
        a = -(y[:, k] - y[:, j]) / area2
        b = (x[:, k] - x[:, j]) / area2
        planes[:, i] = np.stack([a, b, a * (ox - x[:, j]) + b * (oy - y[:, j])], axis=1)
    iz = 1.0 / z
    dz0, dz1 = iz[:, 0] - iz[:, 2], iz[:, 1] - iz[:, 2]
    planes[:, 2] = dz0[:, None] * planes[:, 0] + dz1[:, None] * planes[:, 1]
    planes[:, 2, 2] += iz[:, 2]

    frags = _fragments(planes, x0, y0, x1 - x0 + 1, y1 - y0 + 1, W)
    if not frags:
        return empty
    pix, invz, l0, l1, owner = (np.concatenate(c) for c in zip(*frags))

    best = np.zeros(H * W, dtype=np.float32)             # largest 1/z = nearest surface
    np.maximum.at(best, pix, invz)
    win = np.nonzero(invz == best[pix])[0]
    first = np.full(H * W, len(pix), dtype=np.int64)      # ties: the first fragment in (fixed) order
    np.minimum.at(first, pix[win], win)
    covered = np.nonzero(best > 0)[0]
    w = first[covered]
    o = owner[w]

    # Perspective-correct barycentrics: b_i = (l_i / z_i) / (1 / z), l_i the screen-space ones.
    l0, l1 = l0[w], l1[w]
    izo = np.stack([col.take(o) for col in iz.T.astype(np.float32)])
    lam = np.stack([l0, l1, 1.0 - l0 - l1])
    np.maximum(lam, 0.0, out=lam)
    lam *= izo
    lam /= lam.sum(0)
    return _Hits(covered, fid[o], lam, 1.0 / best[covered])


def _fragments(planes: np.ndarray, x0: np.ndarray, y0: np.ndarray, bw: np.ndarray, bh: np.ndarray,
               W: int) -> list[tuple[np.ndarray, ...]]:
    """(pixel, 1/z, l0, l1, triangle) of every pixel centre inside a triangle, in chunks.

    Triangles are grouped by box size rounded up to _BOX_SIZES, so each group's candidate centres
    form one (n, h, w) grid evaluated by broadcasting; boxes larger than _TILE are cut into tiles
    first, which bounds both the rounding waste and the memory of one grid.
    """
    n = len(bw)
    owner = np.arange(n)
    big = (bw > _TILE) | (bh > _TILE)
    if big.any():  # replace each big box by its tiles, shifting the plane origins
        nx, ny = -(-bw[big] // _TILE), -(-bh[big] // _TILE)
        tb = np.repeat(np.nonzero(big)[0], nx * ny)
        k = np.arange(len(tb)) - np.repeat(np.cumsum(nx * ny) - nx * ny, nx * ny)
        nxr = np.repeat(nx, nx * ny)
        sx, sy = (k % nxr) * _TILE, (k // nxr) * _TILE
        tp = planes[tb].copy()
        tp[:, :, 2] += tp[:, :, 0] * sx[:, None] + tp[:, :, 1] * sy[:, None]
        tw = np.minimum(bw[tb] - sx, _TILE)
        th = np.minimum(bh[tb] - sy, _TILE)
        # Drop tiles wholly outside one edge (a linear function: test the four corner centres).
        cx = np.stack([np.zeros_like(tw), tw - 1, np.zeros_like(tw), tw - 1], axis=1)
        cy = np.stack([np.zeros_like(th), np.zeros_like(th), th - 1, th - 1], axis=1)
        l0 = tp[:, 0, 0, None] * cx + tp[:, 0, 1, None] * cy + tp[:, 0, 2, None]
        l1 = tp[:, 1, 0, None] * cx + tp[:, 1, 1, None] * cy + tp[:, 1, 2, None]
        live = ((l0.max(1) >= -_EDGE_EPS) & (l1.max(1) >= -_EDGE_EPS)
                & ((l0 + l1).min(1) <= 1.0 + _EDGE_EPS))
        tb, sx, sy, tp, tw, th = tb[live], sx[live], sy[live], tp[live], tw[live], th[live]
        small = ~big
        owner = np.concatenate([owner[small], tb])
        planes = np.concatenate([planes[small], tp])
        x0 = np.concatenate([x0[small], x0[tb] + sx])
        y0 = np.concatenate([y0[small], y0[tb] + sy])
        bw = np.concatenate([bw[small], tw])
        bh = np.concatenate([bh[small], th])
    p32 = planes.astype(np.float32)
    base = y0 * W + x0
    ns = len(_BOX_SIZES)
    key = np.searchsorted(_BOX_SIZES, bh) * ns + np.searchsorted(_BOX_SIZES, bw)
    order = np.argsort(key, kind="stable")
    key = key[order]
    cuts = np.concatenate([[0], np.nonzero(np.diff(key))[0] + 1, [len(key)]])
    out = []
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        sh, sw = int(_BOX_SIZES[key[lo] // ns]), int(_BOX_SIZES[key[lo] % ns])
        dxs = np.arange(sw, dtype=np.float32)
        dys = np.arange(sh, dtype=np.float32)
        rel = (np.arange(sh)[:, None] * W + np.arange(sw)).reshape(-1)  # pixel offsets in a box
        step = max(1, _CHUNK // (sw * sh))
        for s in range(lo, hi, step):
            ids = order[s:min(hi, s + step)]
            p = p32[ids]
            l0 = p[:, 0, 0, None, None] * dxs + (p[:, 0, 1, None] * dys + p[:, 0, 2, None])[:, :, None]
            l1 = p[:, 1, 0, None, None] * dxs + (p[:, 1, 1, None] * dys + p[:, 1, 2, None])[:, :, None]
            inside = (l0 >= -_EDGE_EPS) & (l1 >= -_EDGE_EPS) & (l0 + l1 <= 1.0 + _EDGE_EPS)
            # Rounded-up boxes reach past the real box (and maybe the image edge): cut them off.
            inside &= (dxs < bw[ids, None])[:, None, :] & (dys < bh[ids, None])[:, :, None]
            invz = p[:, 2, 0, None, None] * dxs + (p[:, 2, 1, None] * dys + p[:, 2, 2, None])[:, :, None]
            idx = np.nonzero(inside.reshape(-1))[0]
            t, r = np.divmod(idx, sh * sw)
            i = ids[t]
            out.append((base[i] + rel[r], invz.reshape(-1)[idx], l0.reshape(-1)[idx],
                        l1.reshape(-1)[idx], owner[i]))
    return out


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unit vertex normals, averaged over adjacent faces weighted by their area."""
    v = _as_points(vertices, "vertices")
    f = _as_faces(faces, len(v))
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])  # length = 2 * area
    idx = f.reshape(-1)
    n = np.stack([np.bincount(idx, np.repeat(fn[:, c], 3), minlength=len(v)) for c in range(3)], axis=1)
    norm = np.linalg.norm(n, axis=1, keepdims=True)
    return n / np.where(norm > 0, norm, 1.0)


@dataclass(eq=False)
class RenderResult:
    image: np.ndarray  # (H,W,3) uint8, mesh over background
    mask: np.ndarray   # (H,W) bool, mesh covers at least half the pixel
    depth: np.ndarray  # (H,W) float32 camera z of the nearest sample, +inf = none
    rgba: np.ndarray   # (H,W,4) uint8, mesh colour with its coverage as alpha


_DEFAULT_COLOR = (190, 190, 205)


def render_mesh(vertices: np.ndarray, faces: np.ndarray, camera: Camera, *,
                vertex_colors: np.ndarray | None = None, face_colors: np.ndarray | None = None,
                light_dir: Sequence[float] = (0.3, -0.5, -1.0), ambient: float = 0.35,
                background: np.ndarray | Sequence[int] | None = None, smooth: bool = True,
                supersample: int = 1, cull_backfaces: bool = False) -> RenderResult:
    """Shade a mesh given in world coordinates with Lambert + ambient light.

    light_dir: direction from the surface towards the light, in the camera frame (the default
    comes from behind the viewer, above and to the right; for a world direction d pass
    camera.R @ d). ambient: fraction of the colour lit
    everywhere; the rest is scaled by max(0, n . l). Both sides of a face are lit (the normal is
    flipped on faces seen from behind). Colours are uint8 RGB or floats in [0, 1]; vertex colours
    are interpolated, face colours are flat; default a light grey. smooth: interpolate vertex
    normals (else flat face normals). background: None (white), an RGB triple or an (H,W,3) uint8
    image. supersample k renders k x k samples per pixel and averages them (anti-aliasing).
    """
    v = _as_points(vertices, "vertices")
    f = _as_faces(faces, len(v))
    k = int(supersample)
    if k < 1:
        raise MeshrecError(f"supersample must be >= 1, got {supersample}")
    if not 0.0 <= ambient <= 1.0:
        raise MeshrecError(f"ambient must be in [0, 1], got {ambient}")
    light = np.asarray(light_dir, dtype=np.float64).reshape(-1)
    if light.shape != (3,) or np.linalg.norm(light) == 0:
        raise MeshrecError(f"light_dir must be a non-zero 3-vector, got {light_dir}")
    light = light / np.linalg.norm(light)
    H, W = camera.height, camera.width
    bg = _background(background, H, W)

    vc = camera.to_camera(v)
    hits = _visible(vc, f, camera.scaled(k) if k > 1 else camera, 1e-3, cull_backfaces)
    face, b = hits.face, hits.bary                       # b: (3,P) float32
    fv = np.stack([col.take(face) for col in f.T])       # (3,P) vertex ids of the visible faces

    geo = np.cross(vc[f[:, 1]] - vc[f[:, 0]], vc[f[:, 2]] - vc[f[:, 0]])
    # Seen from behind: light the side that faces the viewer.
    facing = np.where(np.einsum("fc,fc->f", geo, vc[f[:, 0]]) > 0, -1.0, 1.0).astype(np.float32)
    if smooth:
        n = _interpolate(b, vertex_normals(vc, f).T.astype(np.float32), fv)
    else:
        n = np.stack([row.take(face) for row in geo.T.astype(np.float32)])
    n *= facing[face] / np.maximum(np.sqrt((n * n).sum(0)), 1e-12)
    shade = np.maximum(light.astype(np.float32) @ n, 0.0) * np.float32(1.0 - ambient) + np.float32(ambient)

    if face_colors is not None:
        base = np.stack([row.take(face) for row in _as_colors(face_colors, len(f), "face_colors").T])
    elif vertex_colors is not None:
        base = _interpolate(b, _as_colors(vertex_colors, len(v), "vertex_colors").T, fv)
    else:
        base = np.asarray(_DEFAULT_COLOR, np.float32)[:, None] / 255.0
    col = base * (shade * np.float32(255.0))             # (3,P) in 0..255

    if k == 1:  # every pixel is either fully covered or not: write the covered ones only
        rgb = _to_u8(col.T)
        image = np.array(bg, copy=True).reshape(-1, 3)
        image[hits.pixel] = rgb
        rgba = np.zeros((H * W, 4), dtype=np.uint8)
        rgba[hits.pixel, :3] = rgb
        rgba[hits.pixel, 3] = 255
        mask = np.zeros(H * W, dtype=bool)
        mask[hits.pixel] = True
        depth = np.full(H * W, np.inf, dtype=np.float32)
        depth[hits.pixel] = hits.depth
        return RenderResult(image=image.reshape(H, W, 3), mask=mask.reshape(H, W),
                            depth=depth.reshape(H, W), rgba=rgba.reshape(H, W, 4))
    # k x k samples per pixel: sum each pixel's samples; colour blends with the background by coverage.
    row, column = np.divmod(hits.pixel, W * k)
    pid = (row // k) * W + column // k
    count = np.bincount(pid, minlength=H * W).astype(np.float64)
    sums = np.stack([np.bincount(pid, col[c], minlength=H * W) for c in range(3)], axis=1)
    cov = count / (k * k)
    image = sums / (k * k) + bg.reshape(-1, 3) * (1.0 - cov[:, None])
    straight = sums / np.maximum(count, 1.0)[:, None]
    rgba = np.concatenate([straight, 255.0 * cov[:, None]], axis=1)
    depth = np.full(H * W, np.inf, dtype=np.float32)
    np.minimum.at(depth, pid, hits.depth)
    return RenderResult(image=_to_u8(image).reshape(H, W, 3), mask=(cov >= 0.5).reshape(H, W),
                        depth=depth.reshape(H, W), rgba=_to_u8(rgba).reshape(H, W, 4))


def _interpolate(b: np.ndarray, table: np.ndarray, fv: np.ndarray) -> np.ndarray:
    """Barycentric blend of per-vertex columns: b (3,P) weights, table (C,V), fv (3,P) vertex ids -> (C,P)."""
    out = np.empty((len(table), b.shape[1]), dtype=np.float32)
    for c, row in enumerate(table):  # 1-D takes per channel: several times faster than 2-D gathers
        o = out[c]
        np.multiply(b[0], row.take(fv[0]), out=o)
        o += b[1] * row.take(fv[1])
        o += b[2] * row.take(fv[2])
    return out


def overlay(image: np.ndarray, result: RenderResult, alpha: float = 0.7) -> np.ndarray:
    """Blend a rendered mesh over a photo of the same size; alpha 1 hides the photo under the mesh."""
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise MeshrecError(f"overlay needs an (H,W,3) uint8 image, got {img.dtype} {img.shape}")
    if img.shape[:2] != result.rgba.shape[:2]:
        raise MeshrecError(f"overlay: image is {img.shape[:2]}, render is {result.rgba.shape[:2]}")
    if not 0.0 <= alpha <= 1.0:
        raise MeshrecError(f"overlay alpha must be in [0, 1], got {alpha}")
    a = alpha * result.rgba[..., 3:].astype(np.float64) / 255.0
    return _to_u8(img * (1.0 - a) + result.rgba[..., :3] * a)


# One colour per SMPL joint's part (argmax skinning weight). Left parts are warm (reds, oranges,
# yellows, pinks), right parts cool (blues, cyans, greens), the trunk and head neutral, and
# neighbouring parts alternate in lightness so joints show.
PART_PALETTE = np.array([
    (150, 110, 190),  # 0 pelvis
    (220, 60, 50),    # 1 left hip (thigh)
    (40, 90, 220),    # 2 right hip (thigh)
    (200, 190, 150),  # 3 spine1
    (250, 150, 60),   # 4 left knee (shin)
    (60, 190, 230),   # 5 right knee (shin)
    (130, 100, 70),   # 6 spine2
    (150, 30, 40),    # 7 left ankle
    (20, 50, 130),    # 8 right ankle
    (220, 210, 120),  # 9 spine3
    (250, 210, 60),   # 10 left foot
    (80, 200, 120),   # 11 right foot
    (100, 80, 140),   # 12 neck
    (240, 120, 160),  # 13 left collar
    (120, 200, 200),  # 14 right collar
    (235, 200, 170),  # 15 head
    (200, 40, 120),   # 16 left shoulder (upper arm)
    (40, 150, 90),    # 17 right shoulder (upper arm)
    (250, 170, 130),  # 18 left elbow (forearm)
    (130, 170, 250),  # 19 right elbow (forearm)
    (170, 70, 20),    # 20 left wrist
    (20, 110, 110),   # 21 right wrist
    (255, 230, 150),  # 22 left hand
    (170, 240, 170),  # 23 right hand
], dtype=np.uint8)


def part_colors(weights: np.ndarray) -> np.ndarray:
    """Per-vertex colours (V,3) uint8 from skinning weights (V,24): the palette colour of the argmax part."""
    w = np.asarray(weights)
    if w.ndim != 2 or w.shape[1] != len(PART_PALETTE):
        raise MeshrecError(f"part_colors needs weights of shape (V, {len(PART_PALETTE)}), got {w.shape}")
    return PART_PALETTE[np.argmax(w, axis=1)]


def save_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write an (H,W), (H,W,3) or (H,W,4) uint8 (or bool) image as PNG, atomically."""
    from PIL import Image

    img = np.asarray(image)
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.dtype != np.uint8 or not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] in (3, 4))):
        raise MeshrecError(f"save_png needs a uint8 (H,W), (H,W,3) or (H,W,4) image, got {img.dtype} {img.shape}")
    with atomic_open(path, "wb") as fh:
        Image.fromarray(np.ascontiguousarray(img)).save(fh, format="PNG")


def _as_points(a: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 3:
        raise MeshrecError(f"{name} must have shape (N, 3), got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise MeshrecError(f"{name} contain NaN or inf")
    return a


def _as_faces(faces: np.ndarray, n_vertices: int) -> np.ndarray:
    f = np.asarray(faces)
    if f.ndim != 2 or f.shape[1] != 3 or not np.issubdtype(f.dtype, np.integer):
        raise MeshrecError(f"faces must be integers of shape (F, 3), got {f.dtype} {f.shape}")
    if f.size and (f.min() < 0 or f.max() >= n_vertices):
        raise MeshrecError(f"faces index vertices outside 0..{n_vertices - 1}")
    return f.astype(np.int64, copy=False)


def _as_colors(c: np.ndarray, n: int, name: str) -> np.ndarray:
    c = np.asarray(c)
    if c.shape != (n, 3):
        raise MeshrecError(f"{name} must have shape ({n}, 3), got {c.shape}")
    return (c / np.float32(255.0)).astype(np.float32) if c.dtype == np.uint8 else c.astype(np.float32)


def _background(bg: np.ndarray | Sequence[int] | None, H: int, W: int) -> np.ndarray:
    if bg is None:
        return np.full((H, W, 3), 255, dtype=np.uint8)
    b = np.asarray(bg)
    if b.shape == (3,):
        return np.broadcast_to(b.astype(np.uint8), (H, W, 3))
    if b.shape != (H, W, 3) or b.dtype != np.uint8:
        raise MeshrecError(f"background must be None, an RGB triple or ({H},{W},3) uint8, got {b.dtype} {b.shape}")
    return b


def _to_u8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)
