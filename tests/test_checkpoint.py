"""Checkpoints: atomic writes under crashes, pruning, weights_only round trip, RNG, config hash."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from meshrec.config import Config, config_hash, with_overrides
from meshrec.errors import MeshrecError
from meshrec.train.checkpoint import (LAST, capture_rng, check_resume, checkpoint_meta, find_last,
                                      load_checkpoint, restore_rng, save_checkpoint, step_name)

ROOT = Path(__file__).resolve().parents[1]


def _state(step: int, size: int = 16) -> dict:
    gen = torch.Generator().manual_seed(step)
    return {"step": step, "model": {"w": torch.randn(size, generator=gen), "b": torch.zeros(2)},
            "optimizer": {"state": {0: {"exp_avg": torch.ones(3)}}, "param_groups": [{"lr": 0.1}]},
            "run_id": None, "history": [1.5, 2, "x", (3, 4)], **checkpoint_meta(Config())}


def test_round_trip_with_weights_only(tmp_path):
    state = _state(7)
    path = save_checkpoint(tmp_path, state, step=7, keep_last=2)
    assert path.name == step_name(7)
    # Readable by plain torch with weights_only=True, not only through our loader.
    for back in (torch.load(tmp_path / LAST, weights_only=True), load_checkpoint(path)):
        assert torch.equal(back["model"]["w"], state["model"]["w"])
        assert back["optimizer"]["state"][0]["exp_avg"].tolist() == [1.0, 1.0, 1.0]
        assert back["history"] == [1.5, 2, "x", (3, 4)]
        assert back["config_hash"] == config_hash(Config())
        assert back["run_id"] is None


def test_refuses_objects_weights_only_cannot_load(tmp_path):
    with pytest.raises(TypeError, match=r"state\['config'\] is a Config"):
        save_checkpoint(tmp_path, {"config": Config()}, step=1, keep_last=1)
    with pytest.raises(TypeError, match="ndarray"):
        save_checkpoint(tmp_path, {"a": [np.zeros(2)]}, step=1, keep_last=1)
    assert list(tmp_path.iterdir()) == []


def test_keep_last_prunes_oldest(tmp_path):
    for step in (10, 20, 30, 40, 50):
        save_checkpoint(tmp_path, _state(step), step=step, keep_last=3)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([LAST, step_name(30), step_name(40), step_name(50)])
    assert load_checkpoint(tmp_path / LAST)["step"] == 50
    assert find_last(tmp_path) == tmp_path / LAST
    # keep_last=1 leaves only the newest step file (and last.pt).
    save_checkpoint(tmp_path, _state(60), step=60, keep_last=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([LAST, step_name(60)])
    # last.pt survives pruning of the step file it was made from.
    save_checkpoint(tmp_path, _state(70), step=70, keep_last=1)
    assert load_checkpoint(tmp_path / LAST)["step"] == 70


def test_find_last_without_last_pt(tmp_path):
    assert find_last(tmp_path) is None
    assert find_last(tmp_path / "missing") is None
    save_checkpoint(tmp_path, _state(1), step=1, keep_last=5)
    save_checkpoint(tmp_path, _state(2), step=2, keep_last=5)
    (tmp_path / LAST).unlink()
    assert find_last(tmp_path) == tmp_path / step_name(2)


def test_unreadable_checkpoint_is_one_line_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(MeshrecError, match="cannot be read") as info:
        load_checkpoint(bad)
    assert "\n" not in str(info.value)
    with pytest.raises(MeshrecError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


# A child process that saves step 1, then dies (SIGKILL, no cleanup) in the middle of saving
# step 2 at the point given on its command line.
_CRASHER = textwrap.dedent("""
    import os, signal, sys, torch
    from meshrec.train import checkpoint as ck
    where, folder = sys.argv[1], sys.argv[2]
    state = lambda step: {"step": step, "w": torch.full((200_000,), float(step))}
    ck.save_checkpoint(folder, state(1), step=1, keep_last=3)
    die = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
    if where == "serialise":
        real = torch.save
        def half_save(obj, fh):
            fh.write(b"PK\\x03\\x04" + b"\\0" * 100_000)   # a partial file ...
            fh.flush()
            die()                                          # ... then the process dies
        ck.torch.save = half_save
    elif where == "link":
        ck._point_last = die       # step file written, last.pt not yet switched
    ck.save_checkpoint(folder, state(2), step=2, keep_last=3)
""")


@pytest.mark.parametrize("where", ["serialise", "link"])
def test_crash_during_save_keeps_last_pt_whole(tmp_path, where):
    proc = subprocess.run([sys.executable, "-c", _CRASHER, where, str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    last = load_checkpoint(tmp_path / LAST)
    assert last["step"] == 1 and float(last["w"][0]) == 1.0
    if where == "serialise":
        assert any(p.name.endswith(".tmp") for p in tmp_path.iterdir())  # the partial temp
        assert find_last(tmp_path) == tmp_path / LAST
    else:
        assert load_checkpoint(tmp_path / step_name(2))["step"] == 2
    # The next save clears the partial temporaries and moves last.pt on.
    save_checkpoint(tmp_path, {"step": 3}, step=3, keep_last=3)
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
    assert load_checkpoint(tmp_path / LAST)["step"] == 3


_SAVER = textwrap.dedent("""
    import sys, torch
    from meshrec.train.checkpoint import save_checkpoint
    step = 0
    while True:
        step += 1
        save_checkpoint(sys.argv[1], {"step": step, "w": torch.full((2_000_000,), float(step))},
                        step=step, keep_last=2)
        print(step, flush=True)
""")


def test_killed_at_a_random_moment_leaves_a_loadable_last_pt(tmp_path):
    rng = random.Random(0)
    proc = subprocess.Popen([sys.executable, "-c", _SAVER, str(tmp_path)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "1"
        time.sleep(rng.uniform(0.05, 0.4))
    finally:
        proc.kill()
        proc.wait()
    last = load_checkpoint(find_last(tmp_path))
    assert last["step"] >= 1
    assert torch.equal(last["w"], torch.full((2_000_000,), float(last["step"])))


def _draws(gen: np.random.Generator) -> list:
    return [random.random(), random.gauss(0, 1), np.random.rand(3).tolist(),
            np.random.randn(), torch.rand(3).tolist(), torch.randint(0, 1000, (4,)).tolist(),
            gen.random(2).tolist()]


def test_rng_restore_reproduces_draws(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    gen = np.random.default_rng(4)
    random.gauss(0, 1)  # leave a cached gaussian in python's state
    np.random.randn()
    state = capture_rng({"aug": gen})
    first = _draws(gen)
    # Through a real checkpoint file, read back with weights_only=True.
    save_checkpoint(tmp_path, {"rng": state}, step=1, keep_last=1)
    restored = load_checkpoint(tmp_path / LAST)["rng"]
    _draws(gen)  # move every generator on
    restore_rng(restored, {"aug": gen})
    assert _draws(gen) == first
    with pytest.raises(MeshrecError, match="other"):
        restore_rng(restored, {"other": np.random.default_rng(0)})


def test_resume_refuses_another_config_hash():
    cfg = Config()
    state = checkpoint_meta(cfg)
    check_resume(state, cfg, fine_tune=False)
    # Fields outside the hash (where to write, how often to log) do not block a resume.
    check_resume(state, with_overrides(cfg, ["train.output_dir=elsewhere", "train.log_every=7"]),
                 fine_tune=False)
    other = with_overrides(cfg, ["optim.lr=0.123"])
    with pytest.raises(MeshrecError) as info:
        check_resume(state, other, fine_tune=False)
    msg = str(info.value)
    assert config_hash(cfg) in msg and config_hash(other) in msg
    assert "optim.lr" in msg and "\n" not in msg
    check_resume(state, other, fine_tune=True)
    with pytest.raises(MeshrecError, match="no config hash"):
        check_resume({}, cfg, fine_tune=False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_rng_restore_reproduces_draws(tmp_path):
    torch.cuda.manual_seed_all(5)
    state = capture_rng()
    first = torch.rand(4, device="cuda").tolist()
    save_checkpoint(tmp_path, {"rng": state}, step=1, keep_last=1)
    torch.rand(4, device="cuda")
    restore_rng(load_checkpoint(tmp_path / LAST)["rng"])
    assert torch.rand(4, device="cuda").tolist() == first


def _regressor(seed: int, frozen: bool = True):
    from meshrec.body import params as layout
    from meshrec.model import build_model

    cfg = with_overrides(Config(), ["model.encoder=resnet18", "model.weights=none",
                                    f"model.freeze_encoder={str(frozen).lower()}"])
    torch.manual_seed(seed)
    return build_model(cfg, np.zeros(layout.size()))


def test_frozen_encoder_is_not_stored_but_checked_on_load(tmp_path):
    from meshrec.model.hashing import state_sha256
    from meshrec.train.checkpoint import load_model_state, model_state

    trained = _regressor(seed=0)
    sha = state_sha256(trained.encoder)
    with torch.no_grad():
        for p in trained.head.parameters():
            p.add_(1.0)  # the head moved away from its initial weights
    state = {"model": model_state(trained, sha), "encoder_sha256": sha}
    assert state["model"] and not any(k.startswith("encoder.") for k in state["model"])
    save_checkpoint(tmp_path, state, 1, keep_last=1)
    full = tmp_path / "full"
    save_checkpoint(full, {"model": model_state(trained, ""), "encoder_sha256": ""}, 1, keep_last=1)
    assert (tmp_path / LAST).stat().st_size * 5 < (full / LAST).stat().st_size

    back = load_checkpoint(tmp_path / LAST)
    same = _regressor(seed=0)  # built as the run built it: same encoder, head at its init
    load_model_state(same, back, "ckpt")
    for (name, a), b in zip(trained.state_dict().items(), same.state_dict().values()):
        assert torch.equal(a, b), name

    other = _regressor(seed=1)  # another random encoder: its head must not be loaded onto it
    with pytest.raises(MeshrecError, match=f"other weights \\(sha256 {sha[:12]}"):
        load_model_state(other, back, "ckpt")


def test_trained_encoder_is_stored():
    from meshrec.train.checkpoint import model_state

    model = _regressor(seed=0, frozen=False)
    assert set(model_state(model, "")) == set(model.state_dict())
