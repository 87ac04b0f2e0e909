"""Body model files (safe .pkl / .npz loading, checks, conversion, CLI) and the SMPL layer."""

from __future__ import annotations

import contextlib
import os
import pickle
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse
import torch

from meshrec.body import model_file
from meshrec.body.rotations import axis_angle_to_matrix
from meshrec.body.smpl import BodyModel
from meshrec.errors import MeshrecError
from meshrec.fileio import save_npz

from smpl_reference import random_smpl_arrays, smpl_forward_np

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", params=["random", "standin"])
def model_arrays(request) -> dict[str, np.ndarray]:
    """Arrays of an SMPL-format body model, read back from its file; one param per kind."""
    if request.param == "random":
        return random_smpl_arrays(seed=1)
    if request.param == "standin":
        return model_file.load_arrays(request.getfixturevalue("standin_file"))
    raise AssertionError(request.param)


@pytest.fixture(scope="module")
def small_arrays() -> dict[str, np.ndarray]:
    """A small valid model (50 vertices) for file-format tests where size does not matter."""
    return random_smpl_arrays(seed=2, rings=6, segments=8)


@pytest.fixture(scope="module")
def body(model_arrays) -> BodyModel:
    return BodyModel(model_arrays)


def _random_params(rng: np.random.Generator, batch: int, with_transl: bool) -> np.ndarray:
    parts = [rng.normal(0.0, 0.5, (batch, 72)), rng.normal(0.0, 1.0, (batch, 10))]
    if with_transl:
        parts.append(rng.normal(0.0, 1.0, (batch, 3)))
    return np.concatenate(parts, axis=1)


# --- SMPL layer against the float64 NumPy reference ---------------------------------------

@pytest.mark.parametrize("with_transl", [False, True])
def test_body_model_matches_numpy_reference(model_arrays, body, with_transl):
    rng = np.random.default_rng(7 + with_transl)
    params = _random_params(rng, 4, with_transl)
    ref_v, ref_j = smpl_forward_np(model_arrays, params[:, :72], params[:, 72:82],
                                   params[:, 82:] if with_transl else None)
    out = body(torch.from_numpy(params))
    assert out.vertices.dtype == torch.float32 and out.joints.dtype == torch.float32
    assert out.vertices.shape == (4, model_arrays["v_template"].shape[0], 3)
    assert out.joints.shape == (4, 24, 3)
    assert np.abs(out.vertices.double().numpy() - ref_v).max() < 1e-5
    assert np.abs(out.joints.double().numpy() - ref_j).max() < 1e-5


def test_reference_is_not_trivially_satisfied(model_arrays, body):
    # The comparison above means something only if posing moves vertices far beyond 1e-5.
    rng = np.random.default_rng(3)
    params = _random_params(rng, 1, False)
    posed = body(torch.from_numpy(params)).vertices
    rest = body(torch.zeros(1, 82, dtype=torch.float64)).vertices
    assert (posed - rest).abs().max() > 0.05
    ref_rest, _ = smpl_forward_np(model_arrays, np.zeros((1, 72)), np.zeros((1, 10)))
    assert np.abs(rest.double().numpy() - model_arrays["v_template"]).max() < 1e-6
    assert np.abs(ref_rest[0] - model_arrays["v_template"]).max() < 1e-12


def test_forward_rotmat_equals_axis_angle_path(body):
    from meshrec.body.rotations import axis_angle_to_matrix

    rng = np.random.default_rng(11)
    params = torch.from_numpy(_random_params(rng, 3, True)).float()
    rot = axis_angle_to_matrix(params[:, :72].reshape(3, 24, 3))
    a = body(params)
    b = body.forward_rotmat(rot[:, :1], rot[:, 1:], params[:, 72:82], params[:, 82:])
    assert torch.allclose(a.vertices, b.vertices, atol=1e-5)
    assert torch.allclose(a.joints, b.joints, atol=1e-5)


def test_float32_under_autocast_and_no_nan_at_zero_pose(body):
    rng = np.random.default_rng(5)
    params = torch.from_numpy(_random_params(rng, 2, False)).to(torch.bfloat16)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = body(params)
    assert out.vertices.dtype == torch.float32
    expected = body(params.float())  # same (bf16-rounded) inputs, computed outside autocast
    assert torch.equal(out.vertices, expected.vertices)
    zero = torch.zeros(2, 82, dtype=torch.float16, requires_grad=True)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        verts = body(zero).vertices
    verts.sum().backward()
    assert torch.isfinite(verts).all() and torch.isfinite(zero.grad).all()


def test_body_model_holds_no_state_and_no_parameters(body):
    assert list(body.parameters()) == []
    assert body.state_dict() == {}
    assert body.smpl.shapedirs.dtype == torch.float32  # the arrays are still there as buffers


def test_kind_faces_and_bad_inputs(model_arrays, body, capsys):
    assert body.kind == ("standin" if "model_kind" in model_arrays else "smpl")
    assert body.faces.shape == model_arrays["f"].shape and body.faces.dtype == np.int64
    standin = BodyModel({**model_arrays, "model_kind": np.asarray("standin")})
    assert standin.kind == "standin"
    assert capsys.readouterr().out == ""  # smplx's 10-betas notice is silenced
    with pytest.raises(MeshrecError, match="unknown"):
        BodyModel({**model_arrays, "model_kind": np.asarray("mystery")})
    with pytest.raises(MeshrecError, match="82"):
        body(torch.zeros(1, 80))


# --- pickles shaped like the official SMPL files --------------------------------------------

class _FakeCh:
    """Shaped like chumpy.ch.Ch when pickled: NEWOBJ + a state dict holding the array in x."""

    def __init__(self, x):
        self.x = np.asarray(x, dtype=np.float64)

    def __getstate__(self):
        return {"x": self.x, "_dirty_vars": set(), "_itr": None, "_depends_on_deps": {},
                "_make_dense": False, "_make_sparse": False}


class _FakeSelect(_FakeCh):
    """Shaped like chumpy.reordering.Select: a lazy gather a.ravel()[idxs].reshape(shape)."""

    def __init__(self, a, idxs, preferred_shape):
        self.a, self.idxs, self.preferred_shape = a, idxs, preferred_shape

    def __getstate__(self):
        return {"a": self.a, "idxs": self.idxs, "preferred_shape": self.preferred_shape,
                "_dirty_vars": set(), "_itr": None, "_depends_on_deps": {}}


@contextlib.contextmanager
def _fake_chumpy():
    """Make `chumpy.ch.Ch` / `chumpy.reordering.Select` importable only while dumping."""
    names = {"chumpy": None, "chumpy.ch": ("Ch", _FakeCh), "chumpy.reordering": ("Select", _FakeSelect)}
    saved = {n: sys.modules.get(n) for n in names}
    for name, entry in names.items():
        mod = types.ModuleType(name)
        if entry:
            cls_name, cls = entry
            cls.__module__, cls.__qualname__ = name, cls_name
            setattr(mod, cls_name, cls)
        sys.modules[name] = mod
    try:
        yield
    finally:
        for name, mod in saved.items():
            if mod is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = mod


def _official_like(arrays: dict[str, np.ndarray]) -> dict:
    """The official layout: shapedirs a chumpy Ch, J_regressor scipy CSC, extras not arrays."""
    shapedirs = arrays["shapedirs"]
    wide = np.concatenate([shapedirs, np.zeros_like(shapedirs)], axis=2)  # stored with 20 betas
    idxs = np.arange(wide.size).reshape(wide.shape)[:, :, :10].ravel()
    return {
        "v_template": _FakeCh(arrays["v_template"]),
        "f": arrays["f"],
        "shapedirs": _FakeSelect(_FakeCh(wide), idxs, shapedirs.shape),
        "posedirs": arrays["posedirs"],
        "J_regressor": scipy.sparse.csc_matrix(arrays["J_regressor"]),
        "J_regressor_prior": scipy.sparse.csc_matrix(arrays["J_regressor"]),
        "weights": _FakeCh(arrays["weights"]),
        "kintree_table": arrays["kintree_table"],
        "J": arrays["J"],
        "bs_style": "lbs",
        "bs_type": "lrotmin",
        "pose_training_info": {"iterations": 3},
    }


def _write_official_pickle(path: Path, arrays: dict[str, np.ndarray], protocol: int = 2,
                           py2_names: bool = False) -> None:
    with _fake_chumpy():
        data = pickle.dumps(_official_like(arrays), protocol=protocol)
    assert b"chumpy.ch\nCh\n" in data
    if py2_names:  # the module paths that files written by Python 2 and old NumPy/SciPy name
        data = data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
        data = data.replace(b"scipy.sparse._csc\n", b"scipy.sparse.csc\n")
        assert b"numpy.core.multiarray\n" in data and b"scipy.sparse.csc\n" in data
    path.write_bytes(data)


@pytest.mark.parametrize("protocol,py2_names", [(2, False), (2, True), (0, True)])
def test_chumpy_pickle_converts_to_the_same_arrays(tmp_path, small_arrays, protocol, py2_names):
    src, dst = tmp_path / "SMPL_NEUTRAL.pkl", tmp_path / "smpl.npz"
    _write_official_pickle(src, small_arrays, protocol, py2_names)
    assert "chumpy" not in sys.modules and "chumpy.ch" not in sys.modules
    with pytest.raises(ModuleNotFoundError):  # a plain pickle.load cannot read it here
        pickle.loads(src.read_bytes(), encoding="latin1")

    returned = model_file.convert(src, dst)
    loaded = model_file.load_arrays(dst)
    for key in model_file.REQUIRED_KEYS + ("J",):
        assert np.array_equal(loaded[key], small_arrays[key]), key
        assert np.array_equal(returned[key], small_arrays[key]), key
    assert loaded["J_regressor"].dtype == np.float64 and loaded["shapedirs"].dtype == np.float64
    assert str(loaded["bs_style"]) == "lbs"
    assert "pose_training_info" not in loaded  # a dict, not an array
    assert np.array_equal(loaded["J_regressor_prior"], small_arrays["J_regressor"])


def test_a_body_file_read_again_is_a_fresh_copy_and_a_replaced_file_is_read_anew(
        tmp_path, small_arrays):
    path = tmp_path / "body.npz"
    save_npz(path, small_arrays)
    first = model_file.load_arrays(path)
    first["v_template"][:] = 0.0  # a caller's change stays its own
    first["extra"] = np.zeros(1)
    again = model_file.load_arrays(path)
    assert np.array_equal(again["v_template"], small_arrays["v_template"])
    assert "extra" not in again
    moved = {**small_arrays, "v_template": small_arrays["v_template"] + 1.0}
    save_npz(path, moved)  # replaced (renamed over): the new contents
    assert np.array_equal(model_file.load_arrays(path)["v_template"], moved["v_template"])


def test_converted_model_poses_like_the_original(tmp_path, model_arrays, body):
    src, dst = tmp_path / "SMPL_MALE.pkl", tmp_path / "smpl.npz"
    _write_official_pickle(src, model_arrays)
    model_file.convert(src, dst)
    params = torch.from_numpy(_random_params(np.random.default_rng(2), 2, True))
    converted = BodyModel(model_file.load_arrays(dst))
    assert torch.equal(converted(params).vertices, body(params).vertices)


class _RunsCode:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _write_evil_pickle(path: Path, arrays: dict[str, np.ndarray], marker: Path) -> None:
    payload = dict(arrays)
    payload["v_template"] = _RunsCode(f"touch {marker}")
    path.write_bytes(pickle.dumps(payload, protocol=2))


def test_pickle_that_runs_code_is_refused_and_nothing_runs(tmp_path, small_arrays):
    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil.pkl"
    _write_evil_pickle(evil, small_arrays, marker)
    with pytest.raises(MeshrecError, match=r"refusing to load .*evil\.pkl: it references os\.system"):
        model_file.load_arrays(evil)
    assert not marker.exists()


@pytest.mark.parametrize("target", [("builtins", "eval"), ("numpy", "load"), ("subprocess", "Popen"),
                                    ("builtins", "getattr"), ("numpy.testing", "_private")])
def test_any_other_global_is_refused(tmp_path, target):
    module, name = target
    data = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b")R."  # GLOBAL, EMPTY_TUPLE, REDUCE
    path = tmp_path / "x.pkl"
    path.write_bytes(data)
    with pytest.raises(MeshrecError, match=f"references {module}.{name}"):
        model_file.load_arrays(path)


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "meshrec.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_refuses_evil_pickle_in_one_line(tmp_path, small_arrays):
    marker = tmp_path / "MARKER"
    evil, out = tmp_path / "evil.pkl", tmp_path / "out.npz"
    _write_evil_pickle(evil, small_arrays, marker)
    proc = _cli("body", "convert", str(evil), str(out))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "refusing to load" in proc.stderr and "system" in proc.stderr
    assert not marker.exists()
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [evil]  # no temporary file left either


def test_cli_info_and_convert_on_good_files(tmp_path, small_arrays):
    src, dst = tmp_path / "SMPL_FEMALE.pkl", tmp_path / "f.npz"
    _write_official_pickle(src, small_arrays)
    conv = _cli("body", "convert", str(src), str(dst))
    assert conv.returncode == 0, conv.stderr
    assert "50 vertices" in conv.stdout and dst.exists()
    info = _cli("body", "info", str(dst))
    assert info.returncode == 0, info.stderr
    assert "50 vertices" in info.stdout and "96 faces" in info.stdout and "24 joints" in info.stdout
    assert "FAIL" not in info.stdout


# --- structure errors and value checks ------------------------------------------------------

def test_missing_key_and_wrong_shape_name_key_and_file(tmp_path, small_arrays):
    missing = tmp_path / "missing.npz"
    save_npz(missing, {k: v for k, v in small_arrays.items() if k != "weights"})
    with pytest.raises(MeshrecError, match=r"missing\.npz has no 'weights'"):
        model_file.load_arrays(missing)
    bad = tmp_path / "bad.npz"
    save_npz(bad, {**small_arrays, "shapedirs": small_arrays["shapedirs"][:-1]})
    with pytest.raises(MeshrecError, match=r"bad\.npz: 'shapedirs' has shape"):
        model_file.load_arrays(bad)
    with pytest.raises(MeshrecError, match="does not exist"):
        model_file.load_arrays(tmp_path / "nowhere.npz")
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"PK\x03\x04 not a pickle at all")
    with pytest.raises(MeshrecError, match=r"cannot read .*garbage\.pkl"):
        model_file.load_arrays(garbage)
    with pytest.raises(MeshrecError, match="unknown body model format"):
        (tmp_path / "model.obj").write_text("v 0 0 0\n")
        model_file.load_arrays(tmp_path / "model.obj")


def test_npz_with_object_arrays_is_refused(tmp_path, small_arrays):
    path = tmp_path / "objects.npz"
    np.savez(path, **small_arrays, extra=np.array([{"a": 1}], dtype=object))
    with pytest.raises(MeshrecError, match="objects.npz"):
        model_file.load_arrays(path)


def _failed(report: model_file.Report) -> str:
    return " | ".join(line for line in report.lines if line.startswith("FAIL"))


def test_check_catches_broken_models(tmp_path, small_arrays):
    assert model_file.check(small_arrays).ok, _failed(model_file.check(small_arrays))

    w = small_arrays["weights"].copy()
    w[0, 0] += 0.1
    rep = model_file.check({**small_arrays, "weights": w})
    assert not rep.ok and "skinning weights" in _failed(rep)

    jr = small_arrays["J_regressor"].copy()
    jr[3] *= 0.5
    rep = model_file.check({**small_arrays, "J_regressor": jr})
    assert not rep.ok and "J_regressor" in _failed(rep)

    rep = model_file.check({**small_arrays, "f": small_arrays["f"][1:]})
    assert not rep.ok and "not closed" in _failed(rep)

    flipped = small_arrays["f"].copy()
    flipped[0] = flipped[0, ::-1]
    rep = model_file.check({**small_arrays, "f": flipped})
    assert not rep.ok and "not closed" not in _failed(rep) and "oriented" in _failed(rep)

    f = small_arrays["f"].astype(np.int64)
    f[0, 0] = 50
    rep = model_file.check({**small_arrays, "f": f})
    assert not rep.ok and "faces index" in _failed(rep)

    kt = small_arrays["kintree_table"].copy()
    kt[0, 22] = 19
    rep = model_file.check({**small_arrays, "kintree_table": kt})
    assert not rep.ok and "SMPL's" in _failed(rep)

    rep = model_file.check({**small_arrays, "posedirs": small_arrays["posedirs"][:, :, :200]})
    assert not rep.ok and "pose blend shapes" in _failed(rep)

    broken = tmp_path / "broken.npz"
    save_npz(broken, {**small_arrays, "weights": w})
    with pytest.raises(MeshrecError, match="skinning weights.*nothing written"):
        model_file.convert(broken, tmp_path / "out.npz")
    assert not (tmp_path / "out.npz").exists()


def test_malformed_chumpy_objects_give_one_line_errors(tmp_path, small_arrays):
    looped = _FakeSelect(None, np.arange(3), (3,))
    looped.a = looped  # a lazy node that selects from itself
    unknown = _FakeCh(small_arrays["v_template"])
    for name, value, message in (("loop", looped, "malformed"),
                                 ("noarray", _FakeSelect(unknown, np.arange(10**9, 10**9 + 3), (3,)),
                                  "malformed")):
        with _fake_chumpy():
            data = pickle.dumps({**_official_like(small_arrays), "v_template": value}, protocol=2)
        path = tmp_path / f"{name}.pkl"
        path.write_bytes(data)
        with pytest.raises(MeshrecError, match=f"{name}.pkl: 'v_template' is {message}"):
            model_file.load_arrays(path)


# --- the fast SMPL route against stock smplx ------------------------------------------------

@pytest.mark.parametrize("with_transl", [False, True])
def test_fast_route_equals_stock_smplx(model_arrays, body, with_transl):
    stock = BodyModel(model_arrays, fast=False)
    assert body.fast is not None and stock.fast is None
    rng = np.random.default_rng(21 + with_transl)
    params = torch.from_numpy(_random_params(rng, 16, with_transl)).float()
    params[0, :72] = 0.0  # the rest pose
    params[1, :3] = torch.tensor([np.pi - 1e-4, 0.0, 0.0])  # near a half turn
    a, b = body(params), stock(params)
    assert (a.vertices - b.vertices).abs().max() < 1e-6
    assert (a.joints - b.joints).abs().max() < 1e-6
    assert (b.vertices - stock(params * 1.01).vertices).abs().max() > 1e-3  # 1e-6 is strict
    # gradients through both routes agree as well
    grads = []
    for model in (body, stock):
        p = params.clone().requires_grad_()
        out = model(p)
        ((out.vertices - out.joints[:, :1]) ** 2).mean().backward()
        grads.append(p.grad)
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-7)
    rot = axis_angle_to_matrix(params[:, :72].reshape(16, 24, 3))
    c = body.forward_rotmat(rot[:, :1], rot[:, 1:], params[:, 72:82],
                            params[:, 82:] if with_transl else None)
    d = stock.forward_rotmat(rot[:, :1], rot[:, 1:], params[:, 72:82],
                             params[:, 82:] if with_transl else None)
    assert (c.vertices - d.vertices).abs().max() < 1e-6
