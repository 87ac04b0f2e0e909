"""The sweep and the frozen-encoder feature cache: when cells share a frozen encoder the sweep
builds one cache first (one feature job; on SLURM the cell array depends on it) and the cells
train from it; a complete cache is reused without a job; `--no-feature-cache` keeps the cells
as written. Real SLURM (`slurm_cluster`), real MLflow, tiny cells (ResNet-18 from random init,
32 px crops of a few generated frames, one epoch)."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from meshrec.features import cache as features
from meshrec.config import with_overrides
from meshrec.errors import MeshrecError
from meshrec.launch import feature_job
from meshrec.launch.executor import after
from meshrec.launch.plan import job_config, preflight_all
from meshrec.launch.plan import plan as sweep_plan
from meshrec.launch.report import dry_run
from meshrec.launch.run import FEATURE_JOB_SUFFIX
from tests.slurm_jobs import in_queue, unfinished, wait_for

REPO = Path(__file__).resolve().parents[1]
SWEEP = [sys.executable, str(REPO / "launch" / "sweep.py")]
DEADLINE_S = 900  # the machine is shared: tiny jobs can still take minutes
FROZEN = ["model.encoder=resnet18", "model.weights=none", "model.freeze_encoder=true",
          "data.augment.enabled=false", "model.hidden=64", "data.image_size=32",
          "data.batch_size=8", "eval.batch_size=8", "data.synth.frames_per_subject=2",
          "data.synth.size=32", "data.backend=torch", "data.num_threads=0", "train.epochs=1",
          "train.checkpoint_every=0", "track.overlays=0", "train.device=cpu",
          "launch.slurm.gpus_per_node=0", "launch.slurm.tasks_per_node=2",
          "launch.slurm.cpus_per_task=1", "launch.slurm.mem_gb=0", "launch.slurm.time_min=10"]


@pytest.fixture(scope="session")
def cache(meshrec_cache) -> Path:
    """The session's shared cache as is: the cells make their own recipe's data on first use
    (conftest's `cache` would also build the training tests' recipe)."""
    return meshrec_cache


def write_grid(path: Path, grid: dict) -> Path:
    path.write_text(yaml.safe_dump({"defaults": [str(REPO / "configs" / "base.yaml")],
                                    "grid": grid}))
    return path


def settings(tmp: Path, cache: Path, name: str, *more: str) -> list[str]:
    return [*FROZEN, f"body.cache_dir={cache}", f"features.dir={tmp / 'features'}",
            f"train.output_dir={tmp / 'runs'}", f"launch.log_dir={tmp / 'logs'}",
            f"launch.job_name={name}", f"track.experiment={name}", *more]


def cli(grid: Path, args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*SWEEP, "--grid", str(grid), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, check=False)


def job_configs(grid: Path, args: list[str], local: bool = False) -> dict:
    """The cells' job configs as the sweep makes them (shards resolved, data generated)."""
    p = sweep_plan(grid, args, local=local)
    shards = preflight_all(p)
    return {c.name: job_config(p, c, shards[c.name]) for c in p.cells}


def finished_cached_cells(client: MlflowClient, experiment: str, count: int,
                          world_size: str | None = None):
    """Assert the experiment's `count` cell runs finished from the cache; return the sweep run."""
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    cells = [r for r in runs if "meshrec.cell" in r.data.tags]
    assert len(cells) == count
    for run in cells:
        assert run.data.tags["meshrec.done"] == "true"
        assert run.data.params["features.enabled"] == "true"
        if world_size is not None:
            assert run.data.tags["world_size"] == world_size
    return next(r for r in runs if r.data.tags.get("meshrec.role") == "sweep")


# ------------------------------------------------------------------ no cluster needed

def test_after_adds_afterok_to_the_users_dependency_and_cancels_on_failure():
    params = {"name": "x", "slurm_additional_parameters": {"dependency": "afterany:7",
                                                           "mail-type": "END"}}
    out = after(params, "123")
    assert out["slurm_dependency"] == "afterany:7,afterok:123"
    assert out["slurm_additional_parameters"] == {"mail-type": "END", "kill-on-invalid-dep": "yes"}
    assert params["slurm_additional_parameters"]["dependency"] == "afterany:7"  # not modified
    plain = after({"name": "x"}, "9")
    assert plain["slurm_dependency"] == "afterok:9"
    kept = after({"slurm_additional_parameters": {"kill_on_invalid_dep": "no"}}, "9")
    assert kept["slurm_additional_parameters"] == {"kill_on_invalid_dep": "no"}


def test_decide_uses_one_cache_only_for_frozen_cells_that_share_it(tmp_path, cache):
    frozen = write_grid(tmp_path / "frozen.yaml", {"loss.w_body": [0.0, 1.0]})
    args = settings(tmp_path, cache, "decide")
    configs = job_configs(frozen, args)
    keys = feature_job.share_keys(configs)
    assert len(set(keys.values())) == 1 and set(keys) == set(configs)

    plan = feature_job.decide(configs, keys)
    assert plan.use and plan.build is not None and "none yet" in plan.reason
    assert plan.cache == str(tmp_path / "features")
    switched = plan.cells(configs)
    assert all(c.features.enabled for c in switched.values())
    assert not any(c.features.enabled for c in configs.values())  # inputs left alone

    off = feature_job.decide(configs, keys, use_cache=False)
    assert (off.use, off.build) == (False, None) and "--no-feature-cache" in off.reason
    assert off.cells(configs) == configs

    # Cells whose encoders differ (random init from another seed) cannot share one cache.
    seeds = write_grid(tmp_path / "seeds.yaml", {"train.seed": [0, 1]})
    configs2 = job_configs(seeds, args)
    keys2 = feature_job.share_keys(configs2)
    assert len(set(keys2.values())) == 2
    apart = feature_job.decide(configs2, keys2)
    assert not apart.use and "2 different inputs" in apart.reason

    # A fine-tuned encoder has no cache.
    tuned = write_grid(tmp_path / "tuned.yaml", {"model.freeze_encoder": [True, False]})
    configs3 = job_configs(tuned, args)
    mixed = feature_job.decide(configs3, feature_job.share_keys(configs3))
    assert not mixed.use and "1 of 2 cell(s) train their encoder" in mixed.reason


def test_cells_asking_for_a_cache_nobody_builds_are_refused(tmp_path, cache):
    grid = write_grid(tmp_path / "grid.yaml", {"loss.w_body": [0.0, 1.0]})
    configs = job_configs(grid, settings(tmp_path, cache, "own", "features.enabled=true"))
    keys = feature_job.share_keys(configs)
    with pytest.raises(MeshrecError, match=r"features.enabled=true but no feature cache at") as err:
        feature_job.decide(configs, keys, use_cache=False)
    assert str(err.value).count("build it") == 2  # the cache's own advice is not repeated
    plan = feature_job.decide(configs, keys)  # the sweep builds it
    assert plan.build is not None and "one feature job builds it before the cells" in plan.reason


def test_dry_run_says_whether_a_feature_job_would_run_and_writes_nothing(tmp_path, cache):
    grid = write_grid(tmp_path / "grid.yaml", {"loss.w_body": [0.0, 1.0]})
    # Data not generated yet (a fresh cache directory): a job would build the features.
    fresh = tmp_path / "fresh-cache"
    lines: list[str] = []
    dry_run(sweep_plan(grid, settings(tmp_path, fresh, "dry")), lines.append)
    text = "\n".join(lines)
    assert "feature job would run before the cells" in text
    assert "#SBATCH --dependency=afterok:FEATURE_JOB" in text
    assert "#SBATCH --kill-on-invalid-dep=yes" in text
    for flag, word in (("--no-feature-cache", "off (--no-feature-cache)"),):
        done = cli(grid, [*settings(tmp_path, fresh, "dry"), "--dry-run", flag], tmp_path)
        assert done.returncode == 0, done.stderr
        assert word in done.stdout and "--dependency" not in done.stdout
    lines.clear()
    dry_run(sweep_plan(grid, settings(tmp_path, fresh, "dry", "model.freeze_encoder=false")),
            lines.append)
    assert any("not used (2 of 2 cell(s) train their encoder" in l for l in lines)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.yaml"]  # nothing made

    # Generated data there (the module's cache), no features yet: a job "would build" them.
    job_configs(grid, settings(tmp_path, cache, "dry"))
    lines.clear()
    dry_run(sweep_plan(grid, settings(tmp_path, cache, "dry")), lines.append)
    assert any(f"none yet in {tmp_path / 'features'}" in l and
               "one feature job would build it before the cells" in l for l in lines), lines


@pytest.mark.slow
def test_local_sweep_builds_the_cache_once_and_a_later_sweep_reuses_it(mlflow_server, tmp_path,
                                                                       cache):
    name = f"flocal-{uuid.uuid4().hex[:8]}"
    args = [*settings(tmp_path, cache, name, f"track.uri={mlflow_server}",
                      "launch.slurm.tasks_per_node=1"), "--local"]
    grid = write_grid(tmp_path / "grid.yaml", {"loss.w_body": [0.0, 1.0]})
    first = cli(grid, args, tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    out = first.stdout
    assert out.count("building the feature cache here first") == 1
    assert "feature cache built in" in out
    # The cells started after the cache was built.
    assert out.index("feature cache built in") < out.index("started cell")
    assert out.count("finished: val_pve_mm=") == 2

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name(name)
    parent = finished_cached_cells(client, name, 2)
    assert parent.data.tags["meshrec.feature_job"]
    # The last cell to finish closed the sweep run, with what it found.
    parent = client.get_run(parent.info.run_id)
    assert parent.info.status == "FINISHED" and parent.data.metrics["cells_finished"] == 2
    assert parent.data.metrics["best_val_pve_mm"] > 0 and parent.data.tags["meshrec.best_cell"]
    cfg = with_overrides(next(iter(job_configs(grid, args[:-1], local=True).values())),
                         ["features.enabled=true"])
    assert features.check(cfg) is None  # complete, matching the cells' configs

    # Another sweep over the same data and encoder: the cache is found again, no feature job.
    grid2 = write_grid(tmp_path / "grid2.yaml", {"loss.w_body": [0.5]})
    second = cli(grid2, args, tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "reusing the complete cache" in second.stdout
    assert "building the feature cache" not in second.stdout
    assert second.stdout.count("finished: val_pve_mm=") == 1

    # --no-feature-cache: the cell trains from images.
    grid3 = write_grid(tmp_path / "grid3.yaml", {"loss.w_body": [0.25]})
    third = cli(grid3, [*args, "--no-feature-cache"], tmp_path)
    assert third.returncode == 0, third.stdout + third.stderr
    assert "feature cache: off" in third.stdout and "building the feature" not in third.stdout
    (run,) = [r for r in client.search_runs([exp.experiment_id])
              if r.data.tags.get("grid.loss.w_body") == "0.25"]
    assert run.data.params["features.enabled"] == "false"
    assert run.data.tags["meshrec.done"] == "true"


# ------------------------------------------------------------------ real SLURM

def sacct(*args: str) -> list[list[str]]:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-S", "now-6hours", *args],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    return [line.split("|") for line in out.splitlines() if line]


def wait_ended(*names: str) -> None:
    """Until no job of these names is queued or still running in accounting."""
    wait_for(lambda: not any(unfinished(n) for n in names), f"jobs {names} ended",
             DEADLINE_S, name=names[0])


def cancel(*names: str) -> None:
    for name in names:  # scancel takes one name
        subprocess.run(["scancel", "-n", name], check=False, timeout=30)


def stamp(text: str) -> datetime:
    return datetime.fromisoformat(text)


@pytest.mark.slurm
@pytest.mark.slow
def test_slurm_sweep_submits_one_feature_job_and_the_cells_depend_on_it(
        slurm_cluster, mlflow_server, tmp_path, cache):
    name = f"fslurm-{uuid.uuid4().hex[:8]}"
    feature_name = name + FEATURE_JOB_SUFFIX
    # Submitted to begin in 10 minutes, so the dependency is read back before anything runs.
    args = settings(tmp_path, cache, name, f"track.uri={mlflow_server}", "launch.executor=slurm",
                    f"launch.slurm.partition={slurm_cluster.partition}",
                    "launch.slurm.additional={begin: now+600}")
    grid = write_grid(tmp_path / "grid.yaml", {"loss.w_body": [0.0, 1.0]})
    try:
        first = cli(grid, args, tmp_path)
        assert first.returncode == 0, first.stdout + first.stderr
        feature_id = re.search(r"submitted feature job (\d+)", first.stdout).group(1)
        array_id = re.search(r"submitted 2 cell\(s\) as SLURM job array (\d+)",
                             first.stdout).group(1)
        assert in_queue(feature_name) == [feature_id]
        shown = subprocess.run(["scontrol", "-o", "show", "job", array_id], capture_output=True,
                               text=True, check=True, timeout=30).stdout
        deps = re.findall(r"Dependency=(\S+)", shown)
        assert deps and all(re.fullmatch(rf"afterok:{feature_id}(_\*)?\(unfulfilled\)", d)
                            for d in deps), shown
        for job in (feature_id, array_id):
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True,
                           timeout=30)
        wait_ended(name, feature_name)
    finally:
        cancel(name, feature_name)

    (feature,) = sacct("--name", feature_name, "-o", "JobID,State,Start,End")
    assert feature[:2] == [feature_id, "COMPLETED"], feature
    cells = sacct("--name", name, "-o", "JobID,State,Start,End")
    assert len(cells) == 2 and {c[1] for c in cells} == {"COMPLETED"}, cells
    for _, _, start, _ in cells:
        assert stamp(start) >= stamp(feature[3])  # every cell started after the feature job

    parent = finished_cached_cells(MlflowClient(mlflow_server), name, 2, world_size="2")
    assert parent.data.tags["meshrec.feature_job"] == feature_id
    logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "logs").rglob("*_log.out"))
    assert "on 2 × cpu" in logs  # the cells ran as 2-task DDP jobs, and so did the feature job:
    assert features.read_manifest(tmp_path / "features")["built"]["ranks"] == 2

    # Re-running the sweep (with one more cell) reuses the cache: no second feature job.
    grid2 = write_grid(tmp_path / "grid2.yaml", {"loss.w_body": [0.0, 1.0, 0.5]})
    plain = [a for a in args if not a.startswith("launch.slurm.additional")]
    try:
        again = cli(grid2, plain, tmp_path)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "reusing the complete cache" in again.stdout
        assert "submitted feature job" not in again.stdout
        assert "submitted 1 cell(s)" in again.stdout
        wait_ended(name, feature_name)
    finally:
        cancel(name, feature_name)
    assert len(sacct("--name", feature_name, "-o", "JobID")) == 1
    states = [c[1] for c in sacct("--name", name, "-o", "JobID,State")]
    assert states == ["COMPLETED"] * 3, states
