"""Watching SLURM jobs by name from a test, and commands to the two-node cluster (not a test
module: the sweep and two-node tests share it)."""

from __future__ import annotations

import subprocess
import time

import pytest

DEADLINE_S = 900  # the machine is shared: tiny jobs can still take minutes


def jobs_named(name: str) -> list[tuple[str, str]]:
    """(job id, state) of every job with this name that accounting knows (arrays split)."""
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "--name", name,
                          "-S", "now-6hours"], capture_output=True, text=True, check=True,
                         timeout=30).stdout
    return [tuple(line.split("|")[:2]) for line in out.splitlines() if line]


def in_queue(name: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-n", name, "-o", "%i"], capture_output=True,
                         text=True, check=True, timeout=30).stdout
    return out.split()


def wait_for(predicate, what: str, seconds: float = DEADLINE_S, name: str = "",
             alive: bool = False) -> None:
    """Poll `predicate`; on timeout (or, with `alive`, when job `name` left the queue first)
    cancel the jobs named `name` and fail."""
    deadline = time.monotonic() + seconds
    while not predicate():
        if alive and not in_queue(name) and not predicate():
            pytest.fail(f"{what}: the job ended first ({jobs_named(name)})")
        if time.monotonic() > deadline:
            if name:
                subprocess.run(["scancel", "-n", name], check=False)
            pytest.fail(f"{what} not reached after {seconds:.0f} s")
        time.sleep(2)


ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
         "PREEMPTED", "BOOT_FAIL", "DEADLINE")


def unfinished(name: str) -> bool:
    """Still queued, or not yet recorded as ended: accounting (slurmdbd) lags the queue, so a job
    just gone from squeue can still read RUNNING in sacct for a moment."""
    return bool(in_queue(name)) or any(not state.startswith(ENDED)
                                       for _, state in jobs_named(name))


def slurm(cluster, *cmd: str, timeout: float = 30, env: dict | None = None) -> str:
    """Run a SLURM command against the two-node cluster (`cluster.env()`, or `env`); its
    stdout, or fail with its stderr."""
    done = subprocess.run(list(cmd), env=env or cluster.env(), capture_output=True, text=True,
                          timeout=timeout, check=False)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout
