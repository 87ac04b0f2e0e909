"""MLflow's UI in a real browser: Debian's chromium (`chromium` fixture), headless, driven by
Playwright, on a tiny real sweep (2 local cells) tracked by a real `mlflow server`. Each check
saves a screenshot of its view under runs/browser/ (CI keeps it as an artifact)."""

from __future__ import annotations

import contextlib
import dataclasses
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from playwright.sync_api import Page, Playwright, expect, sync_playwright

from tests.tiny_config import CELL

REPO = Path(__file__).resolve().parents[1]
SHOTS = REPO / "runs" / "browser"
WAIT_MS = 90_000  # a shared 2-core machine: the UI can take long to render
# A quiet chromium: no first-run setup, nothing fetched from outside, no sync.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# What the model-training shell keeps in its links (the UI's own run links drop it; see sweep.ui_page).
MODEL_TRAINING = "workflowType=machine_learning"
# test_sweep.py's tiny cells, one local process each.
TINY = [*CELL, "train.device=cpu", "launch.slurm.gpus_per_node=0",
        "launch.slurm.tasks_per_node=1", "launch.slurm.cpus_per_task=1"]
GRID = {"loss.w_body": [0.1, 1.0], "loss.type": ["l1"]}
CELL_NAMES = ["w_body=0.1 type=l1", "w_body=1.0 type=l1"]

# chromium first: without it the module skips (or fails, in CI) before a sweep is run for nothing.
# One xdist worker runs them all: the module's sweep is made once.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("chromium"),
              pytest.mark.xdist_group("browser")]


@dataclasses.dataclass(frozen=True)
class Sweep:
    link: str        # the experiment link the sweep printed
    parent: str      # the sweep run's name: grid file stem and date
    uri: str
    experiment: str


@pytest.fixture(scope="module")
def sweep(mlflow_server, meshrec_cache, tmp_path_factory) -> Sweep:
    """A finished 2-cell sweep in its own experiment."""
    tmp = tmp_path_factory.mktemp("browser")
    name = f"browser-{uuid.uuid4().hex[:8]}"
    grid = tmp / "tiny_grid.yaml"
    grid.write_text(yaml.safe_dump({"defaults": [str(REPO / "configs" / "base.yaml")],
                                    "grid": GRID}, sort_keys=False))  # keys in grid order
    done = subprocess.run(
        [sys.executable, str(REPO / "launch" / "sweep.py"), "--grid", str(grid), "--local", *TINY,
         f"body.cache_dir={meshrec_cache}", f"train.output_dir={tmp / 'runs'}",
         f"launch.log_dir={tmp / 'logs'}", f"launch.job_name={name}", f"track.experiment={name}",
         f"track.uri={mlflow_server}"],
        cwd=tmp, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    link = re.search(r"open it: browse (\S+)", done.stdout)
    assert link, done.stdout
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name(name)
    (parent,) = client.search_runs([exp.experiment_id], "tags.`meshrec.role` = 'sweep'")
    return Sweep(link.group(1), parent.info.run_name, mlflow_server, name)


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as pw:
        yield pw


@pytest.fixture
def page(playwright, chromium, tmp_path) -> Iterator[Page]:
    """A tab of a fresh browser: an empty profile, so nothing remembered (the GenAI/model-training
    choice, expanded runs) carries over between checks."""
    context = playwright.chromium.launch_persistent_context(
        str(tmp_path / "profile"), executable_path=chromium, args=CHROMIUM_ARGS, headless=True,
        viewport={"width": 1600, "height": 1000})
    context.set_default_timeout(WAIT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


@contextlib.contextmanager
def view(page: Page, name: str) -> Iterator[None]:
    """Screenshot the view as the checks leave it, passed or failed."""
    try:
        yield
    finally:
        SHOTS.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(Exception):  # the check's own failure says more
            page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def open_runs(page: Page, sweep: Sweep) -> None:
    """The experiment link as printed, until the sweep run's row is shown."""
    page.goto(sweep.link)
    expect(parent_row(page, sweep)).to_be_visible()


def parent_row(page: Page, sweep: Sweep):
    return page.get_by_role("row").filter(has=page.get_by_role("link", name=sweep.parent,
                                                               exact=True))


def open_run(page: Page, sweep: Sweep, name: str) -> None:
    """Follow run `name`'s link in the runs table, in the model-training shell."""
    href = page.get_by_role("link", name=name, exact=True).get_attribute("href")
    page.goto(f"{sweep.uri}/{href}?{MODEL_TRAINING}")
    expect(page.get_by_role("heading", name=name, exact=True)).to_be_visible()


def expand_sweep(page: Page, sweep: Sweep) -> None:
    # The expander is the only button in the sweep run's name cell (it has no label).
    parent_row(page, sweep).get_by_role("button").first.click()
    for cell in CELL_NAMES:
        expect(page.get_by_role("link", name=cell, exact=True)).to_be_visible()


def test_experiment_opens_on_model_training(sweep, page):
    assert MODEL_TRAINING in sweep.link
    with view(page, "1-experiment-runs"):
        open_runs(page, sweep)
        expect(page.get_by_role("heading", name="Runs", exact=True)).to_be_visible()
        # Only the model-training shell links the model registry; only GenAI's overview counts
        # tokens.
        expect(page.get_by_role("link", name="Model registry")).to_be_visible()
        expect(page.get_by_text("Token Usage")).to_have_count(0)
        assert "/runs" in page.url and MODEL_TRAINING in page.url


def test_sweep_run_lists_its_cells_nested_under_it(sweep, page):
    assert re.fullmatch(r"tiny_grid \d{4}-\d\d-\d\d \d\d:\d\d", sweep.parent)
    with view(page, "2-sweep-expanded"):
        open_runs(page, sweep)
        # Collapsed, the cells are hidden in their parent's group; expanded, they are listed.
        for cell in CELL_NAMES:
            expect(page.get_by_role("link", name=cell, exact=True)).to_have_count(0)
        expand_sweep(page, sweep)


def test_sweep_run_is_finished(sweep, page):
    with view(page, "3-sweep-run"):
        open_runs(page, sweep)
        open_run(page, sweep, sweep.parent)
        expect(page.get_by_test_id("key-value-Status")).to_contain_text("Finished")
        children = page.get_by_test_id("key-value-Child runs")
        for cell in CELL_NAMES:
            expect(children.get_by_role("link", name=cell, exact=True)).to_be_visible()


def test_cell_run_shows_its_validation_metric(sweep, page):
    client = MlflowClient(sweep.uri)
    (run,) = [r for r in client.search_runs(
        [client.get_experiment_by_name(sweep.experiment).experiment_id])
        if r.info.run_name == CELL_NAMES[0]]
    with view(page, "4-cell-run-metrics"):
        open_runs(page, sweep)
        expand_sweep(page, sweep)
        open_run(page, sweep, CELL_NAMES[0])
        row = page.get_by_role("row").filter(
            has=page.get_by_role("cell", name="val_pve_mm", exact=True))
        expect(row).to_be_visible()
        row.scroll_into_view_if_needed()  # the screenshot shows the panel's view, not the page
        shown = re.search(r"val_pve_mm\s+([\d.]+)", row.inner_text())
        assert shown, row.inner_text()
        assert float(shown.group(1)) == pytest.approx(run.data.metrics["val_pve_mm"], rel=1e-3)
