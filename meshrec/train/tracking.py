"""A training run's MLflow glue: the run started with its config, tags and config.yaml, and
validation metrics and overlay pictures logged per epoch (meshrec.track does the sending)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from meshrec.config import dump_yaml, to_dict
from meshrec.track import Tracker
from meshrec.train.run import Run


def git_sha() -> str:
    """HEAD of the source tree this module runs from, or 'unknown'."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, timeout=10,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def start_tracking(run: Run) -> None:
    """Give `run` its tracker (active on rank 0 with track.enabled) and its MLflow run: a new one,
    or the one `run.run_id` names; rank 0 writes OUT/config.yaml and logs it."""
    run.tracker = Tracker(run.cfg, enabled=run.env.is_main and run.cfg.track.enabled)
    tags = {"git_sha": git_sha(), "config_hash": run.chash, "manifest_sha256": run.manifest_sha256,
            "body_model": getattr(run.body, "kind", "smpl"), "world_size": str(run.env.world_size),
            "device": str(run.env.device.type), "joints": run.joints.label}
    run.run_id = run.tracker.start(run.cfg.track.run_name or run.chash, to_dict(run.cfg), tags,
                                   run_id=run.run_id)
    if run.env.is_main:
        run.out.mkdir(parents=True, exist_ok=True)
        path = run.out / "config.yaml"
        path.write_text(f"# config_hash: {run.chash}\n" + dump_yaml(run.cfg))
        run.tracker.log_artifact(path)


def log_validation(tracker: Tracker, epoch: int, metrics: dict[str, float], pictures: list) -> None:
    """One validation's metrics on the epoch axis (step = epochs done: one point per validation
    whatever the run's length) and its overlay pictures."""
    tracker.log_metrics(metrics, epoch + 1)
    for key, picture in pictures:
        tracker.log_image(picture, f"overlays/epoch{epoch:03d}_{key}.png")
