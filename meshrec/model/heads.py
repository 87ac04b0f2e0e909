"""Regressor heads: features [B, F] → SMPL parameters, one estimate per refinement step.

Both heads work in an internal parameter space and start from the mean parameters Ψ̄ (a buffer):
- axis_angle: the layout itself (pose 72 | betas 10 [| transl 3]), as the reference study;
- 6d: pose as 24 × 6D (Zhou et al.), then betas [| transl]; outputs are converted back to the
  axis-angle layout, and the rotation matrices are kept for the SMPL layer.

Both also predict a weak-perspective camera (s, tx, ty), as HMR/SPIN: the last 3 internal entries,
starting from a mean camera. A 3D point X projects to s·(X_xy + t) in the crop's normalised
coordinates ([-1, 1] across the network input; meshrec.loss.project).

`sequential`: F → hidden → hidden → P (ReLU, dropout), added to Ψ̄ so it starts at the mean.
`iterative` (HMR): Ψ_{t+1} = Ψ_t + NN([features, Ψ_t]), Ψ_0 = Ψ̄, `iterations` times.
The last layer of both starts small (xavier, gain 0.01, as HMR/SPIN), so at init the output ≈ Ψ̄.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from meshrec.body import params as layout
from meshrec.body.rotations import axis_angle_to_rot6d, matrix_to_axis_angle, rot6d_to_matrix
from meshrec.errors import MeshrecError
from meshrec.precision import autocast

POSE_REPRS = ("axis_angle", "6d")
_POSE6D = 6 * layout.NUM_JOINTS  # 144
CAMERA = 3                        # weak perspective: scale, tx, ty
MEAN_CAMERA = (0.9, 0.0, 0.0)     # SPIN's smpl_mean_params.npz `cam` is about this


class HeadOutput(NamedTuple):
    params: list[Tensor]           # [B, P] axis-angle layout, one per step
    rotmat: list[Tensor] | None    # [B, 24, 3, 3] per step when the head works in 6D
    camera: list[Tensor]           # [B, 3] (s, tx, ty) per step


def to_internal(mean_params: np.ndarray, pose_repr: str,
                mean_camera: Sequence[float] = MEAN_CAMERA) -> Tensor:
    """The mean parameters and camera in the head's internal space (float32)."""
    mean = torch.as_tensor(np.asarray(mean_params, dtype=np.float64))
    cam = torch.as_tensor(np.asarray(mean_camera, dtype=np.float64).reshape(CAMERA))
    if pose_repr == "axis_angle":
        return torch.cat([mean, cam]).float()
    pose = mean[layout.POSE].reshape(layout.NUM_JOINTS, 3)
    rot6d = axis_angle_to_rot6d(pose).reshape(-1)
    return torch.cat([rot6d, mean[layout.POSE.stop:], cam]).float()


def _from_internal(psi: Tensor, pose_repr: str) -> tuple[Tensor, Tensor | None, Tensor]:
    """Internal vector → (axis-angle layout, rotation matrices or None, camera)."""
    psi, camera = psi[:, :-CAMERA], psi[:, -CAMERA:]
    if pose_repr == "axis_angle":
        return psi, None, camera
    with autocast(psi.device):  # float32
        psi = psi.float()
        rotmat = rot6d_to_matrix(psi[:, :_POSE6D].reshape(-1, layout.NUM_JOINTS, 6))
        pose = matrix_to_axis_angle(rotmat).reshape(psi.shape[0], -1)
        return torch.cat([pose, psi[:, _POSE6D:]], dim=-1), rotmat, camera


def _small_init(layer: nn.Linear) -> nn.Linear:
    nn.init.xavier_uniform_(layer.weight, gain=0.01)
    nn.init.zeros_(layer.bias)
    return layer


class _Head(nn.Module):
    def __init__(self, mean_params: np.ndarray, pose_repr: str,
                 mean_camera: Sequence[float] = MEAN_CAMERA) -> None:
        super().__init__()
        if pose_repr not in POSE_REPRS:
            raise MeshrecError(f"model.pose_repr must be one of {', '.join(POSE_REPRS)}; "
                               f"got {pose_repr!r}")
        layout.has_transl(np.asarray(mean_params))  # refuses a length other than 82 / 85
        self.pose_repr = pose_repr
        self.register_buffer("mean", to_internal(mean_params, pose_repr, mean_camera))

    @property
    def internal_size(self) -> int:
        return int(self.mean.shape[0])

    def _outputs(self, psis: list[Tensor]) -> HeadOutput:
        converted = [_from_internal(p, self.pose_repr) for p in psis]
        rotmat = [r for _, r, _ in converted] if self.pose_repr == "6d" else None
        return HeadOutput([p for p, _, _ in converted], rotmat, [c for _, _, c in converted])


class SequentialHead(_Head):
    def __init__(self, in_dim: int, mean_params: np.ndarray, hidden: int = 1024,
                 dropout: float = 0.5, pose_repr: str = "axis_angle",
                 mean_camera: Sequence[float] = MEAN_CAMERA) -> None:
        super().__init__(mean_params, pose_repr, mean_camera)
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            _small_init(nn.Linear(hidden, self.internal_size)))

    def forward(self, features: Tensor) -> HeadOutput:
        return self._outputs([self.mean + self.mlp(features).float()])


class IterativeHead(_Head):
    def __init__(self, in_dim: int, mean_params: np.ndarray, hidden: int = 1024,
                 dropout: float = 0.5, iterations: int = 3, pose_repr: str = "axis_angle",
                 mean_camera: Sequence[float] = MEAN_CAMERA) -> None:
        super().__init__(mean_params, pose_repr, mean_camera)
        if iterations < 1:
            raise MeshrecError(f"model.iterations must be >= 1, got {iterations}")
        self.iterations = iterations
        self.mlp = nn.Sequential(
            nn.Linear(in_dim + self.internal_size, hidden), nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            _small_init(nn.Linear(hidden, self.internal_size)))

    def forward(self, features: Tensor) -> HeadOutput:
        psi = self.mean.expand(features.shape[0], -1)
        psis = []
        for _ in range(self.iterations):
            x = torch.cat([features, psi.to(features.dtype)], dim=-1)
            psi = psi + self.mlp(x).float()  # accumulate the estimate in float32 under autocast
            psis.append(psi)
        return self._outputs(psis)


def build_head(kind: str, in_dim: int, mean_params: np.ndarray, *, hidden: int, dropout: float,
               iterations: int, pose_repr: str,
               mean_camera: Sequence[float] = MEAN_CAMERA) -> _Head:
    if kind == "sequential":
        return SequentialHead(in_dim, mean_params, hidden, dropout, pose_repr, mean_camera)
    if kind == "iterative":
        return IterativeHead(in_dim, mean_params, hidden, dropout, iterations, pose_repr,
                             mean_camera)
    raise MeshrecError(f"model.head must be 'sequential' or 'iterative'; got {kind!r}")
