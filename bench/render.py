"""Time meshrec.render on a closed mesh with about as many faces as SMPL (13,776).

Usage: python bench/render.py [--runs N] [--supersample K]
Prints ms per frame (median over N runs) for rasterize alone and full render_mesh at 256 and
1000 px; the last line is `render_ms_256=… render_ms_1000=…` (full render_mesh).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# One core, like a data-generation worker; must be set before NumPy loads its BLAS.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

from meshrec import render  # noqa: E402


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--supersample", type=int, default=1)
    args = ap.parse_args()
    v, f = body_like_mesh()
    colors = np.random.default_rng(0).integers(0, 256, (len(v), 3)).astype(np.uint8)
    print(f"mesh: {len(v)} vertices, {len(f)} faces; median of {args.runs} runs, one thread")
    out = {}
    for size in (256, 1000):
        cam = camera_for(size)
        vc = cam.to_camera(v)
        ras = median_ms(lambda: render.rasterize(vc, f, cam), args.runs)
        cull = median_ms(lambda: render.rasterize(vc, f, cam, cull_backfaces=True), args.runs)
        full = median_ms(lambda: render.render_mesh(v, f, cam, vertex_colors=colors,
                                                    supersample=args.supersample), args.runs)
        cover = int((render.rasterize(vc, f, cam).face_index >= 0).sum())
        print(f"{size:5d} px: rasterize {ras:7.1f} ms  (culling back faces {cull:7.1f} ms)  "
              f"render_mesh {full:7.1f} ms  [{cover} pixels covered]")
        out[size] = full
    print(f"render_ms_256={out[256]:.1f} render_ms_1000={out[1000]:.1f}")


if __name__ == "__main__":
    main()
