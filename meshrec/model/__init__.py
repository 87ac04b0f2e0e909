"""The mesh regressor: image → encoder features → head → SMPL parameters per refinement step.

`build_model(cfg, mean_params)` is the one way to make it. P (the parameter vector's length) is
82, or 85 when `model.predict_translation` is set (the data must then carry translation,
i.e. `mean_params` has 85 entries); a longer mean than needed is cut to the first 82.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from torch import Tensor, nn

from meshrec.body import params as layout
from meshrec.config import Config
from meshrec.errors import MeshrecError
from meshrec.model.encoder import Encoder, build_encoder, prefetch_weights
from meshrec.model.heads import MEAN_CAMERA, build_head

__all__ = ["MeshRegressor", "Prediction", "build_model", "prefetch_weights"]


class Prediction(NamedTuple):
    params: list[Tensor]            # [B, P] axis-angle layout, one per regressor iteration
    rotmat: list[Tensor] | None     # [B, 24, 3, 3] per iteration when model.pose_repr == "6d"
    camera: list[Tensor]            # [B, 3] weak-perspective (s, tx, ty) per iteration


class MeshRegressor(nn.Module):
    def __init__(self, encoder: Encoder, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, x: Tensor) -> Prediction:
        """x: images [B, 3, S, S], or cached encoder features [B, D] (meshrec.features), which
        skip the encoder; one entry point so DDP wraps both."""
        if x.dim() == 2:
            return self.forward_features(x)
        return self.forward_features(self.encoder(x))

    def forward_features(self, features: Tensor) -> Prediction:
        """The head alone, for training from cached frozen-encoder features."""
        out = self.head(features)
        return Prediction(out.params, out.rotmat, out.camera)


def _mean_for(cfg: Config, mean_params: np.ndarray) -> np.ndarray:
    mean = np.asarray(mean_params, dtype=np.float64).reshape(-1)
    with_transl = layout.has_transl(mean)
    if cfg.model.predict_translation and not with_transl:
        raise MeshrecError("model.predict_translation is true but the data carries no "
                           f"translation (mean parameters have {layout.SIZE} entries, not "
                           f"{layout.SIZE_WITH_TRANSL})")
    if not np.isfinite(mean).all():
        raise MeshrecError("mean parameters contain NaN or Inf")
    return mean if cfg.model.predict_translation else mean[: layout.SIZE]


def mean_camera(cfg: Config) -> np.ndarray:
    """Ψ_0's camera: `cam` of SPIN's mean file when model.mean_params names one, else MEAN_CAMERA."""
    if not cfg.model.mean_params:
        return np.asarray(MEAN_CAMERA, dtype=np.float64)
    return layout.load_spin_mean_camera(cfg.model.mean_params)


def build_model(cfg: Config, mean_params: np.ndarray) -> MeshRegressor:
    m = cfg.model
    encoder = build_encoder(m.encoder, m.weights, m.freeze_encoder)
    head = build_head(m.head, encoder.dim, _mean_for(cfg, mean_params), hidden=m.hidden,
                      dropout=m.dropout, iterations=m.iterations, pose_repr=m.pose_repr,
                      mean_camera=mean_camera(cfg))
    return MeshRegressor(encoder, head)
