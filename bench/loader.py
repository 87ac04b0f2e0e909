"""Loader throughput on the same generated data and cores: DALI (cpu), the torch fallback, a
SPIN-style loader reading full camera frames, and the bare decode ceiling.

Usage: python bench/loader.py [--data DIR] [--frames N] [--workers N] [--seconds S]

Data: bench/pack.py's SPIN-layout source (1000×1000 JPEG frames like Human3.6M's, reused from
--data when already generated), packed once by meshrec.shards.pack into 256 px crops.
Every loader produces batches of 64 ImageNet-normalised 224×224 float32 images (NCHW):
  dali eval     meshrec.data DALI pipeline, centre crop (decode + crop + normalise)
  dali train    the same with the training augmentation (warp with scale/shift/rotation,
                colour twist, flip; labels rotated and flipped in torch)
  torch eval / torch train   the fallback backend, DataLoader with `--workers` processes
  spin          SPIN-style: a Dataset over the JPEG folder + npz, PIL decode of the full frame,
                crop of the person box, resize to 224, normalise in the Dataset,
                DataLoader(num_workers=--workers)
  ceiling       bare decode of the packed 256 px crops, no other work, on `--workers` cores:
                the best of PIL and torchvision (libjpeg-turbo) in a process pool, and DALI's
                decoder alone on `--workers` threads (also shown: PIL decode of the full frames,
                the least a SPIN-style loader must do)
  dali bare     the eval crop's image work and nothing else: DALI's ROI decode of the centre
                224 px + meshrec's torch normalisation (augment.Normalizer, as the loader does
                on the CPU; no labels, keys or iterator), to split the gap to the ceiling
Rates are images per second after a warm-up batch, on warm page cache, the median of
`--rounds` interleaved rounds. For the in-process DALI loaders the CPU time of the process per
image and the cores it kept busy are printed too: a ratio of CPU times moves far less with the
machine's load than a ratio of rates does. The last line reads
`vs_spin=… ceiling_frac=… dali_img_s=…` (dali_img_s: dali eval; vs_spin = dali / spin;
ceiling_frac = dali / ceiling).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import io
import multiprocessing
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from meshrec.config import Config, with_overrides  # noqa: E402
from meshrec.data import augment, build_loader, shardset  # noqa: E402
from meshrec.shards.pack import PackConfig, pack  # noqa: E402
from pack import SUBJECTS, make_source  # noqa: E402  (bench/pack.py)
import headline

BATCH, SIZE = 64, 224


class Meter:
    """img/s of a loader over short rounds (its iterator kept between rounds, restarted at the
    end of an epoch); rounds of all loaders interleave so a change of machine load hits each
    alike, and the median round is reported."""

    def __init__(self, batches) -> None:
        self.batches, self.it, self.rates, self.cpu, self.busy = batches, iter(batches), [], [], []
        self._next()  # warm-up batch

    def _next(self):
        try:
            return next(self.it)
        except StopIteration:
            self.it = iter(self.batches)
            return next(self.it)

    def round(self, seconds: float, settle: float = 1.5) -> None:
        # A loader's background workers go on filling their prefetch queues after its round;
        # wait for that before timing the next loader so no round pays for another's work.
        time.sleep(settle)
        n, t0, c0 = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - t0 < seconds:
            b = self._next()
            n += len(b["image"]) if isinstance(b, dict) else len(b[0])
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        self.rates.append(n / wall)
        self.cpu.append(cpu / n)  # this process's threads only: DataLoader workers not counted
        self.busy.append(cpu / wall)

    @property
    def rate(self) -> float:
        return float(np.median(self.rates))

    def cpu_line(self) -> str:
        return (f"{np.median(self.cpu) * 1e6:6.0f} us CPU/img, {np.median(self.busy):.2f} cores busy")


class SpinStyle(Dataset):
    """SPIN's recipe: read the full frame, crop the person box, resize, normalise — per item."""

    def __init__(self, npz: str, root: str) -> None:
        with np.load(npz) as d:
            self.names = [str(n) for n in d["imgname"]]
            self.center, self.scale = d["center"], d["scale"]
            self.params = np.concatenate([d["pose"], d["shape"]], axis=1).astype(np.float32)
        self.root = root
        self.mean = torch.tensor(augment.IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(augment.IMAGENET_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int):
        with Image.open(os.path.join(self.root, self.names[i])) as im:
            img = im.convert("RGB")
        half = 100.0 * float(self.scale[i]) * 1.2
        cx, cy = self.center[i]
        crop = img.crop((int(cx - half), int(cy - half), int(cx + half), int(cy + half)))
        crop = crop.resize((SIZE, SIZE), Image.Resampling.BILINEAR)
        x = torch.from_numpy(np.array(crop)).permute(2, 0, 1).float() / 255.0
        return (x - self.mean) / self.std, torch.from_numpy(self.params[i])


def _decode_pil(blobs: list[bytes]) -> int:
    for b in blobs:
        with Image.open(io.BytesIO(b)) as im:
            im.convert("RGB")
    return len(blobs)


def _decode_tv(blobs: list[bytes]) -> int:
    from torchvision.io import decode_jpeg

    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for b in blobs:
            decode_jpeg(torch.frombuffer(bytearray(b), dtype=torch.uint8))
    return len(blobs)


def pool_decode_rate(fn, blobs: list[bytes], workers: int, rounds: int = 3) -> float:
    ctx = multiprocessing.get_context("forkserver")
    chunks = [blobs[i:i + 64] for i in range(0, len(blobs), 64)]
    with cf.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        list(pool.map(fn, chunks[:workers]))  # start and import
        t0 = time.perf_counter()
        done = sum(sum(pool.map(fn, chunks)) for _ in range(rounds))
    return done / (time.perf_counter() - t0)


class DaliBare:
    """Batches of a bare DALI CPU pipeline over the shards, without labels or keys. `kind`:
      decode  the decoder alone (the whole packed crop)
      roi     ROI decode of the centre SIZE px (what the eval loader decodes)
      cmn     roi + DALI's crop_mirror_normalize to float32 CHW (DALI's own normalise)
      bare    roi + augment.Normalizer, as the loader normalises on the CPU"""

    KINDS = ("decode", "roi", "cmn", "bare")

    def __init__(self, shards: list[shardset.Shard], workers: int, kind: str = "decode") -> None:
        from nvidia.dali import fn, pipeline_def, types

        @pipeline_def
        def bare():
            jpg = fn.readers.webdataset(paths=[s.tar for s in shards],
                                        index_paths=[s.index for s in shards], ext=["jpg"],
                                        dtypes=[types.UINT8])
            if kind == "decode":
                return fn.decoders.image(jpg, device="cpu", output_type=types.RGB)
            img = fn.decoders.image_crop(jpg, crop=[SIZE, SIZE], crop_pos_x=0.5, crop_pos_y=0.5,
                                         device="cpu", output_type=types.RGB)
            if kind != "cmn":
                return img
            return fn.crop_mirror_normalize(img, output_layout="CHW", dtype=types.FLOAT,
                                            mean=[255.0 * v for v in augment.IMAGENET_MEAN],
                                            std=[255.0 * v for v in augment.IMAGENET_STD])

        self.pipe = bare(batch_size=BATCH, num_threads=workers, device_id=None, seed=0)
        self.pipe.build()
        self.norm = augment.Normalizer(torch.float32) if kind == "bare" else None

    def __iter__(self):
        while True:
            out = self.pipe.run()
            if self.norm is not None:
                out = [self.norm(torch.from_dlpack(out[0].as_tensor()), hwc=True)]
            yield out


def packed_shards(data: str, frames: int, workers: int) -> tuple[str, str, str]:
    """bench/pack.py's source frames under `data` and their 256 px shards (both made once)."""
    npz, root = make_source(data, frames, workers)
    out = os.path.join(data, "shards")
    if not os.path.exists(os.path.join(out, shardset.MANIFEST)):
        pack([npz], root, out, PackConfig("spin", size=256), workers=workers, progress=False,
             log=lambda s: None)
    return npz, root, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "meshrec-bench-pack"))
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2, help="decode threads / DataLoader workers")
    ap.add_argument("--seconds", type=float, default=12.0, help="measuring time per loader")
    ap.add_argument("--rounds", type=int, default=4, help="interleaved rounds per loader")
    headline.add_flag(ap)
    args = ap.parse_args()
    w = args.workers

    npz, root, out = packed_shards(args.data, args.frames, w)
    subjects = "[" + ",".join(SUBJECTS) + "]"
    cfg = with_overrides(Config(), [f"data.shards={out}", f"data.image_size={SIZE}",
                                    f"data.batch_size={BATCH}", f"eval.batch_size={BATCH}",
                                    f"data.num_threads={w}", f"data.train_subjects={subjects}",
                                    f"data.val_subjects={subjects}"])
    shards = shardset.select(Path(out), shardset.load_manifest(Path(out)), SUBJECTS)
    refs = shardset.all_samples(shards)
    blobs = [shardset.read_member(shards[r.shard].tar, *r.members["jpg"]) for r in refs]
    frame_kb = np.mean([os.path.getsize(os.path.join(root, n)) for n in SpinStyle(npz, root).names]) / 1e3
    print(f"{len(refs)} samples: packed crops 256 px ({np.mean([len(b) for b in blobs]) / 1e3:.0f} KB), "
          f"full frames 1000 px ({frame_kb:.0f} KB); {w} threads/workers; batch {BATCH}; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")

    meters: dict[str, Meter] = {}
    for backend in ("dali", "torch"):
        c = with_overrides(cfg, [f"data.backend={backend}"])
        meters[f"{backend} eval"] = Meter(build_loader(c, "val"))
        meters[f"{backend} train"] = Meter(build_loader(c, "train"))
    meters["spin"] = Meter(DataLoader(SpinStyle(npz, root), batch_size=BATCH, shuffle=True,
                                      num_workers=w, drop_last=True, persistent_workers=True))
    meters["dali decode"] = Meter(DaliBare(shards, w))
    meters["dali bare"] = Meter(DaliBare(shards, w, "bare"))
    for _ in range(args.rounds):
        for meter in meters.values():
            meter.round(args.seconds / args.rounds)
    rates = {name: m.rate for name, m in meters.items()}
    cpu_lines = {name: meters[name].cpu_line() for name in ("dali eval", "dali bare", "dali decode")}
    frames = SpinStyle(npz, root)
    full = pool_decode_rate(_decode_pil, [open(os.path.join(root, n), "rb").read() for n in frames.names],
                            w, rounds=1)
    pil = pool_decode_rate(_decode_pil, blobs, w)
    tv = pool_decode_rate(_decode_tv, blobs, w)
    dali_dec = rates.pop("dali decode")
    bare = rates.pop("dali bare")
    ceiling = max(pil, tv, dali_dec)
    for name, rate in rates.items():
        print(f"{name:12s} {rate:8.1f} img/s")
    print(f"decode only, full frames (what SPIN-style must do at least): PIL {full:.1f} img/s")
    print(f"decode only, packed crops: PIL {pil:.1f}, torchvision {tv:.1f}, DALI {dali_dec:.1f} img/s "
          f"→ ceiling {ceiling:.1f}")
    print(f"dali bare (ROI decode + torch normalisation only) {bare:.1f} img/s")
    for name, line in cpu_lines.items():
        print(f"{name:12s} {line}")
    dali = rates["dali eval"]
    headline.emit(f"vs_spin={dali / rates['spin']:.2f} ceiling_frac={dali / ceiling:.2f} "
                  f"dali_img_s={dali:.1f}", args.json)


if __name__ == "__main__":
    main()
