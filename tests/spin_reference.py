"""SPIN's Human3.6M evaluation rewritten from its published code (nkolot/SPIN eval.py,
utils/pose_utils.py, constants.py, datasets/preprocess/h36m.py), independent of meshrec: the
reference the protocol tests compare meshrec's numbers with."""

from __future__ import annotations

import numpy as np

# nkolot/SPIN constants.py and datasets/preprocess/h36m.py, written out here on purpose.
SPIN_H36M_TO_J14 = [6, 5, 4, 1, 2, 3, 16, 15, 14, 11, 12, 13, 8, 10]
SPIN_J24_TO_J14 = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 18]
SPIN_GLOBAL_IDX = [14, 3, 4, 5, 2, 1, 0, 16, 12, 17, 18, 9, 10, 11, 8, 7, 6]


def spin_similarity(s1: np.ndarray, s2: np.ndarray) -> np.ndarray:
    """SPIN's compute_similarity_transform (utils/pose_utils.py) on one (N, 3) pair."""
    s1, s2 = s1.T, s2.T
    mu1, mu2 = s1.mean(axis=1, keepdims=True), s2.mean(axis=1, keepdims=True)
    x1, x2 = s1 - mu1, s2 - mu2
    var1 = np.sum(x1 ** 2)
    k = x1.dot(x2.T)
    u, _, vh = np.linalg.svd(k)
    v = vh.T
    z = np.eye(3)
    z[-1, -1] *= np.sign(np.linalg.det(u.dot(v.T)))
    r = v.dot(z.dot(u.T))
    scale = np.trace(r.dot(k)) / var1
    t = mu2 - scale * r.dot(mu1)
    return (scale * r.dot(s1) + t).T


def spin_eval(pred17: np.ndarray, gt_j24: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SPIN eval.py for h36m-p1/p2 from regressed joints and the file's S: (mpjpe, recon) in mm."""
    gt = gt_j24[:, SPIN_J24_TO_J14, :-1]
    pelvis = pred17[:, [0], :]
    pred = pred17[:, SPIN_H36M_TO_J14, :] - pelvis
    mpjpe = np.sqrt(((pred - gt) ** 2).sum(axis=-1)).mean(axis=-1)
    hat = np.stack([spin_similarity(p, g) for p, g in zip(pred, gt)])
    recon = np.sqrt(((hat - gt) ** 2).sum(axis=-1)).mean(axis=-1)
    return 1000 * mpjpe, 1000 * recon


def as_spin_file(s17: np.ndarray) -> np.ndarray:
    """(N, 17, 3) pelvis-centred mocap → SPIN's S (N, 24, 4), as h36m.py fills it."""
    s24 = np.zeros((s17.shape[0], 24, 4))
    s24[:, SPIN_GLOBAL_IDX, :3] = s17
    s24[:, SPIN_GLOBAL_IDX, 3] = 1
    return s24
