"""Packing throughput against the bare JPEG decode ceiling of the same full camera frames.

Usage: python bench/pack.py [--data DIR] [--frames N] [--workers N] [--size 256] [--shard-size-mb MB]

Generates (once, reused from --data) a SPIN-layout source of 1000×1000 JPEG frames like
Human3.6M's, with person boxes of H36M-like size (side 450–650 px). Then, with the same worker
count, it measures on warm page cache:
  ceiling   full-size PIL decode of every source JPEG, spread over a process pool (img/s)
  draft     the same decode at the JPEG DCT scale the packer picks (information only)
  pack      meshrec.shards.pack.pack end to end (hashing sources, probing, pool start-up,
            decode at draft scale, crop, resize, JPEG encode, tar + index + sha256, manifest)
The goal is pack ≥ 0.8 × ceiling. Because the packer decodes at reduced scale when the box
allows (here 1/2), it can beat the full-decode ceiling: the ratio then says that packing costs
less than merely decoding the sources at full size would. The last line reads
`pack_frac=… pack_img_s=… ceiling_img_s=…`.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from meshrec.shards import crop  # noqa: E402
from meshrec.shards.pack import PackConfig, available_cores, pack  # noqa: E402
import headline

FRAME = 1000
SUBJECTS = ("S1", "S5", "S6", "S7", "S8")
CAMERAS = ("54138969", "55011271", "58860488", "60457274")
NPZ = "h36m_bench.npz"


def _backgrounds(seed: int, count: int = 8) -> list[np.ndarray]:
    """Camera-frame-like textures: smooth shading + mid-frequency structure + sensor noise."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        layers = np.zeros((FRAME, FRAME, 3))
        for cells, amp in ((4, 60.0), (32, 25.0), (160, 10.0)):
            small = Image.fromarray(rng.uniform(0, 255, (cells, cells, 3)).astype(np.uint8))
            layers += amp / 255 * np.asarray(small.resize((FRAME, FRAME), Image.Resampling.BICUBIC), np.float64)
        layers += rng.normal(0, 4, layers.shape) + 40
        out.append(np.clip(layers, 0, 255).astype(np.uint8))
    return out


def _write_frames(args: tuple[str, list[tuple[str, float, float, float]], int]) -> None:
    root, frames, seed = args
    rng = np.random.default_rng(seed)
    bases = _backgrounds(seed, 2)
    yy, xx = np.mgrid[0:FRAME, 0:FRAME]
    for name, cx, cy, side in frames:
        img = np.roll(bases[rng.integers(len(bases))], tuple(rng.integers(0, FRAME, 2)), axis=(0, 1)).copy()
        person = ((xx - cx) / (0.18 * side)) ** 2 + ((yy - cy) / (0.48 * side)) ** 2 <= 1
        img[person] = (img[person] * 0.4 + rng.uniform(60, 200, 3)).clip(0, 255).astype(np.uint8)
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(img).save(path, quality=95)


def make_source(data: str, frames: int, workers: int) -> tuple[str, str]:
    """SPIN-layout source with `frames` 1000×1000 frames under data/; reused when already there."""
    npz, root = os.path.join(data, NPZ), os.path.join(data, "images")
    if os.path.exists(npz):
        with np.load(npz) as d:
            if len(d["imgname"]) == frames and all(os.path.exists(os.path.join(root, n)) for n in d["imgname"]):
                return npz, root
    shutil.rmtree(data, ignore_errors=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(frames):
        subject, camera = SUBJECTS[i % len(SUBJECTS)], CAMERAS[(i // len(SUBJECTS)) % len(CAMERAS)]
        action = f"Walking_{1 + (i // 100) % 2}"
        side = rng.uniform(450, 650)
        cx, cy = rng.uniform(350, 650), rng.uniform(380, 620)
        rows.append((f"{subject}/{action}.{camera}/frame_{i:06d}.jpg", cx, cy, side))
    chunks = [rows[i::workers] for i in range(workers)]
    t0 = time.perf_counter()
    with cf.ProcessPoolExecutor(workers) as pool:
        list(pool.map(_write_frames, [(root, c, k) for k, c in enumerate(chunks)]))
    n = len(rows)
    np.savez(npz, imgname=np.array([r[0] for r in rows]),
             center=np.array([[r[1], r[2]] for r in rows]), scale=np.array([r[3] / 200 for r in rows]),
             pose=rng.normal(0, 0.3, (n, 72)), shape=rng.normal(0, 1, (n, 10)),
             transl=rng.normal([0, 0, 5], 0.3, (n, 3)))
    print(f"generated {n} frames in {time.perf_counter() - t0:.1f} s under {data}")
    return npz, root


def _decode(paths: list[str], draft: list[int] | None) -> int:
    for i, path in enumerate(paths):
        with Image.open(path) as im:
            if draft and draft[i] > 1:
                im.draft("RGB", (im.size[0] // draft[i], im.size[1] // draft[i]))
            im.convert("RGB")
    return len(paths)


def decode_rate(pool: cf.Executor, paths: list[str], draft: list[int] | None, workers: int) -> float:
    chunks = [(paths[i:i + 32], None if draft is None else draft[i:i + 32]) for i in range(0, len(paths), 32)]
    t0 = time.perf_counter()
    done = sum(pool.map(_decode, *zip(*chunks)))
    return done / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "meshrec-bench-pack"))
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=None, help="default: every usable core")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--context", type=float, default=1.2)
    ap.add_argument("--shard-size-mb", type=float, default=256.0)
    headline.add_flag(ap)
    args = ap.parse_args()
    workers = args.workers or available_cores()

    npz, root = make_source(args.data, args.frames, workers)
    with np.load(npz) as d:
        names, scales = [str(n) for n in d["imgname"]], d["scale"]
    paths = [os.path.join(root, n) for n in names]
    source_mb = sum(os.path.getsize(p) for p in paths) / 1e6
    for p in paths:  # warm the page cache for every measurement alike
        with open(p, "rb") as fh:
            fh.read()
    draft = [crop.draft_factor(200 * s * args.context, args.size) for s in scales]
    print(f"{len(paths)} frames {FRAME}×{FRAME}, {source_mb / len(paths) * 1e3:.0f} KB each; "
          f"{workers} workers; draft scale 1/{max(draft)}–1/{min(draft)}; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")

    ctx = multiprocessing.get_context("forkserver")
    with cf.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        decode_rate(pool, paths[: 4 * workers], None, workers)  # start the processes, import PIL
        ceiling = decode_rate(pool, paths, None, workers)
        drafted = decode_rate(pool, paths, draft, workers)

    out = tempfile.mkdtemp(prefix="meshrec-bench-out-")
    try:
        t0 = time.perf_counter()
        result = pack([npz], root, out, PackConfig("spin", size=args.size, context=args.context,
                                                   shard_size_mb=args.shard_size_mb),
                      workers=workers, progress=False, log=lambda s: None)
        seconds = time.perf_counter() - t0
        out_mb = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(out) for f in fs) / 1e6
    finally:
        shutil.rmtree(out, ignore_errors=True)
    rate = result.packed / seconds
    print(f"full-size decode ceiling: {ceiling:8.1f} img/s ({ceiling / workers:.1f} per worker)")
    print(f"draft-scale decode:       {drafted:8.1f} img/s (information: what the packer's decode costs)")
    print(f"pack end to end:          {rate:8.1f} img/s ({result.packed} samples, {result.shards} shards, "
          f"{out_mb:.1f} MB, {seconds:.2f} s)")
    print(f"pack / draft decode:      {rate / drafted:8.2f}")
    headline.emit(f"pack_frac={rate / ceiling:.2f} pack_img_s={rate:.1f} ceiling_img_s={ceiling:.1f}",
                  args.json)


if __name__ == "__main__":
    main()
