"""Sweep files expand into validated cells with stable names."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from meshrec.config import ConfigError, config_hash, load_config
from meshrec.launch.grid import describe, load_sweep

REPO = Path(__file__).resolve().parents[1]


def test_loss_weights_grid_expands_to_the_product():
    sweep = load_sweep(REPO / "configs/loss_weights.yaml")
    assert len(sweep.cells) == 3 * 2 * 2 * 2
    assert len({c.name for c in sweep.cells}) == len(sweep.cells)
    first, last = sweep.cells[0], sweep.cells[-1]
    assert first.values == {"loss.w_body": 0.0, "loss.w_shape": 0.0, "loss.w_hand": 0.0, "loss.type": "l2"}
    assert last.values == {"loss.w_body": 1.0, "loss.w_shape": 0.1, "loss.w_hand": 0.1, "loss.type": "l1"}
    study = load_config(REPO / "configs/study.yaml")
    for cell in sweep.cells:
        # everything but the grid keys is the study's setup
        assert cell.config.model == study.model and cell.config.optim == study.optim
        assert cell.config.loss.w_body == cell.values["loss.w_body"]
        assert cell.config.loss.type == cell.values["loss.type"]
        # the name is the hash of the resolved config, reproducible from the overrides alone
        assert cell.name == config_hash(load_config(REPO / "configs/study.yaml", cell.overrides))
    assert describe(sweep)[0].split() == ["cell", "loss.w_body", "loss.w_shape", "loss.w_hand", "loss.type"]


def test_names_are_stable_across_processes_and_key_order(tmp_path):
    sweep = load_sweep(REPO / "configs/loss_weights.yaml")
    code = ("from meshrec.launch.grid import load_sweep; "
            "print(' '.join(c.name for c in load_sweep('configs/loss_weights.yaml').cells))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env={"PYTHONHASHSEED": "123", "PATH": "/usr/bin:/bin"}, check=True)
    assert out.stdout.split() == [c.name for c in sweep.cells]
    swapped = tmp_path / "swapped.yaml"
    swapped.write_text(f"defaults: [{REPO / 'configs/study.yaml'}]\n"
                       "grid:\n  loss.type: [l2, l1]\n  loss.w_hand: [0.0, 0.1]\n"
                       "  loss.w_shape: [0.0, 0.1]\n  loss.w_body: [0.0, 0.1, 1.0]\n")
    assert {c.name for c in load_sweep(swapped).cells} == {c.name for c in sweep.cells}


@pytest.mark.parametrize("grid, message", [
    ("  loss.w_vrt: [1.0]\n", "loss.w_vrt: unknown key"),
    ("  loss.w_body: [abc]\n", "loss.w_body"),
    ("  loss.type: [l3]\n", "loss.type"),
    ("  loss.w_body: []\n", "grid.loss.w_body: expected a non-empty list"),
    ("  track.uri: [a, b]\n", "resolve to the same config"),
])
def test_bad_grids_are_one_line_errors_naming_the_file(tmp_path, grid, message):
    path = tmp_path / "bad.yaml"
    path.write_text(f"defaults: [{REPO / 'configs/study.yaml'}]\ngrid:\n{grid}")
    with pytest.raises(ConfigError) as info:
        load_sweep(path)
    text = str(info.value)
    assert message in text and str(path) in text and "\n" not in text


def test_a_config_without_grid_is_refused():
    with pytest.raises(ConfigError, match="grid: missing"):
        load_sweep(REPO / "configs/study.yaml")
