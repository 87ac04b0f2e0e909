"""meshrec.train.visual: the weak-perspective math against hand computations, the pinhole
stand-in for weak perspective against brute-force projection, and pictures of stand-in bodies
and of generated samples against their exact perspective renders."""

from __future__ import annotations

import json
import tarfile
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from meshrec import render
from meshrec.body import h36m
from meshrec.errors import MeshrecError
from meshrec.loss import normalized_keypoints, project
from meshrec.model import Prediction
from meshrec.train import visual

# Its module fixtures are built once: every test here runs on one xdist worker.
pytestmark = pytest.mark.xdist_group("visual")

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def within(a: np.ndarray, b: np.ndarray, px: int) -> float:
    """Fraction of mask a's pixels at most `px` steps (4-neighbour) from mask b."""
    from scipy.ndimage import binary_dilation

    return float((a & binary_dilation(b, iterations=px)).sum() / max(1, a.sum()))


# ------------------------------------------------------------------ pure math

def test_fit_matches_a_hand_computation():
    # s·(0 + tx) = 0.1 and s·(2 + tx) = 0.5 give s = 0.2, tx = 0.5; s·(0 + ty) = 0.2: ty = 1.
    joints = np.array([[0.0, 0.0, 3.0], [2.0, 0.0, -1.0]])
    uv = np.array([[0.1, 0.2], [0.5, 0.2]])
    np.testing.assert_allclose(visual.fit_weak_perspective(joints, uv, np.ones(2)),
                               [0.2, 0.5, 1.0], atol=1e-15)


def test_fit_recovers_a_known_camera_on_noiseless_data_and_ignores_unconfident_joints():
    rng = np.random.default_rng(0)
    joints = rng.normal(0, 0.4, (17, 3))
    camera = np.array([0.83, 0.12, -0.31])
    uv = camera[0] * (joints[:, :2] + camera[1:])
    conf = rng.uniform(0.2, 1.0, 17)
    conf[[3, 9]] = 0.0
    uv[[3, 9]] = [[40.0, -7.0], [np.nan, 3.0]]  # junk where the confidence is 0
    np.testing.assert_allclose(visual.fit_weak_perspective(joints, uv, conf), camera, atol=1e-12)
    # Through the crop's pixels and back, as the keypoints arrive in a batch.
    px = visual.to_pixels(uv, 96)
    np.testing.assert_allclose(normalized_keypoints(px, 96), uv, atol=1e-12)


def test_fit_refuses_what_no_camera_shows():
    joints = np.array([[0.0, 0.0, 0.0], [1.0, 0.5, 0.0], [-0.3, 0.2, 0.0]])
    uv = 0.5 * (joints[:, :2] + 0.1)
    assert visual.fit_weak_perspective(joints, uv, [1.0, 0.0, 0.0]) is None   # one joint
    assert visual.fit_weak_perspective(joints, uv, np.zeros(3)) is None       # none
    assert visual.fit_weak_perspective(joints, -uv, np.ones(3)) is None       # mirrored: s < 0
    assert visual.fit_weak_perspective(np.zeros((3, 3)), uv, np.ones(3)) is None  # one point


def test_to_pixels_maps_the_crop_edges_and_centre():
    # Normalised -1 and 1 are the outer edges: OpenCV pixel centres at i, edges at i ± 0.5.
    np.testing.assert_allclose(visual.to_pixels(np.array([-1.0, 0.0, 1.0]), 256),
                               [-0.5, 127.5, 255.5])


def loss_project(points, camera) -> np.ndarray:
    """The loss's weak perspective (meshrec.loss.project), which overlays must agree with."""
    return project(torch.as_tensor(np.asarray(points, dtype=np.float64)),
                   torch.as_tensor(np.asarray(camera, dtype=np.float64))).numpy()


def test_weak_perspective_view_projects_exactly_through_the_pinhole():
    rng = np.random.default_rng(1)
    points = rng.uniform(-1.0, 1.0, (500, 3))
    camera = (1.3, -0.2, 0.15)
    moved, pinhole = visual.weak_perspective_view(points, camera, 256)
    uv, _ = render.project(moved, pinhole)
    # render's pixel centres sit at j + 0.5, the keypoints' at j.
    expected = visual.to_pixels(loss_project(points, camera), 256) + 0.5
    np.testing.assert_allclose(uv, expected, atol=1e-9)
    # A plain far camera without the correction is off by pixels for the same points.
    s, tx, ty = camera
    depth = visual.DEPTH_M
    far = points + [tx, ty, depth]
    naive, _ = render.project(far, render.Camera(pinhole.fx, pinhole.fy, 128, 128, 256, 256))
    assert np.abs(naive - expected).max() > 1.0


def test_weak_perspective_rasterises_exactly():
    # One large triangle slanted through 1.6 m of depth: its pixels are those whose centres lie
    # inside the 2D triangle of its weak-perspective vertices.
    tri = np.array([[-0.7, -0.6, -0.8], [0.8, -0.2, 0.0], [-0.1, 0.9, 0.8]])
    camera, size = (0.9, 0.05, -0.1), 128
    mask = visual.render_weak(tri, np.array([[0, 1, 2]]), camera, size, (200, 0, 0)).mask
    p = visual.to_pixels(loss_project(tri, camera), size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)   # OpenCV pixel centres

    def edge(a, b):
        d = p[b] - p[a]
        return (d[0] * (yy - p[a][1]) - d[1] * (xx - p[a][0])) / np.hypot(*d)  # signed px

    e = np.stack([edge(0, 1), edge(1, 2), edge(2, 0)])
    inside = np.all(e > 0, axis=0) | np.all(e < 0, axis=0)
    clear = np.abs(e).min(axis=0) > 1e-3
    assert inside.sum() > 2000
    np.testing.assert_array_equal(mask[clear], inside[clear])


def test_weak_perspective_view_refuses_a_non_positive_scale():
    with pytest.raises(MeshrecError, match="scale must be positive"):
        visual.weak_perspective_view(np.zeros((3, 3)), (0.0, 0.0, 0.0), 64)


def test_bones_join_the_17_joints_into_one_mirror_symmetric_tree():
    bones = h36m.BONES
    assert len(bones) == h36m.NUM_JOINTS - 1
    reached, frontier = {h36m.PELVIS}, [h36m.PELVIS]
    while frontier:
        j = frontier.pop()
        for a, b in bones:
            for x, y in ((a, b), (b, a)):
                if x == j and y not in reached:
                    reached.add(y)
                    frontier.append(y)
    assert reached == set(range(h36m.NUM_JOINTS))
    flip = h36m.FLIP_PERM
    assert {frozenset((flip[a], flip[b])) for a, b in bones} == {frozenset(b) for b in bones}


# ------------------------------------------------------------------ pictures of a stand-in body

@pytest.fixture(scope="module")
def body(standin_model):
    from meshrec.body.smpl import BodyModel
    from meshrec.body.standin.h36m import h36m_regressor

    return SimpleNamespace(model=BodyModel(standin_model),
                           regressor=torch.as_tensor(h36m_regressor(standin_model),
                                                     dtype=torch.float32))


def posed(body, seed: int) -> SimpleNamespace:
    """A random pose, facing the camera (x right, y down): vertices, SMPL root, H36M joints."""
    g = torch.Generator().manual_seed(seed)
    params = torch.zeros(1, 82)
    params[0, 0] = np.pi                        # upright in a y-down camera frame
    params[0, 3:72] = 0.25 * torch.randn(69, generator=g)
    params[0, 72:] = torch.randn(10, generator=g)
    out = body.model(params)
    v = out.vertices[0].double().numpy()
    return SimpleNamespace(v=v, root=out.joints[0, 0].double().numpy(),
                           j17=(body.regressor.double() @ torch.from_numpy(v)).numpy())


def image_of(size: int) -> torch.Tensor:
    return torch.randn(3, size, size, generator=torch.Generator().manual_seed(size))


def test_panels_are_at_least_256_px_with_a_legend(body):
    p = posed(body, 0)
    view = visual.choose_view(p.v, p.root, np.array([0.9, 0.0, 0.1]), 32, true_v=p.v,
                              true_root=p.root)
    pic = visual.picture(image_of(32), body.model.faces, view, error=visual.error_text(12.0))
    assert [t.shape for t in pic.tiles] == [(256, 256, 3)] * 3
    assert pic.image.shape[1] == 3 * 256 and pic.image.shape[0] > 256 + 2 * visual.LINE_PX
    assert pic.titles == ["input", "truth: SMPL mesh", "prediction"]
    assert pic.legend[0] == "truth = green   prediction = orange"
    assert pic.legend[1].startswith("camera (weak persp.): predicted, s=0.90")
    assert pic.legend[2] == "error: PVE 12.0 mm"
    alone = visual.picture(image_of(32), body.model.faces, view, truth=False)
    assert [t.shape for t in alone.tiles] == [(256, 256, 3)] * 2
    assert alone.image.shape[1] == 512 and alone.true_mask is None
    with pytest.raises(MeshrecError, match="at least 64 px"):
        visual.picture(image_of(32), body.model.faces, view, size=32)


def test_a_perfect_prediction_covers_exactly_the_true_mesh(body):
    size = 96
    p = posed(body, 1)
    camera = np.array([1.05, 0.04, -0.08])
    kp2d = np.concatenate([visual.to_pixels(loss_project(p.j17 - p.root, camera), size),
                           np.ones((17, 1))], axis=1)
    wrong_camera = np.array([0.5, 0.3, 0.3])
    view = visual.choose_view(p.v, p.root, wrong_camera, size, true_v=p.v, true_root=p.root,
                              true_j17=p.j17, pred_j17=p.j17, kp2d=kp2d)
    assert view.source == visual.FIT
    np.testing.assert_allclose(view.camera, camera, atol=1e-9)
    pic = visual.picture(image_of(size), body.model.faces, view, kp2d=kp2d)
    assert pic.true_mask.sum() > 3000
    np.testing.assert_array_equal(pic.true_mask, pic.pred_mask)
    # The projected joints sit on the mesh (the fit put the mesh where the keypoints are).
    at = np.round(visual.to_pixels(normalized_keypoints(kp2d[:, :2], size), 256)).astype(int)
    assert pic.true_mask[at[:, 1], at[:, 0]].mean() > 0.8
    # Another pose under the same camera covers other pixels.
    q = posed(body, 2)
    other = visual.choose_view(q.v, q.root, wrong_camera, size, true_v=p.v, true_root=p.root,
                               true_j17=p.j17, kp2d=kp2d)
    moved = visual.picture(image_of(size), body.model.faces, other, kp2d=kp2d)
    assert iou(moved.true_mask, moved.pred_mask) < 0.9


def test_without_keypoints_both_meshes_use_the_predicted_camera(body):
    p = posed(body, 3)
    predicted = np.array([0.8, 0.1, 0.2])
    view = visual.choose_view(p.v, p.root, predicted, 64, true_v=p.v, true_root=p.root,
                              true_j17=p.j17, kp2d=np.zeros((17, 3)))
    assert view.source == visual.PREDICTED
    np.testing.assert_array_equal(view.camera, predicted)
    np.testing.assert_allclose(view.true, p.v - p.root)
    bad = visual.choose_view(p.v, p.root, np.array([-0.8, 0.1, 0.2]), 64, true_v=p.v,
                             true_root=p.root)
    assert bad.camera is None
    pic = visual.picture(image_of(64), body.model.faces, bad)
    assert pic.pred_mask is None and pic.true_mask is None
    assert pic.titles[1:] == ["truth: not drawable", "prediction: not drawable"]
    assert "none usable" in pic.legend[1]


# ------------------------------------------------------------------ generated samples

@pytest.fixture(scope="module")
def generated(tmp_path_factory, meshrec_cache) -> SimpleNamespace:
    """A validation batch of 16 generated S9 samples (64 px crops, read at 64 px, no
    augmentation), the stand-in body and regressor, and each sample's shard metadata."""
    from meshrec.body.load import load_body_model
    from meshrec.config import load_config
    from meshrec.data import build_loader
    from meshrec.data.demo import ensure_shards
    from meshrec.train.evaluate import body_joints

    cfg = load_config(DEMO, [
        f"body.cache_dir={meshrec_cache}", "data.synth.frames_per_subject=4", "data.synth.size=64",
        "data.image_size=64", "data.backend=torch", "data.num_threads=1",
        "data.train_subjects=[S9]", "data.val_subjects=[S9]", "eval.subjects=[S9]",
        "eval.batch_size=16", "track.enabled=false", f"train.output_dir={tmp_path_factory.mktemp('visual')}"])
    shards = ensure_shards(cfg)
    cfg = replace(cfg, data=replace(cfg.data, shards=str(shards)))
    batch = next(iter(build_loader(cfg, "val", 0, 1, torch.device("cpu"))))
    model = load_body_model(cfg.body)
    meta = {}
    for path in sorted(shards.glob("*/*.tar")):
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".json"):
                    item = json.loads(tar.extractfile(m).read())
                    meta[item["key"]] = item
    return SimpleNamespace(batch=batch, body=model, meta=meta,
                           regressor=body_joints(cfg.body, model.num_vertices).regressor)


def truth_as_prediction(batch: dict) -> Prediction:
    """The labels as a model's output, with a camera far from the right one."""
    n = len(batch["key"])
    return Prediction([batch["params"][:, :82].clone()], None,
                      [torch.tensor([[0.5, 0.3, 0.3]]).expand(n, 3)])


def panel_intrinsics(meta: dict, aug: np.ndarray, net: int, size: int) -> render.Camera:
    """The exact pinhole camera of a network crop shown at size×size px: the frame's K, through
    the packer's crop (meshrec.shards.crop) and the loader's warp (meshrec.data.augment)."""
    from meshrec.data.augment import affine_matrix
    from meshrec.shards.crop import crop_intrinsics

    K = crop_intrinsics(np.asarray(meta["cam_K"]), meta["box"], meta["size"])
    K[:2, 2] += 0.5                                      # to pixel edges, as render and the warp
    A = np.vstack([affine_matrix(aug, meta["size"], meta["size"], net), [0.0, 0.0, 1.0]])
    K = np.diag([size / net, size / net, 1.0]) @ np.linalg.inv(A) @ K
    assert abs(K[0, 1]) < 1e-9 and abs(K[1, 0]) < 1e-9   # no rotation at evaluation
    return render.Camera(K[0, 0], K[1, 1], K[0, 2], K[1, 2], size, size)


@pytest.mark.slow
def test_the_true_mesh_lies_on_the_person_in_generated_samples(generated):
    batch, size = generated.batch, visual.PANEL
    assert batch["params"].shape[1] == 85 and bool(batch["has_smpl"].all())
    pics = visual.batch_pictures(batch, truth_as_prediction(batch), generated.body,
                                 generated.regressor, 16)
    # The person as the generator rendered it: the true mesh in the camera frame (with its
    # translation) through the crop's exact perspective intrinsics, at the panel's resolution.
    camera_frame = generated.body(batch["params"]).vertices.double().numpy()
    scores, people = [], []
    for i, (key, pic) in enumerate(pics):
        cam = panel_intrinsics(generated.meta[key], batch["aug"][i].numpy(),
                               batch["image"].shape[-1], size)
        person = render.render_mesh(camera_frame[i], generated.body.faces, cam).mask
        people.append(person)
        assert pic.legend[1].startswith("camera (weak persp.): fit to the true 2D joints")
        assert pic.legend[2] == "error: PVE 0.0 mm"
        np.testing.assert_array_equal(pic.true_mask, pic.pred_mask)
        scores.append((iou(pic.true_mask, person), within(pic.true_mask, person, 4),
                       within(person, pic.true_mask, 4)))
    # Weak perspective is not the frame's perspective (an off-axis person is seen a little from
    # the side), so thin limbs miss by a pixel or two at 256 px: IoU 0.76-0.94 on these samples.
    worst = np.min(scores, axis=0)
    assert worst[0] > 0.7 and np.mean(scores, axis=0)[0] > 0.8, scores
    assert worst[1] > 0.95 and worst[2] > 0.95, scores  # within one network-crop pixel
    # The measure tells a misplaced mesh: without keypoints the (wrong) predicted camera is
    # used, and the true mesh misses the person.
    blind = {**batch, "kp2d": batch["kp2d"] * torch.tensor([1.0, 1.0, 0.0])}
    (_, pic), = visual.batch_pictures(blind, truth_as_prediction(batch), generated.body,
                                      generated.regressor, 1)
    assert pic.legend[1].startswith("camera (weak persp.): predicted")
    assert iou(pic.true_mask, people[0]) < 0.3


def test_a_joints_only_sample_draws_its_joints_not_a_mesh(generated):
    batch = {k: (v.clone() if torch.is_tensor(v) else list(v)) for k, v in generated.batch.items()}
    batch["has_smpl"][0] = False
    pred = truth_as_prediction(batch)   # the prediction keeps the true parameters
    batch["params"][0] = 0.0             # as the loader gives an unlabelled sample
    (key, pic), = visual.batch_pictures(batch, pred, generated.body, generated.regressor, 1)
    assert pic.titles[1] == "truth: 2D joints" and pic.true_mask is None
    assert pic.legend[2].startswith("error (14 joints): MPJPE ")
    mpjpe = float(pic.legend[2].split("MPJPE ")[1].split(" mm")[0])
    assert mpjpe < 10.0  # the generator's marker noise is 2 mm per axis
    # Every pixel the truth tile changes lies on a bone or a joint dot of the keypoints.
    changed = np.abs(pic.tiles[1].astype(int) - pic.tiles[0].astype(int)).max(-1) > 0
    kp = batch["kp2d"][0].numpy()
    xy = visual.to_pixels(normalized_keypoints(kp[:, :2], batch["image"].shape[-1]), 256)
    yy, xx = np.nonzero(changed)
    q = np.stack([xx, yy], 1).astype(np.float64)
    near = np.full(len(q), np.inf)
    for a, b in h36m.BONES:
        d = xy[b] - xy[a]
        t = np.clip(((q - xy[a]) @ d) / (d @ d), 0.0, 1.0)
        near = np.minimum(near, np.linalg.norm(q - xy[a] - t[:, None] * d, axis=1))
    assert changed.sum() > 500
    assert near.max() <= 6.0
    # The prediction is still a mesh, framed by the camera fit to the labelled joints.
    assert pic.pred_mask is not None and pic.pred_mask.sum() > 2000
    at = np.round(xy).astype(int)
    assert pic.pred_mask[at[:, 1], at[:, 0]].mean() > 0.8
