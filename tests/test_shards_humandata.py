"""mmhuman3d HumanData files as its H36M converter writes them (keypoints in the 190-joint
'human_data' convention, compressed by their mask; `smpl` only with MoSh) → shards → training."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from meshrec.body import h36m
from meshrec.errors import MeshrecError
from meshrec.shards import crop
from meshrec.shards import manifest as manifest_mod
from meshrec.shards.pack import PackConfig, pack
from shard_fixture import frame_image

SIZE = 64
# mmhuman3d's 'human_data' rows of Human3.6M's 17 joints (keypoints_mapping/human_data.py
# HUMAN_DATA), ascending as compress_keypoints_by_mask keeps them, with meshrec's name of each
# (mmhuman3d: right_hip_extra, left_hip_extra, neck_extra, headtop, pelvis_extra, spine_extra,
# head_extra).
COMPRESSED = ((4, "left_knee"), (5, "right_knee"), (7, "left_ankle"), (8, "right_ankle"),
              (16, "left_shoulder"), (17, "right_shoulder"), (18, "left_elbow"),
              (19, "right_elbow"), (20, "left_wrist"), (21, "right_wrist"), (144, "right_hip"),
              (145, "left_hip"), (146, "thorax"), (147, "head"), (148, "pelvis"), (150, "spine"),
              (152, "nose"))
MASKED = "spine"       # mask 0 (dropped by compression); not among the 14 joints P1 scores
UNSEEN, EMPTY = 1, 3   # rows: one joint with confidence 0; every confidence 0


def write_humandata(root: Path, subjects=("S1", "S5", "S9"), frames: int = 4,
                    smpl: bool = False) -> tuple[Path, dict]:
    """Images under root/images and root/h36m_train.npz in HumanData.dump's layout; returns the
    file and {image_path: (row, j3d (17, 4) and kp2d (17, 3) in meshrec's order)}."""
    rng = np.random.default_rng(3)
    kept = [(i, name) for i, name in COMPRESSED if name != MASKED]
    cols: dict[str, list] = {k: [] for k in ("image_path", "bbox_xywh", "keypoints3d", "keypoints2d")}
    want = {}
    for subject in subjects:
        for camera in ("54138969", "60457274"):
            for f in range(frames):
                seq = f"{subject}_Directions_1.{camera}"
                rel = f"{subject}/images/{seq}/{seq}_{5 * f + 1:06d}.jpg"
                side = rng.uniform(100, 160)
                center = rng.uniform(side / 2, 300 - side / 2, 2)
                (root / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
                frame_image(300, tuple(center), 0.3 * side, rng).save(root / "images" / rel, quality=95)
                # Distinct values per joint (j + 1 in every coordinate's integer part).
                j3d = np.zeros((17, 4))
                kp2d = np.zeros((17, 3))
                for j, name in enumerate(h36m.NAMES):
                    j3d[j] = [j + 0.1, j + 0.2, j + 0.3, 1.0]
                    kp2d[j] = [*(center + (j - 8) * 3 + rng.uniform(0, 1, 2)), 1.0]
                row = len(cols["image_path"])
                if row == UNSEEN:
                    j3d[2, 3] = kp2d[2, 2] = 0.0
                if row == EMPTY:
                    j3d[:, 3] = kp2d[:, 2] = 0.0
                rows = [h36m.NAMES.index(name) for _, name in kept]
                cols["keypoints3d"].append(j3d[rows])
                cols["keypoints2d"].append(kp2d[rows])
                cols["image_path"].append(rel)
                cols["bbox_xywh"].append([*(center - side / 2), side, side, 1.0])
                j3d[h36m.NAMES.index(MASKED)] = kp2d[h36m.NAMES.index(MASKED)] = 0.0  # not stored
                want[rel] = (row, j3d, kp2d)
    n = len(cols["image_path"])
    mask = np.zeros(190, dtype=np.uint8)
    mask[[i for i, _ in kept]] = 1
    data = {"__key_strict__": False, "__data_len__": n, "__keypoints_compressed__": True,
            **{k: np.array(v) for k, v in cols.items()},
            "keypoints2d_mask": mask, "keypoints3d_mask": mask, "config": "h36m",
            "cam_param": {"54138969": {"H": 1002, "W": 1000}}}
    if smpl:
        data["smpl"] = {"global_orient": rng.normal(0, 1, (n, 3)),
                        "body_pose": rng.normal(0, 0.3, (n, 23, 3)), "betas": rng.normal(0, 1, (n, 10))}
    path = root / "h36m_train.npz"
    np.savez_compressed(path, **data)  # HumanData.dump: dicts become pickled 0-d object arrays
    return path, {"want": want, "data": data}


def _members(out: Path) -> dict[str, dict[str, bytes]]:
    got: dict[str, dict[str, bytes]] = {}
    for entry in manifest_mod.load(out)["shards"]:
        with tarfile.open(out / entry["path"]) as tf:
            for info in tf:
                key, ext = info.name.split(".", 1)
                got.setdefault(key, {})[ext] = tf.extractfile(info).read()
    return got


def _npy(raw: bytes) -> np.ndarray:
    return np.load(io.BytesIO(raw))


def _pack(root: Path, **kw) -> tuple[Path, dict, dict]:
    npz, info = write_humandata(root, **kw)
    out = root / "shards"
    result = pack([npz], root / "images", out, PackConfig("humandata", size=SIZE), workers=1,
                  progress=False, log=lambda _: None)
    rejected = 0 if kw.get("smpl") else 1  # row EMPTY: no label unless it has SMPL
    assert (result.packed, result.rejected) == (len(info["want"]) - rejected, rejected)
    return out, info, manifest_mod.load(out)


@pytest.fixture(scope="module")
def keypoints_only(tmp_path_factory):
    return _pack(tmp_path_factory.mktemp("hd"))


def test_keypoints_only_pack_as_joints_in_meshrecs_order(keypoints_only):
    out, info, m = keypoints_only
    n = m["totals"]["samples"]
    assert m["labels"]["smpl"] == 0 and m["labels"]["j3d"] == m["labels"]["kp2d"] == n > 0
    (reject,) = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert reject["row"] == EMPTY and "no label" in reject["reason"]
    for key, members in _members(out).items():
        assert set(members) == {"jpg", "json", "j3d.npy", "kp2d.npy"}
        meta = json.loads(members["json"])
        row, j3d, kp2d = info["want"][meta["image"]]
        assert meta["source"]["row"] == row
        np.testing.assert_array_equal(_npy(members["j3d.npy"]), j3d.astype(np.float32))
        box = crop.crop_box(tuple(meta["center"]), meta["scale"], 1.2)
        want2d = kp2d.copy()
        want2d[:, :2] = crop.to_crop(kp2d[:, :2], box, SIZE)
        np.testing.assert_allclose(_npy(members["kp2d.npy"]), want2d, atol=1e-3)
        masked = [h36m.NAMES.index(MASKED)] + ([2] if row == UNSEEN else [])
        assert (_npy(members["j3d.npy"])[masked, 3] == 0).all()
        assert (np.delete(_npy(members["kp2d.npy"])[:, 2], masked) == 1).all()


def test_with_smpl_packs_both(tmp_path):
    out, info, m = _pack(tmp_path, subjects=("S1",), frames=2, smpl=True)
    smpl = info["data"]["smpl"]
    n = m["totals"]["samples"]
    # Row EMPTY (every confidence 0) is kept for its SMPL label and counts as no joints.
    assert m["labels"]["smpl"] == n == m["labels"]["j3d"] + 1 == m["labels"]["kp2d"] + 1
    for members in _members(out).values():
        meta = json.loads(members["json"])
        row, j3d, _ = info["want"][meta["image"]]
        want = np.concatenate([smpl["global_orient"][row], smpl["body_pose"][row].ravel(),
                               smpl["betas"][row]]).astype(np.float32)
        np.testing.assert_array_equal(_npy(members["smpl.npy"]), want)
        np.testing.assert_array_equal(_npy(members["j3d.npy"]), j3d.astype(np.float32))
        assert "kp2d.npy" in members and _npy(members["has_smpl.npy"]) == 1


def test_a_file_with_neither_smpl_nor_keypoints_is_refused(tmp_path):
    path = tmp_path / "h36m_train.npz"
    np.savez_compressed(path, image_path=np.array(["S1/images/S1_Directions_1.54138969/"
                                                   "S1_Directions_1.54138969_000001.jpg"]),
                        bbox_xywh=np.array([[0.0, 0.0, 10.0, 10.0, 1.0]]), config="h36m")
    with pytest.raises(MeshrecError) as err:
        pack([path], tmp_path, tmp_path / "out", PackConfig("humandata"), workers=1, progress=False)
    assert str(err.value) == (f"{path} has neither SMPL parameters (smpl) nor keypoints "
                              "(keypoints3d, keypoints2d): nothing to train or evaluate on")
    assert not (tmp_path / "out").exists()


def _train_cfg(shards: Path, cache: Path, run: Path, *extra: str):
    from meshrec.config import load_config

    return load_config(None, [
        f"body.cache_dir={cache}", f"data.shards={shards}",
        "data.train_subjects=[S1,S5]", "data.val_subjects=[S9]", "eval.subjects=[S9]",
        "eval.protocol=h36m-p1", "data.backend=torch", "data.num_threads=1",
        "data.image_size=32", "data.batch_size=8", "model.encoder=resnet18", "model.weights=none",
        "model.hidden=32", "loss.w_vert=0", "loss.w_joint3d=1", "loss.w_kp2d=1",
        "train.epochs=1", "train.log_every=1", "train.checkpoint_every=0",
        "track.enabled=false", "track.overlays=0", f"train.output_dir={run}", *extra])


def test_training_on_keypoints_only_uses_the_joint_losses(keypoints_only, meshrec_cache, tmp_path):
    from meshrec.train.loop import train

    out = keypoints_only[0]
    with pytest.raises(MeshrecError, match=r"^loss\.w_vert is 1 but the training shards \(S1, S5\) "
                                           r"hold no SMPL labels"):
        train(_train_cfg(out, meshrec_cache, tmp_path / "refused", "loss.w_vert=1"))
    assert not (tmp_path / "refused" / "checkpoints").exists()
    metrics = train(_train_cfg(out, meshrec_cache, tmp_path / "run"))
    assert metrics["steps"] > 0 and np.isfinite(metrics["val_p1_mpjpe_mm"])

    # The trained model's loss on a training batch of these shards: the joint terms only.
    import torch

    from meshrec.data import build_loader
    from meshrec.data.demo import with_shards
    from meshrec.loss import compute_loss
    from meshrec.train import evaluate
    from meshrec.train.commands import load_trained

    t = load_trained(str(tmp_path / "run" / "checkpoints" / "last.pt"), [f"data.shards={out}"], "cpu")
    cfg = with_shards(t.cfg)
    joints = evaluate.body_joints(cfg.body, t.body.num_vertices)
    batch = next(iter(build_loader(cfg, "train")))
    with torch.no_grad():
        total, terms = compute_loss(t.model(batch["image"]), batch, t.body, cfg, joints.regressor)
    assert set(terms) == {"joint3d", "kp2d"} and not bool(batch["has_smpl"].any())
    assert all(torch.isfinite(v) and v > 0 for v in terms.values()) and torch.isfinite(total)


def test_an_empty_smpl_is_no_label_and_a_keypoint_count_off_its_mask_is_refused(tmp_path):
    from meshrec.shards.adapters import load_sources

    npz, info = write_humandata(tmp_path, subjects=("S1",), frames=1)
    data = info["data"]
    np.savez_compressed(npz, **{**data, "smpl": {"betas": None}})  # None entries count as absent
    table = load_sources("humandata", [npz])
    assert not table.has_smpl.any() and (table.params == 0).all()
    assert table.j3d.shape == (2, 17, 4) and table.problem.tolist() == ["", ""]
    np.savez_compressed(npz, **{**data, "keypoints3d": data["keypoints3d"][:, :-1]})
    with pytest.raises(MeshrecError, match=r"^\S+h36m_train\.npz: 'keypoints3d' has shape "
                                           r"\(2, 15, 4\) .*expected \(2, 16, 4\) numbers "
                                           r"\(human_data convention, compressed by its mask\)$"):
        load_sources("humandata", [npz])
