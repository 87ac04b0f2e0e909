"""Evaluation metrics: pure functions, computed in float64 NumPy whatever the input.

Inputs are NumPy arrays or torch tensors (any dtype or device) with a leading batch axis:
vertices [B, V, 3], joints [B, J, 3], in metres. `*_per_sample` functions return a float64
array [B] (for per-subject / per-action tables); the others return its mean as a float.

- vertex_mse: the reference study's score, the mean squared error over vertices and xyz (m²),
  on the vertices as given (no alignment).
- pve_mm: mean Euclidean vertex distance in mm after subtracting each mesh's root (pass the
  pelvis joints as `pred_root`/`true_root`; None = no alignment).
- mpjpe_mm: mean Euclidean joint distance in mm after subtracting joint `root` of each.
- pa_mpjpe_mm: the same after a per-sample similarity Procrustes alignment (scale, rotation
  without reflection, translation) of the prediction onto the truth.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MM = 1000.0


def as_float64(x: Any) -> np.ndarray:
    """A NumPy array or torch tensor (any dtype or device) as a float64 NumPy array."""
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)



def _pair(pred: Any, true: Any) -> tuple[np.ndarray, np.ndarray]:
    p, t = as_float64(pred), as_float64(true)
    if p.shape != t.shape or p.ndim != 3 or p.shape[-1] != 3:
        raise ValueError(f"expected two [B, N, 3] arrays of equal shape; got {p.shape}, {t.shape}")
    return p, t


def vertex_mse_per_sample(pred_v: Any, true_v: Any) -> np.ndarray:
    p, t = _pair(pred_v, true_v)
    return ((p - t) ** 2).mean(axis=(1, 2))


def vertex_mse(pred_v: Any, true_v: Any) -> float:
    return float(vertex_mse_per_sample(pred_v, true_v).mean())


def pve_mm_per_sample(pred_v: Any, true_v: Any, pred_root: Any = None,
                      true_root: Any = None) -> np.ndarray:
    p, t = _pair(pred_v, true_v)
    if pred_root is not None:
        p = p - as_float64(pred_root).reshape(p.shape[0], 1, 3)
    if true_root is not None:
        t = t - as_float64(true_root).reshape(t.shape[0], 1, 3)
    return np.linalg.norm(p - t, axis=-1).mean(axis=1) * MM


def pve_mm(pred_v: Any, true_v: Any, pred_root: Any = None, true_root: Any = None) -> float:
    return float(pve_mm_per_sample(pred_v, true_v, pred_root, true_root).mean())


def mpjpe_mm_per_sample(pred_j: Any, true_j: Any, root: int | None = 0) -> np.ndarray:
    p, t = _pair(pred_j, true_j)
    if root is not None:
        p = p - p[:, root : root + 1]
        t = t - t[:, root : root + 1]
    return np.linalg.norm(p - t, axis=-1).mean(axis=1) * MM


def mpjpe_mm(pred_j: Any, true_j: Any, root: int | None = 0) -> float:
    return float(mpjpe_mm_per_sample(pred_j, true_j, root).mean())


def procrustes_align(pred: Any, true: Any) -> np.ndarray:
    """[B, N, 3] prediction mapped by the similarity s·R·x + t that best fits `true` (least
    squares; Umeyama 1991), per sample. R is a proper rotation (det +1)."""
    p, t = _pair(pred, true)
    mu_p, mu_t = p.mean(axis=1, keepdims=True), t.mean(axis=1, keepdims=True)
    pc, tc = p - mu_p, t - mu_t
    cov = np.einsum("bni,bnj->bij", tc, pc)        # Σ (t - μt)(p - μp)ᵀ
    u, sigma, vt = np.linalg.svd(cov)
    d = np.sign(np.linalg.det(u @ vt))             # −1 where the best orthogonal map reflects
    d = np.where(d == 0, 1.0, d)
    fix = np.ones_like(sigma)
    fix[:, -1] = d
    rot = u @ (fix[:, :, None] * vt)               # U diag(1, 1, d) Vᵀ
    var_p = (pc ** 2).sum(axis=(1, 2))
    scale = (sigma * fix).sum(axis=1) / np.where(var_p > 0, var_p, 1.0)
    return scale[:, None, None] * np.einsum("bij,bnj->bni", rot, pc) + mu_t


def pa_mpjpe_mm_per_sample(pred_j: Any, true_j: Any) -> np.ndarray:
    p, t = _pair(pred_j, true_j)
    return np.linalg.norm(procrustes_align(p, t) - t, axis=-1).mean(axis=1) * MM


def pa_mpjpe_mm(pred_j: Any, true_j: Any) -> float:
    return float(pa_mpjpe_mm_per_sample(pred_j, true_j).mean())
