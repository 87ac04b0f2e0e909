"""A loss-weight sweep: every cell of a sweep file trained once, as one submitit job array, each cell
one MLflow child run under one parent run for the sweep.

    load(grid, overrides, demo) → plan(sweep, local) → preflight → MLflow parent + children → submit

- Nothing is queued before the base config and every cell validate (`meshrec.launch.grid`), and
  the shards and the body model of every cell are read from here (`preflight`). Generated stand-in
  data (`data.shards: ''`) is built here, once, so the jobs do not race to make it.
- A cell is a `CellJob`: a `submitit.helpers.Checkpointable` running `meshrec.train.loop.train`
  in `gpus_per_node × nodes` processes (`launch.slurm.tasks_per_node`, 0 = one per GPU). The loop
  checkpoints every `train.checkpoint_every` steps and always resumes from its run directory, so
  on SLURM's time-limit signal or a preemption `checkpoint()` only hands itself back to submitit
  to be requeued: nothing heavy runs in the signal handler.
- MLflow: the parent run is found by the sweep's id (a hash of its cell names, tag
  `meshrec.sweep`), children by their cell hash (tag `meshrec.cell`). A child is made before its
  job is submitted and its id travels with the job, so a requeued job logs into the same run. A
  cell counts as finished only with the tag `meshrec.done=true` that the loop sets at its real end
  (MLflow's FINISHED status is also what a requeue exit leaves). Running the same sweep again skips
  finished cells and cells whose job is still queued or running, and resubmits the others into
  their existing runs: a cell never gets a second run.
- Local executor: on this machine, through submitit's local executor, at most
  `launch.slurm.array_parallelism` cells at a time; the command waits for them (local jobs end with
  the process that started them).
- Feature cache (`meshrec.launch.feature_job`): when every cell to run keeps its encoder frozen
  and all see the same inputs (one `meshrec.features.share_key`), the cells train from one
  frozen-encoder feature cache (`features.enabled=true`). If it is not complete yet, one feature
  job with a cell's resources builds it first: on SLURM the cell array depends on it
  (`afterok`, cancelled if it fails), locally the sweep waits for it. A complete cache is reused
  without a job. `--no-feature-cache` (`plan(feature_cache=False)`) keeps the cells as written.
- `--demo`: the sweep file's grid shrunk to DEMO_CELLS cells spread over it, `configs/demo.yaml`
  layered over its base (ResNet-18, small images, one epoch, generated data), local executor, an
  MLflow SQLite store beside the demo runs.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import shutil
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import submitit
import yaml

from meshrec import protocols
from meshrec.config import Config, ConfigError, to_dict, with_overrides
from meshrec.errors import MeshrecError
from meshrec.launch import feature_job
from meshrec.launch.grid import Cell, Sweep, describe, load_sweep

log = logging.getLogger("meshrec.sweep")

REPO = Path(__file__).resolve().parents[2]
DEMO_FILE = REPO / "configs" / "demo.yaml"
DEMO_CELLS = 4

TAG_SWEEP = "meshrec.sweep"
TAG_CELL = "meshrec.cell"
TAG_JOB = "meshrec.job_id"
TAG_EXECUTOR = "meshrec.executor"
TAG_DONE = "meshrec.done"       # set by the training loop (meshrec.track.DONE_TAG) at the real end
TAG_BEST = "meshrec.best_cell"
TAG_FAILED = "meshrec.failed"   # on a cell's run whose job raised: the error's first line
TAG_PARENT = "mlflow.parentRunId"
TAG_FEATURE_JOB = "meshrec.feature_job"   # on the parent: the sweep's last feature job
FEATURE_JOB_SUFFIX = "-features"          # job name of the feature job: launch.job_name + this

STATES = ("missing", "pending", "running", "finished", "failed")
# SLURM job states that will still run (pending) or are running.
_SLURM_PENDING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "RESIZING",
                  "SUSPENDED", "RESV_DEL_HOLD", "REVOKED"}
_SLURM_RUNNING = {"RUNNING", "COMPLETING", "STOPPED", "SIGNALING", "STAGE_OUT"}


# ------------------------------------------------------------------ what to run

@dataclasses.dataclass(frozen=True)
class Plan:
    sweep: Sweep
    cells: tuple[Cell, ...]      # the sweep's cells, or the demo's few
    executor: str                # "slurm" or "local"
    notice: str                  # why this executor, when it was not asked for ('' otherwise)
    sweep_id: str
    root: Path                   # cells train into root/cells/<cell hash>
    uri: str                     # MLflow tracking URI the launcher and every job use
    experiment: str
    feature_cache: bool = True   # cells sharing a frozen encoder train from one feature cache

    @property
    def cfg(self) -> Config:
        return self.sweep.base

    @property
    def metric(self) -> str:
        """Model selection: PVE on the validation subjects, or the protocol's MPJPE."""
        return protocols.selection_metric(self.cfg.eval.protocol)


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> list[str]:
    out: list[str] = []
    for key, value in mapping.items():
        if isinstance(value, Mapping) and value:
            out.extend(_flatten(value, f"{prefix}{key}."))
        else:
            text = yaml.safe_dump(value, default_flow_style=True, width=10**9).strip()
            out.append(f"{prefix}{key}={text.removesuffix(chr(10) + '...')}")
    return out


def demo_overrides(path: Path = DEMO_FILE) -> list[str]:
    """configs/demo.yaml's own keys as dotted overrides, plus what a demo sweep needs on a laptop:
    one local process per cell, one cell at a time."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise MeshrecError(f"cannot read {path}: {exc}") from None
    data.pop("defaults", None)
    return [*_flatten(data), "launch.executor=local", "launch.slurm.nodes=1",
            f"launch.slurm.cpus_per_task={os.cpu_count() or 1}",
            "launch.slurm.gpus_per_node=0", "launch.slurm.tasks_per_node=1",
            "launch.slurm.array_parallelism=1", "launch.log_dir=runs/demo/submitit",
            "train.processes=1"]


def spread(cells: Sequence[Cell], count: int) -> tuple[Cell, ...]:
    """`count` cells evenly spaced over the grid order (first and last included)."""
    if len(cells) <= count:
        return tuple(cells)
    step = (len(cells) - 1) / (count - 1) if count > 1 else 0
    return tuple(cells[round(i * step)] for i in range(count))


def sweep_id(cells: Iterable[Cell]) -> str:
    names = "\n".join(sorted(c.name for c in cells))
    return hashlib.sha256(names.encode("ascii")).hexdigest()[:12]


def default_uri(root: Path) -> str:
    return f"sqlite:///{(root / 'mlflow.db').resolve()}"


def plan(grid: str | os.PathLike, overrides: Sequence[str] = (), *, demo: bool = False,
         local: bool = False, feature_cache: bool = True) -> Plan:
    """Load and validate the sweep (every cell), pick the executor; nothing is touched.
    `feature_cache=False` (--no-feature-cache): no feature job, cells as configured."""
    extra = demo_overrides() if demo else []
    sweep = load_sweep(grid, [*extra, *overrides])
    cells = spread(sweep.cells, DEMO_CELLS) if demo else sweep.cells
    base = sweep.base
    if any(c.config.train.processes != 1 for c in cells):
        raise ConfigError("train.processes: a sweep cell's processes are its SLURM/submitit tasks "
                          "(launch.slurm.tasks_per_node); leave train.processes at 1")
    if len({c.config.eval.protocol for c in cells}) > 1:
        raise ConfigError("eval.protocol: every cell of a sweep is compared on one validation "
                          "metric; do not vary the protocol in the grid")
    executor, notice = _choose_executor(base.launch.executor, local or demo)
    root = Path(base.train.output_dir).expanduser().resolve()
    # '' = MLflow's default store: for a sweep, a SQLite file the jobs find by absolute path
    # (next to the demo's runs for --demo, in the working directory otherwise).
    uri = base.track.uri or default_uri(root if demo else Path.cwd())
    return Plan(sweep, cells, executor, notice, sweep_id(cells), root, uri, base.track.experiment,
                feature_cache)


def _choose_executor(setting: str, local: bool) -> tuple[str, str]:
    if local or setting == "local":
        return "local", ""
    if shutil.which("sbatch") is None:
        if setting == "slurm":
            raise MeshrecError("launch.executor=slurm but there is no `sbatch` on PATH here; "
                               "run from a SLURM login node, or use --local")
        return "local", "no `sbatch` on PATH: running the cells here with submitit's local executor"
    return "slurm", ""


def job_config(p: Plan, cell: Cell, shards: str = "") -> Config:
    """The config a cell's job trains: its own run directory, the sweep's MLflow store, and the
    shard directory resolved here (none of these enter the cell hash)."""
    extra = [f"train.output_dir={p.root / 'cells' / cell.name}", f"track.uri={p.uri}",
             f"track.experiment={p.experiment}"]
    if shards:
        extra.append(f"data.shards={shards}")
    return with_overrides(cell.config, extra, f"cell {cell.name}")


# ------------------------------------------------------------------ checks before queueing

def _readable(path: Path, what: str) -> None:
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise MeshrecError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None


def preflight(cfg: Config, progress: bool = False, out=print) -> str:
    """Check from here that a cell's inputs are readable; return its shard directory (the
    generated stand-in data is built now when `data.shards` is '')."""
    from meshrec.body.load import resolve_model_path
    from meshrec.body.model_file import load_arrays
    from meshrec.data.demo import demo_subjects, ensure_shards, existing_shards
    from meshrec.shards import manifest as shard_manifest

    making = not cfg.data.shards and existing_shards(cfg) is None
    if making:  # minutes on a CPU: say so, a log file gets no progress bar
        s = cfg.data.synth
        out(f"making generated data first: {len(demo_subjects(cfg))} subjects × "
            f"{s.frames_per_subject} frames × 4 "
            f"cameras at {s.size} px under {cfg.body.cache_dir} (once; later runs reuse it)")
    started = time.monotonic()
    body_path = resolve_model_path(cfg.body)  # builds the stand-in when model_path is ''
    load_arrays(body_path)
    for value, what in ((cfg.body.h36m_regressor, "body.h36m_regressor"),
                        (cfg.model.mean_params, "model.mean_params"),
                        (cfg.train.init_from, "train.init_from")):
        if value:
            _readable(Path(value).expanduser(), what)
    if cfg.model.weights not in ("imagenet", "none"):
        _readable(Path(cfg.model.weights).expanduser(), "model.weights")
    shards = ensure_shards(cfg, progress)
    if making:
        out(f"generated data ready in {time.monotonic() - started:.0f} s: {shards}")
    manifest = shard_manifest.load(shards)
    known = manifest.get("subjects", {})
    for field, subjects in (("data.train_subjects", cfg.data.train_subjects),
                            ("data.val_subjects", cfg.data.val_subjects)):
        missing = [s for s in subjects if s not in known or not known[s].get("samples")]
        if missing:
            raise MeshrecError(f"{field}: {', '.join(missing)} not in {shards} (it holds "
                               f"{', '.join(sorted(known)) or 'nothing'})")
    wanted = set(cfg.data.train_subjects) | set(cfg.data.val_subjects)
    for entry in manifest.get("shards", []):
        if entry.get("subject") in wanted:
            _readable(Path(shards) / entry["path"], "data.shards")
    return str(shards)


def preflight_all(p: Plan, progress: bool = False, out=print) -> dict[str, str]:
    """Cell name → shard directory, every cell checked (cells sharing inputs are checked once)."""
    seen: dict[str, str] = {}
    shards: dict[str, str] = {}
    for cell in p.cells:
        c = cell.config
        key = json.dumps([c.data.shards, to_dict(c.body), to_dict(c.data.synth),
                          c.data.train_subjects, c.data.val_subjects, c.eval.subjects,
                          c.model.weights, c.model.mean_params, c.train.init_from])
        if key not in seen:
            seen[key] = preflight(c, progress, out)
        shards[cell.name] = seen[key]
        # What the cell's weights and protocol ask of the shards (a manifest read per cell).
        preflight_labels(replace(c, data=replace(c.data, shards=seen[key])))
    return shards


def preflight_labels(cfg: Config) -> None:
    """The cell's loss weights and eval.protocol find their labels in its shards."""
    from meshrec.body.load import load_h36m_regressor, resolve_model_path
    from meshrec.body.model_file import load_arrays
    from meshrec.train import preflight as supervision

    vertices = load_arrays(resolve_model_path(cfg.body))["v_template"].shape[0]
    supervision.check(cfg, load_h36m_regressor(cfg.body, vertices) is not None)


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


def executor_parameters(cfg: Config, executor: str) -> dict[str, Any]:
    """submitit AutoExecutor parameters for one cell's job."""
    s = cfg.launch.slurm
    tasks = s.tasks_per_node or s.gpus_per_node or 1
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
    if s.additional:
        params["slurm_additional_parameters"] = dict(s.additional)
    params["slurm_setup"] = setup
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


# ------------------------------------------------------------------ MLflow

class Tracking:
    """The sweep's MLflow experiment: parent run, one child per cell."""

    def __init__(self, uri: str, experiment: str) -> None:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        from meshrec.track import experiment_for, limit_http

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # store-creation chatter
        logging.getLogger("alembic").setLevel(logging.WARNING)
        limit_http()  # one call's retries and timeout, as for the training loop's tracker
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        try:
            self.experiment_id = experiment_for(self.client, experiment)
        except MlflowException as exc:
            raise MeshrecError(f"MLflow at {uri}: {str(exc).splitlines()[0]}") from None
        except Exception as exc:  # connection refused, DNS, ...
            raise MeshrecError(f"cannot reach MLflow at {uri}: {type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else ''}") from None

    def _search(self, filter_string: str) -> list[Any]:
        runs: list[Any] = []
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string=filter_string,
                                           max_results=1000, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def parent(self, p: Plan, create: bool = True) -> Optional[str]:
        found = self._search(f"tags.`{TAG_SWEEP}` = '{p.sweep_id}' and "
                             f"tags.`meshrec.role` = 'sweep'")
        if found:
            return found[0].info.run_id
        if not create:
            return None
        name = f"{Path(p.sweep.path).stem} {time.strftime('%Y-%m-%d %H:%M')}"  # grid file, date
        run = self.client.create_run(self.experiment_id, run_name=name, tags={
            TAG_SWEEP: p.sweep_id, "meshrec.role": "sweep", "meshrec.grid_file": p.sweep.path,
            "meshrec.cells": str(len(p.cells))})
        self.client.log_batch(run.info.run_id, params=_params({
            "grid": json.dumps(p.sweep.grid), "cells": len(p.cells), "executor": p.executor,
            "metric": p.metric}))
        return run.info.run_id

    def cell_runs(self) -> dict[str, Any]:
        """Cell hash → its run (a finished one first, else the latest)."""
        best: dict[str, Any] = {}
        for run in self._search(f"tags.`{TAG_CELL}` LIKE '%'"):
            name = run.data.tags[TAG_CELL]
            old = best.get(name)
            if old is None or (_done(run), run.info.start_time) > (_done(old),
                                                                   old.info.start_time):
                best[name] = run
        return best

    def create_child(self, parent_id: str, p: Plan, cell: Cell, cfg: Config) -> str:
        from meshrec.track import flatten_params

        tags = {TAG_PARENT: parent_id, TAG_CELL: cell.name, TAG_SWEEP: p.sweep_id,
                **{f"grid.{k}": _text(v) for k, v in cell.values.items()}}
        run = self.client.create_run(self.experiment_id, run_name=run_label(cell), tags=tags)
        params = flatten_params(to_dict(cfg))
        items = list(params.items())
        for i in range(0, len(items), 100):
            self.client.log_batch(run.info.run_id, params=_params(dict(items[i:i + 100])))
        self.client.update_run(run.info.run_id, status="SCHEDULED")
        return run.info.run_id

    def mark_failed(self, run_id: str, reason: str) -> None:
        self.client.set_tag(run_id, TAG_FAILED, reason[:500] or "failed")
        self.client.set_terminated(run_id, "FAILED")

    def reopen(self, parent_id: str, run_ids: Iterable[str]) -> None:
        """Cells submitted again: their failure marks go, and the sweep runs again."""
        for run_id in run_ids:
            if TAG_FAILED in self.client.get_run(run_id).data.tags:
                self.client.delete_tag(run_id, TAG_FAILED)
        if self.client.get_run(parent_id).info.status != "RUNNING":
            self.client.update_run(parent_id, status="RUNNING")

    def best(self, run_id: str, metric: str) -> float:
        values = [m.value for m in self.client.get_metric_history(run_id, metric)
                  if math.isfinite(m.value)]
        return min(values) if values else math.nan


def _params(values: Mapping[str, Any]) -> list[Any]:
    from mlflow.entities import Param

    return [Param(k, _text(v)) for k, v in values.items()]


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _done(run: Any) -> bool:
    return run.data.tags.get(TAG_DONE) == "true"


def _failed(run: Any) -> bool:
    return TAG_FAILED in run.data.tags and not _done(run)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def close_parent_if_done(tracking: "Tracking", child_id: str, metric: str,
                         failed: Iterable[str] = ()) -> bool:
    """End the sweep run of cell run `child_id` once every cell of it has ended: FINISHED when
    all finished, FAILED when one failed for good (its job raised, or `failed` names it: cell
    names the scheduler reports failed), with summary metrics (cells finished and failed, the
    best metric) and the best cell's tag. True if it ended.

    On SLURM no sweep process outlives the cells: each cell calls this at its end, after its own
    done or failed mark, so the last one to end sees every cell ended."""
    parent_id = tracking.client.get_run(child_id).data.tags.get(TAG_PARENT)
    if not parent_id:
        return False
    parent = tracking.client.get_run(parent_id)
    expected = int(parent.data.tags.get("meshrec.cells", "0") or 0)
    runs = {r.data.tags.get(TAG_CELL): r
            for r in tracking._search(f"tags.`{TAG_PARENT}` = '{parent_id}'")}
    done = {name: r for name, r in runs.items() if _done(r)}
    bad = {name for name, r in runs.items() if _failed(r) or (name in failed and not _done(r))}
    if not expected or len(done) + len(bad) < expected:
        return False
    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    best = {name: tracking.best(r.info.run_id, metric) for name, r in done.items()}
    finite = {name: v for name, v in best.items() if math.isfinite(v)}
    metrics = [Metric("cells_finished", float(len(done)), now, 0),
               Metric("cells_failed", float(len(bad)), now, 0)]
    tags = []
    if finite:
        name = min(finite, key=finite.get)
        metrics.append(Metric(f"best_{metric}", finite[name], now, 0))
        tags.append(RunTag(TAG_BEST, name))
    tracking.client.log_batch(parent_id, metrics=metrics, tags=tags)
    status = "FAILED" if bad else "FINISHED"
    if parent.info.status != status:
        tracking.client.set_terminated(parent_id, status)
    return True


# ------------------------------------------------------------------ cell states

def _slurm_states(job_ids: Sequence[str]) -> dict[str, str]:
    """Job id → SLURM state ('' when the scheduler does not know it)."""
    if not job_ids or shutil.which("sacct") is None and shutil.which("squeue") is None:
        return {}
    rows: list[tuple[str, str]] = []
    try:
        out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j",
                              ",".join(job_ids)], capture_output=True, text=True, timeout=60)
        if out.returncode == 0:
            rows = [tuple(line.split("|")[:2]) for line in out.stdout.splitlines() if "|" in line]
        else:
            out = subprocess.run(["squeue", "-h", "-o", "%i|%T", "-j", ",".join(job_ids)],
                                 capture_output=True, text=True, timeout=60)
            rows = [tuple(line.split("|")[:2]) for line in out.stdout.splitlines() if "|" in line]
    except (OSError, subprocess.SubprocessError):
        return {}
    states: dict[str, str] = {}
    for job_id in job_ids:
        base = job_id.split("_")[0]
        for jid, state in rows:  # later rows (a requeued job's newest record) win
            if jid == job_id or (jid.startswith(base + "_[") and "_" in job_id):
                states[job_id] = state.split()[0] if state else ""
    return states


def _pid_alive(job_id: str) -> bool:
    try:
        os.kill(int(job_id), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def cell_states(runs: Mapping[str, Any], cells: Sequence[Cell]) -> dict[str, str]:
    """Cell name → one of STATES."""
    slurm_ids = [r.data.tags[TAG_JOB] for r in runs.values()
                 if r.data.tags.get(TAG_EXECUTOR) == "slurm" and r.data.tags.get(TAG_JOB)
                 and not _done(r)]
    slurm = _slurm_states(slurm_ids)
    states: dict[str, str] = {}
    for cell in cells:
        run = runs.get(cell.name)
        if run is None:
            states[cell.name] = "missing"
            continue
        if _done(run):
            states[cell.name] = "finished"
            continue
        if _failed(run):
            states[cell.name] = "failed"
            continue
        job, kind = run.data.tags.get(TAG_JOB, ""), run.data.tags.get(TAG_EXECUTOR, "")
        if not job:
            states[cell.name] = "missing"   # made, never submitted (the launcher stopped)
        elif kind == "slurm":
            state = slurm.get(job, "")
            states[cell.name] = ("pending" if state in _SLURM_PENDING else
                                 "running" if state in _SLURM_RUNNING else "failed")
        else:
            states[cell.name] = "running" if _pid_alive(job) else "failed"
    return states


# ------------------------------------------------------------------ launching

def launch(p: Plan, out=print, progress: bool = False) -> dict[str, Any]:
    """Check everything, make the MLflow runs, submit what is not finished or in flight (after
    one feature job when the cells share a frozen encoder and its cache is not there yet).
    Returns {"parent": id, "submitted": {cell: job id}, "skipped": {cell: state}, "failed": [...],
    "feature_job": job id or None, "feature_cache": cache directory or ''}.
    """
    if p.notice:
        out(f"notice: {p.notice}")
    shards = preflight_all(p, progress, out)
    configs = {c.name: job_config(p, c, shards[c.name]) for c in p.cells}
    keys = _share_keys(p, configs)
    # Over every cell first: a cell that needs a cache nobody builds stops us before MLflow.
    feature_job.decide(configs, keys, p.feature_cache)
    tracking = Tracking(p.uri, p.experiment)
    parent = tracking.parent(p)
    runs = tracking.cell_runs()
    states = cell_states(runs, p.cells)
    skipped = {n: s for n, s in states.items() if s in ("finished", "pending", "running")}
    todo = [c for c in p.cells if c.name not in skipped]
    for name, state in skipped.items():
        out(f"cell {name}: {state}, not submitted")
    result: dict[str, Any] = {"parent": parent, "submitted": {}, "skipped": skipped,
                              "failed": [], "feature_job": None, "feature_cache": ""}
    if todo:
        features = feature_job.decide({c.name: configs[c.name] for c in todo}, keys,
                                      p.feature_cache)
        configs.update(features.cells({c.name: configs[c.name] for c in todo}))
        result["feature_cache"] = features.cache
        if features.reason:
            out(features.reason)
        run_ids = {c.name: (runs[c.name].info.run_id if c.name in runs
                            else tracking.create_child(parent, p, c, configs[c.name]))
                   for c in todo}
        tracking.reopen(parent, [runs[c.name].info.run_id for c in todo if c.name in runs])
        calls = [CellJob(to_dict(configs[c.name]), run_ids[c.name]) for c in todo]
        folder = log_folder(p)
        executor = make_executor(p, folder)
        if p.executor != "slurm":
            os.environ.update(local_env(p.cfg))  # the local jobs, the feature job's too
        fjob = None
        if features.build is not None:
            fjob = _submit_features(p, features.build, folder)
            result["feature_job"] = fjob.job_id
            tracking.client.set_tag(parent, TAG_FEATURE_JOB, fjob.job_id)
        if p.executor == "slurm":
            if fjob is not None:
                out(f"submitted feature job {fjob.job_id} ({_tasks(p.cfg)} task(s)); the cells "
                    f"start when it has finished well (afterok)")
                executor.update_parameters(**after(executor_parameters(p.cfg, "slurm"),
                                                   fjob.job_id))
            with executor.batch():
                jobs = [executor.submit(call) for call in calls]
            for cell, job in zip(todo, jobs):
                _tag_job(tracking, run_ids[cell.name], job.job_id, "slurm")
                result["submitted"][cell.name] = job.job_id
            array = jobs[0].job_id.split("_")[0]
            out(f"submitted {len(jobs)} cell(s) as SLURM job array {array} "
                f"(at most {p.cfg.launch.slurm.array_parallelism} at once); logs in {folder}")
            for cell, job in zip(todo, jobs):
                out(f"  {job.job_id}  cell {cell.name}  {_values(cell)}")
        elif fjob is None or _wait_features(fjob, out):
            result["failed"] = _run_local(executor, todo, calls, tracking, run_ids, result,
                                          p.cfg.launch.slurm.array_parallelism, folder, p.metric,
                                          out)
            # A cell killed before its job could say so still counts as failed.
            close_parent_if_done(tracking, next(iter(run_ids.values())), p.metric,
                                 result["failed"])
        else:
            result["failed"] = [c.name for c in todo]
    else:
        out("nothing to submit: every cell is finished or in flight")
        finished = [runs[c.name] for c in p.cells if states.get(c.name) == "finished"]
        if finished and close_parent_if_done(tracking, finished[0].info.run_id, p.metric):
            out(f"every cell is finished: sweep run {parent} closed")
    if p.executor == "local" and todo:
        table_rows = _rows(p, tracking)
        for line in table(p, table_rows):
            out(line)
        best = best_row(table_rows)
        if best is not None:
            say_best(tracking, best, p.metric, out)
    out(f"MLflow experiment '{p.experiment}' at {p.uri}; sweep run {parent}")
    out(f"open it: {ui_command(p.uri, tracking.experiment_id)}")
    return result


def _share_keys(p: Plan, configs: Mapping[str, Config]) -> dict[str, str]:
    """Share keys when the sweep may use a cache or a cell asks for one ({} otherwise: the
    naive sweep does not build encoders here)."""
    if p.feature_cache or any(c.features.enabled for c in configs.values()):
        return feature_job.share_keys(configs)
    return {}


def _tasks(cfg: Config) -> int:
    s = cfg.launch.slurm
    return s.nodes * (s.tasks_per_node or s.gpus_per_node or 1)


def _submit_features(p: Plan, cfg: Config, folder: Path) -> Any:
    """Submit the feature job: one job with a cell's resources (its tasks are the DDP ranks)."""
    executor = make_executor(p, folder)
    executor.update_parameters(name=f"{p.cfg.launch.job_name}{FEATURE_JOB_SUFFIX}")
    return executor.submit(feature_job.FeatureJob.of(cfg))


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


def _wait_features(job: Any, out) -> bool:
    """Wait for a local feature job; False (its error printed) if it failed."""
    out(f"building the feature cache here first (pid {job.job_id}); logs in "
        f"{Path(job.paths.stdout).parent}")
    started = time.monotonic()
    try:
        while not job.done():
            time.sleep(0.5)
    finally:  # Ctrl-C: stop it now, not at interpreter exit
        if not job.done():
            job.cancel(check=False)
    try:
        job.result()
    except Exception:  # the job's own error: its last line and the log's path
        out(f"  feature job FAILED: {_last_error(job.paths.stderr)} (log: {job.paths.stderr}); "
            f"no cell started")
        return False
    out(f"  feature cache built in {time.monotonic() - started:.0f} s")
    return True


def _tag_job(tracking: Tracking, run_id: str, job_id: str, kind: str) -> None:
    tracking.client.set_tag(run_id, TAG_JOB, job_id)
    tracking.client.set_tag(run_id, TAG_EXECUTOR, kind)


def _values(cell: Cell) -> str:
    return " ".join(f"{k}={v}" for k, v in cell.values.items())


def run_label(cell: Cell) -> str:
    """A cell's MLflow run name: its grid values, each key by its last part unless two keys share
    it (`w_body=0.1 w_shape=0.1 type=l1`); the config hash stays in the meshrec.cell tag."""
    last = [k.rsplit(".", 1)[-1] for k in cell.values]
    return " ".join(f"{short if last.count(short) == 1 else key}={_text(value)}"
                    for (key, value), short in zip(cell.values.items(), last)) or cell.name


def _run_local(executor: submitit.AutoExecutor, cells: Sequence[Cell], calls: Sequence[CellJob],
               tracking: Tracking, run_ids: Mapping[str, str], result: dict, parallel: int,
               folder: Path, metric: str, out) -> list[str]:
    """Run cells on this machine, `parallel` at a time, and wait for them."""
    waiting = list(zip(cells, calls))
    running: list[tuple[Cell, Any]] = []
    failed: list[str] = []
    out(f"running {len(cells)} cell(s) here, {parallel} at a time; logs in {folder}")
    try:
        while waiting or running:
            while waiting and len(running) < parallel:
                cell, call = waiting.pop(0)
                job = executor.submit(call)
                _tag_job(tracking, run_ids[cell.name], job.job_id, "local")
                result["submitted"][cell.name] = job.job_id
                out(f"  started cell {cell.name}  {_values(cell)}  (pid {job.job_id})")
                running.append((cell, job))
            time.sleep(0.25)  # a finished cell frees its slot soon (fixed cost per cell)
            for cell, job in list(running):
                if not job.done():
                    continue
                running.remove((cell, job))
                try:
                    metrics = job.result()
                except Exception:  # the job's own error: its last line and the log's path
                    failed.append(cell.name)
                    out(f"  cell {cell.name} FAILED: {_last_error(job.paths.stderr)} "
                        f"(log: {job.paths.stderr})")
                    continue
                value = metrics.get(metric, math.nan) if isinstance(metrics, dict) else math.nan
                out(f"  cell {cell.name} finished: {metric}={value:.2f}")
    finally:  # local jobs die with this process anyway; stop them now, not at interpreter exit
        for _, job in running:
            job.cancel(check=False)
    return failed


def _last_error(log: Path) -> str:
    try:
        lines = [l for l in Path(log).read_text(errors="replace").splitlines() if l.strip()]
    except OSError:
        return "no log"
    errors = [l for l in lines if not l.startswith((" ", "\t"))]
    return errors[-1] if errors else "unknown error"


def ui_page(experiment_id: str) -> str:
    """The experiment's page in MLflow's UI, on model training. MLflow 3.17.2's UI takes GenAI or
    model training from the URL's workflowType, else from the browser's last choice (GenAI in a
    fresh browser): the experiment's mlflow.experimentKind tag no longer decides."""
    return f"/#/experiments/{experiment_id}?workflowType=machine_learning"


def ui_command(uri: str, experiment_id: str) -> str:
    page = ui_page(experiment_id)
    if uri.startswith(("http://", "https://")):
        return (f"browse {uri.rstrip('/')}{page} (from your machine: ssh -N -L "
                f"5000:HOST:PORT LOGIN_NODE, then http://localhost:5000{page})")
    return f"mlflow ui --backend-store-uri {uri}, then browse http://127.0.0.1:5000{page}"


# ------------------------------------------------------------------ status and report

@dataclasses.dataclass(frozen=True)
class Row:
    cell: Cell
    state: str
    job: str
    run_id: str
    best: float


def rows(p: Plan) -> tuple[Optional[str], list[Row], Tracking]:
    tracking = Tracking(p.uri, p.experiment)
    return tracking.parent(p, create=False), _rows(p, tracking), tracking


def _rows(p: Plan, tracking: Tracking) -> list[Row]:
    runs = tracking.cell_runs()
    states = cell_states(runs, p.cells)
    out = []
    for cell in p.cells:
        run = runs.get(cell.name)
        best = tracking.best(run.info.run_id, p.metric) if run is not None else math.nan
        out.append(Row(cell, states[cell.name], run.data.tags.get(TAG_JOB, "") if run else "",
                       run.info.run_id if run else "", best))
    return out


def table(p: Plan, table_rows: Sequence[Row], sep: str = "  ") -> list[str]:
    keys = list(p.sweep.grid)
    head = ["cell", *keys, "state", "job", f"best {p.metric}"]
    body = [[r.cell.name, *(_text(r.cell.values[k]) for k in keys), r.state, r.job or "-",
             "-" if math.isnan(r.best) else f"{r.best:.2f}"] for r in table_rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    return [sep.join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip()
            for line in (head, *body)]


def status(p: Plan, out=print) -> list[Row]:
    parent, table_rows, _ = rows(p)
    if parent is None:
        out(f"no sweep run for this grid in experiment '{p.experiment}' at {p.uri} "
            "(not launched yet?)")
    for line in table(p, table_rows):
        out(line)
    counts = {s: sum(r.state == s for r in table_rows) for s in STATES}
    out(", ".join(f"{n} {s}" for s, n in counts.items() if n))
    return table_rows


def against_baseline(metrics: Mapping[str, float]) -> str:
    """`pve_mm 184.4 vs 588.8 · ...`: each validation metric of a run beside the same metric of
    the mean-parameters baseline on the same samples (lower is better for all)."""
    pairs = [(k[4:], v, metrics[f"val_baseline_{k[4:]}"]) for k, v in sorted(metrics.items())
             if k.startswith("val_") and f"val_baseline_{k[4:]}" in metrics]
    return " · ".join(f"{name} {v:.4g} vs {b:.4g}{'' if v < b else ' (NOT better)'}"
                      for name, v, b in pairs)


def say_best(tracking: Tracking, best: Row, metric: str, out) -> None:
    out(f"best cell: {best.cell.name} ({_values(best.cell)}) {metric}={best.best:.2f} "
        f"run {best.run_id}")
    compared = against_baseline(tracking.client.get_run(best.run_id).data.metrics)
    if compared:
        out(f"  its last validation vs the mean-parameters baseline: {compared}")


def best_row(table_rows: Sequence[Row]) -> Optional[Row]:
    done = [r for r in table_rows if r.state == "finished" and not math.isnan(r.best)]
    return min(done, key=lambda r: r.best) if done else None


def report(p: Plan, out=print) -> Optional[Row]:
    """Log the table, one plot per grid key and a parallel-coordinates plot of the grid
    (`meshrec.launch.plots`) to the sweep's parent run; name the best cell."""
    import tempfile

    from meshrec.launch import plots  # matplotlib only for the report

    parent, table_rows, tracking = rows(p)
    if parent is None:
        raise MeshrecError(f"no sweep run for this grid in experiment '{p.experiment}' at "
                           f"{p.uri}: launch the sweep first")
    lines = table(p, table_rows)
    for line in lines:
        out(line)
    best = best_row(table_rows)
    with tempfile.TemporaryDirectory(prefix="meshrec-report-") as tmp:
        folder = Path(tmp) / "report"
        folder.mkdir()
        (folder / "cells.txt").write_text("\n".join(lines) + "\n")
        buf = io.StringIO()
        writer = csv.writer(buf)
        keys = list(p.sweep.grid)
        writer.writerow(["cell", *keys, "state", "job", "run_id", f"best_{p.metric}"])
        for r in table_rows:
            writer.writerow([r.cell.name, *(_text(r.cell.values[k]) for k in keys), r.state,
                             r.job, r.run_id, "" if math.isnan(r.best) else f"{r.best:.6g}"])
        (folder / "cells.csv").write_text(buf.getvalue())
        # Only finished cells have a final metric (a running one's best is still moving).
        plots.write(p.sweep.grid, [r.cell.values for r in table_rows],
                    [r.best if r.state == "finished" else math.nan for r in table_rows],
                    p.metric, folder)
        tracking.client.log_artifacts(parent, str(folder), "report")
    ended = [r for r in table_rows if r.state in ("finished", "failed") and r.run_id]
    if ended:  # cells the scheduler killed before they could close the sweep run
        close_parent_if_done(tracking, ended[0].run_id, p.metric,
                             [r.cell.name for r in ended if r.state == "failed"])
    if best is not None:
        tracking.client.set_tag(parent, TAG_BEST, best.cell.name)
        tracking.client.log_metric(parent, f"best_{p.metric}", best.best)
        say_best(tracking, best, p.metric, out)
    else:
        out("no finished cell with a validation metric yet")
    out(f"report logged to sweep run {parent}; open it: {ui_command(p.uri, tracking.experiment_id)}")
    return best


def dry_run(p: Plan, out=print) -> None:
    if p.notice:
        out(f"notice: {p.notice}")
    out(f"{p.sweep.path}: {len(p.cells)} cell(s), sweep {p.sweep_id}, executor {p.executor}; "
        f"nothing submitted (--dry-run)")
    table_lines = describe(dataclasses.replace(p.sweep, cells=p.cells))
    for line in table_lines:
        out(line)
    s = p.cfg.launch.slurm
    tasks = s.tasks_per_node or s.gpus_per_node or 1
    out(f"each cell: {s.nodes} node(s) × {tasks} task(s) = {s.nodes * tasks} DDP process(es), "
        f"runs in {p.root / 'cells'}/<cell>, MLflow {p.uri} experiment '{p.experiment}'")
    features = dry_run_features(p)
    out(features.reason)
    out("sbatch parameters of the array" + ("" if p.executor == "slurm" else
                                            " (were it sent to SLURM)") + ":")
    for line in sbatch_preview(p, "FEATURE_JOB" if features.build else "").splitlines():
        out(f"  {line}")


def dry_run_features(p: Plan) -> feature_job.FeaturePlan:
    """What launching would do about the feature cache, were every cell to run; reads what is
    there, makes nothing (generated data not made yet counts as no cache)."""
    from meshrec.data.demo import existing_shards

    sweep_builds = p.feature_cache and all(c.config.model.freeze_encoder for c in p.cells)
    asked = any(c.config.features.enabled for c in p.cells)
    if not (sweep_builds or asked):  # decided by the configs alone
        return feature_job.decide({c.name: c.config for c in p.cells}, {}, p.feature_cache)
    shards = {c.name: existing_shards(c.config) for c in p.cells}
    if not all(shards.values()):
        if not sweep_builds:
            raise MeshrecError("features.enabled=true in a cell, but its generated data (and so "
                               "its feature cache) is not made yet, and this sweep builds no "
                               "cache: run `meshrec features` first")
        return feature_job.FeaturePlan(True, p.cfg, "", "feature cache: a feature job would run "
                                       "before the cells (no shards here yet to check a cache "
                                       "against: generated data is made at launch)")
    configs = {c.name: job_config(p, c, str(shards[c.name])) for c in p.cells}
    return feature_job.decide(configs, feature_job.share_keys(configs), p.feature_cache,
                              dry_run=True)
