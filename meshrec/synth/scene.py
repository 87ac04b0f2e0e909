"""What surrounds the body in a frame: procedural backgrounds, lighting, boxes (occluders, seats).

A background is drawn once per (subject, action, camera) sequence, since Human3.6M's cameras are
static: either a room seen through the camera (a tiled floor up to walls, found by casting each
pixel's ray, so the floor lies where the body stands), a colour gradient, or a noise texture.
Boxes are real meshes rendered with the body, so they hide it where they are in front of it.
Pure NumPy (elementwise float64): the same inputs give the same pixels on every run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from meshrec.render import Camera
from meshrec.synth.cameras import center_of

BACKGROUND_KINDS = ("room", "gradient", "noise")
BACKGROUND_WEIGHTS = (0.6, 0.2, 0.2)
OCCLUDER_PROBABILITY = 0.2   # chance that a (subject, action, camera) sequence has a box in view
_NEAREST_BOX_M = 2.2          # occluders stand at least this far from the camera (horizontally)
_NOISE_CELLS = 64            # lattice of the value noise (periodic; a power of two)
BACKGROUND_MAX_PX = 512      # larger backgrounds are drawn at a fraction of the size and upscaled


@dataclass(frozen=True)
class Lighting:
    direction: np.ndarray  # (3,) unit vector towards the light, world frame
    ambient: float
    tint: np.ndarray       # (3,) per-channel gain on the body's colours


@dataclass(frozen=True)
class Box:
    """A closed box mesh with one flat colour: 24 vertices (4 per side, so its shading is flat)."""

    vertices: np.ndarray  # (24, 3) world
    faces: np.ndarray     # (12, 3)
    color: np.ndarray     # (3,) float in [0, 1]


# ---------------------------------------------------------------------------------------------
# Value noise


class ValueNoise:
    """Smooth 2-D noise in [0, 1] from a periodic lattice of random values."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.flat = rng.uniform(0.0, 1.0, _NOISE_CELLS * _NOISE_CELLS).astype(np.float32)

    def __call__(self, x: np.ndarray, y: np.ndarray, octaves: int = 3) -> np.ndarray:
        out, amp, total = np.zeros(np.broadcast(x, y).shape), 1.0, 0.0
        for o in range(octaves):
            out += amp * self._single(x * 2.0 ** o + 17.0 * o, y * 2.0 ** o + 31.0 * o)
            total += amp
            amp *= 0.5
        return out / total

    def _single(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        x0, y0 = np.floor(x), np.floor(y)
        fx, fy = x - x0, y - y0
        fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
        mask = _NOISE_CELLS - 1  # a power of two: & wraps negative cells too
        i0 = x0.astype(np.int64) & mask
        j0 = (y0.astype(np.int64) & mask) * _NOISE_CELLS
        i1 = (i0 + 1) & mask
        j1 = (j0 + _NOISE_CELLS) & (mask * _NOISE_CELLS + mask)
        t = self.flat
        top = t.take(j0 + i0) * (1 - fx) + t.take(j0 + i1) * fx
        bottom = t.take(j1 + i0) * (1 - fx) + t.take(j1 + i1) * fx
        return top * (1 - fy) + bottom * fy


# ---------------------------------------------------------------------------------------------
# Backgrounds


def _random_color(rng: np.random.Generator, lo: float = 0.15, hi: float = 0.85) -> np.ndarray:
    return rng.uniform(lo, hi, 3)


def _to_image(rgb: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def background(kind: str, camera: Camera, rng: np.random.Generator) -> np.ndarray:
    """An (H, W, 3) uint8 background of the given kind for this camera.

    Frames larger than BACKGROUND_MAX_PX are drawn at 1/k of the size (k the smallest integer
    that fits) and upscaled bilinearly: about k² times cheaper, and only a little softer, as a
    background behind a subject in focus.
    """
    k = -(-max(camera.width, camera.height) // BACKGROUND_MAX_PX)
    if k == 1:
        return _to_image(_draw(kind, camera, rng))
    from PIL import Image

    small = Camera(camera.fx / k, camera.fy / k, camera.cx / k, camera.cy / k,
                   -(-camera.width // k), -(-camera.height // k), camera.R, camera.t)
    image = Image.fromarray(_to_image(_draw(kind, small, rng)))
    # Crop to the part covering the frame (the last pixel may reach past it), then resize.
    box = (0.0, 0.0, camera.width / k, camera.height / k)
    return np.asarray(image.resize((camera.width, camera.height), Image.BILINEAR, box=box))


def _draw(kind: str, camera: Camera, rng: np.random.Generator) -> np.ndarray:
    """Float RGB (H, W, 3) in about [0, 1]."""
    H, W = camera.height, camera.width
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    u, v = (u + 0.5) / W, (v + 0.5) / H   # 0..1 across the frame: the same picture at any size
    noise = ValueNoise(rng)
    if kind == "room":
        rgb = _room(camera, rng, noise)
    elif kind == "gradient":
        a, b = _random_color(rng), _random_color(rng)
        angle = rng.uniform(0, 2 * np.pi)
        s = (np.cos(angle) * (u - 0.5) + np.sin(angle) * (v - 0.5)) / 0.71 * 0.5 + 0.5
        grain = noise(u * 6.0, v * 6.0)[..., None] - 0.5
        rgb = a + (b - a) * np.clip(s, 0, 1)[..., None] + 0.12 * grain
    elif kind == "noise":
        colors = np.stack([_random_color(rng, 0.05, 0.95) for _ in range(3)])
        scale = rng.uniform(3.0, 10.0)
        n = noise(u * scale, v * scale, octaves=4)
        n = np.clip((n - 0.5) * 2.2 + 0.5, 0, 1)[..., None]
        rgb = np.where(n < 0.5, colors[0] + (colors[1] - colors[0]) * (2 * n),
                       colors[1] + (colors[2] - colors[1]) * (2 * n - 1))
    else:
        raise ValueError(f"unknown background kind {kind}")
    return rgb


def _room(camera: Camera, rng: np.random.Generator, noise: ValueNoise) -> np.ndarray:
    """A square room seen from the camera: tiled floor, four walls with a skirting band, ceiling."""
    H, W = camera.height, camera.width
    half = rng.uniform(5.5, 8.0)               # walls at x, z = ±half
    ceiling = rng.uniform(2.8, 3.6)
    floor_a = _random_color(rng, 0.25, 0.75)
    floor_b = np.clip(floor_a + rng.uniform(-0.12, 0.12, 3), 0, 1)
    tile = rng.uniform(0.4, 1.2)
    walls = np.stack([_random_color(rng, 0.35, 0.9) for _ in range(4)])
    ceiling_color = _random_color(rng, 0.6, 0.95)

    # World direction of every pixel's ray: R^T K^-1 (u, v, 1).
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    cam = np.stack([(u + 0.5 - camera.cx) / camera.fx, (v + 0.5 - camera.cy) / camera.fy,
                    np.ones_like(u)], axis=-1)
    R = camera.R  # R^T @ dir per pixel, written out (elementwise, no BLAS: same bits everywhere)
    d = cam[..., 0:1] * R[0] + cam[..., 1:2] * R[1] + cam[..., 2:3] * R[2]
    c = center_of(camera)
    with np.errstate(divide="ignore", invalid="ignore"):
        # Distance along the ray to the nearest wall (x or z = ±half), then to floor or ceiling.
        tx = np.where(d[..., 0] > 0, (half - c[0]) / d[..., 0], (-half - c[0]) / d[..., 0])
        tz = np.where(d[..., 2] > 0, (half - c[2]) / d[..., 2], (-half - c[2]) / d[..., 2])
        t_wall = np.minimum(np.where(np.isfinite(tx), tx, np.inf), np.where(np.isfinite(tz), tz, np.inf))
        t_floor = np.where(d[..., 1] < 0, -c[1] / d[..., 1], np.inf)
        t_ceil = np.where(d[..., 1] > 0, (ceiling - c[1]) / d[..., 1], np.inf)
    hit_floor = t_floor < t_wall
    hit_ceil = (t_ceil < t_wall) & ~hit_floor
    t = np.where(hit_floor, t_floor, np.where(hit_ceil, t_ceil, t_wall))
    p = c + d * t[..., None]
    which = np.where(tx < tz, np.where(d[..., 0] > 0, 0, 1), np.where(d[..., 2] > 0, 2, 3))

    checker = ((np.floor(p[..., 0] / tile) + np.floor(p[..., 2] / tile)) % 2)[..., None]
    floor_rgb = floor_a + (floor_b - floor_a) * checker
    floor_rgb = floor_rgb * (0.85 + 0.3 * noise(p[..., 0] * 3.0, p[..., 2] * 3.0)[..., None])
    along = np.where(which < 2, p[..., 2], p[..., 0])  # horizontal coordinate on the wall
    wall_rgb = walls[which] * (0.8 + 0.35 * noise(along * 1.5, p[..., 1] * 1.5)[..., None])
    wall_rgb = np.where((p[..., 1] < 0.12)[..., None], wall_rgb * 0.55, wall_rgb)  # skirting band
    rgb = np.where(hit_floor[..., None], floor_rgb, np.where(hit_ceil[..., None], ceiling_color, wall_rgb))
    # Light falls off a little with distance, as in a lit capture area.
    return rgb * (1.0 - 0.25 * np.clip(t / (3.0 * half), 0, 1))[..., None]


def pick_background_kind(rng: np.random.Generator) -> str:
    return BACKGROUND_KINDS[int(rng.choice(len(BACKGROUND_KINDS), p=BACKGROUND_WEIGHTS))]


# ---------------------------------------------------------------------------------------------
# Lighting and boxes


def lighting(rng: np.random.Generator) -> Lighting:
    elevation, azimuth = np.deg2rad(rng.uniform(25, 75)), rng.uniform(0, 2 * np.pi)
    direction = np.array([np.cos(elevation) * np.sin(azimuth), np.sin(elevation),
                          np.cos(elevation) * np.cos(azimuth)])
    return Lighting(direction=direction, ambient=float(rng.uniform(0.25, 0.5)),
                    tint=rng.uniform(0.85, 1.1, 3))


_UNIT_BOX_SIDES = (  # outward normal axis, sign
    (0, 1), (0, -1), (1, 1), (1, -1), (2, 1), (2, -1),
)


def box(center: np.ndarray, size: np.ndarray, yaw: float, color: np.ndarray) -> Box:
    """A box with the given centre, (x, y, z) size and rotation about the vertical axis."""
    verts, faces = [], []
    for axis, sign in _UNIT_BOX_SIDES:
        a, b = [k for k in range(3) if k != axis]
        if sign < 0:
            a, b = b, a  # keep every side counter-clockwise seen from outside
        quad = []
        for sa, sb in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
            p = np.zeros(3)
            p[axis], p[a], p[b] = sign, sa, sb
            quad.append(p)
        n = len(verts)
        verts.extend(quad)
        faces.extend([(n, n + 1, n + 2), (n, n + 2, n + 3)])
    local = np.asarray(verts) * 0.5 * np.asarray(size, dtype=np.float64)
    c, s = np.cos(yaw), np.sin(yaw)
    rot = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return Box(vertices=local @ rot.T + center, faces=np.asarray(faces, dtype=np.int64),
               color=np.asarray(color, dtype=np.float64))


def occluder(camera: Camera, subject_xz: np.ndarray, rng: np.random.Generator) -> Box | None:
    """Maybe a box on the floor between the camera and where the subject moves (never touching it).

    subject_xz (n, 2): the pelvis path over the sequence. The box stays at least 0.9 m (a body's
    reach) plus its own half-diagonal away from every point of the path.
    """
    if rng.uniform() >= OCCLUDER_PROBABILITY:
        return None
    size = np.array([rng.uniform(0.4, 1.0), rng.uniform(0.4, 1.0), rng.uniform(0.3, 0.8)])
    yaw = rng.uniform(0, np.pi)
    lateral = rng.uniform(-0.4, 0.4)
    where = rng.uniform(0.0, 1.0)
    color = _random_color(rng, 0.2, 0.8)
    cam = center_of(camera)[[0, 2]]
    target = subject_xz.mean(axis=0)
    ahead = target - cam
    dist = float(np.sqrt(ahead @ ahead))
    ahead = ahead / dist
    side = np.array([-ahead[1], ahead[0]])
    clearance = 0.9 + 0.5 * float(np.sqrt(size[0] ** 2 + size[2] ** 2))
    # How far from the camera it may stand: past _NEAREST_BOX_M, short of the path by `clearance`.
    rel = subject_xz - cam
    reach = float(np.min(np.sqrt((rel * rel).sum(axis=1)))) - clearance
    if reach <= _NEAREST_BOX_M:
        return None
    xz = cam + ahead * (_NEAREST_BOX_M + where * (reach - _NEAREST_BOX_M)) + side * lateral
    if np.min(np.sqrt(((subject_xz - xz) ** 2).sum(axis=1))) < clearance:
        return None
    return box(np.array([xz[0], size[1] / 2, xz[1]]), size, yaw, color)


def seat(pelvis_xz: np.ndarray, heading: float, top: float, rng: np.random.Generator) -> Box:
    """A stool under a seated subject: its top at `top` metres, centred a little behind the pelvis."""
    back = np.array([np.sin(heading), np.cos(heading)]) * -0.05
    xz = pelvis_xz + back
    color = _random_color(rng, 0.2, 0.7)
    return box(np.array([xz[0], top / 2, xz[1]]), np.array([0.45, top, 0.45]), heading, color)
