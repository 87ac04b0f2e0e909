"""Metrics against hand computations and an independent float64 Procrustes reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.linalg import orthogonal_procrustes
from scipy.spatial.transform import Rotation

from meshrec import metrics


def test_vertex_mse_by_hand():
    pred = np.zeros((2, 2, 3))
    true = np.zeros((2, 2, 3))
    true[0, 0] = [1.0, 2.0, 0.0]   # sample 0: squares 1 + 4 over 6 entries
    true[1, 1] = [0.0, 0.0, 3.0]   # sample 1: 9 over 6 entries
    per = metrics.vertex_mse_per_sample(pred, true)
    np.testing.assert_allclose(per, [5 / 6, 9 / 6])
    assert metrics.vertex_mse(torch.tensor(pred, dtype=torch.float32), true) == pytest.approx(14 / 12)


def test_pve_by_hand_and_root_alignment():
    true = np.zeros((1, 2, 3))
    pred = np.zeros((1, 2, 3))
    pred[0, 0] = [0.003, 0.004, 0.0]   # 5 mm
    pred[0, 1] = [0.0, 0.0, 0.001]     # 1 mm
    assert metrics.pve_mm(pred, true) == pytest.approx(3.0)
    # a common shift disappears once each mesh's root is subtracted
    shifted = pred + np.array([1.0, -2.0, 0.5])
    assert metrics.pve_mm(shifted, true) > 1000
    assert metrics.pve_mm(shifted, true, pred_root=[[1.0, -2.0, 0.5]],
                          true_root=np.zeros((1, 3))) == pytest.approx(3.0)


def test_mpjpe_by_hand_is_root_relative():
    true = np.array([[[0, 0, 0], [0, 1, 0], [1, 0, 0]]], dtype=float)
    pred = true + 5.0                   # translation only → zero after root alignment
    pred[0, 2] += [0.0, 0.0, 0.006]     # 6 mm on one of three joints
    assert metrics.mpjpe_mm(pred, true) == pytest.approx(2.0)
    assert metrics.mpjpe_mm(pred, true, root=None) > 5000


def _reference_pa_mpjpe(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Per sample: scipy's orthogonal Procrustes on centred points, reflection refused by hand,
    then the optimal scale in closed form."""
    out = []
    for p, t in zip(pred.astype(np.float64), true.astype(np.float64)):
        pc, tc = p - p.mean(0), t - t.mean(0)
        r, _ = orthogonal_procrustes(pc, tc)          # pc @ r ≈ tc
        if np.linalg.det(r) < 0:                      # best proper rotation instead
            u, s, vt = np.linalg.svd(pc.T @ tc)
            d = np.diag([1.0, 1.0, -1.0])
            r = u @ d @ vt
        rotated = pc @ r
        scale = (rotated * tc).sum() / (rotated * rotated).sum()
        aligned = scale * rotated + t.mean(0)
        out.append(np.linalg.norm(aligned - t, axis=1).mean() * 1000)
    return np.array(out)


def test_pa_mpjpe_matches_float64_reference():
    rng = np.random.default_rng(0)
    true = rng.normal(0, 0.3, (16, 17, 3))
    pred = true + rng.normal(0, 0.05, true.shape)
    pred[3] = -pred[3]  # a mirrored sample: the best orthogonal map is a reflection
    got = metrics.pa_mpjpe_mm_per_sample(torch.tensor(pred, dtype=torch.float32), true)
    ref = _reference_pa_mpjpe(torch.tensor(pred, dtype=torch.float32).double().numpy(), true)
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-9)
    assert metrics.pa_mpjpe_mm(pred, true) == pytest.approx(_reference_pa_mpjpe(pred, true).mean(),
                                                            rel=1e-9)
    assert (got < metrics.mpjpe_mm_per_sample(pred, true) + 1e-9).all()


def test_pa_mpjpe_invariant_to_similarity_of_prediction():
    rng = np.random.default_rng(1)
    true = rng.normal(0, 0.3, (8, 24, 3))
    pred = true + rng.normal(0, 0.04, true.shape)
    base = metrics.pa_mpjpe_mm_per_sample(pred, true)
    rot = Rotation.random(8, random_state=2).as_matrix()
    scale = rng.uniform(0.5, 2.0, (8, 1, 1))
    shift = rng.normal(0, 3, (8, 1, 3))
    moved = scale * np.einsum("bij,bnj->bni", rot, pred) + shift
    np.testing.assert_allclose(metrics.pa_mpjpe_mm_per_sample(moved, true), base, rtol=1e-8)
    assert metrics.mpjpe_mm(moved, true) > 2 * base.mean()  # plain MPJPE does see it


def test_exact_similarity_aligns_to_zero():
    rng = np.random.default_rng(3)
    true = rng.normal(0, 0.3, (2, 10, 3))
    rot = Rotation.random(2, random_state=4).as_matrix()
    pred = 1.7 * np.einsum("bij,bnj->bni", rot, true) + 0.4
    np.testing.assert_allclose(metrics.procrustes_align(pred, true), true, atol=1e-12)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError):
        metrics.vertex_mse(np.zeros((1, 4, 3)), np.zeros((1, 5, 3)))
