"""Which npz files a generated data set gets, and their keys: meshrec's own, or SPIN's as its users hold them.

Default (`spin_files=False`), one file per split in the run, with SMPL labels:
    h36m_train.npz (S1 S5 S6 S7 S8), h36m_valid.npz (S9 S11): ALL_KEYS
With `spin_files=True`, the files SPIN's preprocessing writes (nkolot/SPIN datasets/preprocess/),
plus the SMPL labels a user of them may have from elsewhere:
    h36m_train.npz            SPIN_TRAIN_KEYS, as h36m_train.py ("No SMPL parameters"); openpose 0
    h36m_train_smpl.npz       the same rows + pose, shape, has_smpl (1): for mixed training
    h36m_valid.npz            as the default one (ALL_KEYS), so SMPL metrics can be computed
    h36m_valid_protocol1.npz  SPIN_EVAL_KEYS, as h36m.py: S9 S11, all four cameras
    h36m_valid_protocol2.npz  SPIN_EVAL_KEYS, camera 60457274 only
Rows keep the run's order (subject, action, camera, frame) and its image names.
"""

from __future__ import annotations

import numpy as np

from meshrec.body.h36m import PROTOCOL2_CAMERA

ALL_KEYS = ("imgname", "center", "scale", "part", "S", "pose", "shape", "transl", "cam_K")
SPIN_TRAIN_KEYS = ("imgname", "center", "scale", "part", "S", "openpose")
SPIN_SMPL_KEYS = ("pose", "shape", "has_smpl")
SPIN_EVAL_KEYS = ("imgname", "center", "scale", "S")
OPENPOSE_JOINTS = 25
TRAIN, VALID = "h36m_train.npz", "h36m_valid.npz"
TRAIN_SMPL = "h36m_train_smpl.npz"
PROTOCOL_FILES = {1: "h36m_valid_protocol1.npz", 2: "h36m_valid_protocol2.npz"}


def npz_files(tables: dict[str, dict[str, np.ndarray]], cameras: dict[str, np.ndarray],
              spin_files: bool = False) -> dict[str, dict[str, np.ndarray]]:
    """file name -> arrays, from the rows of each split ("train", "valid"; ALL_KEYS each) and
    each row's camera id. A split absent from `tables` gives no file."""
    out: dict[str, dict[str, np.ndarray]] = {}
    if "train" in tables:
        train = tables["train"]
        if spin_files:
            n = len(train["imgname"])
            spin = {k: train[k] for k in SPIN_TRAIN_KEYS if k != "openpose"}
            spin["openpose"] = np.zeros((n, OPENPOSE_JOINTS, 3))   # no detector was run
            out[TRAIN] = spin
            out[TRAIN_SMPL] = {**spin, "pose": train["pose"], "shape": train["shape"],
                               "has_smpl": np.ones(n)}
        else:
            out[TRAIN] = {k: train[k] for k in ALL_KEYS}
    if "valid" in tables:
        valid = tables["valid"]
        out[VALID] = {k: valid[k] for k in ALL_KEYS}
        if spin_files:
            out[PROTOCOL_FILES[1]] = {k: valid[k] for k in SPIN_EVAL_KEYS}
            frontal = cameras["valid"] == PROTOCOL2_CAMERA
            out[PROTOCOL_FILES[2]] = {k: valid[k][frontal] for k in SPIN_EVAL_KEYS}
    return out
