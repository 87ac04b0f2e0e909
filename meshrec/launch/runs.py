"""The sweep's MLflow side: one parent run for the sweep, one child run per cell, and each cell's
state from its run's tags and the scheduler.

- The parent run is found by the sweep's id (a hash of its cell names, tag `meshrec.sweep`),
  children by their cell hash (tag `meshrec.cell`). A child is made before its job is submitted
  and its id travels with the job, so a requeued job logs into the same run: a cell never gets a
  second run.
- A cell counts as finished only with the tag `meshrec.done=true` that the loop sets at its real
  end (MLflow's FINISHED status is also what a requeue exit leaves); failed with `meshrec.failed`
  (its job raised) or when its job is gone: SLURM jobs by sacct/squeue, local ones by pid.
- `close_parent_if_done`: the last cell to end closes the sweep run, with summary metrics.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from meshrec.config import Config, to_dict
from meshrec.errors import MeshrecError
from meshrec.launch.grid import Cell, as_text, label
from meshrec.launch.plan import Plan

TAG_SWEEP = "meshrec.sweep"
TAG_CELL = "meshrec.cell"
TAG_JOB = "meshrec.job_id"
TAG_EXECUTOR = "meshrec.executor"
TAG_DONE = "meshrec.done"       # set by the training loop (meshrec.track.DONE_TAG) at the real end
TAG_BEST = "meshrec.best_cell"
TAG_FAILED = "meshrec.failed"   # on a cell's run whose job raised: the error's first line
TAG_PARENT = "mlflow.parentRunId"
TAG_FEATURE_JOB = "meshrec.feature_job"   # on the parent: the sweep's last feature job

STATES = ("missing", "pending", "running", "finished", "failed")
# SLURM job states that will still run (pending) or are running.
_SLURM_PENDING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "RESIZING",
                  "SUSPENDED", "RESV_DEL_HOLD", "REVOKED"}
_SLURM_RUNNING = {"RUNNING", "COMPLETING", "STOPPED", "SIGNALING", "STAGE_OUT"}


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
                **{f"grid.{k}": as_text(v) for k, v in cell.values.items()}}
        run = self.client.create_run(self.experiment_id, run_name=run_label(cell), tags=tags)
        params = flatten_params(to_dict(cfg))
        items = list(params.items())
        for i in range(0, len(items), 100):
            self.client.log_batch(run.info.run_id, params=_params(dict(items[i:i + 100])))
        self.client.update_run(run.info.run_id, status="SCHEDULED")
        return run.info.run_id

    def tag_job(self, run_id: str, job_id: str, kind: str) -> None:
        """The job that runs the cell (SLURM job id or local pid) and its executor."""
        self.client.set_tag(run_id, TAG_JOB, job_id)
        self.client.set_tag(run_id, TAG_EXECUTOR, kind)

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

    return [Param(k, as_text(v)) for k, v in values.items()]


def _done(run: Any) -> bool:
    return run.data.tags.get(TAG_DONE) == "true"


def _failed(run: Any) -> bool:
    return TAG_FAILED in run.data.tags and not _done(run)


def run_label(cell: Cell) -> str:
    """A cell's MLflow run name: its grid values (`meshrec.launch.grid.label`: `w_body=0.1
    w_shape=0.1 type=l1`); the config hash stays in the meshrec.cell tag."""
    return label(cell.values.items(), list(cell.values)) or cell.name


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
