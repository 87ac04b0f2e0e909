"""Human3.6M as SPIN's users hold it, end to end on real files: synth --spin-files → pack → train
from joints alone → `meshrec eval --protocol h36m-p1|h36m-p2`, checked against SPIN's evaluation
rewritten independently (spin_reference.py)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from meshrec.config import load_config
from meshrec.errors import MeshrecError

from spin_reference import spin_eval

# Its module fixtures are built once: every test here runs on one xdist worker.
pytestmark = pytest.mark.xdist_group("h36m_spin")

TRAIN, TEST = ("S1", "S5"), ("S9",)


@pytest.fixture(scope="module")
def spin(tmp_path_factory, meshrec_cache) -> dict[str, Path]:
    """SPIN's files for S1 S5 (training) and S9 (test), packed as a user would pack them."""
    from meshrec.body.load import resolve_model_path
    from meshrec.body.model_file import load_arrays
    from meshrec.config import Body
    from meshrec.shards.pack import PackConfig, pack
    from meshrec.synth.settings import Settings
    from meshrec.synth.writer import synthesize

    root = tmp_path_factory.mktemp("spin")
    cache = meshrec_cache  # the stand-in body, built once for the run
    arrays = load_arrays(resolve_model_path(Body(cache_dir=str(cache))))
    frames = root / "frames"
    synthesize(frames, [*TRAIN, *TEST], Settings(seed=0, size=256, frames_per_subject=40), arrays,
               workers=2, progress=False, spin_files=True)
    out = {"root": root, "cache": cache, "frames": frames}
    for name, files in (("shards", ["h36m_train.npz", "h36m_valid_protocol1.npz"]),
                        ("p2_shards", ["h36m_valid_protocol2.npz"])):
        pack([str(frames / f) for f in files], frames, root / name,
             PackConfig("spin", size=64), workers=2, progress=False, log=lambda _: None)
        out[name] = root / name
    return out


def _cfg(spin: dict[str, Path], out: Path, *extra: str):
    return load_config(None, [
        f"body.cache_dir={spin['cache']}", f"data.shards={spin['shards']}",
        f"data.train_subjects=[{','.join(TRAIN)}]", f"data.val_subjects=[{','.join(TEST)}]",
        f"eval.subjects=[{','.join(TEST)}]", "eval.protocol=h36m-p2",
        "data.backend=torch", "data.num_threads=1", "data.image_size=56", "data.batch_size=16",
        "model.encoder=resnet18", "model.weights=none", "model.freeze_encoder=false",
        "model.hidden=256", "model.dropout=0.1", "optim.lr=1e-3",
        "loss.w_vert=0", "loss.w_joint3d=1", "loss.w_kp2d=1",
        "train.epochs=8", "train.log_every=1000", "train.checkpoint_every=0",
        "track.enabled=false", "track.overlays=0", f"train.output_dir={out}", *extra])


@pytest.fixture(scope="module")
def trained(spin) -> Path:
    from meshrec.train.loop import train

    out = spin["root"] / "run"
    metrics = train(_cfg(spin, out))
    assert metrics["val_p2_mpjpe_mm"] > 0 and "val_pve_mm" not in metrics
    return out / "checkpoints" / "last.pt"


def _eval(capsys, *args: str) -> tuple[list[str], dict[str, float], dict[str, float]]:
    from meshrec.cli import main

    assert main(["eval", *args]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    last = re.fullmatch(r"protocol=(\S+) samples=(\d+) mpjpe_mm=(\S+) pa_mpjpe_mm=(\S+)", lines[-1])
    assert last, lines[-1]
    base = re.fullmatch(r"mean-params baseline: mpjpe_mm=(\S+) pa_mpjpe_mm=(\S+)", lines[-2])
    assert base, lines[-2]
    model = {"samples": float(last[2]), "mpjpe_mm": float(last[3]), "pa_mpjpe_mm": float(last[4])}
    return lines, model, {"mpjpe_mm": float(base[1]), "pa_mpjpe_mm": float(base[2])}


@pytest.mark.slow
def test_packed_spin_files_hold_joints_and_no_smpl(spin):
    import json

    manifest = json.loads((spin["shards"] / "manifest.json").read_text())
    assert manifest["labels"]["smpl"] == 0
    assert manifest["labels"]["j3d"] == manifest["totals"]["samples"] > 0
    assert "smpl.npy" not in manifest["members"] and "j3d.npy" in manifest["members"]


@pytest.mark.slow
def test_it_learns_from_joints_alone_and_beats_the_mean_on_protocol_2(trained, capsys):
    lines, model, base = _eval(capsys, "--checkpoint", str(trained), "--protocol", "h36m-p2")
    print(f"P2 on S9 ({model['samples']:.0f} crops): MPJPE {model['mpjpe_mm']:.1f} mm "
          f"(mean params {base['mpjpe_mm']:.1f}), PA-MPJPE {model['pa_mpjpe_mm']:.1f} "
          f"({base['pa_mpjpe_mm']:.1f})")
    assert model["mpjpe_mm"] < 0.8 * base["mpjpe_mm"]
    assert any(line.startswith("Directions") for line in lines)  # the per-action table


@pytest.mark.slow
def test_protocols_select_cameras_and_agree_with_spins_eval(spin, trained, capsys):
    from meshrec.body import h36m
    from meshrec.data import build_loader
    from meshrec.data.demo import with_shards
    from meshrec.train import evaluate
    from meshrec.train.commands import load_trained

    _, p1, _ = _eval(capsys, "--checkpoint", str(trained), "--protocol", "h36m-p1")
    _, p2, _ = _eval(capsys, "--checkpoint", str(trained), "--protocol", "h36m-p2")
    _, p2_file, _ = _eval(capsys, "--checkpoint", str(trained), "--protocol", "h36m-p2",
                          "--shards", str(spin["p2_shards"]))
    assert p1["samples"] == 4 * p2["samples"] == 4 * p2_file["samples"]
    assert p2 == p2_file  # P2 of the protocol-1 shards = SPIN's protocol-2 file packed alone

    # The same predictions through SPIN's eval.py, with the ground truth read from the npz file.
    t = load_trained(str(trained), [f"data.shards={spin['shards']}"], "cpu")
    cfg = with_shards(t.cfg)
    joints = evaluate.body_joints(cfg.body, t.body.num_vertices)
    rec = evaluate.evaluate(t.model, build_loader(cfg, "test"), t.body, joints, t.mean_params,
                            t.amp, t.device, protocol="h36m-p1")
    with np.load(spin["frames"] / "h36m_valid_protocol1.npz") as z:
        # The shards store joints as float32: the reference gets the same rounded numbers.
        names, s24 = z["imgname"], z["S"].astype(np.float32).astype(np.float64)
    keys = {f"{n.split('/')[0]}-{n.split('/')[1].replace('.', '-')}-"
            f"{int(n.split('_')[-1][:-4]):06d}": i for i, n in enumerate(names.tolist())}
    pred17, gt = [], []
    with torch.no_grad():
        for batch in build_loader(cfg, "test"):
            out = t.body(evaluate.last_params(t.model(batch["image"])))
            pred17.append(torch.einsum("jv,bvc->bjc", joints.regressor, out.vertices).double())
            gt += [s24[keys[k]] for k in batch["key"]]
    mpjpe, recon = spin_eval(torch.cat(pred17).numpy(), np.stack(gt))
    assert len(gt) == len(rec.keys)
    assert np.abs(np.asarray(rec.model["mpjpe_mm"]) - mpjpe).max() < 1e-6
    assert np.abs(np.asarray(rec.model["pa_mpjpe_mm"]) - recon).max() < 1e-6
    assert p1["mpjpe_mm"] == pytest.approx(mpjpe.mean(), abs=0.005)
    frontal = [i for i, k in enumerate(rec.keys) if k.split("-")[-2] == h36m.PROTOCOL2_CAMERA]
    assert p2["mpjpe_mm"] == pytest.approx(mpjpe[frontal].mean(), abs=0.005)


def test_what_the_data_lacks_is_refused_before_training(spin, tmp_path):
    from meshrec.train.loop import train

    with pytest.raises(MeshrecError, match=r"loss.w_vert is 1 but the training shards \(S1, S5\) "
                                           r"hold no SMPL labels"):
        train(_cfg(spin, tmp_path / "a", "loss.w_vert=1"))
    with pytest.raises(MeshrecError, match="eval.protocol smpl needs SMPL labels"):
        train(_cfg(spin, tmp_path / "b", "eval.protocol=smpl"))
    assert not (tmp_path / "a" / "checkpoints").exists()
    bad = tmp_path / "reg.npy"
    np.save(bad, np.full((16, 6890), 1 / 6890))
    with pytest.raises(MeshrecError, match=r"has shape \(16, 6890\); expected \(17, 6890\)"):
        train(_cfg(spin, tmp_path / "c", f"body.h36m_regressor={bad}"))
