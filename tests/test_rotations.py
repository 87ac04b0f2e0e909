"""Rotation conversions against scipy (float64), near 0 and π, gradients, and SPIN's 6D layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from meshrec.body import rotations as rot


def _random_axes(rng: np.random.Generator, n: int) -> np.ndarray:
    axes = rng.normal(size=(n, 3))
    return axes / np.linalg.norm(axes, axis=1, keepdims=True)


def test_axis_angle_to_matrix_matches_scipy_float64():
    rng = np.random.default_rng(0)
    aa = _random_axes(rng, 2000) * rng.uniform(0, np.pi, (2000, 1))
    ours = rot.axis_angle_to_matrix(torch.from_numpy(aa)).numpy()
    assert np.abs(ours - Rotation.from_rotvec(aa).as_matrix()).max() < 1e-13


def test_matrix_to_axis_angle_matches_scipy_float64():
    mats = Rotation.random(2000, random_state=2).as_matrix()
    ours = rot.matrix_to_axis_angle(torch.from_numpy(mats)).numpy()
    ref = Rotation.from_matrix(mats).as_rotvec()
    assert np.abs(ours - ref).max() < 1e-12


@pytest.mark.parametrize("angle", [0.0, 1e-7, 1e-3, 1.0, np.pi - 1e-6, np.pi])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_round_trip_at_special_angles(angle, dtype, tol):
    rng = np.random.default_rng(int(angle * 1e6) % 1000)
    aa = _random_axes(rng, 64) * angle
    ref = Rotation.from_rotvec(aa).as_matrix()
    mats = rot.axis_angle_to_matrix(torch.from_numpy(aa).to(dtype))
    assert mats.dtype == dtype
    assert np.abs(mats.double().numpy() - ref).max() < tol
    back = rot.matrix_to_axis_angle(torch.from_numpy(ref).to(dtype))
    assert torch.isfinite(back).all()
    assert np.abs(Rotation.from_rotvec(back.double().numpy()).as_matrix() - ref).max() < tol
    norms = np.linalg.norm(back.double().numpy(), axis=1)
    assert np.abs(norms - angle).max() < tol * 10
    if angle < np.pi - 1e-3:  # below π the vector itself is unique
        assert np.abs(back.double().numpy() - aa).max() < tol * 10


def test_near_pi_axis_comes_from_the_symmetric_part():
    # A rotation a hair short of π about a tilted axis, slightly non-orthonormal (as network
    # outputs are): the recovered axis must stay on the true axis, not blow up.
    axis = np.array([0.3, -0.5, 0.81])
    axis /= np.linalg.norm(axis)
    mat = Rotation.from_rotvec(axis * (np.pi - 1e-9)).as_matrix() + 1e-9 * np.eye(3)
    back = rot.matrix_to_axis_angle(torch.from_numpy(mat)).numpy()
    unit = back / np.linalg.norm(back)
    assert min(np.abs(unit - axis).max(), np.abs(unit + axis).max()) < 1e-7
    assert abs(np.linalg.norm(back) - np.pi) < 1e-7


def test_gradients_finite_and_correct_at_zero():
    weights = torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    zero = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    (rot.axis_angle_to_matrix(zero) * weights).sum().backward()
    # dR/dω at 0 is the cross-product matrix of ω: R ≈ I + [ω]×.
    w = weights
    expected = torch.stack([w[2, 1] - w[1, 2], w[0, 2] - w[2, 0], w[1, 0] - w[0, 1]])
    assert torch.allclose(zero.grad, expected, atol=1e-12)

    eye = torch.eye(3, dtype=torch.float64, requires_grad=True)
    rot.matrix_to_axis_angle(eye).sum().backward()
    assert torch.isfinite(eye.grad).all()
    assert torch.allclose(eye.grad - eye.grad.T, 2 * eye.grad, atol=1e-12)  # antisymmetric
    assert torch.allclose(eye.grad[2, 1], torch.tensor(0.5, dtype=torch.float64))


@pytest.mark.parametrize("angle", [0.0, 1e-7, 0.7, np.pi - 1e-3])
def test_gradcheck(angle):
    axis = torch.tensor([0.2, -0.7, 0.4], dtype=torch.float64)
    aa = (axis / axis.norm() * angle).requires_grad_()
    assert torch.autograd.gradcheck(rot.axis_angle_to_matrix, (aa,))
    mat = rot.axis_angle_to_matrix(aa.detach()).requires_grad_()
    assert torch.autograd.gradcheck(rot.matrix_to_axis_angle, (mat,))


def test_float32_gradients_finite_at_zero_and_pi():
    for aa in (torch.zeros(5, 3), torch.tensor([[np.pi, 0.0, 0.0]] * 5, dtype=torch.float32)):
        aa = aa.clone().requires_grad_()
        mats = rot.axis_angle_to_matrix(aa)
        back = rot.matrix_to_axis_angle(mats)
        (back.sum() + mats.sum()).backward()
        assert torch.isfinite(aa.grad).all()


def test_any_leading_shape():
    aa = torch.randn(2, 5, 7, 3, dtype=torch.float64)
    mats = rot.axis_angle_to_matrix(aa)
    assert mats.shape == (2, 5, 7, 3, 3)
    assert rot.axis_angle_to_rot6d(aa).shape == (2, 5, 7, 6)
    assert torch.allclose(rot.rot6d_to_axis_angle(rot.axis_angle_to_rot6d(aa)),
                          rot.matrix_to_axis_angle(mats), atol=1e-12)


def _spin_rot6d_to_matrix(x: np.ndarray) -> np.ndarray:
    """SPIN/HMR's rot6d_to_rotmat in NumPy: view as 3×2, Gram-Schmidt the two columns."""
    x = x.reshape(-1, 3, 2)
    a1, a2 = x[:, :, 0], x[:, :, 1]
    b1 = a1 / np.linalg.norm(a1, axis=1, keepdims=True)
    b2 = a2 - (b1 * a2).sum(1, keepdims=True) * b1
    b2 /= np.linalg.norm(b2, axis=1, keepdims=True)
    return np.stack([b1, b2, np.cross(b1, b2)], axis=-1)


def test_rot6d_layout_is_spin_and_round_trips():
    mats = Rotation.random(500, random_state=3).as_matrix()
    six = rot.matrix_to_rot6d(torch.from_numpy(mats)).numpy()
    by_hand = np.stack([mats[:, 0, 0], mats[:, 0, 1], mats[:, 1, 0], mats[:, 1, 1],
                        mats[:, 2, 0], mats[:, 2, 1]], axis=1)
    assert np.array_equal(six, by_hand)
    back = rot.rot6d_to_matrix(torch.from_numpy(six)).numpy()
    assert np.abs(back - mats).max() < 1e-12


def test_rot6d_gram_schmidt_matches_spin_on_unnormalized_input():
    rng = np.random.default_rng(4)
    six = rng.normal(size=(500, 6))
    ours = rot.rot6d_to_matrix(torch.from_numpy(six)).numpy()
    assert np.abs(ours - _spin_rot6d_to_matrix(six)).max() < 1e-12
    assert np.abs(ours @ np.swapaxes(ours, 1, 2) - np.eye(3)).max() < 1e-12
    assert np.abs(np.linalg.det(ours) - 1).max() < 1e-12
