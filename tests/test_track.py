"""MLflow tracking against a real `mlflow server`, including one that goes down mid-run."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from meshrec.config import Config, config_hash, to_dict, with_overrides
from meshrec.track import DONE_TAG, MAX_PARAM_LEN, Tracker, flatten_params
from meshrec.train.rendezvous import free_port

INFRA = Path(__file__).parent / "infra"
# Generous: a logging call may never block for anything like MLflow's default minutes.
PROMPT_S = 30.0


def _cfg(uri: str, **extra: str) -> Config:
    overrides = [f"track.uri={uri}", "track.experiment=meshrec-tests", "track.flush_timeout_s=60"]
    return with_overrides(Config(), overrides + [f"{k}={v}" for k, v in extra.items()])


def _tags(cfg: Config) -> dict:
    return {"meshrec.git_sha": "0123abc", "meshrec.config_hash": config_hash(cfg),
            "meshrec.manifest_hash": "feedbeef", "meshrec.body_model": "standin",
            "meshrec.world_size": 2, "meshrec.device": "cpu"}


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= _artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def test_flatten_params():
    flat = flatten_params({"a": {"b": 1, "c": [1, "x"], "d": {}, "e": True, "f": {"g": None}},
                           "long": "z" * (MAX_PARAM_LEN + 50)})
    assert flat == {"a.b": "1", "a.c": '[1, "x"]', "a.d": "{}", "a.e": "true", "a.f.g": "None",
                    "long": "z" * (MAX_PARAM_LEN - 3) + "..."}


def test_run_has_params_metrics_tags_artifacts(mlflow_server, tmp_path):
    cfg = _cfg(mlflow_server)
    tracker = Tracker(cfg, enabled=True)
    run_id = tracker.start("params-metrics", to_dict(cfg), _tags(cfg))
    assert run_id
    for step in range(5):
        tracker.log_metrics({"train/loss": 1.0 / (step + 1), "lr": 0.1 * step}, step)
    tracker.log_dict({"pve_mm": 12.5, "mse": 0.002}, "final_metrics.json")
    tracker.log_text("resolved: true\n", "config/resolved.yaml")
    image = np.zeros((6, 9, 3), np.uint8)
    image[..., 0] = 255
    tracker.log_image(image, "overlays/epoch_000/sample_0")
    note = tmp_path / "note.txt"
    note.write_text("before")
    tracker.log_artifact(note)
    note.write_text("changed after the call")  # the queued copy is what was there at call time
    assert tracker.finish()

    client = MlflowClient(mlflow_server)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "params-metrics"
    params = run.data.params
    assert params == flatten_params(to_dict(cfg))
    assert params["optim.lr"] == str(cfg.optim.lr)
    assert json.loads(params["data.train_subjects"]) == list(cfg.data.train_subjects)
    assert run.data.tags["meshrec.config_hash"] == config_hash(cfg)
    assert run.data.tags["meshrec.world_size"] == "2"
    assert run.data.tags[DONE_TAG] == "true"
    assert _history(client, run_id, "train/loss") == [(s, 1.0 / (s + 1)) for s in range(5)]
    assert _history(client, run_id, "lr") == [(s, pytest.approx(0.1 * s)) for s in range(5)]
    assert _artifacts(client, run_id) == {"final_metrics.json", "config/resolved.yaml",
                                          "overlays/epoch_000/sample_0.png", "note.txt"}
    out = Path(client.download_artifacts(run_id, "", str(tmp_path / "down")))
    assert json.loads((out / "final_metrics.json").read_text())["pve_mm"] == 12.5
    assert (out / "note.txt").read_text() == "before"
    from PIL import Image

    png = np.asarray(Image.open(out / "overlays/epoch_000/sample_0.png"))
    assert png.shape == (6, 9, 3) and (png == image).all()


def test_resume_appends_to_the_same_run(mlflow_server):
    cfg = _cfg(mlflow_server)
    first = Tracker(cfg, enabled=True)
    run_id = first.start("resumed", to_dict(cfg), _tags(cfg))
    first.log_metrics({"loss": 3.0}, 0)
    first.log_metrics({"loss": 2.0}, 1)
    # A requeue: the run ends without the done tag.
    assert first.finish(status="KILLED")
    client = MlflowClient(mlflow_server)
    assert client.get_run(run_id).info.status == "KILLED"
    assert DONE_TAG not in client.get_run(run_id).data.tags

    # The resumed job changes a field that is not hashed: the logged params stay as they were.
    again_cfg = with_overrides(cfg, ["train.log_every=7"])
    again = Tracker(again_cfg, enabled=True)
    assert again.start("resumed", to_dict(again_cfg), {"meshrec.requeues": 1},
                       run_id=run_id) == run_id
    assert client.get_run(run_id).info.status == "RUNNING"
    again.log_metrics({"loss": 1.0}, 2)
    assert again.finish()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags[DONE_TAG] == "true"
    assert run.data.tags["meshrec.requeues"] == "1"
    assert run.data.params["train.log_every"] == str(cfg.train.log_every)
    assert _history(client, run_id, "loss") == [(0, 3.0), (1, 2.0), (2, 1.0)]
    experiment = client.get_experiment_by_name("meshrec-tests")
    names = [r.info.run_name for r in client.search_runs([experiment.experiment_id])]
    assert names.count("resumed") == 1


def test_disabled_tracker_does_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for enabled, section in ((False, "true"), (True, "false")):
        tracker = Tracker(_cfg("", **{"track.enabled": section}), enabled=enabled)
        assert tracker.start("x", {"a": 1}, {}) is None
        tracker.log_metrics({"loss": 1.0}, 0)
        tracker.log_text("x", "x.txt")
        assert tracker.finish()
    assert list(tmp_path.iterdir()) == []


def test_unreachable_server_never_blocks(caplog):
    caplog.set_level(logging.WARNING, logger="meshrec.track")
    cfg = _cfg(f"http://127.0.0.1:{free_port('127.0.0.1')}", **{"track.flush_timeout_s": 2})
    tracker = Tracker(cfg, enabled=True)
    began = time.monotonic()
    assert tracker.start("nowhere", to_dict(cfg), {}, wait_s=1) is None
    for step in range(100):
        tracker.log_metrics({"loss": float(step)}, step)
    tracker.log_dict({"a": 1}, "a.json")
    assert tracker.finish() is False
    assert time.monotonic() - began < PROMPT_S
    tracker._thread.join(timeout=10)  # the sender stops; it does not go on retrying
    assert not tracker._thread.is_alive()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("unreachable" in m for m in messages) == 1
    assert any("not sent" in m for m in messages)


def _server(script: str, *args: str) -> str:
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(INFRA / script), *args], capture_output=True, text=True,
                          env=env, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


@pytest.mark.slow
def test_server_down_mid_run_then_back(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="meshrec.track")
    port, folder = str(free_port("127.0.0.1")), str(tmp_path / "mlflow")
    uri = _server("mlflow_up.sh", port, folder)
    try:
        cfg = _cfg(uri)
        tracker = Tracker(cfg, enabled=True)
        run_id = tracker.start("outage", to_dict(cfg), _tags(cfg))
        assert run_id
        tracker.log_metrics({"loss": 0.0}, 0)
        assert tracker.flush(timeout=30)

        _server("mlflow_down.sh", folder)
        began = time.monotonic()
        for step in range(1, 41):
            tracker.log_metrics({"loss": float(step), "img_s": 10.0 + step}, step)
        tracker.set_tags({"meshrec.epoch": 3})
        tracker.log_dict({"epoch": 3}, "metrics/epoch_003.json")
        assert time.monotonic() - began < PROMPT_S
        assert not tracker.flush(timeout=3)  # nothing can arrive while the server is down
        assert any("unreachable" in r.getMessage() for r in caplog.records)

        assert _server("mlflow_up.sh", port, folder) == uri
        assert tracker.finish()
        client = MlflowClient(uri)
        run = client.get_run(run_id)
        assert _history(client, run_id, "loss") == [(s, float(s)) for s in range(41)]
        assert len(_history(client, run_id, "img_s")) == 40
        assert run.data.tags["meshrec.epoch"] == "3" and run.data.tags[DONE_TAG] == "true"
        assert run.info.status == "FINISHED"
        assert "metrics/epoch_003.json" in _artifacts(client, run_id)
        assert any("reachable again" in r.getMessage() for r in caplog.records)
    finally:
        _server("mlflow_down.sh", folder)


@pytest.mark.slow
def test_default_local_store_in_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = _cfg("")
    tracker = Tracker(cfg, enabled=True)
    run_id = tracker.start("local", {"a": {"b": 1}}, {"k": "v"}, wait_s=60)
    tracker.log_metrics({"loss": 0.5}, 3)
    assert tracker.finish()
    assert (tmp_path / "mlflow.db").is_file()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(run_id)
    assert run.data.params == {"a.b": "1"} and run.data.tags["k"] == "v"
    assert _history(client, run_id, "loss") == [(3, 0.5)]


def test_non_finite_metrics_and_bad_values_do_not_lose_the_rest(mlflow_server, caplog):
    cfg = _cfg(mlflow_server)
    tracker = Tracker(cfg, enabled=True)
    run_id = tracker.start("non-finite", {}, {})
    tracker.log_metrics({"loss": float("nan"), "grad": float("inf")}, 0)
    tracker.set_tags({"bad*key?": "x"})  # MLflow refuses this name: dropped with a warning
    tracker.log_metrics({"loss": 1.0, "grad": 2.0, "bad*name?": 3.0}, 1)
    # Mistakes in a logging call warn; they never raise into the training loop.
    tracker.log_artifact("/nonexistent/file.txt")
    tracker.log_metrics({"loss": "not a number"}, 2)
    assert tracker.finish()
    assert sum("skipped" in r.getMessage() for r in caplog.records) == 2
    assert any("refused" in r.getMessage() for r in caplog.records)
    client = MlflowClient(mlflow_server)
    loss, grad = _history(client, run_id, "loss"), _history(client, run_id, "grad")
    assert [s for s, _ in loss] == [0, 1] and np.isnan(loss[0][1]) and loss[1][1] == 1.0
    # MLflow stores +inf as the largest float.
    assert grad[0][1] >= np.finfo(np.float64).max and grad[1] == (1, 2.0)
    assert client.get_run(run_id).data.tags[DONE_TAG] == "true"


def test_server_that_never_answers_does_not_hold_the_run():
    # Accepts connections (kernel backlog) but never replies: every request hangs until timeout.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        cfg = _cfg(f"http://127.0.0.1:{silent.getsockname()[1]}", **{"track.flush_timeout_s": 2})
        tracker = Tracker(cfg, enabled=True)
        began = time.monotonic()
        assert tracker.start("silent", {"a": 1}, {}, wait_s=1) is None
        for step in range(50):
            tracker.log_metrics({"loss": 1.0}, step)
        assert tracker.finish() is False
        assert time.monotonic() - began < PROMPT_S


def test_experiments_are_tagged_as_model_training(mlflow_server):
    """New experiments get the `mlflow.experimentKind` tag, existing ones (older meshrec) too.
    Which view MLflow 3.17.2's UI opens is tested in a browser (test_browser.py)."""
    import uuid

    from meshrec.track import EXPERIMENT_TAGS, experiment_for

    client = MlflowClient(mlflow_server)
    fresh, old = f"kind-{uuid.uuid4().hex[:8]}", f"kind-{uuid.uuid4().hex[:8]}"
    made = experiment_for(client, fresh)
    old_id = client.create_experiment(old)
    assert "mlflow.experimentKind" not in client.get_experiment(old_id).tags
    assert experiment_for(client, old) == old_id and experiment_for(client, fresh) == made
    for eid in (made, old_id):
        assert client.get_experiment(eid).tags["mlflow.experimentKind"] == "custom_model_development"
    assert EXPERIMENT_TAGS == {"mlflow.experimentKind": "custom_model_development"}
    # A run started by the tracker lands in a tagged experiment too.
    cfg = with_overrides(_cfg(mlflow_server), [f"track.experiment={fresh}-run"])
    tracker = Tracker(cfg, enabled=True)
    run_id = tracker.start("kind", to_dict(cfg), _tags(cfg))
    assert tracker.finish()
    exp = client.get_experiment(client.get_run(run_id).info.experiment_id)
    assert exp.name == f"{fresh}-run" and exp.tags["mlflow.experimentKind"] == "custom_model_development"
