"""The two-node SLURM cluster itself (tests/infra/slurm2_up.sh): two nodes in network namespaces of
this machine, names that resolve on every node, a network between them, and a node that dies.

Every command reaches this cluster through ``env=cluster.env()`` (its ``SLURM_CONF``); plain
``sbatch`` still goes to the one-node cluster. Tests that need both nodes take ``both_nodes_up``;
the one that kills a node uses ``slurm_two_nodes.node_failure``, which keeps them out meanwhile.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest

from tests.slurm_jobs import slurm

# Every test of the two-node cluster on one xdist worker, one after the other: none waits for
# another's node kill (or is hit by it), and no worker sits idle on the cluster's lock.
pytestmark = pytest.mark.xdist_group("two_nodes")

STEP_TIMEOUT_S = 90  # srun waits for its allocation: the machine is shared


def srun_on_both(cluster, *command: str) -> dict[int, str]:
    """One task per node (rank 0 on node1); {rank: its output lines joined}."""
    out = slurm(cluster, "srun", "-p", cluster.partition, "-N2", "-n2", "--ntasks-per-node=1",
                "-t", "2", "-J", f"two-{uuid.uuid4().hex[:6]}", "-l", *command,
                timeout=STEP_TIMEOUT_S)
    lines: dict[int, list[str]] = {}
    for line in out.splitlines():
        rank, _, text = line.partition(": ")
        lines.setdefault(int(rank), []).append(text)
    return {rank: "\n".join(texts) for rank, texts in lines.items()}


def wait_until(predicate, what: str, seconds: float, diagnose=lambda: "") -> float:
    """Poll until ``predicate()``; the time.monotonic() it became true, or fail."""
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not after {seconds:.0f} s\n{diagnose()}")
        time.sleep(0.2)
    return time.monotonic()


@pytest.mark.slurm
def test_both_nodes_idle_in_the_default_partition(both_nodes_up):
    cluster = both_nodes_up
    states = dict(line.split() for line in slurm(
        cluster, "sinfo", "-h", "-N", "-p", cluster.partition, "-o", "%N %T").splitlines())
    assert set(states) == {"node1", "node2"}
    # Idle unless a job of another xdist worker holds them right now.
    assert set(states.values()) <= {"idle", "mixed", "allocated", "completing"}
    assert slurm(cluster, "scontrol", "show", "config").count("meshrec2") >= 1


@pytest.mark.slurm
def test_srun_runs_one_task_on_each_node(both_nodes_up):
    out = srun_on_both(both_nodes_up, "sh", "-c", 'echo "$(hostname) $SLURMD_NODENAME"')
    assert out == {0: "node1 node1", 1: "node2 node2"}


PING_PONG = r"""
import os, socket, sys, time
rank, node, folder = int(os.environ["SLURM_PROCID"]), os.environ["SLURMD_NODENAME"], sys.argv[1]
if rank == 0:  # on node1: listen on node1's address, say the port through the shared folder
    server = socket.create_server(("node1", 0))
    server.settimeout(60)
    with open(folder + "/port.tmp", "w") as f:
        f.write(str(server.getsockname()[1]))
    os.rename(folder + "/port.tmp", folder + "/port")
    conn, peer = server.accept()
    got = conn.recv(100).decode()
    conn.sendall(("pong from " + node).encode())
    print(node, "listened on", server.getsockname()[0], "got", repr(got), "from", peer[0])
else:  # on node2: connect to node1 by name
    deadline = time.monotonic() + 60
    while not os.path.exists(folder + "/port"):
        assert time.monotonic() < deadline, "no port from rank 0"
        time.sleep(0.1)
    with socket.create_connection(("node1", int(open(folder + "/port").read())), 10) as conn:
        conn.sendall(("ping from " + node).encode())
        print(node, "got", repr(conn.recv(100).decode()), "from", conn.getpeername()[0])
"""


@pytest.mark.slurm
def test_tasks_on_two_nodes_talk_tcp_by_name(both_nodes_up, tmp_path):
    cluster = both_nodes_up
    script = tmp_path / "ping_pong.py"
    script.write_text(PING_PONG)
    out = srun_on_both(cluster, sys.executable, str(script), str(tmp_path))
    assert out == {
        0: f"node1 listened on {cluster.addresses['node1']} got 'ping from node2' "
           f"from {cluster.addresses['node2']}",
        1: f"node2 got 'pong from node1' from {cluster.addresses['node1']}",
    }


@pytest.mark.slurm
def test_nodes_reach_a_server_bound_to_the_host_address(both_nodes_up):
    """What an MLflow server for jobs needs: bound to host_address, reached by host_name."""
    cluster = both_nodes_up
    server = socket.create_server((cluster.host_address, 0))
    server.settimeout(STEP_TIMEOUT_S)
    heard: dict[str, str] = {}

    def accept_two() -> None:
        for _ in range(2):
            try:
                conn, peer = server.accept()
            except OSError:
                return
            with conn:
                heard[conn.recv(100).decode()] = peer[0]

    listener = threading.Thread(target=accept_two, daemon=True)
    listener.start()
    try:
        srun_on_both(cluster, sys.executable, "-c",
                     "import os, socket; socket.create_connection(("
                     f"{cluster.host_name!r}, {server.getsockname()[1]}), 10).sendall("
                     "os.environ['SLURMD_NODENAME'].encode())")
        listener.join(10)
    finally:
        server.close()
    assert heard == cluster.addresses


@pytest.mark.slurm
def test_names_outside_etc_hosts_fail_at_once_on_the_nodes(both_nodes_up):
    """The nodes reach no DNS server: a lookup /etc/hosts cannot answer (gloo's reverse lookup of
    an IPv4-mapped peer address, say) must fail at once, not after a 10 s DNS timeout each."""
    out = srun_on_both(both_nodes_up, sys.executable, "-c", """if True:
        import socket, time
        start = time.monotonic()
        try:
            socket.getaddrinfo("meshrec-no-such-host.invalid", 80)
        except socket.gaierror:
            pass
        try:
            socket.getnameinfo(("::ffff:10.77.0.250", 80), socket.NI_NAMEREQD)
        except socket.gaierror:
            pass
        print(time.monotonic() - start < 2)""")
    assert out == {0: "True", 1: "True"}


REQUEUE_JOB = """#!/bin/bash
# First run (SLURM_RESTART_COUNT unset): a step on both nodes that waits. After the requeue: done.
srun -N2 -n2 --ntasks-per-node=1 sh -c \\
  'r=${{SLURM_RESTART_COUNT:-0}}; echo $SLURMD_NODENAME > {folder}/ran.$r.$SLURMD_NODENAME
   [ "$r" != 0 ] || exec sleep 300'
"""


@pytest.mark.slurm
def test_requeued_job_survives_a_killed_node(slurm_two_nodes, tmp_path):
    cluster = slurm_two_nodes
    script = tmp_path / "job.sh"
    script.write_text(REQUEUE_JOB.format(folder=tmp_path))
    job = slurm(cluster, "sbatch", "--parsable", "--requeue", "-p", cluster.partition, "-N2",
                "-n2", "--ntasks-per-node=1", "-t", "3", "-J", f"requeue-{uuid.uuid4().hex[:6]}",
                "-o", str(tmp_path / "slurm-%j.out"), str(script)).strip()

    def ran(run: int) -> bool:
        return all((tmp_path / f"ran.{run}.{node}").exists() for node in cluster.nodes)

    def job_line(field: str) -> str:
        out = slurm(cluster, "scontrol", "show", "job", job, "-o")
        return next((f.split("=", 1)[1] for f in out.split() if f.startswith(field + "=")), "")

    def diagnose() -> str:
        return slurm(cluster, "scontrol", "show", "job", job) + slurm(cluster, "sinfo", "-N")

    try:
        wait_until(lambda: ran(0), "first run on both nodes", STEP_TIMEOUT_S, diagnose)
        killed = time.monotonic()
        with cluster.node_failure("node2"):  # revives node2 on leaving
            requeued = wait_until(lambda: job_line("Restarts") == "1", "requeue", 30, diagnose)
            assert job_line("JobState") in {"PENDING", "REQUEUED", "COMPLETING"}
        revived = time.monotonic()
        rerun = wait_until(lambda: ran(1), "second run on both nodes", STEP_TIMEOUT_S, diagnose)
        done = wait_until(lambda: not slurm(cluster, "squeue", "-h", "-j", job).strip(),
                          "job leaves the queue", 60, diagnose)
    finally:
        subprocess.run(["scancel", job], env=cluster.env(), capture_output=True, check=False)

    def runs() -> list[str]:  # one accounting record per run (-D), the last one last
        return slurm(cluster, "sacct", "-n", "-X", "-D", "-P", "-o", "State", "-j", job).split()

    wait_until(lambda: runs() == ["NODE_FAIL", "COMPLETED"], "sacct records both runs", 30,
               lambda: str(runs()))
    print(f"\nnode2 killed -> job requeued {requeued - killed:.1f} s, node2 back "
          f"{revived - killed:.1f} s, second run started {rerun - killed:.1f} s, "
          f"job gone from the queue {done - killed:.1f} s after the kill")
    assert (tmp_path / "ran.1.node2").read_text().strip() == "node2"
