"""Ψ_0, the regressor's starting parameters (its mean), from a config and the shards' manifest."""

from __future__ import annotations

import logging

import numpy as np

from meshrec.body import params as layout
from meshrec.config import Config
from meshrec.errors import MeshrecError
from meshrec.shards.manifest import mean_params

log = logging.getLogger(__name__)


def resolve_mean_params(cfg: Config, manifest: dict) -> np.ndarray:
    """Ψ_0 of the regressor: SPIN's mean file, or the mean over the training subjects' shards;
    layout.SIZE values, or layout.SIZE_WITH_TRANSL when translation is predicted."""
    if cfg.model.mean_params:
        mean = np.asarray(layout.load_spin_mean_params(cfg.model.mean_params), dtype=np.float64)
    elif sum(int(manifest["subjects"].get(s, {}).get("param_count", 0))
             for s in cfg.data.train_subjects) == 0:
        # Joints-only training data: start from a standing body facing the camera.
        log.info("no SMPL labels in the training shards: the regressor starts from an upright "
                 "zero pose (model.mean_params names SPIN's smpl_mean_params.npz instead)")
        mean = layout.neutral_params()
    else:
        mean = mean_params(manifest, cfg.data.train_subjects)
    if cfg.model.predict_translation:
        if mean.size < layout.SIZE_WITH_TRANSL:
            raise MeshrecError("model.predict_translation needs shards (or a mean file) with "
                               "translation; these have none")
        return mean[: layout.SIZE_WITH_TRANSL]
    return mean[: layout.SIZE]
