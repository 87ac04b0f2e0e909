"""The stand-in's Human3.6M joint regressor: weights, where its joints sit, how they follow a pose."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from meshrec.body import h36m
from meshrec.body.params import JOINT_NAMES
from meshrec.body.smpl import BodyModel
from meshrec.body.standin.h36m import h36m_regressor

# The 13 joints SMPL has too ("head" is not one: H36M's is up on the skull, SMPL's at its base).
SAME_NAME = [n for n in h36m.NAMES if n in JOINT_NAMES and n != "head"]


@pytest.fixture(scope="module")
def regressor(standin_model) -> np.ndarray:
    return h36m_regressor(standin_model)


def _row(name: str) -> int:
    return h36m.NAMES.index(name)


def test_rows_are_sparse_convex_weights_and_deterministic(standin_model, regressor):
    R = regressor
    assert R.shape == (17, 6890) and R.dtype == np.float64
    assert R.min() >= 0.0
    assert np.abs(R.sum(axis=1) - 1.0).max() < 1e-9
    nonzeros = (R > 0).sum(axis=1)
    assert nonzeros.min() >= 4 and nonzeros.max() <= 64, nonzeros
    assert np.array_equal(h36m_regressor(dict(standin_model)), R)


def test_rest_joints_sit_where_human36m_puts_them(standin_model, regressor):
    v = standin_model["v_template"]
    J = standin_model["J_regressor"] @ v                    # SMPL's rest joints
    reg = regressor @ v
    smpl = {n: J[JOINT_NAMES.index(n)] for n in JOINT_NAMES}
    at = {n: reg[_row(n)] for n in h36m.NAMES}
    for name in SAME_NAME:                                  # where SMPL has the same joint
        assert np.linalg.norm(at[name] - smpl[name]) < 0.005, name
    for name in h36m.NAMES:                                 # sides as SMPL's (left = +x) ...
        if name.startswith("left_"):
            assert at[name][0] > 0.05 and smpl[name][0] > 0.05, name
            mirror = at[name.replace("left_", "right_")]
            assert np.abs(mirror - at[name] * [-1, 1, 1]).max() < 0.002, name   # ... mirrored
    assert abs(at["nose"][0]) < 0.002 and abs(at["head"][0]) < 0.002 and abs(at["thorax"][0]) < 0.002
    y = {n: p[1] for n, p in at.items()}
    assert y["left_hip"] < y["pelvis"] and y["right_hip"] < y["pelvis"]
    assert smpl["spine1"][1] < y["spine"] < smpl["spine3"][1]
    assert smpl["spine3"][1] < y["thorax"] < smpl["neck"][1]
    assert y["thorax"] < smpl["head"][1] < y["nose"] < y["head"] < v[:, 1].max()
    assert at["nose"][2] > at["head"][2] + 0.05              # the face looks along +z
    face = v[np.abs(v[:, 1] - y["nose"]) < 0.01, 2].max()
    assert face - 0.03 < at["nose"][2] < face               # just behind the face's surface
    for row, name in enumerate(h36m.NAMES):                  # read from vertices near the joint
        support = v[regressor[row] > 0]
        assert np.linalg.norm(support - reg[row], axis=1).max() < 0.2, name


def test_regressed_joints_follow_the_posed_body(standin_model, regressor):
    """Knees, hips, elbows and a shoulder bent far, betas set: the 13 shared joints stay within
    3 cm of SMPL's (as SPIN's real regressor does on SMPL meshes)."""
    params = np.zeros((1, 82))
    for j, aa in ((4, (1.5, 0, 0)), (5, (1.5, 0, 0)), (1, (-1.2, 0, 0)), (18, (0, -1.5, 0)),
                  (19, (0, 1.5, 0)), (16, (0, 0, -1.2))):
        params[0, 3 * j:3 * j + 3] = aa
    params[0, 72:] = np.linspace(-2, 2, 10)
    with torch.no_grad():
        out = BodyModel(standin_model)(torch.from_numpy(params))
    verts, joints = out.vertices[0].double().numpy(), out.joints[0].double().numpy()
    reg = regressor @ verts
    err = [np.linalg.norm(reg[_row(n)] - joints[JOINT_NAMES.index(n)]) for n in SAME_NAME]
    assert max(err) < 0.03, dict(zip(SAME_NAME, np.round(err, 3)))
