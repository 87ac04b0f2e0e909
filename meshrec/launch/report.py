"""What a sweep shows: the cells' table (--status), the report logged to the sweep's MLflow run
(--report: table, CSV, plots from `meshrec.launch.plots`, the best cell against the
mean-parameters baseline), the --dry-run preview, and the MLflow UI link.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from pathlib import Path
from typing import Mapping, Optional, Sequence

from meshrec.errors import MeshrecError
from meshrec.launch import feature_job
from meshrec.launch.executor import sbatch_preview, tasks_per_node
from meshrec.launch.grid import Cell, as_text, describe
from meshrec.launch.plan import Plan, job_config
from meshrec.launch.runs import (STATES, TAG_BEST, TAG_JOB, Tracking, cell_states,
                                 close_parent_if_done)


def values_text(cell: Cell) -> str:
    """A cell's grid values as the launcher prints them (`loss.w_body=0.1 loss.type=l1`)."""
    return " ".join(f"{k}={v}" for k, v in cell.values.items())


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
    return tracking.parent(p, create=False), cell_rows(p, tracking), tracking


def cell_rows(p: Plan, tracking: Tracking) -> list[Row]:
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
    body = [[r.cell.name, *(as_text(r.cell.values[k]) for k in keys), r.state, r.job or "-",
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
    out(f"best cell: {best.cell.name} ({values_text(best.cell)}) {metric}={best.best:.2f} "
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
            writer.writerow([r.cell.name, *(as_text(r.cell.values[k]) for k in keys), r.state,
                             r.job, r.run_id, "" if math.isnan(r.best) else f"{r.best:.6g}"])
        (folder / "cells.csv").write_text(buf.getvalue())
        # Only finished cells have a final metric (a running one's best is still moving).
        plots.write(p.sweep.grid, [r.cell.values for r in table_rows],
                    [r.best if r.state == "finished" else math.nan for r in table_rows],
                    p.metric, folder)
        tracking.client.log_artifacts(parent, str(folder), "report")
    ended = [r for r in table_rows if r.state in ("finished", "failed") and r.run_id]
    # Cells the scheduler killed before they could close the sweep run; closing logs the best.
    closed = bool(ended) and close_parent_if_done(
        tracking, ended[0].run_id, p.metric, [r.cell.name for r in ended if r.state == "failed"])
    if best is not None:
        if not closed:  # the best so far of a sweep still running
            tracking.client.set_tag(parent, TAG_BEST, best.cell.name)
            tracking.client.log_metric(parent, f"best_{p.metric}", best.best)
        say_best(tracking, best, p.metric, out)
    else:
        out("no finished cell with a validation metric yet")
    out(f"report logged to sweep run {parent}; open it: {ui_command(p.uri, tracking.experiment_id)}")
    return best


# ------------------------------------------------------------------ dry run

def dry_run(p: Plan, out=print) -> None:
    if p.notice:
        out(f"notice: {p.notice}")
    out(f"{p.sweep.path}: {len(p.cells)} cell(s), sweep {p.sweep_id}, executor {p.executor}; "
        f"nothing submitted (--dry-run)")
    table_lines = describe(dataclasses.replace(p.sweep, cells=p.cells))
    for line in table_lines:
        out(line)
    s = p.cfg.launch.slurm
    tasks = tasks_per_node(p.cfg)
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
