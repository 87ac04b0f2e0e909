"""launch/sweep.py and slurm/train_full.sh, through the real command line, a real one-node SLURM
(`slurm_cluster`) and a real MLflow server (`mlflow_server`). Cells are tiny: ResNet-18 from
random init on 32 px crops of a few generated frames, one epoch, two CPU tasks over gloo."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient

from meshrec.config import ConfigError
from meshrec.errors import MeshrecError
from meshrec.launch.executor import executor_parameters
from meshrec.launch.plan import DEMO_CELLS, DEMO_FILE, plan
from meshrec.launch.report import against_baseline, ui_command
from meshrec.launch.runs import run_label
from meshrec.launch.grid import load_sweep
from tests.slurm_jobs import in_queue, jobs_named, unfinished, wait_for
from tests.tiny_config import CELL

REPO = Path(__file__).resolve().parents[1]
SWEEP = [sys.executable, str(REPO / "launch" / "sweep.py")]
TINY = [*CELL, "train.device=cpu", "launch.slurm.gpus_per_node=0",
        "launch.slurm.tasks_per_node=2", "launch.slurm.cpus_per_task=1", "launch.slurm.mem_gb=0",
        "launch.slurm.time_min=10", "launch.executor=slurm"]


@pytest.fixture(scope="session")
def cache(meshrec_cache) -> Path:
    """The session's shared cache as is: the cells make their own recipe's data on first use
    (conftest's `cache` would also build the training tests' recipe)."""
    return meshrec_cache


def write_grid(path: Path, grid: object, **extra: object) -> Path:
    path.write_text(yaml.safe_dump({"defaults": [str(REPO / "configs" / "base.yaml")],
                                    "grid": grid, **extra}))
    return path


def settings(tmp: Path, cache: Path, name: str, uri: str = "", *more: str) -> list[str]:
    out = [*TINY, f"body.cache_dir={cache}", f"train.output_dir={tmp / 'runs'}",
           f"launch.log_dir={tmp / 'logs'}", f"launch.job_name={name}",
           f"track.experiment={name}", *more]
    return out + ([f"track.uri={uri}"] if uri else [])


def cli(grid: Path, args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*SWEEP, "--grid", str(grid), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, check=False)


def children(client: MlflowClient, experiment: str) -> tuple[list, list]:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return [], []
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("meshrec.role") == "sweep"]
    cells = [r for r in runs if "meshrec.cell" in r.data.tags]
    return parents, cells


def all_done(client: MlflowClient, experiment: str, count: int) -> bool:
    _, cells = children(client, experiment)
    return len(cells) == count and all(r.data.tags.get("meshrec.done") == "true" for r in cells)


# ------------------------------------------------------------------ no cluster needed

def test_dry_run_prints_cells_and_sbatch_header_and_writes_nothing(tmp_path, cache):
    grid = write_grid(tmp_path / "grid.yaml", {"loss.w_body": [0.0, 0.5, 1.0],
                                               "loss.type": ["l1"]})
    args = settings(tmp_path, cache, "dry", "", "launch.slurm.array_parallelism=2",
                    "launch.slurm.partition=gpu", "launch.slurm.additional={mail-type: END}")
    done = cli(grid, [*args, "--dry-run"], tmp_path)
    assert done.returncode == 0, done.stderr
    expected = load_sweep(grid, args).cells
    assert len(expected) == 3
    for cell in expected:
        line = next(l for l in done.stdout.splitlines() if l.startswith(cell.name))
        assert f"{cell.values['loss.w_body']}" in line and "l1" in line
    for flag in ("--array=0-2%2", "--ntasks-per-node=2", "--partition=gpu", "--mail-type=END",
                 "--signal=USR2@120", "--time=10", "--cpus-per-task=1"):
        assert f"#SBATCH {flag}" in done.stdout, flag
    assert "--gpus-per-node" not in done.stdout  # gpus_per_node=0 asks for none
    assert "nothing submitted" in done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.yaml"]  # no logs, runs, mlflow.db


def test_demo_plan_is_a_few_local_cells_of_the_same_grid():
    full = plan(REPO / "configs" / "loss_weights.yaml")
    demo = plan(REPO / "configs" / "loss_weights.yaml", demo=True)
    assert len(full.cells) == 24 and len(demo.cells) == DEMO_CELLS
    assert demo.executor == "local"
    assert demo.cells[0].values == full.cells[0].values
    assert demo.cells[-1].values == full.cells[-1].values
    assert {k for c in demo.cells for k in c.values} == set(full.sweep.grid)
    cfg = demo.cells[0].config
    demo_epochs = yaml.safe_load(DEMO_FILE.read_text())["train"]["epochs"]
    assert (cfg.model.encoder, cfg.train.epochs, cfg.data.shards) == ("resnet18", demo_epochs, "")
    assert demo.uri.startswith("sqlite:///") and demo.uri.endswith("runs/demo/mlflow.db")
    assert executor_parameters(cfg, "local")["tasks_per_node"] == 1


def test_tasks_per_node_defaults_to_one_per_gpu_and_gres_replaces_gpus_per_node():
    base = plan(REPO / "configs" / "loss_weights.yaml",
                ["launch.slurm.gpus_per_node=4", "launch.slurm.nodes=2"]).cfg
    params = executor_parameters(base, "slurm")
    assert (params["tasks_per_node"], params["gpus_per_node"], params["nodes"]) == (4, 4, 2)
    gres = plan(REPO / "configs" / "loss_weights.yaml",
                ["launch.slurm.gpus_per_node=4", "launch.slurm.gres=gpu:4"]).cfg
    params = executor_parameters(gres, "slurm")
    assert params["slurm_gres"] == "gpu:4" and "gpus_per_node" not in params


def test_cells_ask_to_be_requeued_and_find_their_rendezvous_port_on_the_first_node():
    from submitit.slurm.slurm import _make_sbatch_string

    cfg = plan(REPO / "configs" / "loss_weights.yaml", ["launch.slurm.nodes=2"]).cfg
    params = executor_parameters(cfg, "slurm")
    script = _make_sbatch_string("python -c pass", "/tmp/x", setup=params["slurm_setup"],
                                 additional_parameters=params["slurm_additional_parameters"])
    assert "#SBATCH --requeue" in script.splitlines()  # after NODE_FAIL, even if JobRequeue=0
    (port,) = [line for line in params["slurm_setup"] if "MASTER_PORT" in line]
    assert port == f"export MASTER_PORT=$({sys.executable} -m meshrec.train.rendezvous)"
    printed = subprocess.run([sys.executable, "-m", "meshrec.train.rendezvous"], cwd=REPO,
                             capture_output=True, text=True, check=True, timeout=60).stdout
    assert 0 < int(printed) < 65536
    opted_out = plan(REPO / "configs" / "loss_weights.yaml",
                     ['launch.slurm.additional={no-requeue: ""}']).cfg
    assert executor_parameters(opted_out, "slurm")["slurm_additional_parameters"] == {
        "no-requeue": True}


# ------------------------------------------------------------------ real SLURM

@pytest.mark.slurm
@pytest.mark.parametrize("case", ["unknown key", "empty grid", "empty values", "missing shards"])
def test_bad_sweep_is_rejected_before_anything_is_queued(case, slurm_cluster, mlflow_server,
                                                        tmp_path, cache):
    name = f"bad-{uuid.uuid4().hex[:8]}"
    grid = {"unknown key": {"loss.w_nope": [1.0]}, "empty grid": {},
            "empty values": {"loss.w_body": []}}.get(case, {"loss.w_body": [0.0, 1.0]})
    path = write_grid(tmp_path / "grid.yaml", grid)
    extra = ["data.shards=/nonexistent/shards"] if case == "missing shards" else []
    done = cli(path, settings(tmp_path, cache, name, mlflow_server,
                              f"launch.slurm.partition={slurm_cluster.partition}", *extra),
               tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sweep.py: error:"), done.stderr
    word = {"unknown key": "w_nope", "empty grid": "grid", "empty values": "loss.w_body",
            "missing shards": "/nonexistent/shards"}[case]
    assert word in lines[0]
    assert jobs_named(name) == [] and in_queue(name) == []
    assert MlflowClient(mlflow_server).get_experiment_by_name(name) is None


@pytest.mark.slurm
@pytest.mark.slow
def test_two_cell_sweep_runs_ddp_cells_tracks_them_and_is_not_resubmitted(
        slurm_cluster, mlflow_server, tmp_path, cache):
    name = f"sweep-{uuid.uuid4().hex[:8]}"
    grid = write_grid(tmp_path / "grid.yaml", {"loss.w_body": [0.0, 1.0]})
    args = settings(tmp_path, cache, name, mlflow_server,
                    f"launch.slurm.partition={slurm_cluster.partition}")
    first = cli(grid, args, tmp_path)
    assert first.returncode == 0, first.stderr
    assert "submitted 2 cell(s) as SLURM job array" in first.stdout
    assert f"MLflow experiment '{name}'" in first.stdout and mlflow_server in first.stdout
    client = MlflowClient(mlflow_server)
    wait_for(lambda: not unfinished(name), "both cells ended", name=name)
    states = dict(jobs_named(name))
    assert len(states) == 2 and set(states.values()) == {"COMPLETED"}, states

    parents, cells = children(client, name)
    assert len(parents) == 1 and len(cells) == 2
    # No sweep process waited for the array: the last cell to finish closed the sweep run.
    assert parents[0].info.status == "FINISHED" and parents[0].data.metrics["cells_finished"] == 2
    expected = {c.name for c in load_sweep(grid, args).cells}
    assert {r.data.tags["meshrec.cell"] for r in cells} == expected
    for run in cells:
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.data.tags["meshrec.done"] == "true"
        assert run.data.tags["world_size"] == "2"  # each cell was a 2-task DDP run
        assert run.data.tags["meshrec.job_id"] in states
        assert run.data.metrics["val_pve_mm"] > 0
        assert run.data.params["loss.w_body"] == run.data.tags["grid.loss.w_body"]

    again = cli(grid, args, tmp_path)
    assert again.returncode == 0, again.stderr
    assert "nothing to submit" in again.stdout
    assert len(jobs_named(name)) == 2 and in_queue(name) == []
    parents2, cells2 = children(client, name)
    assert [r.info.run_id for r in parents2] == [parents[0].info.run_id]
    assert sorted(r.info.run_id for r in cells2) == sorted(r.info.run_id for r in cells)

    status = cli(grid, [*args, "--status"], tmp_path)
    assert status.returncode == 0, status.stderr
    rows = [l for l in status.stdout.splitlines() if l[:12] in expected]
    assert len(rows) == 2 and all(" finished " in r for r in rows)

    report = cli(grid, [*args, "--report"], tmp_path)
    assert report.returncode == 0, report.stderr
    best = min(cells, key=lambda r: r.data.metrics["val_pve_mm"]).data.tags["meshrec.cell"]
    assert f"best cell: {best}" in report.stdout
    parent = client.get_run(parents[0].info.run_id)
    assert parent.data.tags["meshrec.best_cell"] == best
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/cells.csv", "report/val_pve_mm_vs_loss.w_body.png",
            "report/parallel_coordinates.png"} <= logged


@pytest.mark.slurm
@pytest.mark.slow
def test_preempted_cell_requeues_resumes_and_ends_as_an_uninterrupted_run(
        slurm_cluster, mlflow_server, tmp_path, cache):
    name = f"requeue-{uuid.uuid4().hex[:8]}"
    grid = write_grid(tmp_path / "grid.yaml", {"loss.w_body": [0.5]})
    # Global batch 8 (4 a rank), two epochs, a checkpoint every second step.
    common = [f"launch.slurm.partition={slurm_cluster.partition}", "data.batch_size=8",
              "train.epochs=2", "train.checkpoint_every=2"]
    args = settings(tmp_path, cache, name, mlflow_server, *common)
    first = cli(grid, args, tmp_path)
    assert first.returncode == 0, first.stderr
    (cell,) = load_sweep(grid, args).cells
    ckpts = tmp_path / "runs" / "cells" / cell.name / "checkpoints"
    wait_for(lambda: len(list(ckpts.glob("step_*.pt"))) >= 2, "a few steps checkpointed",
             name=name, alive=True)
    (job_id,) = [j for j, _ in jobs_named(name)]
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=30)

    # The same cell, never interrupted, in another experiment and directory.
    other = tmp_path / "straight"
    other.mkdir()
    name2 = f"straight-{uuid.uuid4().hex[:8]}"
    straight = cli(grid, settings(other, cache, name2, mlflow_server, *common), other)
    assert straight.returncode == 0, straight.stderr
    wait_for(lambda: not unfinished(name) and not unfinished(name2), "both jobs ended",
             name=name)

    assert dict(jobs_named(name)) == {job_id: "COMPLETED"}
    logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "logs").rglob("*_0_log.*"))
    assert "Requeued job" in logs
    resumed = re.search(r"resumed from \S+ at step (\d+)", logs)
    assert resumed and int(resumed.group(1)) >= 2
    steps = re.search(r"(\d+) steps/epoch × 2 epochs", logs)
    client = MlflowClient(mlflow_server)
    parents, cells = children(client, name)
    assert len(parents) == 1 and len(cells) == 1  # the requeued job continued the cell's run
    run = cells[0]
    assert run.data.tags["meshrec.done"] == "true"
    assert "val_pve_mm" in run.data.metrics
    state = torch.load(ckpts / "last.pt", weights_only=True)
    assert state["step"] == 2 * int(steps.group(1))
    assert state["mlflow_run_id"] == run.info.run_id
    reference = torch.load(other / "runs" / "cells" / cell.name / "checkpoints" / "last.pt",
                           weights_only=True)
    assert reference["step"] == state["step"]
    for key, value in reference["model"].items():
        assert torch.equal(value, state["model"][key]), key

    again = cli(grid, args, tmp_path)
    assert "nothing to submit" in again.stdout and len(jobs_named(name)) == 1


def sbatch_train_full(partition: str, name: str, env: dict, tmp_path: Path) -> str:
    """Submit slurm/train_full.sh as a user would (2 CPU tasks, log tmp_path/slurm-<id>.out)."""
    submitted = subprocess.run(
        ["sbatch", "--parsable", f"--job-name={name}", f"--partition={partition}",
         "--gpus-per-node=0", "--ntasks-per-node=2", "--cpus-per-task=1", "--mem=0",
         "--time=15", f"--output={tmp_path / 'slurm-%j.out'}", str(REPO / "slurm" / "train_full.sh")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert submitted.returncode == 0, submitted.stderr
    return submitted.stdout.strip().split(";")[0]


# ------------------------------------------------------------------ local executor

def test_cells_are_checked_against_their_labels_before_anything_is_queued(tmp_path, cache,
                                                                          standin_file):
    grid = write_grid(tmp_path / "grid.yaml", {"loss.w_joint3d": [0.0, 1.0]})
    # An SMPL-format file (not the generated stand-in) without body.h36m_regressor: no regressor.
    args = settings(tmp_path, cache, "labels", "", f"body.model_path={standin_file}")
    done = cli(grid, [*args, "--local"], tmp_path)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert "loss.w_joint3d / loss.w_kp2d needs Human3.6M's joint regressor" in lines[-1], done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "runs").exists() and not list(tmp_path.glob("**/mlflow.db"))
    varied = write_grid(tmp_path / "protocols.yaml", {"eval.protocol": ["smpl", "h36m-p2"]})
    with pytest.raises(ConfigError, match="do not vary the protocol"):
        plan(varied)


def test_cell_runs_are_named_by_their_grid_values():
    from meshrec.launch.grid import Cell

    cell = Cell("0123456789ab", {"loss.w_body": 0.1, "loss.w_shape": 0.0, "loss.type": "l1",
                                 "optim.type": "x"}, None)
    assert run_label(cell) == "w_body=0.1 w_shape=0.0 loss.type=l1 optim.type=x"
    assert run_label(Cell("0123456789ab", {}, None)) == "0123456789ab"


def test_best_cell_is_shown_beside_the_mean_parameters_baseline_metric_by_metric():
    line = against_baseline({
        "val_pve_mm": 184.4, "val_baseline_pve_mm": 588.8, "val_pa_mpjpe_mm": 110.0,
        "val_baseline_pa_mpjpe_mm": 108.4, "val_samples": 512.0, "train_loss": 0.1})
    # Every validation metric that has a baseline, in name order; a loss to it is flagged.
    assert line == "pa_mpjpe_mm 110 vs 108.4 (NOT better) · pve_mm 184.4 vs 588.8"
    assert against_baseline({"val_pve_mm": 1.0}) == ""


def test_ui_link_opens_the_experiment_on_model_training():
    # MLflow 3.17.2's UI opens GenAI unless the URL says otherwise (checked in test_browser.py).
    page = "/#/experiments/7?workflowType=machine_learning"
    assert ui_command("http://login1:5000/", "7").startswith(
        f"browse http://login1:5000{page} (")
    assert f"http://localhost:5000{page})" in ui_command("http://login1:5000", "7")
    assert ui_command("sqlite:///x/mlflow.db", "7") == (
        f"mlflow ui --backend-store-uri sqlite:///x/mlflow.db, then browse http://127.0.0.1:5000{page}")


def test_no_sbatch_on_path_means_local_with_a_notice(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no sbatch
    p = plan(REPO / "configs" / "loss_weights.yaml")
    assert p.executor == "local" and "no `sbatch`" in p.notice
    with pytest.raises(MeshrecError, match="sbatch"):
        plan(REPO / "configs" / "loss_weights.yaml", ["launch.executor=slurm"])


@pytest.mark.slow
def test_failed_local_cell_is_resubmitted_into_its_run(mlflow_server, tmp_path, cache):
    name = f"local-{uuid.uuid4().hex[:8]}"
    grid = write_grid(tmp_path / "grid.yaml", {"loss.w_body": [0.5]})
    # A readable file (the checks before queueing pass) that is no mean-parameters file: the
    # job fails when it builds the model.
    bad = tmp_path / "mean.npz"
    bad.write_text("not an npz")
    args = settings(tmp_path, cache, name, mlflow_server, "launch.slurm.tasks_per_node=1",
                    f"model.mean_params={bad}")
    first = cli(grid, [*args, "--local"], tmp_path)
    assert first.returncode == 1, first.stderr
    assert "FAILED" in first.stdout
    status = cli(grid, [*args, "--local", "--status"], tmp_path)
    assert " failed " in status.stdout
    client = MlflowClient(mlflow_server)
    (parent,), (run_before,) = children(client, name)
    # The only cell failed for good: the sweep run ends FAILED, and says why the cell did.
    assert parent.info.status == "FAILED", parent.info.status
    assert parent.data.metrics["cells_failed"] == 1 and parent.data.metrics["cells_finished"] == 0
    assert run_before.info.status == "FAILED"
    assert "mean" in run_before.data.tags["meshrec.failed"]

    again = cli(grid, [*args, "--local"], tmp_path)
    assert again.returncode == 1 and "started cell" in again.stdout
    parents, cells = children(client, name)
    assert len(parents) == 1 and [r.info.run_id for r in cells] == [run_before.info.run_id]
    # Runs named by what they are: the grid file and date; the cell's grid values.
    assert re.fullmatch(r"grid \d{4}-\d\d-\d\d \d\d:\d\d", parents[0].info.run_name)
    assert cells[0].info.run_name == "w_body=0.5"
    assert cells[0].data.tags["meshrec.job_id"] != run_before.data.tags["meshrec.job_id"]
    assert cells[0].data.tags["meshrec.executor"] == "local"


@pytest.mark.slurm
@pytest.mark.slow
def test_train_full_script_requeues_itself_on_usr1_and_resumes(slurm_cluster, mlflow_server,
                                                               tmp_path, cache):
    """What a user submits: two DDP tasks train on S1 S5 S6 S7 S8, a USR1 (time limit near)
    requeues the job, which resumes into the same MLflow run, then evaluates on S9 S11."""
    name = f"fullrq-{uuid.uuid4().hex[:8]}"
    overrides = [o for o in TINY if not o.startswith(("launch.", "train.device", "train.epochs",
                                                      "train.checkpoint_every", "data.batch_size",
                                                      "data.num_threads"))]
    out = tmp_path / "out"
    env = {**os.environ, "CONFIG": str(REPO / "configs" / "demo.yaml"), "OUT": str(out),
           "PYTHON": sys.executable,
           "OVERRIDES": " ".join([*overrides, "data.batch_size=16", "train.epochs=2",
                                  "data.num_threads=1",  # loader workers, as a user's run has
                                  "train.checkpoint_every=2", f"body.cache_dir={cache}",
                                  f"track.uri={mlflow_server}", f"track.experiment={name}"])}
    job_id = sbatch_train_full(slurm_cluster.partition, name, env, tmp_path)
    wait_for(lambda: len(list((out / "checkpoints").glob("step_*.pt"))) >= 2,
             "a few steps checkpointed", name=name, alive=True)
    # What SLURM sends 120 s before the time limit (--signal=B:USR1@120): the batch shell only.
    subprocess.run(["scancel", "--batch", "--signal=USR1", job_id], check=True, timeout=30)
    wait_for(lambda: "restart 1" in (tmp_path / f"slurm-{job_id}.out").read_text(),
             "the job restarted", name=name)
    wait_for(lambda: not unfinished(name), "train_full.sh ended", name=name)
    log = (tmp_path / f"slurm-{job_id}.out").read_text(errors="replace")
    assert dict(jobs_named(name)) == {job_id: "COMPLETED"}, log[-3000:]
    assert "requeueing job" in log
    resumed = re.search(r"resumed from \S+ at step (\d+)", log)
    assert resumed and int(resumed.group(1)) >= 2, log[-3000:]
    assert "on 2 × cpu" in log  # srun started two DDP tasks
    evaluation = (out / "eval.txt").read_text()
    assert "subjects S9, S11" in evaluation and "pve_mm=" in evaluation
    client = MlflowClient(mlflow_server)
    (run,) = client.search_runs([client.get_experiment_by_name(name).experiment_id])
    assert run.data.tags["meshrec.done"] == "true"  # one run, continued after the requeue
    assert run.data.params["data.train_subjects"] == '["S1", "S5", "S6", "S7", "S8"]'
