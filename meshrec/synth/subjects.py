"""The seven Human3.6M-like subjects, their train/valid split and their fixed body shapes."""

from __future__ import annotations

import numpy as np

from meshrec.body.params import NUM_BETAS
from meshrec.errors import MeshrecError
from meshrec.synth.rng import stream

TRAIN_SUBJECTS = ("S1", "S5", "S6", "S7", "S8")
VALID_SUBJECTS = ("S9", "S11")
SUBJECTS = TRAIN_SUBJECTS + VALID_SUBJECTS
BETA_SIGMA = 0.8   # betas ~ N(0, 0.8²), clipped to ±2: varied but plausible people
BETA_CLIP = 2.0


def parse_subjects(text: str) -> list[str]:
    """'S1,S9' -> ['S1', 'S9'] in the canonical order; unknown or repeated names are errors."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise MeshrecError("--subjects is empty; give e.g. S1,S5,S6,S7,S8,S9,S11")
    for s in names:
        if s not in SUBJECTS:
            raise MeshrecError(f"unknown subject '{s}' (known: {','.join(SUBJECTS)})")
    if len(set(names)) != len(names):
        raise MeshrecError(f"--subjects names a subject twice: {text}")
    return [s for s in SUBJECTS if s in names]


def split_of(subject: str) -> str:
    return "train" if subject in TRAIN_SUBJECTS else "valid"


def subject_betas(subject: str, seed: int) -> np.ndarray:
    """The subject's shape (10,) float64: the same for every frame, action and camera."""
    rng = stream(seed, subject, "betas")
    return np.clip(rng.normal(0.0, BETA_SIGMA, NUM_BETAS), -BETA_CLIP, BETA_CLIP)
