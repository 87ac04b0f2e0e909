"""Distributed setup: launcher environments, and a real 2-process gloo group."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from meshrec.config import Config
from meshrec.errors import MeshrecError
from meshrec.train import dist as mdist
from meshrec.train.rendezvous import free_port

ROOT = Path(__file__).resolve().parents[1]

# Launcher variables that must not leak from the test's own environment into a probe.
_LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                "MASTER_PORT", "CUDA_VISIBLE_DEVICES")


def _probe(env: dict[str, str]) -> dict:
    """detect_launch + init_distributed's device in a fresh interpreter with exactly these vars."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("SLURM_", "SUBMITIT_")) and k not in _LAUNCH_VARS}
    code = ("import json, os; from meshrec.train.dist import detect_launch; l = detect_launch(); "
            "print(json.dumps({**l.__dict__, 'exported': {k: os.environ.get(k) for k in "
            "('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT')}}))")
    out = subprocess.run([sys.executable, "-c", code], env={**base, **env}, cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def test_single_process_without_launcher():
    got = _probe({})
    assert (got["rank"], got["world_size"], got["local_rank"], got["source"]) == (0, 1, 0, "single")


def test_torchrun_variables():
    got = _probe({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "node7",
                  "MASTER_PORT": "29411"})
    assert got["source"] == "torchrun"
    assert (got["rank"], got["world_size"], got["local_rank"]) == (5, 8, 1)
    assert (got["master_addr"], got["master_port"]) == ("node7", 29411)


def test_torchrun_wins_over_slurm():
    # torchrun inside an sbatch allocation: the srun-level SLURM ids are not the ranks.
    got = _probe({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "3", "MASTER_ADDR": "a",
                  "MASTER_PORT": "1234", "SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1",
                  "SLURM_JOB_NODELIST": "a"})
    assert (got["source"], got["rank"], got["world_size"]) == ("torchrun", 3, 4)


def test_srun_step_variables():
    env = {"SLURM_JOB_ID": "4242", "SLURM_PROCID": "3", "SLURM_NTASKS": "4",
           "SLURM_STEP_NUM_TASKS": "4", "SLURM_LOCALID": "1",
           "SLURM_JOB_NODELIST": "gpu[07-08,11]", "SLURM_STEP_NODELIST": "gpu[07-08]"}
    got = _probe(env)
    assert got["source"] == "slurm"
    assert (got["rank"], got["world_size"], got["local_rank"]) == (3, 4, 1)
    assert got["master_addr"] == "gpu07"
    # Every task of the job derives the same port from the job id; another job gets another.
    assert got["master_port"] == _probe({**env, "SLURM_PROCID": "0"})["master_port"]
    assert got["master_port"] != _probe({**env, "SLURM_JOB_ID": "4243"})["master_port"]
    assert 1024 < got["master_port"] < 65536


def test_sbatch_script_outside_srun_is_one_process():
    # The batch script itself sees the allocation's task count but is a single process.
    got = _probe({"SLURM_JOB_ID": "7", "SLURM_PROCID": "0", "SLURM_NTASKS": "4",
                  "SLURM_JOB_NODELIST": "n1"})
    assert (got["source"], got["world_size"]) == ("single", 1)


def test_submitit_job_exports_torchrun_variables():
    # What submitit's local executor sets in each task of a 2-task job.
    env = {"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_JOB_ID": "99", "SUBMITIT_LOCAL_NTASKS": "2",
           "SUBMITIT_LOCAL_JOB_NUM_NODES": "1", "SUBMITIT_LOCAL_NODEID": "0",
           "SUBMITIT_LOCAL_GLOBALID": "1", "SUBMITIT_LOCAL_LOCALID": "1"}
    got = _probe(env)
    assert got["source"] == "submitit"
    assert (got["rank"], got["world_size"], got["local_rank"]) == (1, 2, 1)
    assert got["exported"]["RANK"] == "1" and got["exported"]["WORLD_SIZE"] == "2"
    assert got["exported"]["MASTER_PORT"] == str(got["master_port"])


def test_submitit_slurm_job():
    # A submitit SLURM task: ranks from SLURM_PROCID/SLURM_NTASKS, master = first job node.
    got = _probe({"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "123", "SLURM_NTASKS": "4",
                  "SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "1", "SLURM_PROCID": "2",
                  "SLURM_LOCALID": "0", "SLURM_JOB_NODELIST": "node[5-6]"})
    assert got["source"] == "submitit"
    assert (got["rank"], got["world_size"], got["local_rank"]) == (2, 4, 0)
    assert got["master_addr"] == "node5"
    assert got["exported"]["MASTER_ADDR"] == "node5"


def test_first_host_of_node_lists(tmp_path):
    lists = ["cn[003-010],gpu1", "solo", "a-1,b", "gpu[7,9-10]"]
    expected = ["cn003", "solo", "a-1", "gpu7"]
    assert [mdist.first_host(n) for n in lists] == expected
    # Without scontrol on PATH, the built-in reading gives the same hosts.
    code = ("import json, sys; from meshrec.train.dist import first_host; "
            "print(json.dumps([first_host(n) for n in sys.argv[1:]]))")
    out = subprocess.run([sys.executable, "-c", code, *lists], env={"PATH": str(tmp_path)},
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert json.loads(out.stdout) == expected, out.stderr


@pytest.mark.skipif(shutil.which("scontrol") is None, reason="needs scontrol (SLURM's client)")
def test_node_lists_expand_as_scontrol_expands_them():
    lists = ["cn[003-010],gpu1", "solo", "a-1,b", "gpu[7,9-10]", "n[08-10]",
             "x[1-2],y[05-06]"]
    for nodelist in lists:
        expected = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True,
                                  text=True, check=True, timeout=30).stdout.split()
        assert mdist.expand_nodelist(nodelist) == expected, nodelist


def _train_alone(env: dict[str, str], *overrides: str) -> tuple[subprocess.CompletedProcess, float]:
    """`meshrec train` in a fresh interpreter with exactly these launcher variables."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("SLURM_", "SUBMITIT_")) and k not in _LAUNCH_VARS}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "meshrec.cli", "train", "--config",
                           str(ROOT / "configs" / "demo.yaml"), *overrides],
                          env={**base, **env}, cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    return done, time.monotonic() - started


def test_a_rank_that_cannot_reach_the_rendezvous_fails_in_time_in_one_line(tmp_path):
    port = free_port("127.0.0.1")  # nobody serves it
    done, took = _train_alone({"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                               "MASTER_PORT": str(port)}, "launch.rendezvous_timeout_s=3",
                              f"train.output_dir={tmp_path}", f"body.cache_dir={tmp_path}")
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert f"rank 1 could not reach the rendezvous at 127.0.0.1:{port} within 3 s" in last
    assert took < 120  # not gloo's 30 minutes: 3 s plus the interpreter's start
    # Rank 0 waits as long for the others, then names what it served.
    done, _ = _train_alone({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                            "MASTER_PORT": str(port)}, "launch.rendezvous_timeout_s=3",
                           f"train.output_dir={tmp_path}", f"body.cache_dir={tmp_path}")
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert (f"rank 0 could not serve the rendezvous on port {port} of 127.0.0.1, or not every "
            "one of 2 ranks reached it within 3 s") in done.stderr.strip().splitlines()[-1]


def test_other_nodes_must_not_reach_the_first_host_by_a_loopback_address():
    from meshrec.train import rendezvous

    env = {"SLURMD_NODENAME": "node2"}
    with pytest.raises(MeshrecError, match="on node node2, the first host localhost resolves to "
                                           "127.0.0.1, a loopback address"):
        rendezvous.link_nodes("localhost", ["localhost", "node2"], "", env)
    # One node: nothing to choose; a configured interface is passed to gloo and NCCL alike.
    assert rendezvous.link_nodes("localhost", ["localhost"], "", env) is None
    assert rendezvous.link_nodes("localhost", ["a", "b"], "ib0", env) == "ib0"
    assert env["GLOO_SOCKET_IFNAME"] == env["NCCL_SOCKET_IFNAME"] == "ib0"
    assert rendezvous.route_to("127.0.0.1") == ("lo", "127.0.0.1")


def _reduce_worker(out_dir: str) -> None:
    denv = mdist.init_distributed(Config())
    try:
        value = torch.tensor([float(denv.rank + 1), 10.0 * denv.rank])
        total = value.clone()
        torch.distributed.all_reduce(total)
        ranks = [None] * denv.world_size
        torch.distributed.all_gather_object(ranks, denv.rank)
        mean = mdist.all_reduce_mean(value)
        mdist.barrier()
        Path(out_dir, f"rank{denv.rank}.json").write_text(json.dumps({
            "rank": denv.rank, "world": denv.world_size, "device": str(denv.device),
            "backend": torch.distributed.get_backend(), "main": denv.is_main,
            "sum": total.tolist(), "mean": mean.tolist(), "ranks": ranks, "value": value.tolist()}))
    finally:
        mdist.cleanup()


def test_two_gloo_processes_all_reduce(tmp_path):
    mdist.spawn_local(_reduce_worker, 2, str(tmp_path))
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in results] == [0, 1]
    for r in results:
        assert r["world"] == 2 and r["backend"] == "gloo" and r["device"] == "cpu"
        assert r["main"] == (r["rank"] == 0)
        assert sorted(r["ranks"]) == [0, 1]
        # rank0 contributes [1, 0], rank1 [2, 10]
        assert r["sum"] == [3.0, 10.0]
        assert r["mean"] == [1.5, 5.0]
    assert results[0]["value"] != results[1]["value"]


def _failing_worker() -> None:
    if os.environ["RANK"] == "1":
        raise ValueError("rank 1 broke")


def test_a_failing_child_is_reported():
    with pytest.raises(Exception, match="rank 1 broke"):
        mdist.spawn_local(_failing_worker, 2)


def test_single_process_init_has_no_group():
    for name in _LAUNCH_VARS:
        assert name not in os.environ, f"{name} is set in the test environment"
    denv = mdist.init_distributed(Config())
    assert (denv.rank, denv.world_size, denv.distributed, denv.is_main) == (0, 1, False, True)
    assert not torch.distributed.is_initialized()
    mdist.barrier()  # no group: returns at once
    assert mdist.all_reduce_mean(torch.tensor([2.0])).item() == 2.0


# ---- under a real SLURM -------------------------------------------------------------------------

_SRUN_WORKER = """
import json, sys, torch
from meshrec.config import Config
from meshrec.train import dist as mdist
denv = mdist.init_distributed(Config())
total = torch.tensor([float(denv.rank + 1)])
torch.distributed.all_reduce(total)
open(f"{sys.argv[1]}/rank{denv.rank}.json", "w").write(json.dumps(
    {"rank": denv.rank, "world": denv.world_size, "source": denv.source, "sum": total.item()}))
mdist.cleanup()
"""


@pytest.mark.slurm
@pytest.mark.slow
def test_srun_two_tasks_all_reduce(slurm_cluster, tmp_path):
    (tmp_path / "worker.py").write_text(_SRUN_WORKER)
    script = tmp_path / "job.sh"
    # The batch script itself (not an srun step) must see one process; the 2 srun tasks a group.
    script.write_text(f"""#!/bin/bash
cd {ROOT}
export PYTHONPATH={ROOT}
{sys.executable} -c "from meshrec.train.dist import detect_launch; import json; \
print(json.dumps(detect_launch().__dict__))" > {tmp_path}/batch.json
srun {sys.executable} {tmp_path}/worker.py {tmp_path}
""")
    done = subprocess.run(["sbatch", "--wait", "-n", "2", "-p", slurm_cluster.partition,
                           "-t", "3", "-o", str(tmp_path / "out.txt"), str(script)],
                          capture_output=True, text=True, timeout=180)
    log = (tmp_path / "out.txt").read_text() if (tmp_path / "out.txt").exists() else ""
    assert done.returncode == 0, done.stderr + log
    batch = json.loads((tmp_path / "batch.json").read_text())
    assert (batch["source"], batch["world_size"]) == ("single", 1)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["rank"], r["world"], r["source"]) for r in results] == [(0, 2, "slurm"),
                                                                      (1, 2, "slurm")]
    assert [r["sum"] for r in results] == [3.0, 3.0]


def _submitit_task() -> dict:
    import torch

    from meshrec.config import Config
    from meshrec.train import dist as mdist

    denv = mdist.init_distributed(Config())
    total = torch.tensor([float(denv.rank + 1)])
    torch.distributed.all_reduce(total)
    mdist.cleanup()
    return {"rank": denv.rank, "world": denv.world_size, "source": denv.source,
            "sum": total.item()}


@pytest.mark.slurm
@pytest.mark.slow
def test_submitit_two_tasks_all_reduce(slurm_cluster, tmp_path, monkeypatch):
    import cloudpickle
    import submitit

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    executor = submitit.AutoExecutor(folder=tmp_path / "jobs", cluster="slurm")
    executor.update_parameters(slurm_partition=slurm_cluster.partition, timeout_min=3,
                               cpus_per_task=1, tasks_per_node=2)
    job = executor.submit(_submitit_task)
    results = sorted(job.results(), key=lambda r: r["rank"])
    assert [(r["rank"], r["world"], r["source"]) for r in results] == [(0, 2, "submitit"),
                                                                      (1, 2, "submitit")]
    assert [r["sum"] for r in results] == [3.0, 3.0]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_device_is_the_local_gpu():
    assert mdist.pick_device("auto", 0) == torch.device("cuda", 0)
    assert mdist.pick_device("cpu", 0) == torch.device("cpu")


def _nccl_worker(out_dir: str) -> None:
    denv = mdist.init_distributed(Config())
    try:
        total = torch.tensor([float(denv.rank + 1)], device=denv.device)
        torch.distributed.all_reduce(total)
        Path(out_dir, f"rank{denv.rank}.json").write_text(json.dumps(
            {"backend": torch.distributed.get_backend(), "device": str(denv.device),
             "sum": total.item()}))
    finally:
        mdist.cleanup()


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_two_nccl_processes_all_reduce(tmp_path):
    mdist.spawn_local(_nccl_worker, 2, str(tmp_path))
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["device"] for r in results] == ["cuda:0", "cuda:1"]
    assert all(r["backend"] == "nccl" and r["sum"] == 3.0 for r in results)
