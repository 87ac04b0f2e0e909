"""DALI loader: webdataset reader → decode → augment → normalise, on CPU or with nvJPEG on a GPU.

One pipeline definition serves both machines: with CUDA the JPEGs go through the `mixed`
decoder and every image operator runs on the GPU (images float16, labels copied to the GPU);
without it `device_id=None` and everything runs on CPU threads (images float32).

Sharding and epochs (DALI shards by sample over all the split's tars):
  train  `shard_id` = global rank, `num_shards` = world size, `pad_last_batch=True`,
         LastBatchPolicy.DROP: every rank yields floor(smallest rank share / batch) batches.
         Shuffled from `data.seed`: the tar order is reshuffled after every epoch
         (`shuffle_after_epoch`, same seed on every rank so ranks stay disjoint) and samples are
         mixed in a `random_shuffle` buffer of `SHUFFLE_BUFFER` samples. Augmentation numbers
         come from DALI random operators seeded per rank from `data.seed`.
  val/test  no shuffle, `stick_to_shard`, `pad_last_batch=True`, LastBatchPolicy.PARTIAL: the
         padding repeats are cut off, so all ranks together see every sample exactly once and
         every rank yields the same number of batches (the last may be short, even empty).

Mid-epoch resume uses DALI's own checkpointing (`enable_checkpointing=True`): `state_dict()`
is the iterator's `checkpoints()` (reader position, shuffle buffer, random generator states
and the iterator's counters); a loader built with it continues with the same samples in the
same order and the same augmentation numbers as an uninterrupted run (tested).

Images: one affine warp (meshrec.data.augment.affine_matrix, written here with DALI arithmetic on
the per-sample random numbers), colour twist, then on a GPU crop_mirror_normalize (flip, ImageNet
statistics, CHW float16). On the CPU the flip is `fn.flip` and the batch leaves DALI as uint8 HWC;
augment.Normalizer turns it into float32 NCHW (channels-last memory): DALI's CPU
crop_mirror_normalize is a scalar loop that cost as much as the JPEG decode (bench/RESULTS.md).
An unaugmented crop that is a plain pixel copy (224 of a 256 px packed crop) skips the warp: only
that region is decoded (`decoders.image_crop`), DALI's CPU warp being ~6× slower than a copy.

Labels: the reader reads the label members the manifest lists (smpl.npy, has_smpl.npy, j3d.npy,
kp2d.npy, whichever the shards have; batch.LabelLayout) and fn.decoders.numpy decodes them. Their
flip/rotation/warp is done in torch after the iterator (meshrec.data.labels) from the
augmentation numbers the pipeline outputs, so the pixels and the labels use the same draw.

A JPEG the decoder cannot read stops the pipeline (DALI cannot skip a sample); the loader then
scans the split's shards and raises MeshrecError naming the shard and key.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from meshrec.config import Config
from meshrec.data import augment
from meshrec.data.augment import Aug
from meshrec.data.batch import Batch, LabelLayout, finish
from meshrec.data.shardset import Shard, undecodable
from meshrec.errors import MeshrecError

SHUFFLE_BUFFER = 4096  # samples (encoded, ~30 kB each) mixed by the reader's shuffle buffer
READER = "reader"


def _seed(*parts: int) -> int:
    """A stable 31-bit seed from integers (DALI seeds must fit an int32)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0] & 0x7FFFFFFF)


def _pipeline(shards: Sequence[Shard], label_members: Sequence[str], train: bool, cfg: Config,
              shard_id: int, num_shards: int, gpu: bool, src_size: int | None) -> Any:
    from nvidia.dali import fn, math as dmath, types

    aug = cfg.data.augment
    augmenting = train and aug.enabled
    size = cfg.data.image_size
    ext = ["jpg", *label_members]
    reader_args: dict[str, Any] = dict(
        paths=[s.tar for s in shards], index_paths=[s.index for s in shards], ext=ext,
        dtypes=[types.UINT8] * len(ext), shard_id=shard_id, num_shards=num_shards,
        pad_last_batch=True, missing_component_behavior="error", name=READER)
    if train:
        reader_args.update(random_shuffle=True, initial_fill=SHUFFLE_BUFFER,
                           shuffle_after_epoch=True, shuffle_after_epoch_seed=_seed(cfg.data.seed))
    else:
        reader_args.update(stick_to_shard=True)
    jpg, *members = fn.readers.webdataset(**reader_args)
    info = fn.pad(fn.get_property(jpg, key="source_info"), axes=(0,))
    decode = dict(device="mixed" if gpu else "cpu", output_type=types.RGB)
    exact = None if augmenting else augment.exact_crop(src_size, size)
    p: dict[int, Any] = {}
    if exact is not None:
        # The crop is a plain pixel copy (224 of a 256 px packed crop): decode only that region
        # (ROI decoding) and resample nothing (DALI's CPU warp: ~400 img/s on 2 threads).
        img = fn.decoders.image_crop(jpg, crop=[size, size], crop_pos_x=0.5, crop_pos_y=0.5,
                                     **decode)
    else:
        img = fn.decoders.image(jpg, **decode)
        shape = fn.peek_image_shape(jpg, dtype=types.FLOAT)  # (H, W, C) without decoding
        h, w = shape[0], shape[1]
        zero = h * 0.0  # a per-sample scalar, to hold constants where the numbers need DataNodes
        p = {Aug.SCALE: 1.0, Aug.TX: 0.0, Aug.TY: 0.0, Aug.ANGLE: 0.0}
        if augmenting:
            for slot, (lo, hi) in augment.ranges(aug).items():
                p[slot] = fn.random.uniform(range=[lo, hi]) if hi > lo else zero + lo
            flip = fn.random.coin_flip(probability=aug.flip_prob, dtype=types.INT32)
            p[Aug.FLIP] = fn.cast(flip, dtype=types.FLOAT)

        # augment.affine_matrix, written with DALI arithmetic (per-sample scalars).
        side = augment.CROP_FRACTION * dmath.min(w, h) * p[Aug.SCALE]
        k = side / size
        cx, cy = w / 2.0 + p[Aug.TX] * side, h / 2.0 + p[Aug.TY] * side
        if augmenting:
            rad = p[Aug.ANGLE] * (math.pi / 180.0)
            c, s = dmath.cos(rad), dmath.sin(rad)
        else:
            c, s = 1.0, 0.0
        half = size / 2.0
        matrix = fn.stack(k * c, -k * s, cx - k * (c - s) * half,
                          k * s, k * c, cy - k * (s + c) * half)
        img = fn.warp_affine(img, matrix=fn.reshape(matrix, shape=[2, 3]), size=[size, size],
                             fill_value=0, interp_type=types.INTERP_LINEAR, inverse_map=True)
    if augmenting and aug.color_jitter > 0:
        img = fn.color_twist(img, brightness=p[Aug.BRIGHTNESS], contrast=p[Aug.CONTRAST],
                             saturation=p[Aug.SATURATION])
    if gpu:
        img = fn.crop_mirror_normalize(
            img, mirror=flip if augmenting else 0, output_layout="CHW", dtype=types.FLOAT16,
            mean=[255.0 * v for v in augment.IMAGENET_MEAN],
            std=[255.0 * v for v in augment.IMAGENET_STD])
    elif augmenting:
        # On the CPU the batch leaves as uint8 HWC and torch normalises it (augment.Normalizer):
        # DALI's CPU crop_mirror_normalize is a scalar loop as costly as the decode.
        img = fn.flip(img, horizontal=flip)

    labels = [fn.decoders.numpy(member) for member in members]
    if gpu:
        labels = [x.gpu() for x in labels]
    outs = [img, *labels, info]
    if augmenting:
        outs.append(fn.stack(*[fn.cast(p[i], dtype=types.FLOAT) for i in range(augment.NUM_PARAMS)]))
    return tuple(outs)


class DaliLoader:
    """Iterable of `Batch` for one rank; `len()` = batches per epoch (equal on every rank)."""

    def __init__(self, cfg: Config, shards: Sequence[Shard], labels: LabelLayout, train: bool,
                 batch_size: int, rank: int, world_size: int, device: torch.device,
                 state: dict | None = None) -> None:
        try:
            from nvidia.dali import pipeline_def
            from nvidia.dali.plugin.base_iterator import LastBatchPolicy
            from nvidia.dali.plugin.pytorch import DALIGenericIterator
        except ImportError as exc:
            raise MeshrecError(f"data.backend is dali but DALI cannot be imported ({exc}); install "
                               "nvidia-dali-cuda130 or set data.backend=torch") from None

        self.shards = list(shards)
        self.train, self.label_layout = train, labels
        self.augmenting = train and cfg.data.augment.enabled
        gpu = device.type == "cuda"
        device_id = (device.index if device.index is not None else torch.cuda.current_device()) \
            if gpu else None
        checkpoint = None
        if state is not None:
            if state.get("backend") != "dali":
                raise MeshrecError(f"loader state is from the {state.get('backend')!r} backend; "
                                   "this run uses data.backend: dali")
            checkpoint = state["checkpoint"]
        pipe = pipeline_def(_pipeline, enable_checkpointing=True)(
            self.shards, list(labels.members.values()), train, cfg, rank, world_size, gpu,
            labels.src_size,
            batch_size=batch_size, num_threads=cfg.data.num_threads, device_id=device_id,
            seed=_seed(cfg.data.seed, 1 + rank), checkpoint=checkpoint)
        self.output_map = ["image", *labels.members, "info"] + (["aug"] if self.augmenting else [])
        with _named_errors(self.shards):
            self._it = DALIGenericIterator(
                [pipe], self.output_map, reader_name=READER, auto_reset=True,
                last_batch_policy=LastBatchPolicy.DROP if train else LastBatchPolicy.PARTIAL)
        self.image_dtype = torch.float16 if gpu else torch.float32
        self._normalize = None if gpu else augment.Normalizer(self.image_dtype)

    def __len__(self) -> int:
        return len(self._it)

    def __iter__(self) -> Iterator[Batch]:
        it = iter(self._it)
        fresh = True
        while True:
            with _named_errors(self.shards):
                try:
                    out = next(it)[0]
                except StopIteration:
                    # Restored (or stopped) exactly at an epoch's end: DALI first reports that
                    # end, then resets; go on with the next epoch, as the torch loader does.
                    if not fresh:
                        return
                    fresh = False
                    continue
            fresh = False
            info = out["info"]
            keys = [_key(row.tobytes()) for row in info.numpy()]
            aug_t = out.get("aug")
            if aug_t is None:
                aug_t = torch.from_numpy(np.tile(augment.IDENTITY, (len(keys), 1)))
            image = out["image"]
            if self._normalize is not None:
                image = self._normalize(image, hwc=True)
            held = {name: out[name] for name in self.label_layout.members}
            yield finish(image, held, aug_t, keys, self.label_layout)

    def state_dict(self) -> dict:
        """Position after the batches yielded so far (DALI reader + iterator checkpoint)."""
        return {"backend": "dali", "checkpoint": self._it.checkpoints()[0]}


def _key(info: bytes) -> str:
    """'path/S1-000000.tar:offset:KEY.jpg' → KEY."""
    member = info.rstrip(b"\0").decode("utf-8").rsplit(":", 1)[-1]
    return member.split(".", 1)[0]


class _named_errors:
    """Turn a DALI decode failure into MeshrecError naming the shard and key that caused it."""

    def __init__(self, shards: Sequence[Shard]) -> None:
        self.shards = shards

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        if kind is None or not issubclass(kind, RuntimeError) or isinstance(exc, MeshrecError):
            return False
        text = str(exc)
        if "decoders.image" not in text and "decod" not in text.lower():
            return False
        bad = undecodable(self.shards)
        if bad:
            where = "; ".join(f"{tar} key {key} ({why})" for tar, key, why in bad)
            raise MeshrecError(f"corrupt JPEG in the shards, DALI cannot skip it: {where}") from None
        first = next((ln.strip() for ln in text.splitlines() if "failure" in ln or "rror" in ln),
                     text.splitlines()[0] if text else "")
        raise MeshrecError(f"image decoding failed in DALI ({first}); no undecodable JPEG "
                           "found by a scan of the split's shards") from None
