"""What a sweep runs, checked before anything is queued: the plan.

    plan(grid, overrides, demo, local) → Plan (cells, executor, MLflow store) → preflight_all

- Nothing is queued before the base config and every cell validate (`meshrec.launch.grid`), and
  the shards and the body model of every cell are read from here (`preflight`). Generated stand-in
  data (`data.shards: ''`) is built here, once, so the jobs do not race to make it.
- Executor: SLURM when `sbatch` is on PATH, else submitit's local executor with a notice saying
  why (`launch.executor` or --local / --demo decide when set).
- `--demo`: the sweep file's grid shrunk to DEMO_CELLS cells spread over it, `configs/demo.yaml`
  layered over its base (ResNet-18, small images, a few epochs, generated data), local executor, an
  MLflow SQLite store beside the demo runs.
- `job_config`: the config one cell's job trains (its run directory, the sweep's MLflow store,
  its shards).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Sequence

import yaml

from meshrec import protocols
from meshrec.config import Config, ConfigError, to_dict, with_overrides
from meshrec.errors import MeshrecError
from meshrec.launch.grid import Cell, Sweep, as_overrides, load_sweep
from meshrec.mapping import flatten

REPO = Path(__file__).resolve().parents[2]
DEMO_FILE = REPO / "configs" / "demo.yaml"
DEMO_CELLS = 4


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


def demo_overrides(path: Path = DEMO_FILE) -> list[str]:
    """configs/demo.yaml's own keys as dotted overrides, plus what a demo sweep needs on a laptop:
    one local process per cell, one cell at a time."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise MeshrecError(f"cannot read {path}: {exc}") from None
    data.pop("defaults", None)
    return [*as_overrides(flatten(data)), "launch.executor=local", "launch.slurm.nodes=1",
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
    from meshrec.data.demo import ensure_shards
    from meshrec.shards import manifest as shard_manifest

    body_path = resolve_model_path(cfg.body)  # builds the stand-in when model_path is ''
    load_arrays(body_path)
    for value, what in ((cfg.body.h36m_regressor, "body.h36m_regressor"),
                        (cfg.model.mean_params, "model.mean_params"),
                        (cfg.train.init_from, "train.init_from")):
        if value:
            _readable(Path(value).expanduser(), what)
    if cfg.model.weights not in ("imagenet", "none"):
        _readable(Path(cfg.model.weights).expanduser(), "model.weights")
    shards = ensure_shards(cfg, progress, say=out)
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
