"""Loaders over real packed shards: a tiny SPIN-layout source (tests/shard_fixture.py) packed by
meshrec.shards.pack into 96 px crops, read as 64 px network inputs on CPU."""

from __future__ import annotations

import concurrent.futures as cf
import shutil
import subprocess
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from meshrec.body import h36m, mirror
from meshrec.config import Config, ConfigError, with_overrides
from meshrec.data import augment, build_loader, labels, shardset
from meshrec.data.augment import Aug
from meshrec.data.split import (batch_rows, batches_per_epoch, epoch_order, rank_batch,
                                rank_samples)
from meshrec.errors import MeshrecError
from meshrec.shards.pack import PackConfig, pack
from meshrec.shards.verify import verify
from tests.shard_fixture import (DISC_RGB, SPOT_JOINT, expected_j3d, expected_kp2d,
                                 expected_vector, make_spin_source, to_old_format)

BACKENDS = ["dali", "torch"]
SIZE = 84  # = 96 · 224/256: the unaugmented crop is a plain copy; WARPED: a resampled one
WARPED = 64
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
SPLITS = {"h36m_train.npz": ("S1", "S5", "S6"), "h36m_valid.npz": ("S9", "S11")}
MISSING = "S11/Walking_2.55011271/frame_000006.jpg"  # removed: the packer rejects it → 23 val samples


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader_src")
    src = make_spin_source(root, splits=SPLITS, frames=3, frame_size=240, with_transl=False)
    (src.root / MISSING).unlink()
    return src


@pytest.fixture(scope="module")
def shards(source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("loader_shards") / "shards"
    # ~10 samples per tar: several tars per subject, so sharding crosses tar boundaries.
    pack(source.files, source.root, out, PackConfig("spin", size=96, shard_size_mb=0.04),
         workers=1, progress=False)
    return out


def config(shards: Path, backend: str, *more: str) -> Config:
    return with_overrides(Config(), [
        f"data.shards={shards}", f"data.backend={backend}", f"data.image_size={SIZE}",
        "data.batch_size=8", "eval.batch_size=6", "data.num_threads=1", "data.val_subjects=[S9,S11]",
        *more])


def by_key(source) -> dict[str, dict]:
    """Source rows by packed sample key (the packer's S1-Action-camera-frame), as packed."""
    out = {}
    for name, row in source.rows.items():
        if name == MISSING:
            continue
        subject, rest = name.split("/", 1)
        action_cam, frame = rest.split("/")
        action, cam = action_cam.split(".")
        out[f"{subject}-{action}-{cam}-{frame[6:12]}"] = row
    return out


def take(loader, n: int | None = None) -> list[dict]:
    """Up to n batches (cloned: loaders may reuse their tensors)."""
    out = []
    for batch in loader:
        out.append({k: v.clone() if torch.is_tensor(v) else list(v) for k, v in batch.items()})
        if n is not None and len(out) == n:
            break
    return out


def pixels(image: torch.Tensor) -> torch.Tensor:
    """Undo ImageNet normalisation: NCHW → 0..255 float."""
    mean = torch.tensor(augment.IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(augment.IMAGENET_STD).view(1, 3, 1, 1) * 255
    return image.float() * std + mean


@pytest.mark.parametrize("hwc", [False, True])
def test_normalizer_matches_imagenet_statistics_in_either_layout(hwc):
    gen = torch.Generator().manual_seed(0)
    nchw = [torch.randint(0, 256, (n, 3, 7, 5), dtype=torch.uint8, generator=gen) for n in (4, 4, 3)]
    mean = np.array(augment.IMAGENET_MEAN).reshape(1, 3, 1, 1) * 255.0
    std = np.array(augment.IMAGENET_STD).reshape(1, 3, 1, 1) * 255.0
    norm = augment.Normalizer(torch.float32)
    outs = []
    for x in nchw:  # two full batches, then a short last one
        out = norm(x.permute(0, 2, 3, 1).contiguous() if hwc else x, hwc=hwc)
        assert out.shape == x.shape and out.dtype == torch.float32
        assert out.is_contiguous(memory_format=torch.channels_last if hwc else torch.contiguous_format)
        ref = (x.numpy().astype(np.float64) - mean) / std
        assert np.allclose(out.numpy(), ref, rtol=0, atol=1e-5)
        outs.append(out)
    # Buffers are reused in turn (clone what you keep): the first batch's memory is the third's.
    assert outs[2].data_ptr() == outs[0].data_ptr() and outs[1].data_ptr() != outs[0].data_ptr()


@pytest.mark.parametrize("size", [SIZE, WARPED])
@pytest.mark.parametrize("backend", BACKENDS)
def test_eval_batches_shapes_normalisation_and_labels_match_the_source(shards, source, backend, size):
    batches = take(build_loader(config(shards, backend, f"data.image_size={size}"), "val"))
    rows = by_key(source)
    b = batches[0]
    assert b["image"].shape == (6, 3, size, size) and b["image"].dtype == torch.float32
    assert b["params"].shape == (6, 82) and b["params"].dtype == torch.float32
    assert b["has_smpl"].shape == (6,) and b["has_smpl"].dtype == torch.bool and b["has_smpl"].all()
    assert b["j3d"].shape == (6, 17, 4) and b["kp2d"].shape == (6, 17, 3) and not b["flipped"].any()
    k = augment.CROP_FRACTION * 96 / size  # packed px per input px of the unaugmented centre crop
    for b in batches:
        # The disc (the "person") is centred in every crop: RGB order and normalisation are right.
        centre = pixels(b["image"])[:, :, size // 2, size // 2]
        assert torch.allclose(centre, torch.tensor(DISC_RGB, dtype=torch.float32), atol=12)
        for i, key in enumerate(b["key"]):
            row = rows[key]
            assert np.array_equal(b["params"][i].numpy(), expected_vector(row))
            assert np.array_equal(b["j3d"][i].numpy(), expected_j3d(row))
            kp = expected_kp2d(row, 96)
            kp[:, :2] = (kp[:, :2] + 0.5 - 48) / k + size / 2 - 0.5
            assert np.allclose(b["kp2d"][i].numpy(), kp, atol=1e-4)


def test_split_rule_steps_ranks_together_and_covers_evaluation_exactly_once():
    """meshrec.data.split alone, over many sizes: what the torch and feature loaders rely on."""
    for n in (1, 5, 23, 47, 100):
        for world in (1, 2, 3, 4):
            for batch in (1, 3, 4, 11):
                for train in (True, False):
                    order, _ = epoch_order(n, 7, 2, shuffle=train)
                    count = batches_per_epoch(n, world, batch, train)
                    rows = [[order[batch_rows(n, r, world, batch, b)] for b in range(count)]
                            for r in range(world)]
                    taken = [np.concatenate(r) if r else np.zeros(0, int) for r in rows]
                    assert [len(t) for t in taken] == [rank_samples(n, r, world, batch, train)
                                                      for r in range(world)]
                    every = np.concatenate(taken)
                    assert len(set(every.tolist())) == len(every)  # ranks are disjoint
                    if train:
                        assert all(len(b) == batch for r in rows for b in r)
                    else:
                        assert sorted(every.tolist()) == list(range(n))
    order, rng = epoch_order(10, 7, 2, shuffle=True)
    again, rng2 = epoch_order(10, 7, 2, shuffle=True)
    assert np.array_equal(order, again) and rng.random() == rng2.random()
    assert not np.array_equal(order, epoch_order(10, 7, 3, shuffle=True)[0])
    assert np.array_equal(epoch_order(10, 7, 2, shuffle=False)[0], np.arange(10))
    with pytest.raises(MeshrecError, match="does not split evenly over 3 ranks"):
        rank_batch(8, 3, "data.batch_size")


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_ranks_see_every_evaluation_sample_exactly_once(shards, source, backend):
    cfg = config(shards, backend)
    expected = {k for k in by_key(source) if k.startswith(("S9", "S11"))}
    assert len(expected) == 23  # odd: the ranks' shares differ (12 / 11)
    loaders = [build_loader(cfg, "val", rank, 2) for rank in range(2)]
    assert len(loaders[0]) == len(loaders[1]) == 4  # ⌈12 / 3⌉ per-rank batches of 3
    assert [loader.samples for loader in loaders] == [11, 12]
    for _ in range(2):  # two epochs: the same exact cover each time
        seen = Counter()
        for loader in loaders:
            batches = take(loader)
            assert len(batches) == len(loader)
            assert sum(len(b["key"]) for b in batches) == loader.samples
            assert all(len(b["image"]) == len(b["params"]) == len(b["key"]) for b in batches)
            seen.update(k for b in batches for k in b["key"])
        assert set(seen) == expected and max(seen.values()) == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_rank_whose_share_ends_early_yields_an_empty_last_batch(shards, backend):
    """23 samples, 2 ranks of 11 per batch: shares 11 / 12 → batches [11, 0] and [11, 1], so
    both ranks take the same number of steps."""
    cfg = config(shards, backend, "eval.batch_size=22")
    sizes = [[len(b["key"]) for b in take(build_loader(cfg, "val", rank, 2))] for rank in range(2)]
    assert sizes == [[11, 0], [11, 1]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_ranks_step_together_on_disjoint_samples(shards, backend):
    # 36 + 11 = 47 samples: shares 23 / 24, 4 per rank-batch → 5 batches each, the rest dropped.
    cfg = config(shards, backend, "data.train_subjects=[S1,S5,S6,S11]")
    loaders = [build_loader(cfg, "train", rank, 2) for rank in range(2)]
    assert len(loaders[0]) == len(loaders[1]) == 5
    assert loaders[0].samples == loaders[1].samples == 20
    for _ in range(2):
        keys = []
        for loader in loaders:
            batches = take(loader)
            assert len(batches) == len(loader) and all(len(b["key"]) == 4 for b in batches)
            keys.append([k for b in batches for k in b["key"]])
        assert len(set(keys[0]) | set(keys[1])) == len(keys[0]) + len(keys[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_seed_same_order_and_augmentation_other_seed_differs(shards, backend):
    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        batches = take(build_loader(config(shards, backend, f"data.seed={seed}"), "train"))
        runs[name] = ([k for b in batches for k in b["key"]], torch.cat([b["aug"] for b in batches]))
    assert runs["a"][0] == runs["b"][0] and torch.equal(runs["a"][1], runs["b"][1])
    assert runs["a"][0] != runs["c"][0]
    assert len(set(runs["a"][0])) == len(runs["a"][0])


@pytest.mark.parametrize("k", [2, 4, 4 + 1])  # mid-epoch, at its end, into the next (4 an epoch)
@pytest.mark.parametrize("backend,device", [
    ("dali", "cpu"), ("torch", "cpu"),
    pytest.param("dali", "cuda", marks=[pytest.mark.gpu, needs_cuda])])
def test_resume_after_k_batches_continues_with_the_same_batches(shards, backend, device, k):
    cfg = config(shards, backend)
    loader = build_loader(cfg, "train", 1, 2, device)
    done = take(loader)  # a whole epoch
    if k > len(done):
        done = take(loader, k - len(done))
    else:
        loader = build_loader(cfg, "train", 1, 2, device)
        take(loader, k)
    state = loader.state_dict()
    expected = take(loader, 2)
    resumed = take(build_loader(cfg, "train", 1, 2, device, state=state), 2)
    assert len(expected) == 2
    for want, got in zip(expected, resumed, strict=True):
        assert want["key"] == got["key"]
        assert torch.equal(want["aug"], got["aug"]) and torch.equal(want["image"], got["image"])
        assert torch.equal(want["params"], got["params"])


def test_decoding_in_the_rank_or_in_workers_gives_the_same_batches(shards):
    # data.num_threads=0: no worker processes (torch backend); the same samples, numbers, pixels.
    inline = take(build_loader(config(shards, "torch", "data.num_threads=0"), "train"))
    pooled = take(build_loader(config(shards, "torch", "data.num_threads=2"), "train"))
    assert len(inline) == len(pooled) > 1
    for a, b in zip(inline, pooled, strict=True):
        assert a["key"] == b["key"] and torch.equal(a["aug"], b["aug"])
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["params"], b["params"])
    with pytest.raises(ConfigError, match="data.num_threads: DALI needs at least 1"):
        config(shards, "dali", "data.num_threads=0")


def test_state_of_one_backend_is_refused_by_the_other(shards):
    state = build_loader(config(shards, "torch"), "train").state_dict()
    with pytest.raises(MeshrecError, match="torch"):
        build_loader(config(shards, "dali"), "train", state=state)


def _reference(shards: Path, key: str, numbers: np.ndarray) -> torch.Tensor:
    """The torch backend's transform of one packed sample, read straight from its shard."""
    from torchvision.io import decode_jpeg

    cfg = config(shards, "torch")
    chosen = shardset.select(shards, shardset.load_manifest(shards), ("S1", "S5", "S6"))
    for ref in shardset.all_samples(chosen):
        if ref.key == key:
            data = shardset.read_member(chosen[ref.shard].tar, *ref.members["jpg"])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                img = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8))
            return augment.apply(img, numbers, cfg.data.image_size)
    raise KeyError(key)


def test_backends_give_matching_pixels_for_the_same_sample_and_numbers(shards):
    """DALI's augmented batch vs the torch transform given DALI's own augmentation numbers."""
    batch = take(build_loader(config(shards, "dali"), "train"), 1)[0]
    assert batch["aug"][:, Aug.ANGLE].abs().max() > 1  # the draw really augments
    dali_px = pixels(batch["image"])
    for i, key in enumerate(batch["key"]):
        ref = _reference(shards, key, batch["aug"][i].numpy()).float()
        diff = (dali_px[i] - ref).abs()
        # Bilinear weights in float32 vs float64, then uint8 rounding: one level at most (seen).
        assert diff.mean() < 0.5 and diff.max() <= 2, (key, diff.mean(), diff.max())


@pytest.mark.parametrize("size", [SIZE, WARPED])
def test_backends_give_matching_evaluation_batches(shards, size):
    dali, torch_ = (take(build_loader(config(shards, b, f"data.image_size={size}"), "val"))
                    for b in BACKENDS)
    assert [b["key"] for b in dali] == [b["key"] for b in torch_]
    for d, t in zip(dali, torch_):
        diff = (pixels(d["image"]) - pixels(t["image"])).abs()
        assert diff.max() <= 2 and torch.equal(d["params"], t["params"])
        for name in ("has_smpl", "j3d", "kp2d"):
            assert torch.equal(d[name], t[name]), name


def test_mirror_flag_flips_pixels_and_labels(shards, source):
    no_aug = ("data.augment.scale=0", "data.augment.translate=0", "data.augment.rotate_deg=0",
              "data.augment.color_jitter=0")
    rows = by_key(source)
    flipped = take(build_loader(config(shards, "dali", *no_aug, "data.augment.flip_prob=1"),
                                "train"), 1)[0]
    plain = take(build_loader(config(shards, "dali", *no_aug, "data.augment.flip_prob=0"),
                              "train"), 1)[0]
    assert flipped["key"] == plain["key"] and flipped["flipped"].all() and not plain["flipped"].any()
    assert torch.equal(flipped["image"], plain["image"].flip(-1))
    for i, key in enumerate(flipped["key"]):
        src = torch.from_numpy(expected_vector(rows[key]))
        assert torch.equal(plain["params"][i], src)
        assert torch.allclose(flipped["params"][i], mirror.flip_params(src))
    # left ↔ right of the 17 joints: the flipped left hip is the plain right hip, mirrored
    left, right = h36m.NAMES.index("left_hip"), h36m.NAMES.index("right_hip")
    sign = torch.tensor([-1.0, 1.0, 1.0, 1.0])
    assert torch.equal(flipped["j3d"][:, left], plain["j3d"][:, right] * sign)
    assert torch.equal(flipped["j3d"][:, right], plain["j3d"][:, left] * sign)
    assert torch.allclose(flipped["kp2d"][:, left, 0], SIZE - 1 - plain["kp2d"][:, right, 0], atol=1e-4)
    assert torch.equal(flipped["kp2d"][:, left, 1:], plain["kp2d"][:, right, 1:])


@pytest.fixture(scope="module")
def spot_shards(tmp_path_factory) -> Path:
    """SPIN's training layout without SMPL (part, S); each frame dark with one small bright spot
    exactly on the keypoint SPOT_JOINT."""
    root = tmp_path_factory.mktemp("spot")
    src = make_spin_source(root, splits={"h36m_train.npz": ("S1",)}, frames=2, frame_size=240,
                           with_smpl=False, with_k=False, spot=True)
    pack(src.files, src.root, root / "shards", PackConfig("spin", size=96), workers=1,
         progress=False)
    return root / "shards"


def spot_centre(image: torch.Tensor) -> torch.Tensor:
    """(x, y) of the bright spot in a normalised CHW image: brightness-weighted centroid (above
    the median background) of a 9×9 window around the brightest pixel, OpenCV coordinates."""
    grey = pixels(image[None])[0].mean(0)
    y, x = divmod(int(grey.argmax()), grey.shape[1])
    y0, x0 = max(y - 4, 0), max(x - 4, 0)
    win = (grey[y0:y + 5, x0:x + 5] - grey.median() - 10).clamp(min=0)
    yy, xx = torch.meshgrid(torch.arange(win.shape[0]), torch.arange(win.shape[1]), indexing="ij")
    return torch.stack([(win * xx).sum() / win.sum() + x0, (win * yy).sum() / win.sum() + y0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_keypoints_follow_the_pixels_under_scale_shift_rotation_and_flip(spot_shards, backend):
    loader = build_loader(config(spot_shards, backend, f"data.image_size={WARPED}",
                                 "data.train_subjects=[S1]", "data.augment.color_jitter=0"), "train")
    assert loader.labels == {"smpl": 0, "j3d": 8, "kp2d": 8}
    (batch,) = take(loader)
    aug = batch["aug"]
    assert 0 < int(batch["flipped"].sum()) < 8 and aug[:, Aug.ANGLE].abs().max() > 10
    assert (aug[:, Aug.SCALE] != 1).all() and not batch["has_smpl"].any()
    assert not batch["params"].any() and batch["params"].shape == (8, 82)
    for i in range(8):
        # mirrored, the spot (on the left wrist) is where the image's right wrist now is
        row = h36m.FLIP_PERM[SPOT_JOINT] if batch["flipped"][i] else SPOT_JOINT
        want = batch["kp2d"][i, row, :2]
        got = spot_centre(batch["image"][i])
        assert torch.dist(got, want) < 1.0, (batch["key"][i], got, want, aug[i])


def test_split_labels_reads_the_counts_from_the_manifest(shards, spot_shards):
    assert shardset.split_labels(config(shards, "torch"), "val") == {"smpl": 23, "j3d": 23, "kp2d": 23}
    cfg = config(spot_shards, "torch", "data.val_subjects=[S1]")
    assert shardset.split_labels(cfg, "val") == build_loader(cfg, "val").labels == \
        {"smpl": 0, "j3d": 8, "kp2d": 8}
    with pytest.raises(MeshrecError, match="S7"):
        shardset.split_labels(config(shards, "torch", "data.val_subjects=[S7]"), "val")


@pytest.mark.parametrize("backend", BACKENDS)
def test_shards_packed_before_optional_labels_still_load(shards, source, tmp_path, backend):
    old = tmp_path / "old"
    shutil.copytree(shards, old)
    to_old_format(old)
    assert verify(old)[0] == []
    rows = by_key(source)
    cfg = config(old, backend, "data.val_subjects=[S9]")
    loader = build_loader(cfg, "val")
    assert loader.labels == {"smpl": 12, "j3d": 0, "kp2d": 0}
    for b in take(loader):
        assert b["has_smpl"].all() and not b["j3d"].any() and not b["kp2d"].any()
        for i, key in enumerate(b["key"]):
            assert np.array_equal(b["params"][i].numpy(), expected_vector(rows[key]))
    (train,) = take(build_loader(cfg, "train"), 1)
    assert train["has_smpl"].all() and train["j3d"].shape == (8, 17, 4) and not train["j3d"].any()


def test_random_flips_apply_to_the_labels_of_exactly_the_flipped_samples(shards, source):
    rows = by_key(source)
    batches = take(build_loader(config(shards, "torch", "data.augment.rotate_deg=0"), "train"))
    flags = torch.cat([b["flipped"] for b in batches])
    assert 0 < flags.sum() < len(flags)
    for b in batches:
        for i, key in enumerate(b["key"]):
            src = torch.from_numpy(expected_vector(rows[key]))
            want = mirror.flip_params(src) if b["flipped"][i] else src
            assert torch.allclose(b["params"][i], want)


def test_label_rotation_turns_the_same_way_as_the_image():
    """A camera-frame point on the optical axis plane, rotated as the labels are, projects where
    the image warp moves its pixel (crop centre = principal point, no scale)."""
    size, focal = 64, 100.0
    numbers = augment.IDENTITY.copy()
    numbers[Aug.ANGLE] = 30.0
    numbers[Aug.SCALE] = 1.0 / augment.CROP_FRACTION  # source 64 px crop → 64 px output, 1:1
    m = augment.affine_matrix(numbers, size, size, size)
    point = np.array([0.2, -0.1, 1.0])  # x right, y down, z forward
    src_px = focal * point[:2] / point[2] + size / 2
    rotated = labels.rotation_z(torch.tensor([30.0]))[0].numpy() @ point
    out_px = focal * rotated[:2] / rotated[2] + size / 2
    # The warp maps output → source: the rotated projection must map back to the source pixel.
    assert np.allclose(m[:, :2] @ out_px + m[:, 2], src_px, atol=1e-9)


def test_rotation_with_translation_keeps_the_pelvis_on_the_rotated_point():
    rng = np.random.default_rng(0)
    pelvis = labels.Pelvis(rng.normal(0, 0.01, 3), rng.normal(0, 0.01, (3, 10)))
    vec = torch.from_numpy(rng.normal(0, 0.3, (5, 85)))
    angle = torch.tensor([10.0, -20.0, 0.0, 45.0, 90.0], dtype=torch.float64)
    out, _ = labels.rotate(vec, None, angle, pelvis)
    before = vec[:, 82:] + pelvis(vec[:, 72:82])
    after = out[:, 82:] + pelvis(out[:, 72:82])
    want = (labels.rotation_z(angle) @ before.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(after, want) and torch.equal(out[:, 3:82], vec[:, 3:82])


def _corrupt_copy(shards: Path, tmp_path: Path, how: str) -> tuple[Path, str, str]:
    """A copy of the shards with one JPEG's bytes replaced by garbage after its start marker,
    or zeroed after its first third (truncated); (dir, shard, key)."""
    out = tmp_path / "shards"
    shutil.copytree(shards, out)
    chosen = shardset.select(out, shardset.load_manifest(out), ("S5",))
    ref = shardset.all_samples(chosen)[4]
    tar = chosen[ref.shard].tar
    offset, size = ref.members["jpg"]
    with open(tar, "r+b") as fh:
        if how == "garbage":
            fh.seek(offset)
            fh.write((b"\xff\xd8\xff\xe0" + bytes(range(256)) * (size // 256 + 1))[:size])
        else:
            fh.seek(offset + size // 3)
            fh.write(bytes(size - size // 3))
    return out, tar, ref.key


@pytest.mark.parametrize("how", ["garbage", "truncated"])
def test_corrupt_jpeg_dali_raises_naming_shard_and_key(shards, tmp_path, how):
    bad, tar, key = _corrupt_copy(shards, tmp_path, how)

    def run() -> None:
        for _ in build_loader(config(bad, "dali"), "train"):
            pass

    with cf.ThreadPoolExecutor(1) as pool:  # a hang fails the test instead of stalling it
        future = pool.submit(run)
        with pytest.raises(MeshrecError) as err:
            future.result(timeout=120)
    assert tar in str(err.value) and key in str(err.value)


@pytest.mark.parametrize("how", ["garbage", "truncated"])
def test_corrupt_jpeg_torch_is_skipped_and_counted(shards, tmp_path, how):
    bad, tar, key = _corrupt_copy(shards, tmp_path, how)
    loader = build_loader(config(bad, "torch", "data.batch_size=36"), "train")
    batch = take(loader)[0]
    assert loader.skipped == 1 and len(batch["skipped"]) == 1 and key in batch["skipped"][0]
    assert key not in batch["key"] and len(batch["key"]) == 35


def test_bad_requests_are_one_line_errors(shards):
    with pytest.raises(MeshrecError, match="does not split evenly"):
        build_loader(config(shards, "torch", "data.batch_size=9"), "train", 0, 2)
    with pytest.raises(MeshrecError, match="S7"):
        build_loader(config(shards, "torch", "data.train_subjects=[S7]"), "train")
    with pytest.raises(MeshrecError, match="split"):
        build_loader(config(shards, "torch"), "holdout")
    with pytest.raises(MeshrecError, match="data.val_subjects is empty"):
        build_loader(config(shards, "torch", "data.val_subjects=[]"), "val")
    with pytest.raises(MeshrecError, match="no full batch"):
        build_loader(config(shards, "dali", "data.batch_size=64"), "train", 0, 2)


@pytest.mark.slow
def test_flip_of_vectors_with_translation_uses_the_body_pelvis(standin_file, standin_model, tmp_path):
    src = make_spin_source(tmp_path / "src", splits={"h36m_train.npz": ("S1",)}, frames=2,
                           frame_size=240, with_transl=True)
    out = tmp_path / "shards"
    pack(src.files, src.root, out, PackConfig("spin", size=96), workers=1, progress=False)
    no_aug = ("data.augment.scale=0", "data.augment.translate=0", "data.augment.rotate_deg=0",
              "data.augment.color_jitter=0", "data.augment.flip_prob=1", "data.train_subjects=[S1]",
              f"body.model_path={standin_file}")
    batch = take(build_loader(config(out, "torch", *no_aug), "train"), 1)[0]
    rows = by_key(src)
    for i, key in enumerate(batch["key"]):
        vec = torch.from_numpy(expected_vector(rows[key])).double()
        rest = mirror.pelvis_rest(standin_model, vec[72:82])
        want = mirror.flip_params(vec, rest).float()
        assert torch.allclose(batch["params"][i], want, atol=1e-6)


def _ddp_rank(rank: int, world: int, port: int, shards: str, backend: str, out: str) -> None:
    import json
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        keys = {}
        for split in ("train", "val"):
            loader = build_loader(config(Path(shards), backend, "data.train_subjects=[S1,S5,S6,S11]"),
                                  split, rank, world)
            steps, mine = 0, []
            for batch in loader:  # an all-reduce per step, as training does: a missing step hangs
                n = torch.tensor([len(batch["key"])])
                dist.all_reduce(n)
                steps += 1
                mine += batch["key"]
            keys[split] = {"steps": steps, "keys": mine}
        with open(os.path.join(out, f"rank{rank}.json"), "w") as fh:
            json.dump(keys, fh)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_two_ddp_processes_step_together_and_cover_the_evaluation_set(shards, tmp_path, backend):
    import json
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.spawn(_ddp_rank, args=(2, port, str(shards), backend, str(tmp_path)), nprocs=2,
                   join=False)
    deadline = time.monotonic() + 180
    while not ctx.join(timeout=5):
        assert time.monotonic() < deadline, "DDP ranks did not finish (hang?)"
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for split in ("train", "val"):
        assert ranks[0][split]["steps"] == ranks[1][split]["steps"] > 0
    val = ranks[0]["val"]["keys"] + ranks[1]["val"]["keys"]
    assert len(val) == len(set(val)) == 23
    train = ranks[0]["train"]["keys"] + ranks[1]["train"]["keys"]
    assert len(train) == len(set(train)) == 40


# ------------------------------------------------------------------ GPU (nvJPEG `mixed` decode)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("size", [SIZE, WARPED])
def test_gpu_pipeline_gives_the_cpu_pipelines_batches_on_the_gpu(shards, size):
    cfg = config(shards, "dali", f"data.image_size={size}")
    gpu, cpu = take(build_loader(cfg, "val", device="cuda")), take(build_loader(cfg, "val"))
    assert [b["key"] for b in gpu] == [b["key"] for b in cpu]
    for g, c in zip(gpu, cpu):
        assert g["image"].is_cuda and g["image"].dtype == torch.float16
        assert g["params"].is_cuda and torch.equal(g["params"].cpu(), c["params"])
        diff = (pixels(g["image"].cpu()) - pixels(c["image"])).abs()
        far = (diff > 8).float().mean()
        print(f"size {size}: gpu vs cpu pixels mean {diff.mean():.3f} max {diff.max():.2f} "
              f"share > 8 levels {far:.4f}")
        # nvJPEG upsamples chroma differently from libjpeg-turbo: up to ~40 levels on the sharp
        # disc edge (seen on an H100), a fraction of a level elsewhere; fp16 adds < 0.5.
        assert diff.mean() < 1.0 and far < 0.03


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("split", ["val", "train"])
def test_torch_backend_on_the_gpu_gives_its_cpu_batches_in_float16(shards, split):
    # The fallback on a GPU node without DALI: same samples, augmentation and labels as on the
    # CPU; only the normalised image is float16 on the GPU (rounding: under 0.1 of a grey level).
    cfg = config(shards, "torch")
    gpu, cpu = take(build_loader(cfg, split, device="cuda"), 3), take(build_loader(cfg, split), 3)
    assert [b["key"] for b in gpu] == [b["key"] for b in cpu] and len(gpu) == 3
    for g, c in zip(gpu, cpu):
        assert g["image"].is_cuda and g["image"].dtype == torch.float16
        assert torch.equal(g["aug"].cpu(), c["aug"]) and torch.equal(g["params"].cpu(), c["params"])
        diff = (pixels(g["image"].cpu()) - pixels(c["image"])).abs()
        assert diff.max() < 0.25, diff.max()


@pytest.mark.gpu
@needs_cuda
def test_gpu_augmentation_matches_the_torch_transform_of_its_numbers(shards):
    batch = take(build_loader(config(shards, "dali"), "train", device="cuda"), 1)[0]
    assert batch["image"].is_cuda and batch["aug"][:, Aug.ANGLE].abs().max() > 1
    px = pixels(batch["image"].cpu())
    for i, key in enumerate(batch["key"]):
        ref = _reference(shards, key, batch["aug"][i].cpu().numpy()).float()
        diff = (px[i] - ref).abs()
        far = (diff > 8).float().mean()
        print(f"{key}: gpu augmentation vs torch mean {diff.mean():.3f} max {diff.max():.2f} "
              f"share > 8 levels {far:.4f}")
        assert diff.mean() < 1.5 and far < 0.03, (key, diff.mean(), far)


def test_loader_workers_fork_with_torch_imported_even_when_packing_started_the_server():
    # A fresh process packs first (as a run on generated data does), then loads: every pool
    # shares its one forkserver, so that server must have imported torch for the loader's
    # workers, or each of them imports it again (seconds a worker).
    code = """if __name__ == "__main__":
    from meshrec import forkserver
    from meshrec.shards.pack import _executor
    with _executor(2) as pool:
        print(pool.submit(eval, "'torch' in __import__('sys').modules").result())
    import concurrent.futures as cf
    with cf.ProcessPoolExecutor(1, mp_context=forkserver.context()) as pool:
        print(pool.submit(eval, "'torchvision' in __import__('sys').modules").result())
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True"]
