"""Loss: vertex / joint / parameter-group terms through the SMPL layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from meshrec.body import params as layout
from meshrec.body.rotations import axis_angle_to_matrix
from meshrec.body.smpl import BodyModel
from meshrec.config import load_config
from meshrec.errors import MeshrecError
from meshrec.loss import compute_loss, distance_rows
from meshrec.model import Prediction, build_model

from smpl_reference import random_smpl_arrays

ALL_TERMS = ["loss.w_vert=1", "loss.w_joint=1", "loss.w_shape=1", "loss.w_body=1",
             "loss.w_hand=1", "loss.w_loc=1"]


@pytest.fixture(scope="module")
def body() -> BodyModel:
    return BodyModel(random_smpl_arrays(seed=1))


def _cfg(*overrides: str):
    return load_config(None, list(overrides))


def _truth(batch: int = 3, transl: bool = False, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    vec = np.concatenate([rng.normal(0, 0.4, (batch, 72)), rng.normal(0, 1, (batch, 10))]
                         + ([rng.normal(0, 1, (batch, 3))] if transl else []), axis=1)
    return torch.as_tensor(vec, dtype=torch.float32)


def _pred(*steps: torch.Tensor, sixd: bool = False) -> Prediction:
    rot = None
    if sixd:
        rot = [axis_angle_to_matrix(s[:, layout.POSE].reshape(s.shape[0], 24, 3)) for s in steps]
    return Prediction(list(steps), rot, [torch.tensor([[0.9, 0.0, 0.0]]).expand(s.shape[0], 3)
                                        for s in steps])


@pytest.mark.parametrize("sixd", [False, True])
@pytest.mark.parametrize("kind", ["l1", "l2"])
def test_zero_at_truth_positive_elsewhere(body, sixd, kind):
    cfg = _cfg(f"loss.type={kind}", *ALL_TERMS)
    true = _truth()
    total, terms = compute_loss(_pred(true.clone(), sixd=sixd), {"params": true}, body, cfg)
    assert set(terms) == {"vert", "joint", "shape", "body", "hand", "loc"}
    assert total.item() < 1e-6  # float32 rounding of two routes to the same mesh
    moved = true + 0.05 * torch.randn_like(true)
    total, terms = compute_loss(_pred(moved, sixd=sixd), {"params": true}, body, cfg)
    assert total.item() > 0 and all(v.item() > 0 for v in terms.values())
    assert all(not v.requires_grad for v in terms.values())


def test_distance_by_hand():
    pred = torch.tensor([[[1.0, -2.0], [0.5, 3.0]]])  # one iteration, two rows
    true = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    every = torch.tensor([True, True])
    # differences 1, -2, -0.5, 2
    assert distance_rows(pred, true, every, "l2").item() == pytest.approx((1 + 4 + 0.25 + 4) / 4)
    assert distance_rows(pred, true, every, "l1").item() == pytest.approx((1 + 2 + 0.5 + 2) / 4)
    first = torch.tensor([True, False])
    assert distance_rows(pred, true, first, "l2").item() == pytest.approx((1 + 4) / 2)
    assert distance_rows(pred, true, ~every, "l1").item() == 0.0
    with pytest.raises(MeshrecError, match="loss.type must be 'l1' or 'l2'"):
        distance_rows(pred, true, every, "huber")


@pytest.mark.parametrize("kind", ["l1", "l2"])
def test_shape_term_by_hand(body, kind):
    true = _truth(batch=2)
    delta = torch.tensor([[0.1, -0.3, 0, 0, 0, 0, 0, 0, 0, 0.2],
                          [0.0, 0.0, 0.4, 0, 0, 0, 0, 0, 0, 0.0]])
    moved = true.clone()
    moved[:, layout.BETAS] += delta
    cfg = _cfg(f"loss.type={kind}", "loss.w_vert=0", "loss.w_shape=2.5")
    total, terms = compute_loss(_pred(moved), {"params": true}, body, cfg)
    d = delta.numpy().astype(np.float64)
    want = (d ** 2).mean() if kind == "l2" else np.abs(d).mean()
    assert terms["shape"].item() == pytest.approx(want, rel=1e-5)
    assert total.item() == pytest.approx(2.5 * want, rel=1e-5)
    assert set(terms) == {"shape"}  # zero-weight terms are not computed


@pytest.mark.parametrize("sixd", [False, True])
@pytest.mark.parametrize("where, moves", [
    (layout.BETAS, "shape"),
    (slice(3 * 20, 3 * 21), "hand"),      # left wrist
    (slice(3 * 4, 3 * 5), "body"),        # left knee
    (layout.GLOBAL_ORIENT, "loc"),
])
def test_group_weights_select_their_entries(body, sixd, where, moves):
    true = _truth(seed=4)
    moved = true.clone()
    moved[:, where] += 0.2
    cfg = _cfg(*ALL_TERMS)
    _, terms = compute_loss(_pred(moved, sixd=sixd), {"params": true}, body, cfg)
    for name in ("shape", "body", "hand", "loc"):
        assert (terms[name].item() > 1e-6) == (name == moves), name
    assert terms["vert"].item() > 0


def test_translation_root_relative_or_camera_frame(body):
    true = _truth(transl=True)
    moved = true.clone()
    moved[:, layout.TRANSL] += 0.3
    cfg = _cfg(*ALL_TERMS)
    # a model without translation ignores it: root-relative vertices are unchanged
    _, terms = compute_loss(_pred(moved[:, :82]), {"params": true}, body, cfg)
    assert terms["vert"].item() < 1e-10 and terms["loc"].item() == 0
    # predicting translation compares in the camera frame: the shift shows in vertices and loc
    _, terms = compute_loss(_pred(moved), {"params": true}, body, cfg)
    assert terms["vert"].item() == pytest.approx(0.09, rel=1e-4)  # 0.3² on every coordinate
    assert terms["loc"].item() == pytest.approx(0.09 * 3 / 6, rel=1e-4)  # 3 of 6 entries moved
    assert terms["shape"].item() == 0


def test_supervise_all_or_last(body):
    true = _truth(seed=2)
    first = true + 0.1 * torch.randn_like(true)
    second = true + 0.05 * torch.randn_like(true)
    pred = _pred(first, second, true.clone())
    last, _ = compute_loss(pred, {"params": true}, body, _cfg("loss.supervise=last"))
    assert last.item() < 1e-10
    every, _ = compute_loss(pred, {"params": true}, body, _cfg("loss.supervise=all"))
    singles = [compute_loss(_pred(p), {"params": true}, body, _cfg())[0].item()
               for p in (first, second, true)]
    assert every.item() == pytest.approx(np.mean(singles), rel=1e-5)
    assert every.item() > 0


def test_gradients_reach_every_supervised_iteration(body):
    true = _truth()
    steps = [(true + 0.1).requires_grad_() for _ in range(3)]
    compute_loss(_pred(*steps), {"params": true}, body, _cfg("loss.supervise=last"))[0].backward()
    assert steps[0].grad is None and steps[2].grad is not None
    steps = [(true + 0.1).requires_grad_() for _ in range(3)]
    compute_loss(_pred(*steps), {"params": true}, body, _cfg("loss.supervise=all"))[0].backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in steps)


def test_smpl_output_float32_and_bf16_cpu_step(body):
    torch.manual_seed(0)
    cfg = _cfg("model.encoder=resnet18", "model.weights=none", "model.freeze_encoder=false",
               "model.hidden=64", "loss.supervise=all", *ALL_TERMS)
    model = build_model(cfg, _truth(1)[0].numpy().astype(np.float64) * 0.1)
    seen = []
    hook = body.register_forward_hook(lambda m, i, out: seen.append(out.vertices.dtype))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    batch = {"params": _truth(batch=2, seed=5), "image": torch.randn(2, 3, 64, 64)}
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            pred = model(batch["image"])
            total, terms = compute_loss(pred, batch, body, cfg)
        total.backward()
        opt.step()
    finally:
        hook.remove()
    assert seen and all(dt == torch.float32 for dt in seen)
    assert total.dtype == torch.float32 and torch.isfinite(total)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


# ---------------------------------------------------------------- mixed and joints-only batches

def _regressor(body: BodyModel, seed: int = 3) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    reg = np.zeros((17, body.num_vertices))
    for j in range(17):
        cols = rng.choice(body.num_vertices, 6, replace=False)
        reg[j, cols] = rng.dirichlet(np.ones(6))
    return torch.as_tensor(reg, dtype=torch.float32)


def _root_relative(body: BodyModel, params: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    out = body(params)
    v, j = out.vertices.double().numpy(), out.joints.double().numpy()
    return v - j[:, :1], j - j[:, :1]


@pytest.mark.parametrize("kind", ["l1", "l2"])
def test_smpl_terms_average_over_the_labelled_samples_only(body, kind):
    true = _truth(batch=4)
    pred = true + 0.1 * torch.randn(4, 82, generator=torch.Generator().manual_seed(0))
    has = torch.tensor([True, False, True, False])
    garbage = true.clone()
    garbage[~has] = 1e3  # labels of unlabelled samples must not enter any term
    cfg = _cfg(f"loss.type={kind}", "loss.w_vert=1", "loss.w_shape=1", "loss.w_joint=1")
    total, terms = compute_loss(_pred(pred), {"params": garbage, "has_smpl": has}, body, cfg)
    assert torch.isfinite(total)
    pv, pj = _root_relative(body, pred[has])
    tv, tj = _root_relative(body, true[has])
    d = lambda a, b: ((a - b) ** 2).mean() if kind == "l2" else np.abs(a - b).mean()  # noqa: E731
    assert terms["vert"].item() == pytest.approx(d(pv, tv), rel=1e-4)
    assert terms["joint"].item() == pytest.approx(d(pj, tj), rel=1e-4)
    betas = lambda x: x[has][:, layout.BETAS].double().numpy()  # noqa: E731
    assert terms["shape"].item() == pytest.approx(d(betas(pred), betas(true)), rel=1e-5)


def test_a_batch_without_smpl_labels_contributes_zero_not_nan(body):
    true = _truth(batch=3)
    pred = (true + 0.1).requires_grad_(True)
    cfg = _cfg("loss.w_vert=1", "loss.w_body=1", "loss.w_joint3d=1")
    j3d = torch.zeros(3, 17, 4)
    j3d[..., :3] = torch.randn(3, 17, 3) * 0.3
    j3d[..., 3] = 1.0
    batch = {"params": torch.zeros(3, 82), "has_smpl": torch.zeros(3, dtype=torch.bool),
             "j3d": j3d}
    total, terms = compute_loss(_pred(pred), batch, body, cfg, _regressor(body))
    assert terms["vert"].item() == 0.0 and terms["body"].item() == 0.0
    assert terms["joint3d"].item() > 0 and torch.isfinite(total)
    total.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["l1", "l2"])
def test_joint3d_term_by_hand_pelvis_centred_and_confidence_weighted(body, kind):
    reg = _regressor(body)
    pred = _truth(batch=2, seed=4)
    v, _ = _root_relative(body, pred)
    j17 = np.einsum("jv,bvc->bjc", reg.double().numpy(), v)
    j17 -= j17[:, :1]
    rng = np.random.default_rng(5)
    target = j17 + rng.normal(0, 0.05, j17.shape) + 2.0  # an offset the pelvis centring removes
    conf = rng.uniform(0, 1, (2, 17))
    conf[0, 5] = 0.0
    target[0, 5] += 100.0                                # ignored: confidence 0
    j3d = torch.as_tensor(np.concatenate([target, conf[..., None]], -1), dtype=torch.float32)
    cfg = _cfg(f"loss.type={kind}", "loss.w_vert=0", "loss.w_joint3d=2")
    total, terms = compute_loss(_pred(pred), {"params": torch.zeros(2, 82), "j3d": j3d,
                                              "has_smpl": torch.zeros(2, dtype=torch.bool)},
                                body, cfg, reg)
    centred = target - target[:, :1]
    diff = j17 - centred
    per = (diff ** 2).sum(-1) if kind == "l2" else np.abs(diff).sum(-1)
    want = (per * conf).sum() / (3 * conf.sum())
    assert terms["joint3d"].item() == pytest.approx(want, rel=1e-4)
    assert total.item() == pytest.approx(2 * want, rel=1e-4)


def test_kp2d_term_is_zero_on_its_own_projection_and_by_hand_elsewhere(body):
    from meshrec.loss import normalized_keypoints, project

    reg = _regressor(body)
    pred = _truth(batch=2, seed=6)
    cam = torch.tensor([[1.1, 0.05, -0.1], [0.8, -0.2, 0.3]])
    size = 224
    cfg = _cfg("loss.w_vert=0", "loss.w_kp2d=1", f"data.image_size={size}")
    v, _ = _root_relative(body, pred)
    j17 = np.einsum("jv,bvc->bjc", reg.double().numpy(), v)
    # by hand: s·(X + t) normalised, back to OpenCV pixels u = (n + 1)·S/2 − 0.5
    n = cam[:, None, :1].double().numpy() * (j17[..., :2] + cam[:, None, 1:].double().numpy())
    px = (n + 1) * size / 2 - 0.5
    kp = torch.as_tensor(np.concatenate([px, np.ones((2, 17, 1))], -1), dtype=torch.float32)
    prediction = Prediction([pred], None, [cam])
    batch = {"params": torch.zeros(2, 82), "has_smpl": torch.zeros(2, dtype=torch.bool), "kp2d": kp}
    _, terms = compute_loss(prediction, batch, body, cfg, reg)
    assert terms["kp2d"].item() < 1e-10
    assert torch.allclose(normalized_keypoints(kp[..., :2], size), torch.as_tensor(n).float(), atol=1e-5)
    shifted = kp.clone()
    shifted[..., 0] += 11.2  # 11.2 px = 0.1 in normalised units at 224 px
    _, terms = compute_loss(prediction, {**batch, "kp2d": shifted}, body, cfg, reg)
    assert terms["kp2d"].item() == pytest.approx(0.1 ** 2 / 2, rel=1e-3)
    assert project(torch.zeros(1, 1, 3), torch.tensor([[2.0, 0.5, -0.5]])).tolist() == [[[1.0, -1.0]]]


def test_joint_terms_without_a_regressor_are_refused(body):
    cfg = _cfg("loss.w_joint3d=1")
    with pytest.raises(MeshrecError, match="h36m_regressor"):
        compute_loss(_pred(_truth()), {"params": _truth(), "j3d": torch.zeros(3, 17, 4)}, body, cfg)
