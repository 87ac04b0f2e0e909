"""Model: encoders, heads, pose representations, freezing, weights loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from meshrec.body import params as layout
from meshrec.body.rotations import axis_angle_to_matrix
from meshrec.config import load_config
from meshrec.errors import MeshrecError
from meshrec.model import Prediction, build_model
from meshrec.model.encoder import ARCHS, Encoder, cached_weights_path


def _cfg(**model):
    overrides = [f"model.{k}={v}" for k, v in {"encoder": "resnet18", "weights": "none",
                                                "hidden": 64, **model}.items()]
    return load_config(None, overrides)


def _mean(with_transl: bool = False, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, 0.3, layout.size(with_transl))


@pytest.mark.parametrize("head", ["iterative", "sequential"])
@pytest.mark.parametrize("pose_repr", ["axis_angle", "6d"])
@pytest.mark.parametrize("transl", [False, True])
def test_shapes_for_every_head_and_pose_repr(head, pose_repr, transl):
    torch.manual_seed(0)
    cfg = _cfg(head=head, pose_repr=pose_repr, predict_translation=transl, iterations=2)
    model = build_model(cfg, _mean(True))
    pred = model(torch.randn(3, 3, 64, 64))
    assert isinstance(pred, Prediction)
    steps = 2 if head == "iterative" else 1
    size = 85 if transl else 82
    assert len(pred.params) == steps
    assert all(p.shape == (3, size) and p.dtype == torch.float32 for p in pred.params)
    if pose_repr == "6d":
        assert len(pred.rotmat) == steps
        for p, r in zip(pred.params, pred.rotmat):
            assert r.shape == (3, 24, 3, 3)
            # the axis-angle layout and the matrices describe the same rotations
            back = axis_angle_to_matrix(p[:, layout.POSE].reshape(3, 24, 3))
            assert torch.allclose(back, r, atol=1e-5)
    else:
        assert pred.rotmat is None


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_encoder_feature_width(name):
    enc = Encoder(name, "none", frozen=True)
    assert enc(torch.randn(1, 3, 32, 32)).shape == (1, 512 if name in ("resnet18", "resnet34") else 2048)
    assert enc.dim == ARCHS[name].dim


def test_frozen_encoder_no_grad_and_stays_in_eval():
    torch.manual_seed(0)
    model = build_model(_cfg(freeze_encoder=True), _mean())
    model.train()
    assert not model.encoder.net.training
    assert all(not m.training for m in model.encoder.net.modules())
    assert model.head.training
    bn = model.encoder.net.bn1
    stats = bn.running_mean.clone()
    pred = model(torch.randn(2, 3, 64, 64) * 3 + 1)
    pred.params[-1].sum().backward()
    assert torch.equal(bn.running_mean, stats)  # BatchNorm statistics untouched
    assert all(p.grad is None and not p.requires_grad for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.head.parameters())


def test_finetuned_encoder_gets_gradients_and_trains_batchnorm():
    torch.manual_seed(0)
    model = build_model(_cfg(freeze_encoder=False), _mean())
    model.train()
    assert model.encoder.net.training
    stats = model.encoder.net.bn1.running_mean.clone()
    model(torch.randn(2, 3, 64, 64)).params[-1].sum().backward()
    assert not torch.equal(model.encoder.net.bn1.running_mean, stats)
    assert all(p.grad is not None for p in model.encoder.parameters())


@pytest.mark.parametrize("pose_repr", ["axis_angle", "6d"])
@pytest.mark.parametrize("head", ["iterative", "sequential"])
def test_head_starts_at_the_mean(pose_repr, head):
    torch.manual_seed(0)
    mean = _mean(seed=3)
    mean[layout.POSE] = np.clip(mean[layout.POSE], -1, 1)  # angles < π: axis-angle is unique
    model = build_model(_cfg(pose_repr=pose_repr, head=head, iterations=3), mean).eval()
    feats = torch.randn(4, 512)
    pred = model.forward_features(feats)
    target = torch.as_tensor(mean, dtype=torch.float32).expand(4, -1)
    for p in pred.params:
        assert (p - target).abs().max() < 0.02
    # the small last layer is what keeps it there: a default-initialised one moves far away
    last = model.head.mlp[-1]
    torch.nn.init.normal_(last.weight, std=0.1)
    assert (model.forward_features(feats).params[-1] - target).abs().max() > 0.1


def test_iterations_refine_and_feed_back():
    torch.manual_seed(0)
    model = build_model(_cfg(iterations=3, dropout=0.0), _mean()).eval()
    torch.nn.init.normal_(model.head.mlp[-1].weight, std=0.01)
    pred = model.forward_features(torch.randn(2, 512))
    steps = pred.params
    assert not torch.allclose(steps[0], steps[1]) and not torch.allclose(steps[1], steps[2])
    # Ψ_{t+1} − Ψ_t depends on Ψ_t: the updates differ
    assert not torch.allclose(steps[1] - steps[0], steps[2] - steps[1])


def test_mean_params_and_translation_checks():
    with pytest.raises(MeshrecError, match="translation"):
        build_model(_cfg(predict_translation=True), _mean(False))
    with pytest.raises(MeshrecError, match="82"):
        build_model(_cfg(), np.zeros(80))
    bad = _mean()
    bad[5] = np.nan
    with pytest.raises(MeshrecError, match="NaN"):
        build_model(_cfg(), bad)
    # data with translation but a model without: the head predicts 82
    model = build_model(_cfg(), _mean(True))
    assert model.forward_features(torch.randn(1, 512)).params[-1].shape == (1, 82)


def test_weights_from_file_and_errors(tmp_path):
    torch.manual_seed(1)
    src = Encoder("resnet18", "none")
    path = tmp_path / "enc.pt"
    state = {f"module.{k}": v for k, v in src.net.state_dict().items()}
    state["fc.weight"] = torch.zeros(3, 512)  # a classifier in the file is ignored
    torch.save(state, path)
    model = build_model(_cfg(weights=str(path)), _mean())
    for k, v in src.net.state_dict().items():
        assert torch.equal(model.encoder.net.state_dict()[k], v)
    with pytest.raises(MeshrecError, match="no such file"):
        Encoder("resnet18", str(tmp_path / "missing.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(MeshrecError, match="cannot read"):
        Encoder("resnet18", str(tmp_path / "junk.pt"))
    with pytest.raises(MeshrecError, match="does not fit"):
        Encoder("resnet50", str(path))


def test_imagenet_weights_missing_from_cache_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert str(cached_weights_path("resnet50")).startswith(str(tmp_path))
    with pytest.raises(MeshrecError, match="meshrec prefetch") as info:
        Encoder("resnet50", "imagenet")
    assert "\n" not in str(info.value)


def test_imagenet_weights_load_from_cache(tmp_path, monkeypatch):
    """A file at the cache path is what 'imagenet' loads (no network involved)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(2)
    src = Encoder("resnet18", "none")
    path = cached_weights_path("resnet18")
    path.parent.mkdir(parents=True)
    torch.save({**src.net.state_dict(), "fc.weight": torch.zeros(1000, 512),
                "fc.bias": torch.zeros(1000)}, path)
    enc = Encoder("resnet18", "imagenet")
    assert torch.equal(enc.net.conv1.weight, src.net.conv1.weight)
