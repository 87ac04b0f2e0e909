"""The test infrastructure itself: a real SLURM with accounting, and a real MLflow tracking server.

These are the templates for SLURM tests: submit through submitit to ``slurm_cluster.partition``,
keep the job folder in ``tmp_path``, never block on ``job.result()`` without bounding the wait first
(``wait_done``), and read the final state from ``sacct``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import cloudpickle
import mlflow
import pytest
import submitit
from mlflow.tracking import MlflowClient

# The job's interpreter cannot import this test module, so job functions travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

JOB_DEADLINE_S = 90
_RUNNING_STATES = {"PENDING", "RUNNING", "COMPLETING", "CONFIGURING", "REQUEUED", "RESIZING"}


def slurm_executor(folder: Path, partition: str, **params: object) -> submitit.AutoExecutor:
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    executor.update_parameters(slurm_partition=partition, timeout_min=3, cpus_per_task=1, **params)
    return executor


def wait_done(job: submitit.Job, seconds: float = JOB_DEADLINE_S) -> None:
    """Wait until submitit sees the job finished, or cancel it and fail the test."""
    deadline = time.monotonic() + seconds
    while not job.done(force_check=True):
        if time.monotonic() > deadline:
            job.cancel(check=False)
            pytest.fail(f"SLURM job {job.job_id} not finished after {seconds:.0f} s "
                        f"(state {job.state})")
        time.sleep(1)


def sacct_state(job_id: str, seconds: float = 30) -> str:
    """The job's final state as accounting records it (it may lag the job's end a moment)."""
    deadline = time.monotonic() + seconds
    while True:
        out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id],
                             capture_output=True, text=True, check=True, timeout=20).stdout.split()
        state = out[0] if out else "UNKNOWN"
        if (out and state not in _RUNNING_STATES) or time.monotonic() > deadline:
            return state
        time.sleep(0.5)


# ---- job functions (run inside SLURM jobs) ----------------------------------------------------

def sum_of_squares(n: int) -> tuple[int, str | None]:
    return sum(i * i for i in range(n)), os.environ.get("SLURM_JOB_ID")


def my_rank() -> tuple[int, int]:
    env = submitit.JobEnvironment()
    return env.global_rank, env.num_tasks


def die_without_result() -> None:
    os._exit(3)


def log_to_mlflow(uri: str, experiment_id: str) -> str:
    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(experiment_id, tags={"slurm_job_id": os.environ["SLURM_JOB_ID"]})
    client.log_metric(run.info.run_id, "step_loss", 0.25, step=7)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


# ---- SLURM ------------------------------------------------------------------------------------

@pytest.mark.slurm
def test_job_returns_value_computed_in_the_job(slurm_cluster, tmp_path):
    job = slurm_executor(tmp_path / "jobs", slurm_cluster.partition).submit(sum_of_squares, 1000)
    wait_done(job)
    value, job_id_inside = job.result()
    assert value == sum(i * i for i in range(1000))
    assert job_id_inside == job.job_id  # it ran as that SLURM job, not in this process
    assert sacct_state(job.job_id) == "COMPLETED"


@pytest.mark.slurm
def test_two_tasks_get_ranks_0_and_1(slurm_cluster, tmp_path):
    executor = slurm_executor(tmp_path / "jobs", slurm_cluster.partition, tasks_per_node=2)
    job = executor.submit(my_rank)
    wait_done(job)
    results = job.results()
    assert sorted(rank for rank, _ in results) == [0, 1]
    assert {n for _, n in results} == {2}
    assert sacct_state(job.job_id) == "COMPLETED"


@pytest.mark.slurm
def test_job_dying_without_result_raises_promptly(slurm_cluster, tmp_path):
    job = slurm_executor(tmp_path / "jobs", slurm_cluster.partition).submit(die_without_result)
    wait_done(job)  # finishes only because accounting reports the failure
    with pytest.raises(submitit.core.utils.UncompletedJobError, match="FAILED"):
        job.result()
    assert sacct_state(job.job_id) == "FAILED"


@pytest.mark.slurm
def test_job_logs_to_mlflow_server(slurm_cluster, mlflow_server, tmp_path):
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment_id = client.create_experiment(f"infra-job-{uuid.uuid4().hex[:8]}")
    job = slurm_executor(tmp_path / "jobs", slurm_cluster.partition).submit(
        log_to_mlflow, mlflow_server, experiment_id)
    wait_done(job)
    run_id = job.result()
    (run,) = client.search_runs([experiment_id])
    assert run.info.run_id == run_id
    assert run.data.tags["slurm_job_id"] == job.job_id
    assert run.data.metrics["step_loss"] == 0.25


# ---- MLflow -----------------------------------------------------------------------------------

def test_mlflow_server_round_trip(mlflow_server, tmp_path):
    writer = MlflowClient(tracking_uri=mlflow_server)
    experiment_id = writer.create_experiment(f"infra-{uuid.uuid4().hex[:8]}")
    run = writer.create_run(experiment_id, tags={"cell": "c0ffee"})
    other = writer.create_run(experiment_id, tags={"cell": "other"})
    writer.log_param(run.info.run_id, "w_vert", "0.5")
    writer.log_metric(run.info.run_id, "val_mpjpe", 81.25, step=3)
    writer.log_text(run.info.run_id, "cells: 1\n", "report/summary.txt")
    for r in (run, other):
        writer.set_terminated(r.info.run_id)

    reader = MlflowClient(tracking_uri=mlflow_server)  # a fresh client: everything comes over HTTP
    found = reader.search_runs(
        [experiment_id], filter_string="tags.cell = 'c0ffee' and params.w_vert = '0.5'")
    assert [r.info.run_id for r in found] == [run.info.run_id]
    assert found[0].data.metrics == {"val_mpjpe": 81.25}
    assert found[0].info.status == "FINISHED"
    assert [m.step for m in reader.get_metric_history(run.info.run_id, "val_mpjpe")] == [3]
    # Artifacts are proxied by the server, not written by the client into a local path.
    assert found[0].info.artifact_uri.startswith("mlflow-artifacts:")
    local = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="report/summary.txt", dst_path=str(tmp_path),
        tracking_uri=mlflow_server)
    assert Path(local).read_text() == "cells: 1\n"
