"""GPU loader throughput against the ResNet-152 forward rate on one GPU: does the encoder wait?

Usage: python bench/loader_gpu.py [--data DIR] [--threads N] [--seconds S]

Needs CUDA and DALI. Data: bench/pack.py's generated frames packed to 256 px crops (reused from
--data/shards; made as bench/loader.py makes them when missing). All rates are images/s on one
GPU, batches of 64, after warm-up, the median of `--rounds` interleaved rounds:
  mixed decode   DALI's `mixed` decoder alone (nvJPEG / the hardware JPEG engine)
  dali eval      meshrec.data's DALI pipeline on the GPU: decode + centre crop + normalise, fp16
  dali train     the same with the training augmentation (warp, colour twist, flip)
  r152 fwd       meshrec's ResNet-152 encoder, frozen (no grad), autocast as training uses it
                 (train.amp=auto), channels_last, on a batch already on the GPU
  r152 fwd+bwd   the same encoder trained end to end (forward + backward, no optimizer step)
  fed fwd        `dali train` batches fed straight into the frozen encoder: the rate training
                 sees when loading and encoding overlap
The last line reads `mixed_img_s=… r152_fwd_img_s=… decode_over_fwd=… fed_frac=…`
(decode_over_fwd = mixed decode / r152 fwd; fed_frac = fed fwd / r152 fwd: 1.0 = never waits).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from meshrec.config import Config, with_overrides  # noqa: E402
from meshrec.data import build_loader, shardset  # noqa: E402
from meshrec.model.encoder import build_encoder  # noqa: E402
from meshrec.precision import amp_dtype, autocast  # noqa: E402
from loader import BATCH, SIZE, Meter, packed_shards  # noqa: E402  (bench/loader.py)
from pack import SUBJECTS  # noqa: E402  (bench/pack.py)
import headline


class MixedDecodeOnly:
    """Batches of DALI's `mixed` decoder alone over the shards (no crop, no normalisation)."""

    def __init__(self, shards: list[shardset.Shard], threads: int, gpu: bool = True) -> None:
        from nvidia.dali import fn, pipeline_def, types

        @pipeline_def
        def decode_only():
            jpg = fn.readers.webdataset(paths=[s.tar for s in shards],
                                        index_paths=[s.index for s in shards], ext=["jpg"],
                                        dtypes=[types.UINT8])
            return fn.decoders.image(jpg, device="mixed" if gpu else "cpu", output_type=types.RGB)

        self.pipe = decode_only(batch_size=BATCH, num_threads=threads, device_id=0 if gpu else None, seed=0,
                                prefetch_queue_depth=2)
        self.pipe.build()

    def __iter__(self):
        while True:
            yield {"image": range(len(self.pipe.run()[0]))}


class Synced:
    """Wrap an iterable of GPU work so a round's clock stops only when the GPU is done."""

    def __init__(self, batches) -> None:
        self.batches = batches

    def __iter__(self):
        for b in self.batches:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            yield b


class EncoderRate:
    """Batches of the encoder on one fixed GPU batch (forward, or forward + backward)."""

    def __init__(self, encoder, image: torch.Tensor, amp, backward: bool) -> None:
        self.encoder, self.image, self.amp, self.backward = encoder, image, amp, backward

    def __iter__(self):
        while True:
            with autocast(self.image.device, self.amp):
                out = self.encoder(self.image)
            if self.backward:
                out.float().sum().backward()
            yield {"image": range(len(self.image))}


class Fed:
    """Loader batches straight into the frozen encoder (as training consumes them)."""

    def __init__(self, loader, encoder, amp) -> None:
        self.loader, self.encoder, self.amp = loader, encoder, amp

    def __iter__(self):
        for batch in self.loader:
            image = batch["image"].contiguous(memory_format=torch.channels_last)
            with autocast(image.device, self.amp):
                self.encoder(image)
            yield {"image": range(len(image))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "meshrec-bench-pack"))
    ap.add_argument("--threads", type=int, default=8, help="DALI CPU threads for the GPU")
    ap.add_argument("--seconds", type=float, default=16.0, help="measuring time per rate")
    ap.add_argument("--rounds", type=int, default=4, help="interleaved rounds per rate")
    ap.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # CPU run of the code
    headline.add_flag(ap)
    args = ap.parse_args()
    if not torch.cuda.is_available() and not args.smoke:
        sys.exit("loader_gpu: needs a CUDA GPU (bench/loader.py measures the CPU loaders)")
    out = Path(args.data) / "shards"
    if not (out / shardset.MANIFEST).exists():
        packed_shards(args.data, 1000, os.cpu_count() or 2)
    subjects = "[" + ",".join(SUBJECTS) + "]"
    cfg = with_overrides(Config(), [f"data.shards={out}", f"data.image_size={SIZE}",
                                    f"data.batch_size={BATCH}", f"eval.batch_size={BATCH}",
                                    f"data.num_threads={args.threads}", "data.backend=dali",
                                    f"data.train_subjects={subjects}", f"data.val_subjects={subjects}",
                                    "model.encoder=resnet152", "model.weights=none"])
    dev = torch.device("cpu" if args.smoke else "cuda", 0)
    shards = shardset.select(out, shardset.load_manifest(out), SUBJECTS)
    amp = amp_dtype(cfg.train.amp, dev)
    print(f"{sum(s.samples for s in shards)} samples (256 px crops) → {SIZE} px, batch {BATCH}, "
          f"{torch.cuda.get_device_name(0) if dev.type == 'cuda' else 'cpu'}, {args.threads} DALI threads, "
          f"{os.cpu_count()} cores, autocast {amp}")

    frozen = build_encoder("resnet152", "none", frozen=True).to(dev).to(memory_format=torch.channels_last)
    trained = build_encoder("resnet152", "none", frozen=False).to(dev).to(memory_format=torch.channels_last)
    image = torch.randn(BATCH, 3, SIZE, SIZE, device=dev).contiguous(memory_format=torch.channels_last)
    meters = {
        "mixed decode": Meter(Synced(MixedDecodeOnly(shards, args.threads, dev.type == "cuda"))),
        "dali eval": Meter(Synced(build_loader(cfg, "val", device=dev))),
        "dali train": Meter(Synced(build_loader(cfg, "train", device=dev))),
        "r152 fwd": Meter(Synced(EncoderRate(frozen, image, amp, backward=False))),
        "r152 fwd+bwd": Meter(Synced(EncoderRate(trained, image, amp, backward=True))),
        "fed fwd": Meter(Synced(Fed(build_loader(cfg, "train", device=dev), frozen, amp))),
    }
    for _ in range(args.rounds):
        for meter in meters.values():
            meter.round(args.seconds / args.rounds)
    rates = {name: m.rate for name, m in meters.items()}
    for name, rate in rates.items():
        spread = np.ptp(meters[name].rates) / max(rate, 1e-9)
        print(f"{name:13s} {rate:9.1f} img/s  (rounds spread {spread:.0%})")
    fwd = rates["r152 fwd"]
    headline.emit(f"mixed_img_s={rates['mixed decode']:.0f} "
                  f"dali_train_img_s={rates['dali train']:.0f} r152_fwd_img_s={fwd:.0f} "
                  f"decode_over_fwd={rates['mixed decode'] / fwd:.2f} "
                  f"fed_frac={rates['fed fwd'] / fwd:.2f}", args.json)


if __name__ == "__main__":
    main()
