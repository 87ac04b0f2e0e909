"""How a cell runs: its submitit job (`CellJob`) and the executor parameters, SLURM or local.

- A cell is a `CellJob`: a `submitit.helpers.Checkpointable` running `meshrec.train.loop.train`
  in `gpus_per_node × nodes` processes (`launch.slurm.tasks_per_node`, 0 = one per GPU). The loop
  checkpoints every `train.checkpoint_every` steps and always resumes from its run directory, so
  on SLURM's time-limit signal or a preemption `checkpoint()` only hands itself back to submitit
  to be requeued: nothing heavy runs in the signal handler. At its end (or its failure) rank 0
  marks its MLflow run and closes the sweep run when it was the last cell.
- `sbatch_preview`: the #SBATCH header submitit would write for the array (--dry-run);
  `after`: the dependency on a feature job (`afterok`, cancelled if it fails).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Optional

import submitit

from meshrec import protocols
from meshrec.config import Config
from meshrec.launch.plan import REPO, Plan
from meshrec.launch.runs import Tracking, close_parent_if_done

log = logging.getLogger("meshrec.sweep")


# ------------------------------------------------------------------ the job

class CellJob(submitit.helpers.Checkpointable):
    """One cell's training run, in every task of its job (submitit sets up the DDP ranks)."""

    def __init__(self, config: dict, run_id: Optional[str]) -> None:
        self.config = config          # plain dict: pickles without the package's classes
        self.run_id = run_id

    def __call__(self) -> dict:
        from meshrec.config import from_dict
        from meshrec.train.loop import train

        cfg = from_dict(self.config, "sweep cell")
        try:
            metrics = train(cfg, run_id=self.run_id)
        except Exception as exc:  # failed for good (a requeue is a SystemExit, not this)
            if self.run_id and _rank() == 0:
                self._close(cfg, failure=_first_line(exc))
            raise
        if metrics and self.run_id:  # rank 0, at the real end: the last cell closes the sweep
            self._close(cfg)
        return metrics

    def _close(self, cfg: Config, failure: str = "") -> None:
        try:
            tracking = Tracking(cfg.track.uri, cfg.track.experiment)
            if failure:
                tracking.mark_failed(self.run_id, failure)
            close_parent_if_done(tracking, self.run_id,
                                 protocols.selection_metric(cfg.eval.protocol))
        except Exception as exc:  # never fatal: the sweep's --report closes it too
            log.warning("could not close the sweep's MLflow run: %s", exc)

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        # Runs in the signal handler: no saving here. The loop saves every
        # train.checkpoint_every steps and resumes from the run directory on restart.
        return submitit.helpers.DelayedSubmission(CellJob(self.config, self.run_id))


def _rank() -> int:
    try:
        return submitit.JobEnvironment().global_rank
    except RuntimeError:  # called outside a submitit job
        return 0


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


# ------------------------------------------------------------------ submitit parameters

def tasks_per_node(cfg: Config) -> int:
    """A cell's processes per node: launch.slurm.tasks_per_node, else one per GPU, else 1."""
    s = cfg.launch.slurm
    return s.tasks_per_node or s.gpus_per_node or 1


def executor_parameters(cfg: Config, executor: str) -> dict[str, Any]:
    """submitit AutoExecutor parameters for one cell's job."""
    s = cfg.launch.slurm
    tasks = tasks_per_node(cfg)
    params: dict[str, Any] = {"name": cfg.launch.job_name, "timeout_min": s.time_min,
                              "tasks_per_node": tasks, "cpus_per_task": s.cpus_per_task}
    # The package of this checkout, and torch's CPU threads limited to the task's CPUs.
    setup = [f"export PYTHONPATH={REPO}${{PYTHONPATH:+:$PYTHONPATH}}",
             f"export OMP_NUM_THREADS={s.cpus_per_task}"]
    if executor == "local":  # the same settings come from the environment (local_env)
        if s.gpus_per_node:
            params["gpus_per_node"] = s.gpus_per_node
        return params
    params["nodes"] = s.nodes
    if s.gpus_per_node and not s.gres:
        params["gpus_per_node"] = s.gpus_per_node
    if s.mem_gb:
        params["mem_gb"] = s.mem_gb
    for name in ("partition", "account", "qos", "constraint", "gres"):
        if getattr(s, name):
            params[f"slurm_{name}"] = getattr(s, name)
    params["slurm_array_parallelism"] = s.array_parallelism
    params["slurm_signal_delay_s"] = s.signal_delay_s
    # Requeued after a node failure even where the cluster's JobRequeue=0 (unless the user says
    # no-requeue); the requeued cell resumes from its checkpoint.
    extra: dict[str, Any] = {"requeue": True}
    extra.update(s.additional)
    for key in [k for k in extra if k.replace("_", "-") == "no-requeue"]:
        extra[key] = True  # a flag: submitit writes `--no-requeue` for True
        del extra["requeue"]
    params["slurm_additional_parameters"] = extra
    # The rendezvous port: free now on the first node, where the batch script and rank 0 run.
    params["slurm_setup"] = [*setup, f"export MASTER_PORT=$({sys.executable} -m "
                                      "meshrec.train.rendezvous)"]
    return params


def local_env(cfg: Config) -> dict[str, str]:
    """What `setup` lines export on SLURM, for local jobs (which inherit this process's
    environment; a setup line would put a shell between submitit and the job, and the shell
    would not pass on a cancel)."""
    path = os.environ.get("PYTHONPATH", "")
    return {"PYTHONPATH": f"{REPO}:{path}" if path else str(REPO),
            "OMP_NUM_THREADS": str(cfg.launch.slurm.cpus_per_task)}


def log_folder(p: Plan) -> Path:
    return Path(p.cfg.launch.log_dir).expanduser().resolve() / p.sweep_id


def make_executor(p: Plan, folder: Path) -> submitit.AutoExecutor:
    executor = submitit.AutoExecutor(folder=folder, cluster=p.executor)
    executor.update_parameters(**executor_parameters(p.cfg, p.executor))
    return executor


def sbatch_preview(p: Plan, after_job: str = "") -> str:
    """The #SBATCH header submitit writes for this sweep's array (what --dry-run shows);
    `after_job`: the id the array waits for (a feature job's)."""
    from submitit.slurm import slurm as submitit_slurm

    params = executor_parameters(p.cfg, "slurm")
    if after_job:
        params = after(params, after_job)
    generic = {k: v for k, v in params.items() if not k.startswith("slurm_")}
    specific = {k[len("slurm_"):]: v for k, v in params.items() if k.startswith("slurm_")}
    mapping = {"timeout_min": "time", "tasks_per_node": "ntasks_per_node", "name": "job_name"}
    slurm_params = {mapping.get(k, k): v for k, v in generic.items()}
    if "mem_gb" in slurm_params:
        slurm_params["mem"] = f"{slurm_params.pop('mem_gb')}GB"
    slurm_params.update(specific)
    text = submitit_slurm._make_sbatch_string(  # noqa: SLF001 (the exact text sbatch gets)
        command="python -u -m submitit.core._submit FOLDER", folder=log_folder(p),
        map_count=len(p.cells), **slurm_params)
    return "\n".join(line for line in text.splitlines()
                     if line.startswith(("#SBATCH", "export PYTHONPATH", "export OMP")))


def after(params: Mapping[str, Any], job_id: str) -> dict[str, Any]:
    """Executor parameters of jobs that start once job `job_id` has ended well (submitit's
    `slurm_dependency`, kept together with a dependency of the user's own `additional`); cells
    whose feature job failed are cancelled by SLURM instead of waiting for ever."""
    out = dict(params)
    extra = dict(out.get("slurm_additional_parameters") or {})
    own = str(extra.pop("dependency", "") or "")
    out["slurm_dependency"] = ",".join(x for x in (own, f"afterok:{job_id}") if x)
    if not {"kill-on-invalid-dep", "kill_on_invalid_dep"} & set(extra):
        extra["kill-on-invalid-dep"] = "yes"
    out["slurm_additional_parameters"] = extra
    return out
