"""Time meshrec.render on a body-sized mesh (13,776 faces, as SMPL), and pyrender+OSMesa beside it.

Usage: python bench/render.py [--runs N] [--supersample K] [--body PATH | --tube]
Mesh: the stand-in body (or --body FILE in SMPL's format) posed as a walker; --tube (or no
stand-in available) uses a closed tube with SMPL's face count. Prints ms per frame (median over
N runs, one thread) for rasterize alone and full render_mesh at 256 and 1000 px.

When pyrender imports (it is not a meshrec dependency; for this comparison only: Debian
`libosmesa6`, `pip install pyrender` then `pip install 'PyOpenGL>=3.1.7'`, PYOPENGL_PLATFORM=osmesa,
which this script sets when unset), the same mesh, colours, camera and light are rendered with
pyrender's OffscreenRenderer too, timed two ways: the scene as is (`static`), and with a new mesh
uploaded every frame, as a data generator must do (`new mesh`); the silhouettes of both renderers
are compared (IoU) to show they drew the same thing. Ratios are meshrec time / pyrender time.

The last line is `render_ms_256=… render_ms_1000=…` (full render_mesh), followed by
`pyrender_ms_256=… pyrender_ms_1000=… ratio_256=… ratio_1000=…` when pyrender ran.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# One core, like a data-generation worker; must be set before NumPy loads its BLAS.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

from meshrec import render  # noqa: E402
import headline

LIGHT_DIR = np.array([0.3, -0.5, -1.0])  # camera frame, towards the light (render_mesh's default)
AMBIENT = 0.35


def body_like_mesh() -> tuple[np.ndarray, np.ndarray]:
    """A closed, person-sized tube: 13,776 faces like SMPL, 1.7 m tall, 0.25 m radius."""
    rings, seg = 123, 56  # 2 * seg * rings = 13,776 faces, seg * rings + 2 = 6,890 vertices
    ang = np.linspace(0, 2 * np.pi, seg, endpoint=False)
    h = np.linspace(-0.85, 0.85, rings)
    rad = 0.25 * np.sqrt(np.clip(1 - (h / 0.88) ** 8, 0.02, None))
    side = np.stack([rad[:, None] * np.cos(ang), np.broadcast_to(h[:, None], (rings, seg)),
                     rad[:, None] * np.sin(ang)], axis=2).reshape(-1, 3)
    v = np.concatenate([side, [[0, -0.85, 0], [0, 0.85, 0]]])
    faces = []
    for r in range(rings - 1):
        for s in range(seg):
            a, b = r * seg + s, r * seg + (s + 1) % seg
            c, d = a + seg, b + seg
            faces += [(a, c, b), (b, c, d)]
    bottom, top = len(v) - 2, len(v) - 1
    last = (rings - 1) * seg
    for s in range(seg):
        faces.append((bottom, s, (s + 1) % seg))
        faces.append((top, last + (s + 1) % seg, last + s))
    return v, np.asarray(faces, dtype=np.int64)


def body_mesh(path: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, str] | None:
    """A posed body (vertices centred at the origin, faces, part colours, name), or None."""
    try:
        if path is not None:
            from meshrec.body.model_file import load_arrays

            arrays, name = load_arrays(path), os.path.basename(path)
        else:
            from meshrec.body.standin import build_standin

            arrays, name = build_standin(0), "stand-in body"
    except ImportError:
        return None
    from meshrec.synth import generate, motion

    body = generate.Body(arrays)
    posed = generate.pose_world(body, "S1", len(motion.ACTIONS) - 1, 3, 0)  # walking
    v = posed.vertices[2]
    v = v - (v.max(0) + v.min(0)) / 2
    colors = np.rint(body.colors * 255).astype(np.uint8)
    return v, body.faces, colors, name


def camera_for(size: int) -> render.Camera:
    # H36M-like: person ~2/3 of the frame height at ~5 m.
    R, t = render.look_at(eye=(0.0, 0.3, 4.5), target=(0.0, 0.0, 0.0))
    f = size * 2.2
    return render.Camera(f, f, size / 2, size / 2, size, size, R, t)


def median_ms(fn, runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


class PyrenderBench:
    """pyrender's offscreen renderer set up like render_mesh: same camera, colours, one light."""

    def __init__(self, v: np.ndarray, f: np.ndarray, colors: np.ndarray, cam: render.Camera) -> None:
        import pyrender
        import trimesh

        self.pyrender, self.trimesh = pyrender, trimesh
        self.f, self.colors = f, colors
        self.renderer = pyrender.OffscreenRenderer(cam.width, cam.height)
        self.scene = pyrender.Scene(bg_color=[255, 255, 255, 255], ambient_light=[AMBIENT] * 3)
        # OpenCV camera (x right, y down, z forward) -> OpenGL's (y up, z backward), as a pose.
        gl_from_cv = np.diag([1.0, -1.0, -1.0, 1.0])
        world_from_cam = np.eye(4)
        world_from_cam[:3, :3] = cam.R.T
        world_from_cam[:3, 3] = -cam.R.T @ cam.t
        pose = world_from_cam @ gl_from_cv
        camera = pyrender.IntrinsicsCamera(cam.fx, cam.fy, cam.cx, cam.cy, znear=0.05, zfar=100.0)
        self.scene.add(camera, pose=pose)
        light_world = cam.R.T @ (LIGHT_DIR / np.linalg.norm(LIGHT_DIR))
        # A directional light shines along -z of its pose: point that axis away from light_world.
        z = light_world
        x = np.cross([0.0, 1.0, 0.0], z)
        x = x / np.linalg.norm(x) if np.linalg.norm(x) > 1e-9 else np.array([1.0, 0.0, 0.0])
        light_pose = np.eye(4)
        light_pose[:3, :3] = np.stack([x, np.cross(z, x), z], axis=1)
        self.scene.add(pyrender.DirectionalLight(color=np.ones(3), intensity=3.0), pose=light_pose)
        self.node = self.scene.add(self._mesh(v))

    def _mesh(self, v: np.ndarray):
        tm = self.trimesh.Trimesh(v, self.f, vertex_colors=self.colors, process=False)
        return self.pyrender.Mesh.from_trimesh(tm, smooth=True)

    def render(self) -> tuple[np.ndarray, np.ndarray]:
        color, depth = self.renderer.render(self.scene)
        return color, depth

    def render_new_mesh(self, v: np.ndarray) -> np.ndarray:
        self.scene.remove_node(self.node)
        self.node = self.scene.add(self._mesh(v))
        return self.render()[0]

    def close(self) -> None:
        self.renderer.delete()


def pyrender_available() -> str | None:
    """None if pyrender renders here, else why not (one line)."""
    try:
        import pyrender  # noqa: F401

        r = pyrender.OffscreenRenderer(8, 8)
        r.delete()
    except Exception as exc:  # ImportError, missing OSMesa, PyOpenGL too old: all mean "skip"
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--supersample", type=int, default=1)
    ap.add_argument("--body", default=None, help="SMPL-format body model file (default: the stand-in)")
    ap.add_argument("--tube", action="store_true", help="time the synthetic tube instead of a body")
    headline.add_flag(ap)
    args = ap.parse_args()
    mesh = None if args.tube else body_mesh(args.body)
    if mesh is None:
        v, f = body_like_mesh()
        colors = np.random.default_rng(0).integers(0, 256, (len(v), 3)).astype(np.uint8)
        name = "tube"
    else:
        v, f, colors, name = mesh
    why_not = pyrender_available()
    print(f"mesh: {name}, {len(v)} vertices, {len(f)} faces; median of {args.runs} runs, one thread")
    print("pyrender: " + ("OffscreenRenderer with PYOPENGL_PLATFORM=" + os.environ["PYOPENGL_PLATFORM"]
                          if why_not is None else f"not run ({why_not})"))
    ours, theirs = {}, {}
    jitter = np.random.default_rng(1).normal(0, 1e-3, v.shape)  # a "new pose" for upload timing
    for size in (256, 1000):
        cam = camera_for(size)
        vc = cam.to_camera(v)
        ras = median_ms(lambda: render.rasterize(vc, f, cam), args.runs)
        cull = median_ms(lambda: render.rasterize(vc, f, cam, cull_backfaces=True), args.runs)
        full = median_ms(lambda: render.render_mesh(v, f, cam, vertex_colors=colors, light_dir=LIGHT_DIR,
                                                    ambient=AMBIENT, supersample=args.supersample),
                         args.runs)
        mask = render.rasterize(vc, f, cam).face_index >= 0
        print(f"{size:5d} px meshrec : rasterize {ras:7.1f} ms  (culling back faces {cull:7.1f} ms)  "
              f"render_mesh {full:7.1f} ms  [{int(mask.sum())} pixels covered]")
        ours[size] = full
        if why_not is not None:
            continue
        pr = PyrenderBench(v, f, colors, cam)
        static = median_ms(pr.render, args.runs)
        k = [0]

        def fresh() -> None:
            k[0] += 1
            pr.render_new_mesh(v + jitter * (k[0] % 2))

        fresh_ms = median_ms(fresh, args.runs)
        depth = pr.render()[1]
        pr.close()
        their_mask = depth > 0
        iou = (mask & their_mask).sum() / max(1, (mask | their_mask).sum())
        print(f"{size:5d} px pyrender: static {static:7.1f} ms  new mesh {fresh_ms:7.1f} ms  "
              f"[silhouette IoU with meshrec {iou:.3f}]  meshrec/pyrender {full / fresh_ms:.2f}")
        theirs[size] = fresh_ms
    line = f"render_ms_256={ours[256]:.1f} render_ms_1000={ours[1000]:.1f}"
    if theirs:
        line += (f" pyrender_ms_256={theirs[256]:.1f} pyrender_ms_1000={theirs[1000]:.1f}"
                 f" ratio_256={ours[256] / theirs[256]:.2f} ratio_1000={ours[1000] / theirs[1000]:.2f}")
    headline.emit(line, args.json)


if __name__ == "__main__":
    main()
