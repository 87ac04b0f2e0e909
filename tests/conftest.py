"""Shared fixtures.

- ``slurm_cluster``: a working SLURM with accounting. Uses the one on PATH if it answers (CI
  starts it with ``tests/infra/slurm_up.sh`` first), otherwise starts the local one-node cluster
  and stops it at the end of the session (``MESHREC_KEEP_SLURM=1`` leaves it running). Without
  root it skips, except under ``CI=true``, where not getting a cluster fails. Tests using it carry
  ``@pytest.mark.slurm``.
- ``slurm_two_nodes``: a second, two-node SLURM cluster (``tests/infra/slurm2_up.sh``: nodes
  node1 and node2 in network namespaces on this machine, partition ``two``). Tests reach it with
  ``env=slurm_two_nodes.env()`` (``SLURM_CONF``); ``os.environ`` is never changed. Same start,
  stop and skip rules as ``slurm_cluster``. ``both_nodes_up`` is a function-scoped wrapper that
  keeps node-killing tests (``slurm_two_nodes.node_failure``) of other xdist workers out while the
  test runs.
- ``mlflow_server``: the tracking URI of a real ``mlflow server`` on loopback, one per session;
  ``nodes_mlflow``: one on the two-node cluster's bridge, which its nodes reach.
- ``standin_model`` / ``standin_file``: the default stand-in body, built once per run.
- ``meshrec_cache``: ``body.cache_dir`` of tests that generate data (stand-in body, generated
  shards), one per run (xdist workers share it) so that every module's tiny cells share what it
  holds.
- ``chromium``: the path of Debian's ``chromium`` (browser tests drive it with Playwright). Skips
  when it is not installed, except under ``CI=true``, where that fails.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from meshrec.train.rendezvous import free_port

INFRA = Path(__file__).parent / "infra"

# Three xdist workers share two cores (setup.cfg): one intra-op thread per process, and per process
# they start (SLURM jobs inherit the submitter's environment), instead of OpenMP threads spinning
# against each other. A value set by the caller is kept.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def _group(item: pytest.Item) -> str | None:
    marker = item.get_closest_marker("xdist_group")
    return (marker.args or [marker.kwargs.get("name")])[0] if marker else None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow tests first (SLURM's among them first), and xdist groups (modules whose fixtures are
    built once) that hold one with them; stable otherwise. xdist (--dist loadgroup
    --no-loadscope-reorder) hands tests out in this order, so the long ones start at once
    instead of trailing on one worker at the end."""
    heavy = {_group(item) for item in items if item.get_closest_marker("slow")} - {None}
    # Among them SLURM's first: they mostly wait, beside the ones that compute.
    items.sort(key=lambda item: (not (item.get_closest_marker("slow") or _group(item) in heavy),
                                 item.get_closest_marker("slurm") is None))

# sinfo node states in which a partition can run jobs now or soon.
_USABLE_STATES = {"idle", "mixed", "allocated", "completing"}


@dataclasses.dataclass(frozen=True)
class SlurmCluster:
    """A SLURM cluster that accepts jobs; pass ``partition`` as submitit's ``slurm_partition``."""

    partition: str


def _quiet(cmd: list[str], timeout: float = 20) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None


def _usable_partition() -> str | None:
    """The default partition of a SLURM that answers and keeps accounting, or None."""
    if shutil.which("sbatch") is None:
        return None
    ping = _quiet(["scontrol", "ping"])
    if ping is None or "is UP" not in ping.stdout:
        return None
    # Without accounting submitit cannot tell a dead job from a running one and waits forever.
    sacct = _quiet(["sacct", "-n", "-X", "-S", "now"])
    if sacct is None or sacct.returncode != 0:
        return None
    sinfo = _quiet(["sinfo", "-h", "-o", "%P %a %T"])
    for line in sinfo.stdout.splitlines() if sinfo is not None else []:
        name, avail, state = line.split()
        if name.endswith("*") and avail == "up" and state.rstrip("~") in _USABLE_STATES:
            return name[:-1]
    return None


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _apply_exports(stdout: str) -> None:
    """Apply the ``export NAME=VALUE`` lines a start script prints."""
    for line in stdout.splitlines():
        if line.startswith("export ") and "=" in line:
            name, value = line[len("export ") :].split("=", 1)
            os.environ[name] = value


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    with open(Path(tempfile.gettempdir()) / "meshrec-slurm-up.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # xdist workers: one starts the cluster, the others wait
        partition, started = _slurm_partition()
    yield SlurmCluster(partition=partition)
    # Under xdist another worker may still be using it: only a lone session stops what it started.
    if (started and os.environ.get("MESHREC_KEEP_SLURM") != "1"
            and "PYTEST_XDIST_WORKER" not in os.environ):
        subprocess.run(["bash", str(INFRA / "slurm_down.sh")], capture_output=True, timeout=300,
                       check=False)


def _slurm_partition() -> tuple[str, bool]:
    """(usable default partition, whether this call started the cluster)."""
    partition = _usable_partition()
    started = False
    if partition is None:
        if os.geteuid() != 0 and not _in_ci():
            pytest.skip("no working SLURM here, and starting the local test cluster needs root "
                        "(sudo bash tests/infra/slurm_up.sh)")
        # Under CI, or as root, not getting a cluster is a failure, never a skip.
        up = subprocess.run(["bash", str(INFRA / "slurm_up.sh")], capture_output=True,
                            text=True, timeout=1200, check=False)
        if up.returncode != 0:
            pytest.fail(f"tests/infra/slurm_up.sh failed (exit {up.returncode}):\n"
                        f"{up.stderr[-6000:]}", pytrace=False)
        _apply_exports(up.stdout)
        started = True
        partition = _usable_partition()
        if partition is None:
            pytest.fail("tests/infra/slurm_up.sh succeeded, yet SLURM has no usable default "
                        "partition", pytrace=False)
    return partition, started


# ---- the two-node cluster --------------------------------------------------------------------

_SLURM2_LOCKS = Path(tempfile.gettempdir())


@dataclasses.dataclass(frozen=True)
class SlurmTwoNodes:
    """The two-node cluster of ``tests/infra/slurm2_up.sh``.

    ``conf`` is its ``SLURM_CONF``: pass ``env=cluster.env()`` to sbatch/srun/squeue/sacct/scontrol
    (and ``monkeypatch.setenv("SLURM_CONF", cluster.conf)`` for submitit, which runs them with
    ``os.environ``). ``addresses`` maps node names to their IPs; ``host_address`` is this
    machine's address on the nodes' bridge (``host_name`` resolves to it everywhere): bind a
    server there (not 127.0.0.1, which on a node is the node's own loopback) for the nodes to
    reach it. Job ids start at 1000000, apart from the one-node cluster's.
    """

    partition: str
    conf: str
    state_dir: str
    nodes: tuple[str, ...]
    addresses: dict[str, str]
    host_address: str
    host_name: str

    def env(self, **extra: str) -> dict[str, str]:
        """``os.environ`` plus this cluster's ``SLURM_CONF`` (and ``extra``)."""
        return {**os.environ, "SLURM_CONF": self.conf, **extra}

    def _node(self, action: str, node: str) -> None:
        done = subprocess.run(["bash", str(INFRA / "slurm2_node.sh"), action, node,
                               self.state_dir], capture_output=True, text=True, timeout=180,
                              check=False)
        if done.returncode != 0:
            pytest.fail(f"slurm2_node.sh {action} {node} failed:\n{done.stderr[-4000:]}",
                        pytrace=False)

    def kill(self, node: str) -> None:
        """SIGKILL everything running on ``node`` (slurmd, steps, tasks) and mark it DOWN: its
        jobs end NODE_FAIL at once, ``--requeue`` ones go back to the queue."""
        self._node("kill", node)

    def revive(self, node: str) -> None:
        """Restart ``node``'s slurmd and wait until the node takes jobs again."""
        self._node("revive", node)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the cluster alone: ``both_nodes_up`` tests of other xdist workers wait meanwhile
        (for a test that kills a node at a moment of its choosing, with ``kill``/``revive``)."""
        with _flock(_SLURM2_LOCKS / "meshrec-slurm2-nodes.lock", fcntl.LOCK_EX):
            yield

    @contextlib.contextmanager
    def node_failure(self, node: str) -> Iterator[None]:
        """Kill ``node`` now and revive it on leaving (whatever happened), holding the cluster
        exclusively: ``both_nodes_up`` tests of other xdist workers wait meanwhile."""
        with self.exclusive():
            try:
                self.kill(node)
                yield
            finally:
                self.revive(node)


@contextlib.contextmanager
def _flock(path: Path, mode: int) -> Iterator[None]:
    with open(path, "a") as f:
        fcntl.flock(f, mode)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _slurm2_state_dir() -> str:
    """Where the two-node cluster lives: MESHREC_SLURM2_CONF's folder (CI exports it), or the
    start script's default."""
    conf = os.environ.get("MESHREC_SLURM2_CONF")
    return str(Path(conf).parent) if conf else "/tmp/meshrec-slurm2"


def _slurm2_usable(state_dir: str) -> SlurmTwoNodes | None:
    """The two-node cluster, if its slurmctld answers, keeps accounting and both nodes are
    usable; else None."""
    conf = Path(state_dir) / "slurm.conf"
    if shutil.which("sbatch") is None or not conf.is_file():
        return None
    env = {**os.environ, "SLURM_CONF": str(conf)}

    def quiet(cmd: list[str]) -> str | None:
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=20, env=env,
                                  check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout if done.returncode == 0 else None

    ping = quiet(["scontrol", "ping"])
    if ping is None or "is UP" not in ping or quiet(["sacct", "-n", "-X", "-S", "now"]) is None:
        return None
    addresses = {}
    for line in (quiet(["scontrol", "show", "node", "-o"]) or "").splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        addresses[fields["NodeName"]] = fields["NodeAddr"]
    # sinfo's states: idle, mixed, … usable; down*, drained, idle* (not responding) … not.
    states = dict(line.split() for line in (quiet(["sinfo", "-h", "-N", "-o", "%N %T"]) or "")
                  .splitlines())
    partition = None
    for line in (quiet(["sinfo", "-h", "-o", "%P %a"]) or "").splitlines():
        name, avail = line.split()
        if name.endswith("*") and avail == "up":
            partition = name[:-1]
    if (partition is None or sorted(addresses) != ["node1", "node2"]
            or sorted(states) != ["node1", "node2"]
            or not all(state in _USABLE_STATES for state in states.values())):
        return None
    host = next((line.split() for line in Path("/etc/hosts").read_text().splitlines()
                 if line.split()[1:2] == ["meshrec2-host"]), None)
    if host is None:
        return None
    return SlurmTwoNodes(partition=partition, conf=str(conf), state_dir=state_dir,
                         nodes=("node1", "node2"), addresses=addresses, host_address=host[0],
                         host_name="meshrec2-host")


@pytest.fixture(scope="session")
def slurm_two_nodes() -> Iterator[SlurmTwoNodes]:
    state_dir = _slurm2_state_dir()
    with (open(_SLURM2_LOCKS / "meshrec-slurm2-up.lock", "w") as lock,
          _flock(_SLURM2_LOCKS / "meshrec-slurm2-nodes.lock", fcntl.LOCK_SH)):
        # xdist workers: one starts the cluster, the others wait; and none mistakes a node that a
        # node_failure of another worker holds down for a broken cluster (and revives it).
        fcntl.flock(lock, fcntl.LOCK_EX)
        cluster = _slurm2_usable(state_dir)
        started = False
        if cluster is None:
            if os.geteuid() != 0 and not _in_ci():
                pytest.skip("the two-node SLURM cluster is not up, and starting it needs root "
                            "(sudo bash tests/infra/slurm2_up.sh)")
            up = subprocess.run(["bash", str(INFRA / "slurm2_up.sh"), state_dir],
                                capture_output=True, text=True, timeout=1200, check=False)
            if up.returncode != 0:
                pytest.fail(f"tests/infra/slurm2_up.sh failed (exit {up.returncode}):\n"
                            f"{up.stderr[-6000:]}", pytrace=False)
            started = True
            cluster = _slurm2_usable(state_dir)
            if cluster is None:
                pytest.fail("tests/infra/slurm2_up.sh succeeded, yet the two-node cluster is not "
                            "usable", pytrace=False)
    yield cluster
    # Under xdist another worker may still be using it: only a lone session stops what it started.
    if (started and os.environ.get("MESHREC_KEEP_SLURM") != "1"
            and "PYTEST_XDIST_WORKER" not in os.environ):
        subprocess.run(["bash", str(INFRA / "slurm2_down.sh"), state_dir], capture_output=True,
                       timeout=300, check=False)


@pytest.fixture
def both_nodes_up(slurm_two_nodes: SlurmTwoNodes) -> Iterator[SlurmTwoNodes]:
    """``slurm_two_nodes`` for a test that needs both nodes: no ``node_failure`` of another xdist
    worker runs meanwhile (shared lock; node_failure takes it exclusively)."""
    with _flock(_SLURM2_LOCKS / "meshrec-slurm2-nodes.lock", fcntl.LOCK_SH):
        yield slurm_two_nodes


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Tracking URI (``http://127.0.0.1:PORT``) of a server storing into a temporary directory."""
    yield from _mlflow(tmp_path_factory.mktemp("mlflow"), "127.0.0.1")


@pytest.fixture(scope="session")
def nodes_mlflow(slurm_two_nodes: SlurmTwoNodes,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Tracking URI of a server the two-node cluster's nodes reach (on the bridge's host
    address: 127.0.0.1 on a node is the node itself)."""
    yield from _mlflow(tmp_path_factory.mktemp("mlflow-nodes"), slurm_two_nodes.host_address)


def _mlflow(folder: Path, host: str) -> Iterator[str]:
    env = {**os.environ, "PYTHON": sys.executable}
    up = subprocess.run(["bash", str(INFRA / "mlflow_up.sh"), str(free_port(host)), str(folder),
                         host], capture_output=True, text=True, env=env, timeout=180, check=False)
    try:
        if up.returncode != 0:
            pytest.fail(f"tests/infra/mlflow_up.sh failed (exit {up.returncode}):\n"
                        f"{up.stderr[-6000:]}", pytrace=False)
        yield up.stdout.split()[-1]
    finally:
        subprocess.run(["bash", str(INFRA / "mlflow_down.sh"), str(folder)], capture_output=True,
                       timeout=60, check=False)


@pytest.fixture(scope="session")
def standin_model(meshrec_cache) -> dict[str, np.ndarray]:
    """The default stand-in body's arrays: the one in ``meshrec_cache``, built once for every
    xdist worker (~6 s)."""
    from meshrec.body.load import resolve_model_path
    from meshrec.config import Body

    with np.load(resolve_model_path(Body(cache_dir=str(meshrec_cache)))) as npz:
        return {name: npz[name] for name in npz.files}


@pytest.fixture(scope="session")
def standin_file(standin_model, tmp_path_factory) -> Path:
    """The default stand-in written to an .npz, as `meshrec body standin` writes it."""
    from meshrec.fileio import save_npz

    path = tmp_path_factory.mktemp("body") / "standin.npz"
    save_npz(path, standin_model)
    return path


@pytest.fixture(scope="session")
def meshrec_cache(tmp_path_factory) -> Path:
    """``body.cache_dir`` of every test that generates data: the stand-in body and each recipe's
    shards live under it keyed by recipe hash (meshrec.data.demo), so tests of one recipe share
    one build. One for the whole run: xdist workers share it (builds hold a lock, the others
    wait for them, as ranks of one job do)."""
    root = tmp_path_factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:
        root = root.parent  # the run's folder, above each worker's own
    path = root / "meshrec-cache"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def cache(meshrec_cache) -> Path:
    """``meshrec_cache`` with the tiny training recipe (tests/tiny_config.py) built."""
    from meshrec.data.demo import ensure_shards
    from tests.tiny_config import tiny

    ensure_shards(tiny(meshrec_cache, meshrec_cache / "unused"))
    return meshrec_cache


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of Debian's chromium, for Playwright's ``executable_path`` (its own browsers are never
    downloaded). A missing browser skips here, but fails in CI, which installs it (.ci/run)."""
    path = shutil.which("chromium")
    if path is None:
        if _in_ci():
            pytest.fail("Debian's chromium is not installed; CI must run the browser test "
                        "(.ci/run installs it)", pytrace=False)
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    return path
