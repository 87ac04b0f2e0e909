"""Human3.6M protocols 1/2 against an independent reference written from SPIN's eval.py."""

from __future__ import annotations

import numpy as np
import pytest

from meshrec import protocols
from meshrec.body import h36m

from spin_reference import as_spin_file, spin_eval


def _mocap(n: int, rng: np.random.Generator) -> np.ndarray:
    s17 = rng.normal(0, 0.4, (n, 17, 3))
    return s17 - s17[:, :1]  # pelvis-centred, as SPIN's preprocessing writes S


def test_errors_equal_spins_eval_on_the_same_predictions():
    rng = np.random.default_rng(0)
    gt17 = _mocap(64, rng)
    pred17 = gt17 + rng.normal(0, 0.05, gt17.shape) + rng.normal(0, 1, (64, 1, 3))
    mpjpe, recon = spin_eval(pred17, as_spin_file(gt17))
    got = protocols.h36m_errors(pred17, h36m.j24_to_h36m(as_spin_file(gt17))[..., :3])
    assert np.abs(got["mpjpe_mm"] - mpjpe).max() < 1e-6
    assert np.abs(got["pa_mpjpe_mm"] - recon).max() < 1e-6
    assert mpjpe.mean() > 10 and (recon < mpjpe).all()  # the case is not trivial


def test_hand_made_cases():
    rng = np.random.default_rng(1)
    gt = _mocap(1, rng)
    moved = gt.copy()
    moved[:, list(h36m.H36M_TO_J14)] += [0.003, 0.004, 0.0]  # every scored joint 5 mm off
    got = protocols.h36m_errors(moved, gt)
    assert got["mpjpe_mm"][0] == pytest.approx(5.0, abs=1e-9)
    assert got["pa_mpjpe_mm"][0] == pytest.approx(0.0, abs=1e-9)  # a translation aligns away
    c, s = np.cos(0.7), np.sin(0.7)
    turned = 1.5 * gt @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]).T + 3.0
    got = protocols.h36m_errors(turned, gt)
    assert got["pa_mpjpe_mm"][0] == pytest.approx(0.0, abs=1e-6)
    assert got["mpjpe_mm"][0] > 100
    # pelvis, spine and nose are not scored: moving them alone changes nothing but the centring
    spine_only = gt.copy()
    spine_only[:, [h36m.NAMES.index("spine"), h36m.NAMES.index("nose")]] += 1.0
    assert protocols.h36m_errors(spine_only, gt)["mpjpe_mm"][0] == pytest.approx(0.0, abs=1e-9)


def test_protocol_two_is_the_frontal_camera_and_names_are_the_papers():
    assert [protocols.counts("h36m-p2", c, 6) for c in h36m.CAMERA_IDS] == [False, False, False, True]
    assert all(protocols.counts("h36m-p1", c, 6) for c in h36m.CAMERA_IDS)
    # Moon's: frame_idx % 64 == 0 on camera 4, file numbers being frame_idx + 1
    assert [f for f in range(1, 200) if protocols.counts("h36m-moon", "60457274", f)] == [1, 65, 129, 193]
    assert not protocols.counts("h36m-moon", "54138969", 1)
    assert protocols.metric_key("h36m-moon", "mpjpe_mm") == "moon_mpjpe_mm"
    assert protocols.selection_metric("h36m-p2") == "val_p2_mpjpe_mm"
    assert protocols.selection_metric("smpl") == "val_pve_mm"
    assert [h36m.NAMES[i] for i in h36m.H36M_TO_J14] == [
        "right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle",
        "right_wrist", "right_elbow", "right_shoulder", "left_shoulder", "left_elbow",
        "left_wrist", "thorax", "head"]
