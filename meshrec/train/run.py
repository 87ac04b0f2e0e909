"""`Run`: the state of one training run that the loop steps, checkpoints and tracks (built by
meshrec.train.loop.build_run; saved and restored by meshrec.train.checkpoint; tracked by
meshrec.train.tracking)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from meshrec.config import Config


@dataclass
class Run:
    cfg: Config
    env: Any                       # meshrec.train.dist.DistEnv
    out: Path
    chash: str
    manifest_sha256: str
    body: nn.Module
    joints: Any                    # meshrec.train.evaluate.Joints
    mean_params: np.ndarray
    core: nn.Module                # the MeshRegressor
    model: nn.Module               # core, or DDP(core)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    amp: Optional[torch.dtype]
    loader: Any
    steps_per_epoch: int
    step: int = 0                  # optimizer steps taken (skipped ones included)
    bad_in_row: int = 0
    bad_total: int = 0
    run_id: Optional[str] = None
    tracker: Any = None
    val_loaders: dict = field(default_factory=dict)
    encoder_sha256: str = ""       # of a frozen encoder's weights (not stored in checkpoints)
    trained_s: float = 0.0         # training-loop wall time of earlier jobs of this run
    started: float = 0.0           # perf_counter when this job's training loop began
    guard: Any = None              # meshrec.train.guard.StepGuard: bad steps, LR on the device

    def training_seconds(self) -> float:
        """Wall time in the training loop over every job of this run so far."""
        return self.trained_s + (time.perf_counter() - self.started if self.started else 0.0)
