"""Training on more than one node, through the two-node SLURM cluster (tests/infra/slurm2_up.sh):
a sweep cell and slurm/train_full.sh as DDP over gloo between two nodes, a node that dies mid-run,
and a rendezvous that cannot be reached. Tiny runs: ResNet-18 on 32 px crops, a few steps."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient

from meshrec.config import load_config
from meshrec.launch.grid import load_sweep
from tests.slurm_jobs import slurm
from tests.tiny_config import CELL

REPO = Path(__file__).resolve().parents[1]
DEADLINE_S = 400
# With test_two_nodes.py on one xdist worker: no test waits for another's node kill.
pytestmark = pytest.mark.xdist_group("two_nodes")
# Frozen random encoder (the head alone learns; no dropout, no augmentation: nothing random
# differs between runs), one task per node, one CPU each.
TWO_NODES = [*CELL, "model.freeze_encoder=true", "model.dropout=0.0", "data.augment.enabled=false",
             "features.enabled=false", "train.device=cpu",
             "launch.executor=slurm", "launch.slurm.nodes=2", "launch.slurm.tasks_per_node=1",
             "launch.slurm.gpus_per_node=0", "launch.slurm.cpus_per_task=1",
             "launch.slurm.mem_gb=0", "launch.slurm.time_min=10", "launch.rendezvous_timeout_s=60"]


def records(cluster, name: str) -> list[tuple[str, str, str]]:
    """(job id, state, node list) of each run of the jobs named `name` (-D: requeued runs too)."""
    out = slurm(cluster, "sacct", "-n", "-X", "-D", "-P", "-S", "now-1hour", "-o",
                "JobID,State,NodeList", "--name", name)
    return [tuple(line.split("|")) for line in out.splitlines() if line]


def queued(cluster, name: str) -> bool:
    return bool(slurm(cluster, "squeue", "-h", "-n", name, "-o", "%i").strip())


def wait_for(predicate, what: str, cluster, name: str, seconds: float = DEADLINE_S,
             poll: float = 1.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            log = slurm(cluster, "squeue", "-n", name) + slurm(cluster, "sinfo", "-N")
            subprocess.run(["scancel", "-n", name], env=cluster.env(), check=False)
            pytest.fail(f"{what}: not after {seconds:.0f} s\n{log}")
        time.sleep(poll)


def ended(cluster, name: str) -> bool:
    runs = records(cluster, name)
    return not queued(cluster, name) and bool(runs) and runs[-1][1] not in {"RUNNING",
                                                                           "PENDING", "REQUEUED"}


@pytest.mark.slurm
@pytest.mark.slow
def test_a_two_node_cell_outlives_a_dead_node_and_equals_a_one_node_run(
        slurm_two_nodes, nodes_mlflow, meshrec_cache, tmp_path, monkeypatch):
    cluster = slurm_two_nodes
    monkeypatch.setenv("SLURM_CONF", cluster.conf)  # submitit runs sbatch/sacct with os.environ
    name = f"twonode-{uuid.uuid4().hex[:8]}"
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"defaults": [str(REPO / "configs" / "base.yaml")],
                                    "grid": {"loss.w_body": [0.5]}}))
    # Global batch 8 (4 a rank), three epochs of 12 steps (long enough for the node to die
    # mid-run), a checkpoint every second step.
    common = [*TWO_NODES, "data.batch_size=8", "train.epochs=3", "train.checkpoint_every=2",
              f"body.cache_dir={meshrec_cache}"]
    args = [*common, f"launch.slurm.partition={cluster.partition}", f"launch.job_name={name}",
            f"track.experiment={name}", f"track.uri={nodes_mlflow}",
            f"train.output_dir={tmp_path / 'runs'}", f"launch.log_dir={tmp_path / 'logs'}"]
    # The cluster is held alone from submission on: the node dies when this test says so (no
    # other worker's two-node test holds it up), and no other node failure hits this job.
    with cluster.exclusive():
        sweep = subprocess.run([sys.executable, str(REPO / "launch" / "sweep.py"), "--grid",
                                str(grid), *args], cwd=tmp_path, capture_output=True, text=True,
                               timeout=300, check=False)
        assert sweep.returncode == 0, sweep.stderr[-3000:]
        assert "one feature job builds it before the cells" in sweep.stdout, sweep.stdout
        assert all("#SBATCH --nodes=2" in p.read_text()
                   for p in (tmp_path / "logs").rglob("*_submission.sh"))
        (cell,) = load_sweep(grid, args).cells
        ckpts = tmp_path / "runs" / "cells" / cell.name / "checkpoints"

        wait_for(lambda: any(ckpts.glob("step_*.pt")), "a first checkpoint", cluster, name,
                 poll=0.2)
        cluster.kill("node2")  # its slurmd and ranks killed, the node DOWN
        try:
            wait_for(lambda: [r[1] for r in records(cluster, name)][:1] == ["NODE_FAIL"],
                     "the job failed with its node", cluster, name, 60)
        finally:
            cluster.revive("node2")
    # The same cell as two processes on one node (this machine), never interrupted, from the
    # feature cache the sweep's feature job built (as the cell did): the reference, run while
    # the requeued job runs.
    from meshrec.train.loop import train

    train(load_config(REPO / "configs" / "base.yaml", [
        *[a for a in common if not a.startswith("launch.")], "loss.w_body=0.5",
        "features.enabled=true", "train.processes=2", "track.enabled=false",
        f"train.output_dir={tmp_path / 'one'}"]))

    wait_for(lambda: ended(cluster, name), "the requeued job ended", cluster, name)

    runs = records(cluster, name)
    assert [r[1] for r in runs] == ["NODE_FAIL", "COMPLETED"], runs
    assert runs[-1][2] == "node[1-2]"  # the rerun had both nodes again
    logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "logs").rglob("*_log.*"))
    resumed = re.search(r"resumed from \S+ at step (\d+)", logs)
    assert resumed and int(resumed.group(1)) >= 2, logs[-3000:]
    # Every checkpoint left behind loads (written whole or not at all), the last is the end.
    for path in ckpts.glob("*.pt"):
        torch.load(path, weights_only=True)
    state = torch.load(ckpts / "last.pt", weights_only=True)
    one = torch.load(tmp_path / "one" / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == one["step"] == 36
    for key, value in one["model"].items():
        torch.testing.assert_close(state["model"][key], value, rtol=1e-5, atol=1e-5, msg=key)

    client = MlflowClient(nodes_mlflow)
    exp = client.get_experiment_by_name(name)
    cells = [r for r in client.search_runs([exp.experiment_id]) if "meshrec.cell" in r.data.tags]
    assert len(cells) == 1  # the requeued job went on in the cell's run
    assert cells[0].data.tags["meshrec.done"] == "true" and cells[0].data.tags["world_size"] == "2"
    assert state["mlflow_run_id"] == cells[0].info.run_id


@pytest.mark.slurm
@pytest.mark.slow
def test_train_full_script_runs_ddp_over_two_nodes(slurm_two_nodes, both_nodes_up, nodes_mlflow,
                                                  meshrec_cache, tmp_path):
    cluster = slurm_two_nodes
    name = f"full2-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "out"
    overrides = [o for o in TWO_NODES if not o.startswith(("launch.", "data.batch_size"))]
    overrides.append("data.batch_size=16")  # 10 steps over the 5 training subjects
    env = cluster.env(CONFIG=str(REPO / "configs" / "demo.yaml"), OUT=str(out),
                      PYTHON=sys.executable,
                      OVERRIDES=" ".join([*overrides, f"body.cache_dir={meshrec_cache}",
                                          f"track.uri={nodes_mlflow}",
                                          f"track.experiment={name}"]))
    job = slurm(cluster, "sbatch", "--parsable", f"--job-name={name}",
                f"--partition={cluster.partition}", "--nodes=2", "--ntasks-per-node=1",
                "--gpus-per-node=0", "--cpus-per-task=1", "--mem=0", "--time=10",
                f"--output={tmp_path / 'slurm-%j.out'}", str(REPO / "slurm" / "train_full.sh"),
                env=env).strip().split(";")[0]
    wait_for(lambda: ended(cluster, name), "train_full.sh ended", cluster, name)
    log = (tmp_path / f"slurm-{job}.out").read_text(errors="replace")
    assert records(cluster, name) == [(job, "COMPLETED", "node[1-2]")], log[-3000:]
    assert "on 2 × cpu" in log  # one DDP task on each node
    assert "subjects S9, S11" in (out / "eval.txt").read_text()
    client = MlflowClient(nodes_mlflow)
    (run,) = client.search_runs([client.get_experiment_by_name(name).experiment_id])
    assert run.data.tags["meshrec.done"] == "true" and run.data.tags["world_size"] == "2"


@pytest.mark.slurm
def test_a_rank_on_another_node_that_cannot_reach_the_first_fails_in_one_line(
        slurm_two_nodes, both_nodes_up, tmp_path):
    """Rank 1 on node2 while nothing serves on node1: an error naming node1 and the port after
    the rendezvous timeout, not a hang."""
    cluster = slurm_two_nodes
    port = 29733
    env = cluster.env(RANK="1", WORLD_SIZE="2", MASTER_ADDR="node1", MASTER_PORT=str(port))
    env = {k: v for k, v in env.items() if not k.startswith("SLURM_") or k == "SLURM_CONF"}
    started = time.monotonic()
    done = subprocess.run(
        ["srun", "-p", cluster.partition, "-w", "node2", "-N1", "-n1", "-t", "5",
         "-J", f"rdv-{uuid.uuid4().hex[:6]}", sys.executable, "-m", "meshrec.cli", "train",
         "--config", str(REPO / "configs" / "demo.yaml"), "launch.rendezvous_timeout_s=5",
         f"train.output_dir={tmp_path}", f"body.cache_dir={tmp_path}"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    took = time.monotonic() - started
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = [l for l in done.stderr.splitlines() if "rendezvous" in l]
    assert errors and f"rank 1 could not reach the rendezvous at node1:{port} within 5 s" in \
        errors[0], done.stderr[-3000:]
    assert took < 120, took
