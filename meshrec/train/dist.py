"""Who am I in a distributed run: rank, world size and device, from the launcher's environment.

Launchers, in the order they are recognised:
- torchrun (or `spawn_local`): RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT;
- a submitit job (SUBMITIT_EXECUTOR set): submitit's
  `TorchDistributedEnvironment().export()` fills the torchrun variables from its job environment;
- plain `srun` under sbatch: SLURM_PROCID, SLURM_STEP_NUM_TASKS, SLURM_LOCALID, the first host of
  the step's node list (`scontrol show hostnames`) and a port derived from the job id. A batch script
  that is not an srun step is one process, whatever `--ntasks` says;
- otherwise a single process with no process group.

`init_distributed(cfg)` joins the process group (nccl on CUDA, gloo on CPU) when the world has more
than one process; `cleanup()` leaves it. `spawn_local(fn, n, *args)` runs `fn(*args)` in n local
processes with torchrun-style variables set, which is how `train.processes=N` runs.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from typing import Any, Callable, Mapping

import torch
import torch.distributed as dist

from meshrec.errors import MeshrecError
from meshrec.train import rendezvous
from meshrec.train.rendezvous import free_port

# Ports derived from a SLURM job id fall in this range (submitit uses the same one).
_PORT_RANGE = (20000, 60000)


@dataclasses.dataclass(frozen=True)
class LaunchInfo:
    """What the launcher says about this process (no torch state)."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    source: str  # "torchrun", "submitit", "slurm" or "single"


@dataclasses.dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    source: str = "single"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise MeshrecError(f"environment variable {name}={env[name]!r} is not an integer") from None


def hostnames(nodelist: str) -> list[str]:
    """Host names of a SLURM node list such as 'gpu[03-05,09],cpu1', in order (scontrol's
    expansion where it is installed, else our own)."""
    if shutil.which("scontrol"):
        try:
            out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True,
                                 text=True, timeout=30, check=True).stdout.split()
            if out:
                return out
        except (OSError, subprocess.SubprocessError):
            pass
    return expand_nodelist(nodelist)


def expand_nodelist(nodelist: str) -> list[str]:
    """SLURM's host list syntax expanded without scontrol: 'a[01-02,7]b,c' → a01b a02b a07b c."""
    hosts: list[str] = []
    for prefix, ranges, suffix in re.findall(r"([^,\[]+)(?:\[([^\]]+)\])?([^,\[]*),?",
                                             nodelist.strip()):
        if not ranges:
            hosts.append(prefix + suffix)
            continue
        for part in ranges.split(","):
            low, _, high = part.partition("-")
            for n in range(int(low), int(high or low) + 1):
                hosts.append(f"{prefix}{n:0{len(low)}d}{suffix}")
    if not hosts:
        raise MeshrecError(f"cannot read the SLURM node list {nodelist!r}")
    return hosts


def first_host(nodelist: str) -> str:
    """First host name of a SLURM node list."""
    return hostnames(nodelist)[0]


def step_hosts(env: Mapping[str, str]) -> list[str]:
    """The hosts of this SLURM step (empty outside SLURM)."""
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", "")
    return hostnames(nodelist) if nodelist else []


def _port_from_job(job_id: str) -> int:
    digits = re.sub(r"\D", "", job_id) or "0"
    low, high = _PORT_RANGE
    return low + int(digits) % (high - low)


def detect_launch(env: Mapping[str, str] | None = None) -> LaunchInfo:
    """Read rank, world size, local rank and rendezvous address from the environment.

    Inside a submitit job this exports the torchrun variables into `os.environ` (as submitit's
    helper does) when `env` is the real environment.
    """
    real = env is None
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        return LaunchInfo(_int(env, "RANK"), _int(env, "WORLD_SIZE"),
                          _int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0,
                          env.get("MASTER_ADDR", "127.0.0.1"),
                          _int(env, "MASTER_PORT") if "MASTER_PORT" in env else 29500, "torchrun")
    if env.get("SUBMITIT_EXECUTOR"):
        import submitit.helpers

        if not real:
            raise MeshrecError("a submitit environment can only be read from os.environ")
        # CUDA_VISIBLE_DEVICES is left alone: the device is picked from local_rank below.
        info = submitit.helpers.TorchDistributedEnvironment().export(
            set_cuda_visible_devices=False, overwrite=True)
        return LaunchInfo(info.rank, info.world_size, info.local_rank, info.master_addr,
                          info.master_port, "submitit")
    if "SLURM_PROCID" in env and "SLURM_STEP_NUM_TASKS" in env:
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", "")
        if not nodelist:
            raise MeshrecError("SLURM step without SLURM_STEP_NODELIST or SLURM_JOB_NODELIST")
        return LaunchInfo(_int(env, "SLURM_PROCID"), _int(env, "SLURM_STEP_NUM_TASKS"),
                          _int(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0,
                          first_host(nodelist),
                          _int(env, "MASTER_PORT") if "MASTER_PORT" in env
                          else _port_from_job(env.get("SLURM_JOB_ID", "0")), "slurm")
    return LaunchInfo(0, 1, 0, "127.0.0.1", 0, "single")


def pick_device(setting: str, local_rank: int) -> torch.device:
    """cuda:local_rank (modulo visible GPUs, so one GPU per task also works) or cpu."""
    cuda = torch.cuda.is_available()
    if setting == "cuda" and not cuda:
        raise MeshrecError("train.device=cuda but no CUDA device is visible")
    if setting == "cpu" or not cuda:
        return torch.device("cpu")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def init_distributed(cfg: Any) -> DistEnv:
    """Join the process group the launcher set up (or none for one process); return who we are."""
    launch = detect_launch()
    if not 0 <= launch.rank < launch.world_size:
        raise MeshrecError(f"rank {launch.rank} is outside world size {launch.world_size}")
    device = pick_device(cfg.train.device, launch.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if launch.world_size > 1 and not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", launch.master_addr)
        os.environ.setdefault("MASTER_PORT", str(launch.master_port))
        hosts = step_hosts(os.environ) if launch.source in ("submitit", "slurm") else []
        rendezvous.link_nodes(launch.master_addr, hosts, cfg.launch.socket_ifname, os.environ)
        store = rendezvous.open_store(launch.master_addr, launch.master_port, launch.rank,
                                      launch.world_size, cfg.launch.rendezvous_timeout_s)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, store=store, rank=launch.rank,
                                world_size=launch.world_size,
                                device_id=device if device.type == "cuda" else None)
    return DistEnv(launch.rank, launch.world_size, launch.local_rank, device, launch.source)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank; nothing to wait for in a single process."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over ranks (a copy; the input is left as is)."""
    out = value.detach().clone()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= dist.get_world_size()
    return out


def _child(local_rank: int, nprocs: int, port: int, fn: Callable[..., Any], args: tuple) -> None:
    os.environ.update(RANK=str(local_rank), WORLD_SIZE=str(nprocs), LOCAL_RANK=str(local_rank),
                      LOCAL_WORLD_SIZE=str(nprocs), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    fn(*args)


def spawn_local(fn: Callable[..., Any], nprocs: int, *args: Any) -> None:
    """Run `fn(*args)` in `nprocs` fresh processes that see torchrun-style variables.

    `fn` must be importable by name (a module-level function). A child that raises makes this
    raise too (torch's ProcessRaisedException, with the child's traceback).
    """
    if nprocs < 1:
        raise MeshrecError(f"need at least one process, got {nprocs}")
    torch.multiprocessing.spawn(_child, args=(nprocs, free_port("127.0.0.1"), fn, args), nprocs=nprocs,
                                join=True)
