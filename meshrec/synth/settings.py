"""The settings that define a generated data set (checked before anything heavy is imported)."""

from __future__ import annotations

from dataclasses import dataclass

from meshrec.errors import MeshrecError

MIN_SIZE = 64


@dataclass(frozen=True)
class Settings:
    seed: int
    size: int                # frame width and height, pixels
    frames_per_subject: int  # time steps per subject, each seen by all four cameras

    def check(self) -> None:
        if self.seed < 0:
            raise MeshrecError(f"--seed must be >= 0, got {self.seed}")
        if self.size < MIN_SIZE:
            raise MeshrecError(f"--size must be at least {MIN_SIZE} px, got {self.size}")
        if self.frames_per_subject <= 0:
            raise MeshrecError(f"--frames-per-subject must be positive, got {self.frames_per_subject}")
