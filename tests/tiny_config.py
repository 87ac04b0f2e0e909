"""Configs of few-second training runs on generated data (not a test module: test_train.py,
test_features.py and conftest.py's `cache` fixture build on it)."""

from __future__ import annotations

from pathlib import Path

from meshrec.config import Config, load_config

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"


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
