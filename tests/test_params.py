"""The SMPL parameter layout: split/join, loss groups, SPIN's mean parameters."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from meshrec.body import params as layout
from meshrec.errors import MeshrecError


def test_sizes_and_slices():
    assert layout.size() == 82 and layout.size(with_transl=True) == 85
    assert layout.POSE == slice(0, 72)
    assert (layout.GLOBAL_ORIENT.stop, layout.BODY_POSE.stop, layout.BETAS.stop, layout.TRANSL.stop) \
        == (3, 72, 82, 85)


@pytest.mark.parametrize("with_transl", [False, True])
def test_split_join_round_trip_numpy_and_torch(with_transl):
    rng = np.random.default_rng(0)
    vec = rng.normal(size=(4, 5, layout.size(with_transl)))
    parts = layout.split(vec)
    assert parts["global_orient"].shape == (4, 5, 3)
    assert parts["body_pose"].shape == (4, 5, 69)
    assert parts["betas"].shape == (4, 5, 10)
    assert ("transl" in parts) == with_transl
    assert np.array_equal(parts["body_pose"][..., :3], vec[..., 3:6])  # joint 1 follows the root
    assert np.array_equal(layout.join(**parts), vec)

    tvec = torch.from_numpy(vec)
    tparts = layout.split(tvec)
    joined = layout.join(**tparts)
    assert isinstance(joined, torch.Tensor) and torch.equal(joined, tvec)


def test_wrong_lengths_are_refused():
    with pytest.raises(MeshrecError, match="72"):
        layout.split(np.zeros((2, 72)))
    with pytest.raises(MeshrecError, match="betas"):
        layout.join(np.zeros(3), np.zeros(69), np.zeros(9))


@pytest.mark.parametrize("with_transl", [False, True])
def test_groups_partition_the_vector(with_transl):
    groups = layout.groups(with_transl)
    assert set(groups) == {"shape", "body", "hand", "loc"}
    everything = np.concatenate(list(groups.values()))
    assert everything.size == np.unique(everything).size  # no overlap
    assert np.array_equal(np.sort(everything), np.arange(layout.size(with_transl)))  # covers all
    pose_groups = np.concatenate([groups["body"], groups["hand"], groups["loc"][:3]])
    assert np.array_equal(np.sort(pose_groups), np.arange(72))


def test_groups_name_the_right_joints():
    groups = layout.groups(with_transl=True)
    joint_of = lambda idx: sorted({int(i) // 3 for i in idx})  # noqa: E731
    hand_names = [layout.JOINT_NAMES[j] for j in joint_of(groups["hand"])]
    assert hand_names == ["left_wrist", "right_wrist", "left_hand", "right_hand"]
    assert joint_of(groups["body"]) == list(range(1, 20))
    assert layout.JOINT_NAMES[max(joint_of(groups["body"]))] == "right_elbow"
    assert joint_of(groups["loc"][:3]) == [0]
    assert np.array_equal(groups["loc"][3:], np.arange(82, 85))
    assert np.array_equal(groups["shape"], np.arange(72, 82))
    # The tree links each wrist to its elbow and each hand to its wrist.
    names = layout.JOINT_NAMES
    assert names[layout.PARENTS[names.index("left_wrist")]] == "left_elbow"
    assert names[layout.PARENTS[names.index("right_hand")]] == "right_wrist"


def _spin_6d(mats: np.ndarray) -> np.ndarray:
    """SPIN's 6D: the 3×2 first-two-columns block, flattened row by row."""
    return mats[:, :, :2].reshape(len(mats), 6)


def _gram_schmidt(six: np.ndarray) -> np.ndarray:
    x = six.reshape(-1, 3, 2)
    b1 = x[:, :, 0] / np.linalg.norm(x[:, :, 0], axis=1, keepdims=True)
    b2 = x[:, :, 1] - (b1 * x[:, :, 1]).sum(1, keepdims=True) * b1
    b2 /= np.linalg.norm(b2, axis=1, keepdims=True)
    return np.stack([b1, b2, np.cross(b1, b2)], axis=-1)


def test_load_spin_mean_params(tmp_path):
    rng = np.random.default_rng(5)
    mats = Rotation.random(24, random_state=6).as_matrix()
    # SPIN's mean root is close to a half turn about x (camera frame, y down): test near π.
    mats[0] = Rotation.from_rotvec([np.pi - 1e-4, 0.02, 0.0]).as_matrix()
    # Means of 6D vectors are not orthonormal; decoding must Gram-Schmidt them as SPIN does.
    six = _spin_6d(mats) + rng.normal(0, 0.05, (24, 6))
    betas = rng.normal(size=10)
    path = tmp_path / "smpl_mean_params.npz"
    np.savez(path, pose=six.reshape(1, 144).astype(np.float32), shape=betas.reshape(1, 10),
             cam=np.array([0.9, 0.0, 0.0]))

    vec = layout.load_spin_mean_params(path)
    assert vec.shape == (82,) and vec.dtype == np.float64
    decoded = Rotation.from_rotvec(vec[:72].reshape(24, 3)).as_matrix()
    expected = _gram_schmidt(six.astype(np.float32).astype(np.float64))
    assert np.abs(decoded - expected).max() < 1e-9
    assert np.array_equal(vec[72:82], betas)


def test_load_spin_mean_params_errors(tmp_path):
    path = tmp_path / "means.npz"
    np.savez(path, pose=np.zeros(144), cam=np.zeros(3))
    with pytest.raises(MeshrecError, match="'shape'"):
        layout.load_spin_mean_params(path)
    np.savez(path, pose=np.zeros(72), shape=np.zeros(10))
    with pytest.raises(MeshrecError, match="'pose' has 72 values"):
        layout.load_spin_mean_params(path)
    with pytest.raises(MeshrecError, match="does not exist"):
        layout.load_spin_mean_params(tmp_path / "absent.npz")
