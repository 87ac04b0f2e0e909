"""The frozen-encoder feature cache on generated shards: building it (one and two ranks),
training from it against training from images, and refusing caches that do not fit."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from meshrec.errors import MeshrecError
from meshrec.features import cache as fc
from meshrec.model.hashing import encoder_sha256
from tests.tiny_config import ROOT, tiny, tiny_args

FROZEN = ("model.freeze_encoder=true", "data.augment.enabled=false", "data.train_subjects=[S1,S5]")


def built(cache: Path, tmp_path: Path, *more: str) -> tuple:
    from meshrec.data.demo import with_shards
    from meshrec.features.build import run_features

    cfg = with_shards(tiny(cache, tmp_path / "unused", *FROZEN, *more))
    return cfg, run_features(cfg)


@pytest.mark.slow
def test_cache_covers_every_crop_once_with_the_labels_of_the_shards(cache, tmp_path):
    from meshrec.data import build_loader
    from meshrec.features.loader import shard_keys

    cfg, root = built(cache, tmp_path, f"features.dir={tmp_path / 'fc'}")
    assert fc.check(cfg) is None
    manifest = fc.read_manifest(root)
    assert manifest["views"] == [fc.CENTRE]
    assert manifest["identity"]["encoder_sha256"] == encoder_sha256(cfg)
    with np.load(root / fc.PARTS / manifest["parts"][0]["file"]) as z:
        keys, feats = list(z["key"]), z["features"]
        stored = {name: z[name] for name in fc.LABELS}
    assert feats.dtype == np.float16 and feats.shape == (len(keys), 512)  # resnet18
    assert sorted(keys) == sorted(shard_keys(cfg, tuple(fc.subjects(cfg))))  # each exactly once
    assert stored["j3d"].shape == (len(keys), 17, 4) and stored["kp2d"].shape == (len(keys), 17, 3)
    assert stored["has_smpl"].dtype == bool and stored["j3d"][..., 3].any()
    images = {k: {name: b[name][i].numpy() for name in fc.LABELS}
              for b in build_loader(cfg, "val") for i, k in enumerate(b["key"])}
    where = {k: i for i, k in enumerate(keys)}
    for key, labels in images.items():
        for name, value in labels.items():
            assert np.array_equal(stored[name][where[key]], value), (key, name)
    seen = 0
    for batch in build_loader(replace(cfg, features=replace(cfg.features, enabled=True)), "val"):
        assert "image" not in batch and batch["j3d"].dtype == batch["kp2d"].dtype == batch["params"].dtype
        for i, key in enumerate(batch["key"]):
            seen += 1
            for name in fc.LABELS:
                assert np.array_equal(batch[name][i].numpy(), images[key][name]), (key, name)
    assert seen == len(images)


@pytest.mark.slow
def test_training_from_the_cache_equals_training_from_images(cache, tmp_path):
    from meshrec.train.loop import train

    # dropout: the RNG draws must match too; a high rate: another sample order must show
    more = ("train.epochs=2", "model.dropout=0.5", "optim.lr=1e-3")
    images = train(tiny(cache, tmp_path / "images", *FROZEN, *more))
    built(cache, tmp_path, *more)
    cached = train(tiny(cache, tmp_path / "cached", *FROZEN, *more, "features.enabled=true"))
    other = train(tiny(cache, tmp_path / "seed", *FROZEN, *more, "features.enabled=true",
                       "data.seed=1"))
    assert cached["steps"] == images["steps"] == 8
    for name in ("val_mse", "val_pve_mm", "val_pa_mpjpe_mm"):
        close = abs(cached[name] - images[name]) / abs(images[name])
        apart = abs(other[name] - images[name]) / abs(images[name])
        # float16 features: the same batches and dropout draws, rounding apart only
        assert close < 2e-3, (name, images[name], cached[name])
        assert apart > 10 * close, (name, apart, close)  # another sample order is farther
    frozen_checkpoint_predicts_as_trained(tmp_path / "images", images["val_mse"])


def frozen_checkpoint_predicts_as_trained(out: Path, val_mse: float) -> None:
    """The checkpoint of a frozen-encoder run holds the head only; loaded for predict/eval, the
    model rebuilt from its config scores what the run scored."""
    from meshrec.data import build_loader
    from meshrec.data.demo import with_shards
    from meshrec.train import evaluate
    from meshrec.train.checkpoint import load_checkpoint
    from meshrec.train.commands import load_trained

    ckpt = out / "checkpoints" / "last.pt"
    state = load_checkpoint(ckpt)
    assert state["encoder_sha256"] and not any(k.startswith("encoder.") for k in state["model"])
    t = load_trained(str(ckpt), device="cpu")
    cfg = with_shards(t.cfg)
    joints = evaluate.body_joints(cfg.body, t.body.num_vertices)
    rec = evaluate.evaluate(t.model, build_loader(cfg, "val"), t.body, joints, t.mean_params,
                            t.amp, t.device)
    assert evaluate.means(rec.model)["mse"] == pytest.approx(val_mse, rel=1e-5)


@pytest.mark.slow
def test_a_missing_or_stale_cache_is_refused_with_what_differs(cache, tmp_path):
    from meshrec.data.demo import with_shards
    from meshrec.train.loop import train

    where = f"features.dir={tmp_path / 'fc'}"
    with pytest.raises(MeshrecError, match="no feature cache at"):
        train(tiny(cache, tmp_path / "a", *FROZEN, where, "features.enabled=true"))
    cfg, root = built(cache, tmp_path, where)
    # A cache of the format before optional labels is stale (rebuilt), never read as this one.
    text = (root / fc.MANIFEST).read_text()
    (root / fc.MANIFEST).write_text(text.replace(fc.FORMAT, "meshrec-features-1"))
    stale = fc.check(cfg)
    assert stale.kind == "stale" and f"format meshrec-features-1 (cache) != {fc.FORMAT}" in stale.what
    (root / fc.MANIFEST).write_text(text)
    with pytest.raises(MeshrecError, match=r"stale: .*encoder resnet18 \(cache\) != resnet34"):
        train(tiny(cache, tmp_path / "b", *FROZEN, where, "features.enabled=true",
                   "model.encoder=resnet34"))
    # Other shards (another generated set) under the same cache directory.
    other = with_shards(tiny(cache, tmp_path, "data.synth.seed=1"))
    with pytest.raises(MeshrecError, match="stale: .*shards_manifest_sha256"):
        train(tiny(cache, tmp_path / "c", *FROZEN, where, "features.enabled=true",
                   f"data.shards={other.data.shards}"))
    with pytest.raises(MeshrecError, match="stale: .*subjects lacks S11"):
        train(tiny(cache, tmp_path / "d", *FROZEN, where, "features.enabled=true",
                   "eval.subjects=[S11]"))


@pytest.mark.slow
def test_shards_repacked_in_place_make_the_default_cache_stale(cache, tmp_path):
    from meshrec.data.demo import with_shards

    first = with_shards(tiny(cache, tmp_path, *FROZEN)).data.shards
    second = with_shards(tiny(cache, tmp_path, "data.synth.seed=1")).data.shards
    shards = tmp_path / "data" / "shards"
    shutil.copytree(first, shards)
    cfg, root = built(cache, tmp_path, f"data.shards={shards}")
    assert root.parent == tmp_path / "data" / "features"  # next to the shards
    assert fc.check(cfg) is None
    shutil.rmtree(shards)
    shutil.copytree(second, shards)  # the same path, other contents
    stale = fc.check(cfg)
    assert stale.kind == "stale" and "shards_manifest_sha256" in stale.what
    assert str(stale).endswith("; rebuild it with `meshrec features --config …`")
    # What a sweep says of it: its own job rebuilds the cache, so no advice to run one.
    from meshrec.launch import feature_job

    plan = feature_job.decide({"cell": cfg}, feature_job.share_keys({"cell": cfg}), dry_run=True)
    assert plan.build is not None and plan.reason == (
        f"feature cache: one feature job would rebuild it before the cells ({stale.what})")
    _, again = built(cache, tmp_path, f"data.shards={shards}")  # the builder rebuilds it
    assert again == root and fc.check(cfg) is None


@pytest.mark.slow
def test_augmented_views_are_epochs_of_the_training_loader(cache, tmp_path):
    from meshrec.data import build_loader

    aug = ("data.augment.enabled=true", "features.views=2", f"features.dir={tmp_path / 'fc'}")
    cfg, root = built(cache, tmp_path, *aug)
    manifest = fc.read_manifest(root)
    assert manifest["views"] == [fc.CENTRE, "train-0", "train-1"]
    loader = build_loader(tiny(cache, tmp_path, *FROZEN, *aug, "features.enabled=true",
                               f"data.shards={cfg.data.shards}"), "train")
    first, second = list(loader), list(loader)
    by_key = [{k: (f, a) for b in epoch for k, f, a in zip(b["key"], b["features"], b["aug"])}
              for epoch in (first, second)]
    shared = set(by_key[0]) & set(by_key[1])
    assert shared
    assert all(not np.array_equal(by_key[0][k][1], by_key[1][k][1]) for k in shared)  # new draws
    assert any(b["flipped"].any() for b in first)


@pytest.mark.slow
def test_two_ranks_build_one_cache_and_the_command_reuses_it(cache, tmp_path):
    from meshrec.data.demo import with_shards
    from meshrec.features.loader import shard_keys

    args = [*tiny_args(cache, tmp_path / "unused", *FROZEN), f"features.dir={tmp_path / 'fc'}",
            "data.num_threads=0"]  # the ranks decode in their own process
    cmd = [sys.executable, "-m", "meshrec.cli", "features", "--config", str(ROOT / "configs" / "demo.yaml")]
    first = subprocess.run([*cmd, *args, "train.processes=2"], capture_output=True, text=True,
                           timeout=600, cwd=ROOT)
    assert first.returncode == 0, first.stderr
    manifest = fc.read_manifest(tmp_path / "fc")
    assert manifest["built"]["ranks"] == 2
    keys = []
    for part in manifest["parts"]:
        with np.load(tmp_path / "fc" / fc.PARTS / part["file"]) as z:
            keys += list(z["key"])
    cfg = with_shards(tiny(cache, tmp_path, *FROZEN))
    assert sorted(keys) == sorted(shard_keys(cfg, tuple(fc.subjects(cfg))))  # no duplicates
    again = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout.strip().splitlines()[-1])["dir"] == str(tmp_path / "fc")
    assert fc.read_manifest(tmp_path / "fc")["built"] == manifest["built"]  # found, not rebuilt


def test_features_command_refuses_a_trained_encoder_in_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "meshrec.cli", "features", "--config",
                          str(ROOT / "configs" / "demo.yaml"), "model.freeze_encoder=false"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "freeze_encoder" in out.stderr


def test_features_too_large_for_float16_are_refused(cache, tmp_path):
    import torch

    from meshrec.model.encoder import build_encoder

    net = build_encoder("resnet18", "none", frozen=True).net
    with torch.no_grad():
        net.layer4[-1].bn2.weight.fill_(1e9)  # the last block's output blows up
    torch.save(net.state_dict(), tmp_path / "huge.pt")
    with pytest.raises(MeshrecError, match="do not fit float16"):
        built(cache, tmp_path, f"model.weights={tmp_path / 'huge.pt'}",
              f"features.dir={tmp_path / 'fc'}")
    assert fc.read_manifest(tmp_path / "fc") is None  # nothing half-built is taken for a cache


def test_a_cache_too_small_for_one_batch_is_a_one_line_error(cache, tmp_path):
    from meshrec.data import build_loader

    cfg, _ = built(cache, tmp_path, f"features.dir={tmp_path / 'fc'}")
    small = tiny(cache, tmp_path, *FROZEN, f"features.dir={tmp_path / 'fc'}",
                 "features.enabled=true", f"data.shards={cfg.data.shards}", "data.batch_size=64")
    with pytest.raises(MeshrecError, match="give no full batch of 64"):
        build_loader(small, "train")
