"""Moon's Human3.6M layout with NeuralAnnot fits: synth --moon-files → pack --source h36m-moon,
checked against the generator's own camera-frame truth (its default npz files)."""

from __future__ import annotations

import contextlib
import io
import json
import re
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from meshrec.body import h36m
from meshrec.body.smpl import BodyModel
from meshrec.shards import moon, naming
from meshrec.shards.crop import to_crop
from meshrec.shards.pack import PackConfig, pack

REPO = Path(__file__).resolve().parents[1]
SUBJECTS = ["S1", "S9"]
SIZE, CROP = 96, 64


@pytest.fixture(scope="module")
def synth(tmp_path_factory, standin_model) -> Path:
    from meshrec.synth.settings import Settings
    from meshrec.synth.writer import synthesize

    root = tmp_path_factory.mktemp("moon") / "frames"
    synthesize(root, SUBJECTS, Settings(seed=0, size=SIZE, frames_per_subject=16), standin_model,
               workers=1, progress=False, moon_files=True)
    return root


def _pack(ann: Path, images: Path, out: Path, body: Path, subjects=SUBJECTS) -> None:
    src = moon.MoonSource(str(ann), moon.Selection(tuple(subjects), 5, moon.CAMERAS), str(body))
    pack([], images, out, PackConfig(moon.KIND, size=CROP), workers=1, progress=False,
         log=lambda _: None, moon_source=src)


def _samples(out: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    for tar in sorted(out.glob("S*/*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                key, ext = m.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tf.extractfile(m).read()
    return samples


def _npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data))


def _truth(root: Path) -> dict[str, dict[str, np.ndarray]]:
    """The generator's rows by sample key (its frame numbers are Moon's frame_idx + 1)."""
    rows = {}
    for name in ("h36m_train.npz", "h36m_valid.npz"):
        with np.load(root / name) as z:
            for i, img in enumerate(z["imgname"]):
                rows[naming.sample_key(naming.parse(str(img)))] = {k: z[k][i] for k in z.files}
    return rows


def _copy_annotations(synth: Path, tmp: Path) -> Path:
    ann = tmp / "annotations"
    shutil.copytree(synth / "annotations", ann)
    return ann


def test_packed_mesh_and_keypoints_match_the_generator(synth, standin_file, standin_model, tmp_path):
    out = tmp_path / "shards"
    _pack(synth / "annotations", synth / "images", out, standin_file)
    samples, truth = _samples(out), _truth(synth)
    assert set(samples) == set(truth)
    model = BodyModel(standin_model)
    keys = sorted(samples)
    packed = np.stack([_npy(samples[k]["smpl.npy"]) for k in keys])
    assert packed.shape[1] == 85 and all(_npy(samples[k]["has_smpl.npy"])[0] == 1 for k in keys)
    want = np.stack([np.concatenate([truth[k]["pose"], truth[k]["shape"], truth[k]["transl"]]) for k in keys])
    with torch.no_grad():
        got_v = model(torch.from_numpy(packed).double()).vertices.double().numpy()
        want_v = model(torch.from_numpy(want)).vertices.double().numpy()
    assert np.abs(got_v - want_v).max() < 1e-5
    assert {json.loads(samples[k]["json"])["camera"] for k in keys} == set(h36m.CAMERA_IDS)
    for k in keys:
        meta = json.loads(samples[k]["json"])
        part = h36m.j24_to_h36m(truth[k]["part"])
        expected = to_crop(part[:, :2], meta["box"], CROP)
        kp = _npy(samples[k]["kp2d.npy"])
        assert np.abs(kp[:, :2] - expected).max() < 0.5, k
        assert np.abs(_npy(samples[k]["j3d.npy"]) - h36m.j24_to_h36m(truth[k]["S"])).max() < 1e-5
        np.testing.assert_allclose(meta["center"], truth[k]["center"], atol=1e-6)
        np.testing.assert_allclose(meta["cam_K"], truth[k]["cam_K"], atol=1e-9)
        assert meta["image"].startswith("s_") and (synth / "images" / meta["image"]).is_file()


def test_eval_sets_select_subjects_frames_and_cameras(synth, standin_model):
    table = moon.load_moon(str(synth / "annotations"), moon.Selection(("S9",), 64, (4,)), standin_model)
    assert set(table.camera) == {"60457274"} and set(table.subject) == {"S9"}
    assert len(table) > 0 and all((table.frame - 1) % 64 == 0)
    p2 = moon.load_moon(str(synth / "annotations"), moon.Selection(("S9",), 5, (4,)), standin_model)
    assert len(p2) > len(table) and set(p2.camera) == {"60457274"}
    assert moon.EVAL_SETS["h36m-moon"] == moon.Selection(("S9", "S11"), 64, (4,))


def test_frames_without_a_fit_are_joints_only_and_bad_frames_are_rejected(synth, standin_file, tmp_path):
    ann = _copy_annotations(synth, tmp_path)
    images = tmp_path / "images"
    shutil.copytree(synth / "images", images, copy_function=os.link)
    fits_path = ann / "Human36M_subject1_SMPL_NeuralAnnot.json"
    fits = json.loads(fits_path.read_text())
    del fits["2"]["1"]["0"]                                   # Directions frame 1: no fit
    fits["3"]["1"]["0"]["shape"] = [0.0] * 9                  # Discussion frame 1: a malformed fit
    fits_path.write_text(json.dumps(fits))
    data_path = ann / "Human36M_subject1_data.json"
    data = json.loads(data_path.read_text())
    boxless = next(i for i in data["images"] if i["action_idx"] == 4 and i["frame_idx"] == 0)
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != boxless["id"]]
    data_path.write_text(json.dumps(data))
    gone = moon.image_name("S1", 5, 1, 2, 0)                  # Greeting, camera 2, frame 1
    (images / gone).unlink()

    out = tmp_path / "shards"
    _pack(ann, images, out, standin_file, subjects=["S1"])
    samples = _samples(out)
    no_fit = [k for k in samples if k.startswith("S1-Directions_1-") and k.endswith("-000001")]
    assert len(no_fit) == 4
    for k in no_fit:
        assert _npy(samples[k]["has_smpl.npy"])[0] == 0 and not _npy(samples[k]["smpl.npy"]).any()
        assert (_npy(samples[k]["j3d.npy"])[:, 3] == 1).all()
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    by_image = {r["image"]: r for r in rejects}
    assert len(rejects) == 4 + 1 + 1
    assert by_image[gone]["reason"] == "image file is missing" and by_image[gone]["key"].endswith("-000001")
    assert "no box" in by_image[boxless["file_name"]]["reason"]
    malformed = [r for r in rejects if "Discussion_1" in r["key"]]
    assert len(malformed) == 4 and all("'shape'" in r["reason"] for r in malformed)
    assert all(r["source"] == "Human36M_subject1_data.json" for r in rejects)


def _cli(ann: Path, images: Path, out: Path, body: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "shards/pack.py"), "--source", "h36m-moon", "--annotations", str(ann),
         "--body", str(body), "--images", str(images), "--out", str(out), "--workers", "1",
         "--no-progress", *extra],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)


def _refused(run: subprocess.CompletedProcess, out: Path, names: Path) -> None:
    assert run.returncode == 2, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and str(names) in run.stderr, run.stderr
    assert not (out / "manifest.json").exists() and not list(out.glob("**/*.tar"))


def test_another_subjects_fits_are_refused(synth, standin_file, tmp_path):
    ann = _copy_annotations(synth, tmp_path)
    wrong = ann / "Human36M_subject9_SMPL_NeuralAnnot.json"
    shutil.copy(ann / "Human36M_subject1_SMPL_NeuralAnnot.json", wrong)  # same frame keys, S1's fits
    out = tmp_path / "shards"
    run = _cli(ann, synth / "images", out, standin_file, "--subjects", "S9", "--cameras", "4")
    _refused(run, out, wrong)
    assert "another subject" in run.stderr
    fits = json.loads(wrong.read_text())
    fits["2"]["1"]["99999"] = fits["2"]["1"]["0"]                        # a frame S9 does not have
    wrong.write_text(json.dumps(fits))
    _refused(_cli(ann, synth / "images", out, standin_file, "--subjects", "S9"), out, wrong)


def test_a_camera_missing_from_the_camera_file_is_refused(synth, standin_file, tmp_path):
    ann = _copy_annotations(synth, tmp_path)
    cams = ann / "Human36M_subject1_camera.json"
    cams.write_text(json.dumps({k: v for k, v in json.loads(cams.read_text()).items() if k != "3"}))
    out = tmp_path / "shards"
    run = _cli(ann, synth / "images", out, standin_file, "--subjects", "S1", "--cameras", "4")
    _refused(run, out, cams)
    assert 'no camera "3"' in run.stderr
    (ann / "Human36M_subject1_joint_3d.json").write_text("{not json")
    cams.unlink()
    _refused(_cli(ann, synth / "images", out, standin_file, "--subjects", "S1"), out, cams)


def test_the_joint_file_lists_the_legs_right_first_as_moons_release(synth):
    """Moon's _joint_3d.json rows follow I2L-MeshNet's h36m_joints_name (R_Hip at row 1); the
    same frame's SPIN-layout joints (meshrec's order, left_hip at row 1) must agree by name."""
    ann = synth / "annotations"
    world = np.asarray(json.loads((ann / "Human36M_subject1_joint_3d.json").read_text())["2"]["1"]["0"])
    cam = json.loads((ann / "Human36M_subject1_camera.json").read_text())["1"]
    in_cam = (np.asarray(cam["R"]) @ world.T).T + np.asarray(cam["t"])
    in_cam = (in_cam - in_cam[0]) / 1000.0
    truth = _truth(synth)[f"S1-Directions_1-{h36m.CAMERA_IDS[0]}-000001"]
    spin = h36m.j24_to_h36m(truth["S"])[:, :3]
    for row, name in enumerate(h36m.MOON_NAMES):
        mine = {"Pelvis": "pelvis", "Torso": "spine", "Neck": "thorax", "Nose": "nose",
                "Head_top": "head"}.get(name) or f"{'left' if name[0] == 'L' else 'right'}_{name[2:].lower()}"
        assert np.abs(in_cam[row] - spin[h36m.NAMES.index(mine)]).max() < 1e-6, name
    assert np.abs(spin[h36m.NAMES.index("left_hip")] - spin[h36m.NAMES.index("right_hip")]).max() > 0.05


def test_spin_joints_and_neuralannot_fits_mixed_in_one_pack_train_together(
        synth, standin_file, standin_model, tmp_path):
    """SPIN's joints-only file for S1 and Moon's release with fits for S9, packed into one
    directory: the manifest says which subject carries which labels, and a run trains on both."""
    from meshrec.body.standin.h36m import h36m_regressor
    from meshrec.config import load_config
    from meshrec.synth.settings import Settings
    from meshrec.synth.writer import synthesize
    from meshrec.train.loop import train

    # The same frames again, now also in SPIN's files (images are kept, nothing re-rendered).
    synthesize(synth, SUBJECTS, Settings(seed=0, size=SIZE, frames_per_subject=16), standin_model,
               workers=1, progress=False, spin_files=True)
    out = tmp_path / "mixed"
    done = subprocess.run(
        [sys.executable, str(REPO / "shards" / "pack.py"), "--source", "spin",
         "--npz", str(synth / "h36m_train.npz"), "--annotations", str(synth / "annotations"),
         "--body", str(standin_file), "--subjects", "S9", "--images", str(synth),
         "--moon-images", str(synth / "images"), "--out", str(out), "--size", str(CROP),
         "--workers", "1", "--no-progress"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    s1, s9 = manifest["subjects"]["S1"]["labels"], manifest["subjects"]["S9"]["labels"]
    assert s1["smpl"] == 0 and s1["j3d"] == s1["kp2d"] == manifest["subjects"]["S1"]["samples"] > 0
    assert s9["smpl"] == s9["j3d"] == manifest["subjects"]["S9"]["samples"] > 0
    assert manifest["layout"]["size"] == 85  # Moon's fits carry translation; S1's rows are zeros
    regressor = tmp_path / "J_regressor_h36m.npy"
    np.save(regressor, h36m_regressor(standin_model))
    cfg = load_config(None, [
        f"body.model_path={standin_file}", f"body.h36m_regressor={regressor}",
        f"data.shards={out}", "data.train_subjects=[S1,S9]", "data.val_subjects=[S9]",
        "eval.subjects=[S9]", "data.backend=torch", "data.num_threads=1", "data.image_size=48",
        "data.batch_size=16", "model.encoder=resnet18", "model.weights=none",
        "model.freeze_encoder=false", "model.hidden=64", "loss.w_vert=1", "loss.w_joint3d=1",
        "loss.w_kp2d=1", "train.epochs=1", "train.checkpoint_every=0", "track.enabled=false",
        "track.overlays=0", f"train.output_dir={tmp_path / 'run'}"])
    metrics = train(cfg)
    assert metrics["steps"] > 0 and metrics["bad_steps"] == 0
    assert np.isfinite(metrics["val_pve_mm"]) and metrics["val_samples"] > 0
    # Moon's test set: camera 60457274, frame_idx % 64 == 0 (here frame 1 of each action)
    from meshrec.cli import main

    ckpt = str(tmp_path / "run" / "checkpoints" / "last.pt")
    lines = {}
    for protocol in ("h36m-moon", "h36m-p2"):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert main(["eval", "--checkpoint", ckpt, "--protocol", protocol]) == 0
        lines[protocol] = buf.getvalue().strip().splitlines()[-1]
    s9 = json.loads((out / "manifest.json").read_text())["subjects"]["S9"]
    moon_n = int(re.search(r"samples=(\d+)", lines["h36m-moon"])[1])
    p2_n = int(re.search(r"samples=(\d+)", lines["h36m-p2"])[1])
    assert moon_n == len(s9["actions"]) and p2_n == s9["samples"] // 4 > moon_n
