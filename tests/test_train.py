"""Training end to end on generated stand-in shards (made once per session by meshrec.data.demo):
DDP parity, stop/resume bit-exactness, NaN steps, bf16 on CPU, the commands, MLflow, learning."""

from __future__ import annotations

import json
import re
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from meshrec.config import load_config, to_dict
from meshrec.errors import MeshrecError

from tests.tiny_config import DEMO, tiny, tiny_args  # noqa: F401


def state_of(out: Path) -> dict:
    from meshrec.train.checkpoint import load_checkpoint

    return load_checkpoint(out / "checkpoints" / "last.pt")


# ------------------------------------------------------------------ generated data

def test_demo_shards_are_built_once_verified_and_cover_every_split(cache, tmp_path):
    from meshrec.data.demo import ensure_shards
    from meshrec.shards.manifest import load
    from meshrec.shards.verify import verify

    cfg = tiny(cache, tmp_path)
    said: list[str] = []
    path = ensure_shards(cfg)
    assert path == ensure_shards(cfg, say=said.append) and said == []  # reused, not rebuilt
    assert verify(path)[0] == []
    subjects = load(path)["subjects"]
    assert {"S1", "S5", "S6", "S9"} <= set(subjects)
    assert all(s["samples"] == 4 * 4 for s in subjects.values())  # 4 frames × 4 cameras
    # Seed 2: no other test builds it in this worker's cache, so this call must build.
    other = ensure_shards(tiny(cache, tmp_path, "data.synth.seed=2"), say=said.append)
    assert other != path and other.parent.name.startswith("demo-")
    # A build says so before and after (a log file gets no progress bar).
    assert said[0].startswith("making generated data first: 4 subjects × 4 frames × 4 cameras")
    assert said[1].startswith("generated data ready in ") and said[1].endswith(str(other))


def test_given_shards_must_exist(tmp_path):
    from meshrec.data.demo import ensure_shards

    with pytest.raises(MeshrecError, match="not a packed shard directory"):
        ensure_shards(tiny(tmp_path, tmp_path, f"data.shards={tmp_path / 'nope'}"))


# ------------------------------------------------------------------ resume

@pytest.mark.slow
def test_stop_and_resume_mid_epoch_is_bit_identical(cache, tmp_path):
    from meshrec.train.loop import train

    # Dropout and augmentation on: the RNG states and the loader position must both resume.
    more = ("data.train_subjects=[S1,S5]", "train.epochs=2", "model.dropout=0.5",
            "eval.every_epochs=1", "optim.warmup_steps=3", "optim.schedule=cosine")
    straight = train(tiny(cache, tmp_path / "a", *more))
    assert straight["steps"] == 8  # 32 samples / 8 × 2 epochs
    part = train(tiny(cache, tmp_path / "b", *more), stop_after=3)  # mid-epoch 0
    assert part["steps"] == 3 and state_of(tmp_path / "b")["step"] == 3
    resumed = train(tiny(cache, tmp_path / "b", *more))
    assert resumed["steps"] == 8
    a, b = state_of(tmp_path / "a"), state_of(tmp_path / "b")
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for k, s in a["optimizer"]["state"].items():
        assert torch.equal(s["exp_avg_sq"], b["optimizer"]["state"][k]["exp_avg_sq"])
    assert straight["val_pve_mm"] == resumed["val_pve_mm"]


def test_resume_refuses_another_config(cache, tmp_path):
    from meshrec.train.loop import train

    train(tiny(cache, tmp_path, "data.train_subjects=[S1]"), stop_after=1)
    with pytest.raises(MeshrecError, match="config hash"):
        train(tiny(cache, tmp_path, "data.train_subjects=[S1]", "optim.lr=0.0005"))


# ------------------------------------------------------------------ DDP parity

# Spawned ranks decode in their own process (a worker's forkserver would import torch again).
PARITY = ("model.freeze_encoder=true", "model.dropout=0.0", "data.augment.enabled=false",
          "optim.lr=0.001", "data.num_threads=0")
PARITY_STEPS = 5


def _ddp_worker(cfg_dict: dict, result: str) -> None:
    from meshrec.config import from_dict
    from meshrec.train import dist
    from meshrec.train.loop import build_run, train_step

    cfg = from_dict(cfg_dict)
    env = dist.init_distributed(cfg)
    try:
        run = build_run(cfg, env)
        run.core.train()
        for k, batch in enumerate(run.loader):
            if k == PARITY_STEPS:
                break
            assert train_step(run, batch) is not None
        if env.is_main:
            torch.save(run.core.state_dict(), result)
    finally:
        dist.cleanup()


@pytest.mark.slow
@pytest.mark.parametrize("accumulate", [1, 2])
def test_ddp_two_processes_equal_one_process_on_the_same_samples(cache, tmp_path, accumulate):
    from meshrec.data import build_loader
    from meshrec.train import dist
    from meshrec.train.loop import build_run, train_step

    cfg = tiny(cache, tmp_path, *PARITY)
    result = tmp_path / "ddp.pt"
    dist.spawn_local(_ddp_worker, 2, to_dict(cfg), str(result))
    ddp = torch.load(result, weights_only=True)

    # One process, batch 8 = rank 0's 4 samples then rank 1's 4 (the real loaders of 2 ranks).
    single = build_run(tiny(cache, tmp_path, *PARITY, f"optim.accumulate={accumulate}"),
                       dist.DistEnv(0, 1, 0, torch.device("cpu")))
    single.core.train()
    loaders = [build_loader(single.cfg, "train", r, 2) for r in (0, 1)]
    for k, (b0, b1) in enumerate(zip(*loaders)):
        if k == PARITY_STEPS:
            break
        merged = {key: torch.cat([b0[key], b1[key]]) if torch.is_tensor(b0[key])
                  else list(b0[key]) + list(b1[key]) for key in b0}
        assert train_step(single, merged) is not None
    moved = 0.0
    for name, tensor in single.core.state_dict().items():
        if tensor.is_floating_point():
            torch.testing.assert_close(tensor, ddp[name], rtol=0, atol=1e-5, msg=name)
    initial = build_run(cfg, dist.DistEnv(0, 1, 0, torch.device("cpu"))).core.state_dict()
    for name, tensor in initial.items():
        if tensor.is_floating_point():
            moved = max(moved, float((tensor - ddp[name]).abs().max()))
    assert moved > 1e-3  # the comparison is between trained weights, not two copies of the init


def _shards(cache: Path) -> Path:
    from meshrec.data.demo import ensure_shards

    return ensure_shards(tiny(cache, cache))


# ------------------------------------------------------------------ bad steps, precision

def test_non_finite_steps_are_skipped_then_abort(cache, tmp_path):
    from meshrec.train import dist
    from meshrec.train.loop import build_run, train_step

    run = build_run(tiny(cache, tmp_path, "train.max_bad_steps=2", "model.dropout=0.0"),
                    dist.DistEnv(0, 1, 0, torch.device("cpu")))
    batch = next(iter(run.loader))
    before = {k: v.clone() for k, v in run.core.state_dict().items()}
    poisoned = {**batch, "image": torch.full_like(batch["image"], float("nan"))}
    assert train_step(run, poisoned) is None
    assert run.bad_total == 1 and run.step == 1
    for k, v in run.core.state_dict().items():
        assert torch.equal(v, before[k]), k  # nothing moved
    assert train_step(run, batch) is not None and run.bad_in_row == 0  # a good step resets the run
    assert train_step(run, poisoned) is None
    with pytest.raises(MeshrecError, match="NaN/Inf in 2 steps in a row"):
        train_step(run, poisoned)


def test_a_step_reads_nothing_back_bad_steps_wait_on_the_device_until_settled(cache, tmp_path):
    """device_step (what the loop runs) leaves its outcome on the device: skipped steps change
    nothing there, and only guard.settle reads the counters and aborts."""
    from meshrec.train import dist, guard
    from meshrec.train.loop import build_run, device_step

    run = build_run(tiny(cache, tmp_path, "train.max_bad_steps=3", "optim.warmup_steps=4"),
                    dist.DistEnv(0, 1, 0, torch.device("cpu")))
    run.core.train()
    batch = next(iter(run.loader))
    poisoned = {**batch, "image": torch.full_like(batch["image"], float("nan"))}
    before = {k: v.clone() for k, v in run.core.state_dict().items()}
    for _ in range(2):
        terms = device_step(run, poisoned)
        assert torch.is_tensor(terms.values) and terms.values.shape == (len(terms.names),)
        assert not bool(terms.ok)
    assert (run.step, run.bad_total, run.scheduler.last_epoch) == (2, 0, 0)  # not read yet
    for k, v in run.core.state_dict().items():
        assert torch.equal(v, before[k]), k  # weights and BatchNorm statistics put back
    assert all(float(s["step"]) == 0 for s in run.optimizer.state.values())
    guard.settle(run)
    assert (run.bad_total, run.bad_in_row, run.scheduler.last_epoch) == (2, 2, 0)
    # The LR follows updates made: the first applied update uses warm-up step 0's LR.
    terms = device_step(run, batch)
    assert bool(terms.ok) and float(run.optimizer.param_groups[0]["lr"]) == run.cfg.optim.lr / 4
    guard.settle(run)
    assert (run.bad_in_row, run.scheduler.last_epoch) == (0, 1)
    assert float(run.scheduler.get_last_lr()[0]) == run.cfg.optim.lr * 2 / 4
    for _ in range(3):  # max_bad_steps in a row: nothing raised before the counters are read
        device_step(run, poisoned)
    with pytest.raises(MeshrecError, match="NaN/Inf in 3 steps in a row"):
        guard.settle(run)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("freeze", ["true", "false"])
def test_training_steps_never_wait_for_the_gpu(cache, tmp_path, freeze):
    """bf16, channels-last, fused Adam, grad clipping, a skipped NaN step: not one device→host
    sync in device_step (torch raises on any under sync debug mode "error")."""
    from meshrec.train import dist, guard
    from meshrec.train.loop import build_run, device_step

    run = build_run(tiny(cache, tmp_path, "train.device=cuda", "train.amp=bf16",
                         f"model.freeze_encoder={freeze}", "optim.grad_clip=1.0"),
                    dist.DistEnv(0, 1, 0, torch.device("cuda", 0)))
    run.core.train()
    batches = [b for _, b in zip(range(3), run.loader)]
    poisoned = {**batches[0], "image": torch.full_like(batches[0]["image"], float("nan"))}
    device_step(run, batches[0])  # warm-up: allocations, cuDNN choices
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for batch in (batches[1], poisoned, batches[2]):
            device_step(run, batch)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    guard.settle(run)
    assert (run.step, run.bad_total, run.bad_in_row, run.scheduler.last_epoch) == (4, 1, 0, 3)


def test_the_loop_logs_data_wait_and_time_to_first_step(cache, tmp_path, capsys):
    from meshrec.train.loop import train
    from meshrec.train.timing import process_age_s

    train(tiny(cache, tmp_path, "data.train_subjects=[S1,S5]", "train.log_every=1"))
    out = capsys.readouterr().out
    (first,) = re.findall(r"first step done ([0-9.]+) s after the process started", out)
    assert 0 < float(first) < process_age_s()
    waits = [int(w) for w in re.findall(r"img/s, data wait (\d+)%", out)]
    assert len(waits) == 4 and all(0 <= w <= 100 for w in waits)  # 4 steps, a line each


def test_bf16_step_runs_on_cpu(cache, tmp_path):
    from meshrec.train import dist
    from meshrec.train.loop import build_run, train_step

    run = build_run(tiny(cache, tmp_path, "train.amp=bf16"), dist.DistEnv(0, 1, 0, torch.device("cpu")))
    assert run.amp is torch.bfloat16
    batch = next(iter(run.loader))
    before = [p.detach().clone() for p in run.core.parameters()]
    terms = train_step(run, batch)
    assert terms is not None and np.isfinite(terms["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, run.core.parameters()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pred = run.core(batch["image"])
        out = run.body(pred.params[-1])
    assert out.vertices.dtype == torch.float32


# ------------------------------------------------------------------ commands

@pytest.fixture(scope="module")
def trained(cache, tmp_path_factory) -> Path:
    """A checkpoint of a short run through `meshrec train`."""
    from meshrec.cli import main

    out = tmp_path_factory.mktemp("cmd_run")
    args = ["train", "--config", str(DEMO), "--out", str(out), *tiny_args(cache, tmp_path_factory.mktemp("x"))]
    assert main(args) == 0
    return out / "checkpoints" / "last.pt"


def test_eval_prints_tables_baseline_and_final_line(trained, capsys):
    from meshrec.cli import main

    assert main(["eval", "--checkpoint", str(trained), "--subjects", "S9"]) == 0
    text = capsys.readouterr().out
    lines = text.strip().splitlines()
    assert "protocol smpl" in text and "joints: H36M-17" in text  # the stand-in's regressor
    assert any(line.startswith("S9 ") for line in lines)
    assert any(line.startswith("Directions") for line in lines)
    assert any(line.startswith("mean-params") for line in lines)
    last = re.fullmatch(r"protocol=smpl samples=(\d+) mse=(\S+) pve_mm=(\S+) mpjpe_mm=(\S+) "
                        r"pa_mpjpe_mm=(\S+)", lines[-1])
    assert last, lines[-1]
    mse, pve, mpjpe, pa = map(float, last.groups()[1:])
    assert 0 < mse and 0 < pa <= mpjpe and 0 < pve


def test_predict_writes_obj_and_overlay_and_reports_bad_files(trained, cache, tmp_path, capsys):
    import trimesh

    from meshrec.cli import main

    shard = sorted((_shards(cache) / "S9").glob("*.tar"))[0]
    with tarfile.open(shard) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".jpg"))
        (tmp_path / "person.jpg").write_bytes(tar.extractfile(member).read())
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "pred"
    rc = main(["predict", str(tmp_path / "missing.jpg"), str(tmp_path / "broken.jpg"),
               str(tmp_path / "person.jpg"), "--checkpoint", str(trained), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert sum("missing.jpg: no such file" in line for line in err) == 1
    assert sum("broken.jpg: cannot read the image" in line for line in err) == 1
    mesh = trimesh.load(out / "person.obj", process=False)
    assert mesh.vertices.shape == (6890, 3) and len(mesh.faces) > 10000
    extent = np.linalg.norm(np.ptp(mesh.vertices, axis=0))
    assert np.isfinite(mesh.vertices).all() and 1.0 < extent < 3.0  # person-sized
    assert (out / "person_overlay.png").stat().st_size > 0
    assert not (out / "missing.obj").exists()


def test_train_command_writes_last_checkpoint_and_metrics(trained):
    state = state_of(trained.parent.parent)
    assert state["step"] == 6 and state["config"]["model"]["encoder"] == "resnet18"
    metrics = json.loads((trained.parent.parent / "metrics.json").read_text())
    assert metrics["val_samples"] == 16 and metrics["val_pve_mm"] > 0


# ------------------------------------------------------------------ MLflow

def test_mlflow_run_has_params_metrics_tags_artifacts(cache, tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient

    from meshrec.config import config_hash
    from meshrec.train.loop import train

    from meshrec.track import experiment_for

    cfg = tiny(cache, tmp_path, "track.enabled=true", f"track.uri={mlflow_server}",
               "track.experiment=test-train", "train.log_every=2", "train.epochs=2",
               "data.train_subjects=[S1,S5]")
    client = MlflowClient(mlflow_server)
    # Made beforehand and left waiting, as a sweep makes its cells' runs at submission.
    made = client.create_run(experiment_for(client, "test-train"))
    client.update_run(made.info.run_id, status="SCHEDULED")
    time.sleep(1.5)
    t0 = time.monotonic()
    train(cfg, run_id=made.info.run_id)
    took = time.monotonic() - t0
    exp = client.get_experiment_by_name("test-train")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_id == made.info.run_id
    history = lambda key: client.get_metric_history(run.info.run_id, key)  # noqa: E731
    # Time queued and time training apart: the wait is not counted as training.
    (queued,) = history("time_queued_s")
    assert 1.5 <= queued.value < 1.5 + took
    training = [m.value for m in sorted(history("time_training_s"), key=lambda m: m.step)]
    assert training == sorted(training) and 0 < training[-1] < took
    # Validation once per epoch on the epoch axis; train rows carry the epoch too.
    assert [m.step for m in history("val_pve_mm")] == [1, 2]
    assert max(m.value for m in history("epoch")) == 2.0
    assert run.data.params["model.encoder"] == "resnet18"
    assert run.data.tags["body_model"] == "standin"
    assert run.data.tags["config_hash"] == config_hash(cfg)  # data.shards is not hashed
    for name in ("train_loss", "img_s", "val_pve_mm", "val_baseline_pve_mm", "time_data_s",
                 "time_compute_s", "data_wait_frac", "time_to_first_step_s"):
        assert name in run.data.metrics, name
    # log_every=2, but 8 steps give no curve at that rate: every step is logged
    assert [m.step for m in history("train_loss")] == list(range(1, 9))
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "metrics.json", "overlays"} <= names
    pictures = client.list_artifacts(run.info.run_id, "overlays")
    assert len(pictures) == 2 and all(p.path.endswith(".png") and p.file_size > 0
                                      for p in pictures)
    for tag in ("git_sha", "manifest_sha256", "world_size", "device"):
        assert run.data.tags[tag], tag
    assert run.data.tags["meshrec.done"] == "true"
    assert run.info.status == "FINISHED"


def test_training_completes_when_the_tracking_server_is_down(cache, tmp_path):
    from meshrec.train.loop import train

    cfg = tiny(cache, tmp_path, "track.enabled=true", "track.uri=http://127.0.0.1:9",
               "track.flush_timeout_s=2", "data.train_subjects=[S1]")
    metrics = train(cfg)
    assert metrics["steps"] == 2 and metrics["val_pve_mm"] > 0
    assert state_of(tmp_path)["step"] == 2


# ------------------------------------------------------------------ it learns

@pytest.mark.slow
def test_it_learns_beats_the_mean_params_baseline_on_held_out_subjects(tmp_path_factory,
                                                                       meshrec_cache):
    """A ResNet-18 at 48 px trained 60 steps (~1-2 minutes on 2 cores, by load) on 5 generated
    subjects, validated on the held-out S9 and S11."""
    from meshrec.train.loop import train

    root = tmp_path_factory.mktemp("learn")
    cfg = load_config(DEMO, [
        f"body.cache_dir={meshrec_cache}", "data.synth.frames_per_subject=24", "data.synth.size=64",
        "data.image_size=48", "data.backend=torch", "data.num_threads=1", "data.batch_size=32",
        "data.train_subjects=[S1,S5,S6,S7,S8]", "data.val_subjects=[S9,S11]",
        "eval.subjects=[S9,S11]", "eval.batch_size=64", "model.hidden=256", "model.dropout=0.1",
        "optim.lr=0.001", "train.epochs=4", "eval.every_epochs=0", "track.enabled=false",
        "track.overlays=0", f"train.output_dir={root / 'run'}", "train.log_every=20"])
    m = train(cfg)
    print(f"held-out S9+S11 ({m['val_samples']:.0f} crops): PVE model {m['val_pve_mm']:.1f} mm, "
          f"mean params {m['val_baseline_pve_mm']:.1f} mm; PA-MPJPE model "
          f"{m['val_pa_mpjpe_mm']:.1f} mm, mean params {m['val_baseline_pa_mpjpe_mm']:.1f} mm")
    assert m["val_pve_mm"] <= 0.7 * m["val_baseline_pve_mm"]


def test_repeated_validation_with_pictures_sees_every_sample(cache, tmp_path):
    """The pictures come from the evaluation pass itself: a DALI loader left mid-epoch by a
    separate peek would start the next validation where the peek stopped."""
    from meshrec.train import dist
    from meshrec.train.loop import build_run, validate

    run = build_run(tiny(cache, tmp_path, "data.backend=dali", "eval.batch_size=4"),
                    dist.DistEnv(0, 1, 0, torch.device("cpu")))
    first, pictures = validate(run, overlays=1)
    second, _ = validate(run, overlays=1)
    assert len(pictures) == 1 and pictures[0][1].ndim == 3
    assert first["val_samples"] == second["val_samples"] == 16  # S9: 4 frames × 4 cameras


def test_every_run_logs_enough_rows_for_a_curve():
    from meshrec.train.loop import MIN_CURVE_POINTS, logging_interval

    assert logging_interval(50, 48) == 2            # the demo: 48 steps, 24 rows, not 0
    assert logging_interval(50, 100_000) == 50      # long runs keep train.log_every
    assert logging_interval(50, 5) == 1
    for total in (1, 19, 20, 48, 999, 1000, 5000):
        every = logging_interval(50, total)
        assert total // every >= min(total, MIN_CURVE_POINTS) and every <= 50
