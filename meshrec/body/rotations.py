"""Batched rotation conversions: axis-angle ↔ rotation matrix ↔ 6D (Zhou et al. 2019).

Pure torch, any leading shape, float32 or float64. Conventions:
- axis-angle: a 3-vector along the rotation axis whose length is the angle (radians), as SMPL.
- matrices act on column vectors: x' = R @ x.
- 6D: the first two COLUMNS of R, flattened row by row: [R00, R01, R10, R11, R20, R21].
  This is SPIN/HMR's layout (`x.view(-1, 3, 2)`, columns a1 = x[:, :, 0], a2 = x[:, :, 1]),
  so SPIN's `smpl_mean_params.npz` decodes with `rot6d_to_matrix`.

Stability: near angle 0 the sin θ/θ-type factors use Taylor series (finite values and
gradients at exactly 0); near π the matrix → axis-angle path reads the axis from the
symmetric part of R (through the largest quaternion component), never dividing by sin θ.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Below this angle the Taylor series (three terms) is exact to double precision.
_SMALL_ANGLE = 1e-3


def _skew(v: Tensor) -> Tensor:
    """[..., 3] → [..., 3, 3] cross-product matrix, K @ x == v × x."""
    x, y, z = v.unbind(-1)
    zero = torch.zeros_like(x)
    return torch.stack(
        [zero, -z, y,
         z, zero, -x,
         -y, x, zero], dim=-1).reshape(v.shape[:-1] + (3, 3))


def axis_angle_to_matrix(axis_angle: Tensor) -> Tensor:
    """[..., 3] axis-angle → [..., 3, 3] rotation matrix (Rodrigues: I + A K + B K²)."""
    theta2 = (axis_angle * axis_angle).sum(-1)
    small = theta2 < _SMALL_ANGLE ** 2
    # The unused branch must stay finite, or its NaN gradient leaks through torch.where.
    theta2_safe = torch.where(small, torch.ones_like(theta2), theta2)
    theta = torch.sqrt(theta2_safe)
    half_sin = torch.sin(0.5 * theta)
    a = torch.where(small, 1.0 - theta2 / 6.0 + theta2 * theta2 / 120.0, torch.sin(theta) / theta)
    # (1 - cos θ)/θ² written as 2 sin²(θ/2)/θ²: no cancellation for small θ in float32.
    b = torch.where(small, 0.5 - theta2 / 24.0 + theta2 * theta2 / 720.0,
                    2.0 * half_sin * half_sin / theta2_safe)
    k = _skew(axis_angle)
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device)
    return eye + a[..., None, None] * k + b[..., None, None] * (k @ k)


def matrix_to_quaternion(matrix: Tensor) -> Tensor:
    """[..., 3, 3] rotation matrix → [..., 4] unit quaternion (w, x, y, z) with w ≥ 0.

    Shepperd's method: of the four ways to recover the quaternion, use the one whose
    pivot component is largest (its squared value is ≥ 1/4), so no division is ill-posed.
    Near π the pivot is an axis component, read from the symmetric part of R.
    """
    m = matrix
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    # 4w², 4x², 4y², 4z² — they sum to 4, so the largest is ≥ 1.
    t = torch.stack([1.0 + m00 + m11 + m22,
                     1.0 + m00 - m11 - m22,
                     1.0 - m00 + m11 - m22,
                     1.0 - m00 - m11 + m22], dim=-1)
    candidates = torch.stack([
        torch.stack([t[..., 0], m21 - m12, m02 - m20, m10 - m01], dim=-1),
        torch.stack([m21 - m12, t[..., 1], m01 + m10, m02 + m20], dim=-1),
        torch.stack([m02 - m20, m01 + m10, t[..., 2], m12 + m21], dim=-1),
        torch.stack([m10 - m01, m02 + m20, m12 + m21, t[..., 3]], dim=-1),
    ], dim=-2)
    # Clamp only keeps the candidates we discard finite; the chosen pivot is ≥ 1.
    candidates = candidates / (2.0 * torch.sqrt(t.clamp(min=0.1)))[..., None]
    pick = t.argmax(dim=-1)
    index = pick[..., None, None].expand(pick.shape + (1, 4))
    q = torch.gather(candidates, -2, index).squeeze(-2)
    q = torch.where(q[..., :1] < 0, -q, q)
    return q / torch.linalg.vector_norm(q, dim=-1, keepdim=True)


def quaternion_to_axis_angle(quaternion: Tensor) -> Tensor:
    """[..., 4] quaternion (w, x, y, z), any scale → [..., 3] axis-angle with angle in [0, π]."""
    q = torch.where(quaternion[..., :1] < 0, -quaternion, quaternion)
    w, v = q[..., 0], q[..., 1:]
    s2 = (v * v).sum(-1)
    small = s2 < _SMALL_ANGLE ** 4
    s = torch.sqrt(torch.where(small, torch.ones_like(s2), s2))
    # angle/|v| = 2 atan2(s, w)/s; for tiny s its series is 2/w − 2s²/(3w³).
    w_safe = torch.where(small, w, torch.ones_like(w))
    factor = torch.where(small,
                         2.0 / w_safe - 2.0 * s2 / (3.0 * w_safe ** 3),
                         2.0 * torch.atan2(s, w) / s)
    return v * factor[..., None]


def matrix_to_axis_angle(matrix: Tensor) -> Tensor:
    """[..., 3, 3] rotation matrix → [..., 3] axis-angle, angle in [0, π].

    At exactly π the sign of the axis is arbitrary (both vectors give the same matrix).
    """
    return quaternion_to_axis_angle(matrix_to_quaternion(matrix))


def matrix_to_rot6d(matrix: Tensor) -> Tensor:
    """[..., 3, 3] → [..., 6]: first two columns, row by row (SPIN/HMR layout)."""
    return matrix[..., :, :2].reshape(matrix.shape[:-2] + (6,))


def rot6d_to_matrix(rot6d: Tensor, eps: float = 1e-8) -> Tensor:
    """[..., 6] → [..., 3, 3] by Gram-Schmidt on the two columns (SPIN/HMR layout).

    b1 = a1/|a1|; b2 = normalized (a2 − (b1·a2) b1); b3 = b1 × b2; R = [b1 b2 b3] as columns.
    """
    x = rot6d.reshape(rot6d.shape[:-1] + (3, 2))
    a1, a2 = x[..., 0], x[..., 1]
    b1 = a1 / torch.linalg.vector_norm(a1, dim=-1, keepdim=True).clamp(min=eps)
    a2 = a2 - (b1 * a2).sum(-1, keepdim=True) * b1
    b2 = a2 / torch.linalg.vector_norm(a2, dim=-1, keepdim=True).clamp(min=eps)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


def axis_angle_to_rot6d(axis_angle: Tensor) -> Tensor:
    """[..., 3] → [..., 6]."""
    return matrix_to_rot6d(axis_angle_to_matrix(axis_angle))


def rot6d_to_axis_angle(rot6d: Tensor) -> Tensor:
    """[..., 6] → [..., 3]."""
    return matrix_to_axis_angle(rot6d_to_matrix(rot6d))
