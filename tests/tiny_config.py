"""Configs of few-second training runs on generated data (not a test module: test_train.py,
test_features.py and conftest.py's `cache` fixture build on it)."""

from __future__ import annotations

from pathlib import Path

from meshrec.config import Config, load_config

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"
# A sweep cell of a few CPU-seconds: ResNet-18 from random init on 32 px crops of 8 generated
# frames a subject, one epoch (test_sweep.py, test_browser.py, test_multinode.py add launching).
# Decoded in each rank's own process: a loader worker would bring a forkserver importing torch
# again, ~8 CPU-s a rank here, more than the cell's training.
CELL = ["model.encoder=resnet18", "model.weights=none", "model.freeze_encoder=false",
        "model.hidden=64", "data.image_size=32", "data.batch_size=8", "eval.batch_size=8",
        "data.synth.frames_per_subject=8", "data.synth.size=32", "data.backend=torch",
        "data.num_threads=0", "train.epochs=1", "train.checkpoint_every=0", "track.overlays=0"]


def tiny_args(cache: Path, out: Path, *more: str) -> list[str]:
    """Overrides of configs/demo.yaml for a few-second run: 64 px generated crops read at
    32 px, ResNet-18, a small head."""
    return [
        f"body.cache_dir={cache}", "train.epochs=1", "data.synth.frames_per_subject=4",
        "data.synth.size=64",
        "data.image_size=32", "data.backend=torch", "data.num_threads=1", "data.batch_size=8",
        "data.train_subjects=[S1,S5,S6]", "data.val_subjects=[S9]", "eval.subjects=[S9]",
        "eval.batch_size=16", "model.hidden=32", "track.enabled=false", "track.overlays=1",
        "train.log_every=1000", f"train.output_dir={out}", *more]


def tiny(cache: Path, out: Path, *more: str) -> Config:
    return load_config(DEMO, tiny_args(cache, out, *more))
