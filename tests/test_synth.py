"""Generated Human3.6M-like data: joint limits, motion, labels against pixels, determinism, resume, CLI."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import binary_dilation

from meshrec.body import h36m
from meshrec.body.params import JOINT_NAMES, NUM_JOINTS
from meshrec.body.smpl import BodyModel
from meshrec.errors import MeshrecError
from meshrec.fileio import save_npz
from meshrec.render import Camera, project, rasterize
from meshrec.synth import cameras, generate, limits, motion, writer
from meshrec.synth.rng import stream
from meshrec.synth.settings import Settings
from meshrec.synth.subjects import SUBJECTS, parse_subjects, subject_betas

# Its module fixtures are built once: every test here runs on one xdist worker.
pytestmark = pytest.mark.xdist_group("synth")

REPO = Path(__file__).resolve().parents[1]
SYNTH = REPO / "shards" / "synth.py"
SUBSET = ["S1", "S9"]
SETTINGS = Settings(seed=3, size=128, frames_per_subject=10)  # two actions get 2 frames, six get 1
IMGNAME = re.compile(r"^(S\d+)/([A-Za-z]+)_1\.(\d{8})/frame_(\d{6})\.jpg$")


@pytest.fixture(scope="module")
def body_arrays(standin_model) -> dict[str, np.ndarray]:
    return standin_model


# --- joint limits ------------------------------------------------------------------------------

def test_limit_table_is_anatomical_and_mirrored():
    j = limits.joint_index
    assert np.all(limits.LIMIT_LO < limits.LIMIT_HI)
    for side in ("left", "right"):
        assert limits.LIMIT_LO[j(f"{side}_knee"), 0] >= 0.0          # knees never bend backwards
        assert limits.LIMIT_HI[j(f"{side}_knee"), 0] >= 120.0
    assert limits.LIMIT_HI[j("left_elbow"), 1] <= 0.0                # elbows flex one way only,
    assert limits.LIMIT_LO[j("right_elbow"), 1] >= 0.0               # mirrored on the right
    for name in JOINT_NAMES:
        if name.startswith("left_"):
            left, right = j(name), j(name.replace("left_", "right_"))
            assert np.allclose(limits.LIMIT_LO[right], [limits.LIMIT_LO[left, 0], -limits.LIMIT_HI[left, 1],
                                                         -limits.LIMIT_HI[left, 2]])
            assert limits.ORDERS[left] == limits.ORDERS[right]
    for jt in range(1, NUM_JOINTS):  # the middle Euler angle stays inside ±90° (unique read-back)
        mid = "xyz".index(limits.ORDERS[jt][1].lower())
        assert -90 < limits.LIMIT_LO[jt, mid] and limits.LIMIT_HI[jt, mid] < 90


def test_euler_round_trip_and_violations():
    rng = np.random.default_rng(0)
    e = rng.uniform(limits.LIMIT_LO, limits.LIMIT_HI, (50, NUM_JOINTS, 3))
    pose = limits.euler_to_axis_angle(e)
    assert pose.shape == (50, 72)
    assert np.abs(limits.euler_of(pose)[:, 1:] - e[:, 1:]).max() < 1e-6
    assert limits.violations(pose) == []
    bad = e[:1].copy()
    bad[0, limits.joint_index("left_knee"), 0] = -10.0              # hyperextended knee
    bad[0, limits.joint_index("right_elbow"), 1] = -30.0            # elbow bent the wrong way
    found = limits.violations(limits.euler_to_axis_angle(bad))
    assert len(found) == 2
    assert any("left_knee x=-10.0" in f for f in found) and any("right_elbow y=-30.0" in f for f in found)


def test_sign_conventions_on_the_body(body_arrays):
    """The table's anatomical signs, checked on the posed stand-in body (rest: facing +z, left on +x)."""
    model = BodyModel(body_arrays)
    j = limits.joint_index

    def joints_with(name: str, xyz: tuple[float, float, float]) -> np.ndarray:
        e = np.zeros((NUM_JOINTS, 3))
        e[j(name)] = xyz
        params = np.concatenate([limits.euler_to_axis_angle(e), np.zeros(10)])[None]
        with torch.no_grad():
            return model(torch.from_numpy(params)).joints[0].double().numpy()

    for side, m in (("left", 1.0), ("right", -1.0)):
        p = joints_with(f"{side}_knee", (90, 0, 0))                 # knee flexion: foot goes back
        assert p[j(f"{side}_ankle"), 2] < p[j(f"{side}_knee"), 2] - 0.2
        p = joints_with(f"{side}_hip", (-90, 0, 0))                 # hip flexion: knee goes forward
        assert p[j(f"{side}_knee"), 2] > p[j(f"{side}_hip"), 2] + 0.2
        p = joints_with(f"{side}_elbow", (0, m * -90, 0))           # elbow flexion: hand to the front
        assert p[j(f"{side}_wrist"), 2] > p[j(f"{side}_elbow"), 2] + 0.15
        p = joints_with(f"{side}_shoulder", (0, 0, m * -80))        # arm lowered to the side
        assert p[j(f"{side}_wrist"), 1] < p[j(f"{side}_shoulder"), 1] - 0.3
        p = joints_with(f"{side}_hip", (0, 0, m * 45))              # abduction: leg outwards
        assert m * p[j(f"{side}_ankle"), 0] > m * p[j(f"{side}_hip"), 0] + 0.2


# --- motion --------------------------------------------------------------------------------------

@pytest.mark.parametrize("action", motion.ACTIONS, ids=motion.ACTION_NAMES)
def test_sequences_respect_limits_and_are_smooth(action):
    from scipy.spatial.transform import Rotation

    for seed in range(3):
        seq = motion.make_sequence(action, 80, stream(seed, "S1", action.name, "motion"))
        pose = limits.euler_to_axis_angle(seq.euler)
        assert limits.violations(pose) == []
        lo, hi = motion.style_box(action)
        if not action.walking:  # key poses blend inside the action's own box too
            assert np.all(seq.euler >= lo - 1e-9) and np.all(seq.euler <= hi + 1e-9)
        # Frame to frame: every joint turns by at most 20°, the heading by at most 15°,
        # the pelvis moves at most 0.2 m (walking speed x 0.1 s).
        r = Rotation.from_rotvec(pose.reshape(-1, 3)).as_matrix().reshape(80, NUM_JOINTS, 3, 3)
        rel = np.einsum("fjab,fjac->fjbc", r[:-1], r[1:])
        step = np.degrees(np.arccos(np.clip((np.trace(rel, axis1=2, axis2=3) - 1) / 2, -1, 1)))
        assert step.max() < 20.0, (action.name, step.max())
        assert np.degrees(np.abs(np.diff(seq.heading))).max() < 15.0
        assert np.sqrt((np.diff(seq.position, axis=0) ** 2).sum(1)).max() < 0.2
        assert step.max() > 0.2  # and it does move


def test_actions_differ_where_they_should():
    rng = stream(0, "test")
    seated = motion.make_sequence(motion.ACTIONS[motion.ACTION_NAMES.index("Sitting")], 40, rng)
    knee = limits.joint_index("left_knee")
    assert seated.euler[:, knee, 0].min() >= 70.0 and seated.seated
    walk = motion.make_sequence(motion.ACTIONS[motion.ACTION_NAMES.index("Walking")], 40, rng)
    assert np.sqrt((np.diff(walk.position, axis=0) ** 2).sum(1)).mean() > 0.08  # it goes somewhere
    hips = walk.euler[:, [limits.joint_index("left_hip"), limits.joint_index("right_hip")], 0]
    assert np.corrcoef(hips[:, 0], hips[:, 1])[0, 1] < -0.9          # legs swing in antiphase


def test_frames_per_action_split():
    assert motion.frames_per_action(10, 8) == [2, 2, 1, 1, 1, 1, 1, 1]
    assert sum(motion.frames_per_action(1001)) == 1001
    assert motion.frames_per_action(3, 8) == [1, 1, 1, 0, 0, 0, 0, 0]


# --- subjects and cameras ------------------------------------------------------------------------

def test_subjects_parse_and_betas():
    assert parse_subjects("S9,S1") == ["S1", "S9"]
    for bad in ("S2", "S1,S1", ""):
        with pytest.raises(MeshrecError):
            parse_subjects(bad)
    betas = np.stack([subject_betas(s, 0) for s in SUBJECTS])
    assert len({tuple(b) for b in betas}) == len(SUBJECTS)
    assert np.array_equal(subject_betas("S5", 0), subject_betas("S5", 0))
    assert not np.array_equal(subject_betas("S5", 0), subject_betas("S5", 1))


def test_camera_rig_is_h36m_like():
    rig = cameras.camera_rig(0, 1000)
    assert tuple(rig) == cameras.CAMERA_IDS
    centre = np.array([[0.0, 1.0, 0.0]])  # a subject's middle at the capture area's centre
    for cam in rig.values():
        c = cameras.center_of(cam)
        assert 1.2 <= c[1] <= 1.8 and 4.0 <= np.linalg.norm(c - centre[0]) <= 6.0
        assert 1140 < cam.fx < 1155
        uv, depth = project(centre, cam)
        assert depth[0] > 0 and np.all(np.abs(uv - 500) < 100)      # looking at the area
    azimuths = sorted(np.degrees(np.arctan2(*cameras.center_of(c)[[0, 2]])) % 360 for c in rig.values())
    assert np.all(np.diff(azimuths) > 60)                            # all around the subject
    small = cameras.camera_rig(0, 250)["54138969"]
    assert np.isclose(small.fx * 4, rig["54138969"].fx) and np.allclose(small.R, rig["54138969"].R)


# --- generated data set -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, body_arrays) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    summary = writer.synthesize(out, SUBSET, SETTINGS, body_arrays, workers=1, progress=False)
    assert summary.rendered == summary.images == 2 * 10 * 4
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def test_npz_layout_follows_the_contract(run_dir):
    train, valid = _load(run_dir / "h36m_train.npz"), _load(run_dir / "h36m_valid.npz")
    for data, subject in ((train, "S1"), (valid, "S9")):
        n = len(data["imgname"])
        assert n == 40
        assert set(data) == {"imgname", "center", "scale", "part", "S", "pose", "shape", "transl", "cam_K"}
        shapes = {"center": (n, 2), "scale": (n,), "part": (n, 24, 3), "S": (n, 24, 4), "pose": (n, 72),
                  "shape": (n, 10), "transl": (n, 3), "cam_K": (n, 3, 3)}
        for key, shape in shapes.items():
            assert data[key].shape == shape and data[key].dtype == np.float64, key
            assert np.all(np.isfinite(data[key]))
        assert data["imgname"].dtype.kind == "U"
        for name in data["imgname"]:
            m = IMGNAME.match(name)
            assert m and m.group(1) == subject and m.group(2) in motion.ACTION_NAMES
            assert m.group(3) in cameras.CAMERA_IDS and (int(m.group(4)) - 1) % 5 == 0
            assert (run_dir / name).is_file()
        assert len(set(data["imgname"])) == n
        # SPIN's J24 rows: the 17 Human3.6M joints with confidence 1, the other 7 rows all zero.
        filled = np.isin(np.arange(24), h36m.J24_OF_H36M)
        for key in ("S", "part"):
            assert np.all(data[key][:, filled, -1] == 1.0) and np.all(data[key][:, ~filled] == 0.0), key
        assert np.all(h36m.j24_to_h36m(data["S"])[:, h36m.PELVIS, :3] == 0.0)   # pelvis-centred
        # One fixed shape per subject.
        assert np.all(data["shape"] == data["shape"][0])
        assert np.allclose(data["cam_K"][:, 2], [0, 0, 1]) and np.all(data["cam_K"][:, 0, 1] == 0)
    assert not np.allclose(train["shape"][0], valid["shape"][0])
    seen = {IMGNAME.match(n).group(2) for n in train["imgname"]}
    assert seen == set(motion.ACTION_NAMES)


def _camera(K: np.ndarray, size: int) -> Camera:
    return Camera(K[0, 0], K[1, 1], K[0, 2], K[1, 2], size, size)


def test_labels_match_the_body_model_and_the_box(run_dir, body_arrays):
    data = _load(run_dir / "h36m_train.npz")
    model = BodyModel(body_arrays)
    params = np.concatenate([data["pose"], data["shape"], data["transl"]], axis=1)
    with torch.no_grad():
        out = model(torch.from_numpy(params))
    joints, verts = out.joints.double().numpy(), out.vertices.double().numpy()
    assert np.all(verts[..., 2] > 1.0)                                # in front of the camera
    # Joints and vertices (from the model, not from the writer's arrays) project into the box.
    for points in (joints, verts):
        uv = np.einsum("nij,nkj->nki", data["cam_K"], points)
        uv = uv[..., :2] / uv[..., 2:]
        half = 100.0 * data["scale"][:, None, None]
        assert np.all(np.abs(uv - data["center"][:, None]) <= half + 1e-3)   # px; float32 model
    # The box is the tight square around the projected vertices (x BOX_MARGIN).
    uv = np.einsum("nij,nkj->nki", data["cam_K"], verts)
    uv = uv[..., :2] / uv[..., 2:]
    side = (uv.max(1) - uv.min(1)).max(1)
    assert np.allclose(side * generate.BOX_MARGIN, 200.0 * data["scale"], atol=1e-3)
    assert np.allclose((uv.max(1) + uv.min(1)) / 2, data["center"], atol=1e-3)


def _mocap_check(data: dict[str, np.ndarray], body_arrays: dict, regressor: np.ndarray) -> np.ndarray:
    """Checks S and part against the mesh of (pose, shape, transl); returns S − noiseless S."""
    with torch.no_grad():
        verts = BodyModel(body_arrays)(torch.from_numpy(np.concatenate(
            [data["pose"], data["shape"], data["transl"]], axis=1))).vertices.double().numpy()
    true = np.einsum("jv,nvc->njc", regressor, verts)              # the mocap joints, noiseless
    counts = motion.frames_per_action(SETTINGS.frames_per_subject)
    rig = cameras.camera_rig(SETTINGS.seed, SETTINGS.size)
    noise = np.empty_like(true)                                    # drawn in the world, then turned
    for i, name in enumerate(data["imgname"]):
        subject, action, cam_id, frame = IMGNAME.match(name).groups()
        k = (int(frame) - 1) // 5
        world = generate.marker_noise(SETTINGS.seed, subject, action, counts[motion.ACTION_NAMES.index(action)])
        noise[i] = world[k] @ rig[cam_id].R.T
    S = h36m.j24_to_h36m(data["S"])[..., :3]
    mocap = true + noise
    assert np.abs(S - (mocap - mocap[:, :1])).max() < 1e-4          # float32 model
    uv = np.einsum("nij,nkj->nki", data["cam_K"], mocap)            # K @ X, by depth: OpenCV pixels
    uv = uv[..., :2] / uv[..., 2:]
    assert np.abs(h36m.j24_to_h36m(data["part"])[..., :2] - uv).max() < 0.01
    return S - (true - true[:, :1])


def test_mocap_joints_are_the_regressed_mesh_plus_marker_noise(run_dir, body_arrays):
    from meshrec.body.standin.h36m import h36m_regressor

    bound = 2 * generate.MARKER_CLIP * generate.MARKER_NOISE_M + 1e-4  # a joint's and the pelvis's
    for split in ("train", "valid"):
        err = _mocap_check(_load(run_dir / f"h36m_{split}.npz"), body_arrays, h36m_regressor(body_arrays))
        assert np.abs(err).max() < bound                             # a few mm ...
        assert 0.001 < np.sqrt((err[:, 1:] ** 2).mean()) < 0.005      # ... and not none


def _copy_images(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.npz"))


def test_spin_files_hold_spins_keys_and_protocols(run_dir, body_arrays, tmp_path):
    """A directory made without --spin-files, re-run with it: same images and settings, SPIN's files."""
    out = tmp_path / "spin"
    _copy_images(run_dir, out)
    summary = writer.synthesize(out, SUBSET, SETTINGS, body_arrays, workers=1, progress=False, spin_files=True)
    assert summary.rendered == 0
    files = _files(out)
    assert {k: v for k, v in files.items() if not k.endswith(".npz")} == \
        {k: v for k, v in _files(run_dir).items() if not k.endswith(".npz")}
    assert sorted(k for k in files if k.endswith(".npz")) == sorted(f.name for f in summary.files) == [
        "h36m_train.npz", "h36m_train_smpl.npz", "h36m_valid.npz", "h36m_valid_protocol1.npz",
        "h36m_valid_protocol2.npz"]
    assert files["h36m_valid.npz"] == (run_dir / "h36m_valid.npz").read_bytes()
    mine = _load(run_dir / "h36m_train.npz")
    train, smpl = _load(out / "h36m_train.npz"), _load(out / "h36m_train_smpl.npz")
    n = len(mine["imgname"])
    assert set(train) == {"imgname", "center", "scale", "part", "S", "openpose"}       # no SMPL
    assert set(smpl) == set(train) | {"pose", "shape", "has_smpl"}
    assert train["openpose"].shape == (n, 25, 3) and not train["openpose"].any()
    for key in ("imgname", "center", "scale", "part", "S"):
        assert np.array_equal(train[key], mine[key]) and np.array_equal(smpl[key], mine[key]), key
    assert np.array_equal(smpl["pose"], mine["pose"]) and np.array_equal(smpl["shape"], mine["shape"])
    assert smpl["has_smpl"].shape == (n,) and np.all(smpl["has_smpl"] == 1)
    valid = _load(run_dir / "h36m_valid.npz")
    p1, p2 = _load(out / "h36m_valid_protocol1.npz"), _load(out / "h36m_valid_protocol2.npz")
    assert set(p1) == set(p2) == {"imgname", "center", "scale", "S"}
    frontal = np.array([IMGNAME.match(x).group(3) == h36m.PROTOCOL2_CAMERA for x in valid["imgname"]])
    assert frontal.sum() == len(valid["imgname"]) // 4 > 0
    for key in p1:
        assert np.array_equal(p1[key], valid[key]) and np.array_equal(p2[key], valid[key][frontal]), key
    assert {IMGNAME.match(x).group(1) for x in p1["imgname"]} == {"S9"}             # valid subjects only
    assert {IMGNAME.match(x).group(3) for x in p1["imgname"]} == set(cameras.CAMERA_IDS)
    assert p2["S"].shape == (len(valid["imgname"]) // 4, 24, 4)


def test_a_given_regressor_makes_the_mocap_joints(run_dir, body_arrays, tmp_path):
    out = tmp_path / "given"
    _copy_images(run_dir, out)
    regressor = np.zeros((17, len(body_arrays["v_template"])))
    regressor[np.arange(17), np.arange(17) * 400] = 1.0              # 17 single vertices
    writer.synthesize(out, ["S9"], SETTINGS, body_arrays, workers=1, progress=False, regressor=regressor)
    data = _load(out / "h36m_valid.npz")
    assert not np.array_equal(data["S"], _load(run_dir / "h36m_valid.npz")["S"])
    _mocap_check(data, body_arrays, regressor)
    with pytest.raises(MeshrecError, match=r"has shape \(16, 6890\); expected \(17, 6890\)"):
        writer.synthesize(out, ["S9"], SETTINGS, body_arrays, workers=1, progress=False,
                          regressor=regressor[:16])


def test_rendered_person_is_where_the_labels_say(run_dir, body_arrays):
    """Non-background pixels of the written JPEGs lie on the projection of SMPL(pose, shape) + transl."""
    data = _load(run_dir / "h36m_valid.npz")
    body = generate.Body(body_arrays)
    model = body.model
    counts = motion.frames_per_action(SETTINGS.frames_per_subject)
    rig = cameras.camera_rig(SETTINGS.seed, SETTINGS.size)
    checked = unoccluded = 0
    for i, name in enumerate(data["imgname"]):
        subject, action, cam_id, frame = IMGNAME.match(name).groups()
        a = motion.ACTION_NAMES.index(action)
        k = (int(frame) - 1) // 5
        posed = generate.pose_world(body, subject, a, counts[a], SETTINGS.seed)
        sc = generate.sequence_scene(posed, subject, a, cam_id, rig[cam_id], SETTINGS.seed)
        # The same frame without the body, through the same JPEG encoder: blocks away from the
        # body come out identical, so what differs is the body (plus some ringing around it).
        empty = generate.render_frame(body, None, rig[cam_id], sc)
        empty = np.asarray(Image.open(io.BytesIO(generate.encode_jpeg(empty)))).astype(np.int32)
        photo = np.asarray(Image.open(run_dir / name).convert("RGB")).astype(np.int32)
        assert photo.shape == (SETTINGS.size, SETTINGS.size, 3)
        diff = np.abs(photo - empty).sum(-1)
        params = np.concatenate([data["pose"][i], data["shape"][i], data["transl"][i]])[None]
        with torch.no_grad():
            verts = model(torch.from_numpy(params)).vertices[0].double().numpy()
        proj = rasterize(verts, body.faces, _camera(data["cam_K"][i], SETTINGS.size)).face_index >= 0
        assert proj.sum() > 100
        strong = diff > 60
        assert (strong & binary_dilation(proj)).sum() / strong.sum() > 0.97, name   # changes are on the body
        if not sc.boxes:  # nothing in front of it (no occluder, no seat)
            assert (proj & (diff > 20)).sum() / proj.sum() > 0.9, name            # and the body shows
            unoccluded += 1
        # The mocap joints (part) project inside the box given by center/scale: they lie inside the
        # body, up to the marker noise (< 0.5 px here).
        uv = data["part"][i, list(h36m.J24_OF_H36M), :2]
        assert np.all(np.abs(uv - data["center"][i]) <= 100.0 * data["scale"][i] + 0.5)
        checked += 1
    assert checked == 40 and unoccluded >= 16


def test_same_seed_same_bytes_and_resume(run_dir, body_arrays, tmp_path):
    again = tmp_path / "again"
    writer.synthesize(again, SUBSET, SETTINGS, body_arrays, workers=1, progress=False)
    reference = _files(run_dir)
    assert _files(again) == reference
    # Another seed gives other data.
    other = tmp_path / "other"
    writer.synthesize(other, ["S1"], Settings(4, SETTINGS.size, SETTINGS.frames_per_subject), body_arrays,
                      workers=1, progress=False)
    assert (other / "h36m_train.npz").read_bytes() != reference["h36m_train.npz"]
    # Interrupted run: frames missing, one cut short, a temporary file left, no npz yet.
    names = sorted(k for k in reference if k.endswith(".jpg"))
    for name in names[::17]:
        (again / name).unlink()
    cut = again / names[5]
    cut.write_bytes(cut.read_bytes()[:300])
    (cut.parent / f".{cut.name}.tmp").write_bytes(b"partial")
    (again / "h36m_train.npz").unlink()
    summary = writer.synthesize(again, SUBSET, SETTINGS, body_arrays, workers=1, progress=False)
    assert summary.rendered == len(names[::17]) + 1
    assert _files(again) == reference
    # Nothing left to do: a re-run renders nothing and rewrites the same npz bytes.
    assert writer.synthesize(again, SUBSET, SETTINGS, body_arrays, workers=1, progress=False).rendered == 0
    assert (again / "h36m_valid.npz").read_bytes() == reference["h36m_valid.npz"]


def test_directory_with_other_settings_is_refused(run_dir, body_arrays):
    other = Settings(SETTINGS.seed + 1, SETTINGS.size, SETTINGS.frames_per_subject)
    with pytest.raises(MeshrecError, match="seed 3 -> 4"):
        writer.synthesize(run_dir, SUBSET, other, body_arrays, workers=1, progress=False)


def test_body_digest_ignores_storage_types(body_arrays, tmp_path):
    from meshrec.body.model_file import load_arrays

    save_npz(tmp_path / "body.npz", body_arrays)
    assert writer.body_digest(load_arrays(tmp_path / "body.npz")) == writer.body_digest(body_arrays)
    changed = dict(body_arrays, v_template=body_arrays["v_template"] + 1e-9)
    assert writer.body_digest(changed) != writer.body_digest(body_arrays)


@pytest.mark.slow
def test_cli_with_workers_gives_the_same_bytes(run_dir, body_arrays, tmp_path):
    save_npz(tmp_path / "body.npz", body_arrays)
    out = tmp_path / "cli"
    res = subprocess.run([sys.executable, str(SYNTH), "--out", str(out), "--subjects", "S9,S1",
                          "--frames-per-subject", str(SETTINGS.frames_per_subject), "--size", str(SETTINGS.size),
                          "--seed", str(SETTINGS.seed), "--body", str(tmp_path / "body.npz"), "--workers", "2",
                          "--quiet"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "80 images (80 rendered now" in res.stdout
    assert _files(out) == _files(run_dir)


# --- command line: bad input --------------------------------------------------------------------

@pytest.mark.parametrize("args, words", [
    (["--subjects", "S1,S2"], "unknown subject 'S2'"),
    (["--size", "32"], "--size must be at least 64"),
    (["--frames-per-subject", "0"], "--frames-per-subject must be positive"),
    (["--workers", "0"], "--workers must be positive"),
    (["--body", "/nonexistent/smpl.npz"], "does not exist"),
    (["--size", "big"], "invalid int value"),
])
def test_cli_bad_arguments_exit_2_with_one_line(tmp_path, args, words):
    res = subprocess.run([sys.executable, str(SYNTH), "--out", str(tmp_path / "o"), *args],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("synth.py: error:") and words in lines[0], res.stderr
    assert not (tmp_path / "o").exists()


def test_cli_refuses_a_missing_regressor_or_one_of_the_wrong_shape(tmp_path, standin_file):
    np.save(tmp_path / "J.npy", np.zeros((17, 6889)))
    for name, message in (("none.npy", f"--h36m-regressor: no such file: {tmp_path / 'none.npy'}"),
                          ("J.npy", f"--h36m-regressor: {tmp_path / 'J.npy'} has shape (17, 6889); "
                                    f"expected (17, 6890): 17 Human3.6M joints × the body's vertices")):
        res = subprocess.run([sys.executable, str(SYNTH), "--out", str(tmp_path / "o"), "--body", str(standin_file),
                              "--h36m-regressor", str(tmp_path / name)], capture_output=True, text=True, timeout=60)
        assert res.returncode == 2 and res.stderr.strip() == f"synth.py: error: {message}"
        assert not (tmp_path / "o").exists()


def test_cli_help():
    res = subprocess.run([sys.executable, str(SYNTH), "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "--frames-per-subject" in res.stdout and "--body" in res.stdout
    assert "--spin-files" in res.stdout and "--h36m-regressor" in res.stdout
    assert "h36m_valid_protocol2.npz" in res.stdout and "part S pose shape transl cam_K" in res.stdout


def test_a_worker_that_cannot_start_is_one_error_not_a_traceback(tmp_path, body_arrays):
    # Workers build the body at start-up; without its skinning weights each one fails there.
    broken = {k: v for k, v in body_arrays.items() if k != "weights"}
    with pytest.raises(MeshrecError, match="rendering worker process stopped") as err:
        writer.synthesize(tmp_path / "out", ["S1"], SETTINGS, broken, workers=2, progress=False)
    assert "\n" not in str(err.value)
