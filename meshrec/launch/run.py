"""Launching a sweep: every cell of a sweep file trained once, as one submitit job array, each cell
one MLflow child run under one parent run for the sweep.

    plan → preflight_all → MLflow parent + children (runs) → CellJobs (executor) → submit

- Running the same sweep again skips finished cells and cells whose job is still queued or
  running, and resubmits the others into their existing runs: a cell never gets a second run.
- Local executor: on this machine, through submitit's local executor, at most
  `launch.slurm.array_parallelism` cells at a time; the command waits for them (local jobs end with
  the process that started them), then prints the table and the best cell.
- Feature cache (`meshrec.launch.feature_job`): when every cell to run keeps its encoder frozen
  and all see the same inputs (one `meshrec.features.cache.share_key`), the cells train from one
  frozen-encoder feature cache (`features.enabled=true`). If it is not complete yet, one feature
  job with a cell's resources builds it first: on SLURM the cell array depends on it
  (`afterok`, cancelled if it fails), locally the sweep waits for it. A complete cache is reused
  without a job. `--no-feature-cache` (`plan(feature_cache=False)`) keeps the cells as written.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import submitit

from meshrec.config import Config, to_dict
from meshrec.launch import feature_job
from meshrec.launch.executor import (CellJob, after, executor_parameters, local_env, log_folder,
                                     make_executor, tasks_per_node)
from meshrec.launch.grid import Cell
from meshrec.launch.plan import Plan, job_config, preflight_all
from meshrec.launch.report import (best_row, cell_rows, say_best, table, ui_command,
                                   values_text)
from meshrec.launch.runs import TAG_FEATURE_JOB, Tracking, cell_states, close_parent_if_done

FEATURE_JOB_SUFFIX = "-features"          # job name of the feature job: launch.job_name + this


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
                tasks = p.cfg.launch.slurm.nodes * tasks_per_node(p.cfg)
                out(f"submitted feature job {fjob.job_id} ({tasks} task(s)); the cells "
                    f"start when it has finished well (afterok)")
                executor.update_parameters(**after(executor_parameters(p.cfg, "slurm"),
                                                   fjob.job_id))
            with executor.batch():
                jobs = [executor.submit(call) for call in calls]
            for cell, job in zip(todo, jobs):
                tracking.tag_job(run_ids[cell.name], job.job_id, "slurm")
                result["submitted"][cell.name] = job.job_id
            array = jobs[0].job_id.split("_")[0]
            out(f"submitted {len(jobs)} cell(s) as SLURM job array {array} "
                f"(at most {p.cfg.launch.slurm.array_parallelism} at once); logs in {folder}")
            for cell, job in zip(todo, jobs):
                out(f"  {job.job_id}  cell {cell.name}  {values_text(cell)}")
        elif fjob is None or _wait_features(fjob, out):
            result["failed"] = _run_local(executor, todo, calls, tracking, run_ids, result,
                                          p.cfg.launch.slurm.array_parallelism, folder, p.metric,
                                          out)
            if result["failed"]:  # a cell killed before its own job could close the sweep run
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
        table_rows = cell_rows(p, tracking)
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


def _submit_features(p: Plan, cfg: Config, folder: Path) -> Any:
    """Submit the feature job: one job with a cell's resources (its tasks are the DDP ranks)."""
    executor = make_executor(p, folder)
    executor.update_parameters(name=f"{p.cfg.launch.job_name}{FEATURE_JOB_SUFFIX}")
    return executor.submit(feature_job.FeatureJob.of(cfg))


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
                tracking.tag_job(run_ids[cell.name], job.job_id, "local")
                result["submitted"][cell.name] = job.job_id
                out(f"  started cell {cell.name}  {values_text(cell)}  (pid {job.job_id})")
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
