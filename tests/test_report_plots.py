"""meshrec.launch.plots: the sweep report's pictures from plain data (no MLflow). Groups are checked
against hand-worked partial grids; figures are inspected as matplotlib objects, after a draw."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from meshrec.errors import MeshrecError
from meshrec.launch import plots
from meshrec.launch.plan import DEMO_CELLS, spread

REPO = Path(__file__).resolve().parents[1]
SMALL = {"a": [0.0, 0.1, 1.0], "b": [0.0, 0.1], "t": ["l1", "l2"]}
METRIC = "val_pve_mm"


def cell(a, b, t) -> dict:
    return {"a": a, "b": b, "t": t}


def full(grid: dict) -> list[dict]:
    return [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]


def loss_weights_grid() -> dict:
    return yaml.safe_load((REPO / "configs" / "loss_weights.yaml").read_text())["grid"]


def members(groups, cells) -> list[list[tuple]]:
    return [[tuple(cells[i].values()) for i in g.members] for g in groups]


# ------------------------------------------------------------------ grouping

def test_groups_join_cells_that_differ_in_one_key_alone():
    # Given out of grid order on purpose: members come back in the grid's order of the key.
    cells = [cell(1.0, 0.0, "l1"), cell(0.0, 0.1, "l2"), cell(0.0, 0.0, "l1"),
             cell(0.1, 0.1, "l1"), cell(1.0, 0.1, "l2"), cell(0.1, 0.0, "l1")]
    by_a = plots.partner_groups(SMALL, cells, "a")
    assert [g.others for g in by_a] == [(("b", 0.0), ("t", "l1")), (("b", 0.1), ("t", "l1")),
                                        (("b", 0.1), ("t", "l2"))]
    assert members(by_a, cells) == [[(0.0, 0.0, "l1"), (0.1, 0.0, "l1"), (1.0, 0.0, "l1")],
                                     [(0.1, 0.1, "l1")],   # no partner: b=0.1 t=l1 only at a=0.1
                                     [(0.0, 0.1, "l2"), (1.0, 0.1, "l2")]]
    by_b = plots.partner_groups(SMALL, cells, "b")
    assert members(by_b, cells) == [[(0.0, 0.0, "l1")], [(0.0, 0.1, "l2")],
                                     [(0.1, 0.0, "l1"), (0.1, 0.1, "l1")],
                                     [(1.0, 0.0, "l1")], [(1.0, 0.1, "l2")]]
    by_t = plots.partner_groups(SMALL, cells, "t")
    assert all(len(g.members) == 1 for g in by_t) and len(by_t) == len(cells)


def test_groups_of_the_demo_cells_of_the_loss_weight_grid():
    # The demo's 4 of 24 cells (sweep.spread): grid positions 0, 8, 15, 23, i.e.
    # (0,0,0,l2) (0.1,0,0,l2) (0.1,0.1,0.1,l1) (1,0.1,0.1,l1): two pairs that differ in w_body
    # alone, and no pair for any other key.
    grid = loss_weights_grid()
    cells = list(spread(full(grid), DEMO_CELLS))
    assert [tuple(c.values()) for c in cells] == [(0.0, 0.0, 0.0, "l2"), (0.1, 0.0, 0.0, "l2"),
                                                  (0.1, 0.1, 0.1, "l1"), (1.0, 0.1, 0.1, "l1")]
    body = plots.partner_groups(grid, cells, "loss.w_body")
    assert [g.members for g in body] == [(0, 1), (2, 3)]
    for key in ("loss.w_shape", "loss.w_hand", "loss.type"):
        assert [g.members for g in plots.partner_groups(grid, cells, key)] == [(0,), (1,), (2,),
                                                                              (3,)]


def test_a_full_grid_groups_into_lines_over_every_value():
    cells = full(SMALL)
    groups = plots.partner_groups(SMALL, cells, "a")
    assert len(groups) == 2 * 2 and all(len(g.members) == 3 for g in groups)
    assert sorted(i for g in groups for i in g.members) == list(range(len(cells)))


@pytest.mark.parametrize("case", ["unknown key", "value not in grid", "missing key", "twice",
                                  "lengths"])
def test_bad_plot_input_is_one_line_error(case):
    cells = [cell(0.0, 0.0, "l1"), cell(0.1, 0.0, "l1")]
    with pytest.raises(MeshrecError) as err:
        if case == "unknown key":
            plots.partner_groups(SMALL, cells, "c")
        elif case == "value not in grid":
            plots.partner_groups(SMALL, [*cells, cell(0.5, 0.0, "l1")], "a")
        elif case == "missing key":
            plots.partner_groups(SMALL, [{"a": 0.0, "b": 0.0}], "a")
        elif case == "twice":
            plots.partner_groups(SMALL, [*cells, cell(0.0, 0.0, "l1")], "b")
        else:
            plots.weight_plot(SMALL, cells, [1.0], METRIC, "a")
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------ scales

@pytest.mark.parametrize("values, kind, linthresh", [
    ([0.0, 0.1, 1.0], "symlog", 0.1), ([0, 0.01, 0.1, 1], "symlog", 0.01),
    ([0.1, 1.0, 10.0], "log", 0.0), ([0.1, 1.0], "log", 0.0), ([0.0, 0.5, 1.0], "linear", 0.0),
    ([0.0, 1.0], "linear", 0.0), ([1, 2, 5], "linear", 0.0), ([3], "linear", 0.0),
    (["l1", "l2"], "categorical", 0.0), ([True, False], "categorical", 0.0),
    ([0.0, "auto"], "categorical", 0.0)])
def test_axis_scale(values, kind, linthresh):
    assert plots.axis_scale(values) == plots.Scale(kind, linthresh)


def test_weight_axes_are_log_where_the_weights_span_decades_and_show_zero():
    grid = {"w": [0.0, 0.1, 1.0], "v": [0.0, 0.5, 1.0], "p": [0.1, 1.0, 10.0],
            "t": ["l2", "l1"]}
    cells = full(grid)
    scores = [float(i) for i in range(len(cells))]
    figs = {k: plots.weight_plot(grid, cells, scores, METRIC, k) for k in grid}
    axes = {k: f.axes[0] for k, f in figs.items()}
    assert axes["w"].get_xscale() == "symlog" and axes["p"].get_xscale() == "log"
    assert axes["v"].get_xscale() == "linear" and axes["t"].get_xscale() == "linear"
    for key in ("w", "v", "p"):  # a labelled tick at every grid value, 0 included
        assert list(axes[key].get_xticks()) == pytest.approx(grid[key])
        assert [t.get_text() for t in axes[key].get_xticklabels()] == [str(v) for v in grid[key]]
    assert "linear below 0.1" in axes["w"].get_xlabel()
    # 0 sits apart from 0.1 by as much as 0.1 from 1 (linear part = one decade wide).
    x0, x1, x2 = axes["w"].transData.transform([(v, 0) for v in grid["w"]])[:, 0]
    assert x1 - x0 == pytest.approx(x2 - x1, rel=1e-6)
    # Categorical: positions 0..n-1 labelled in the grid's order.
    assert list(axes["t"].get_xticks()) == [0, 1]
    assert [t.get_text() for t in axes["t"].get_xticklabels()] == ["l2", "l1"]


# ------------------------------------------------------------------ weight plots

def _points(ax) -> np.ndarray:
    """Display coordinates of every plotted data point of the axes."""
    xy = [line.get_xydata() for line in ax.get_lines() if len(line.get_xydata())]
    return ax.transData.transform(np.concatenate(xy))


@pytest.mark.parametrize("key", ["loss.w_body", "loss.w_shape", "loss.type"])
def test_legend_is_outside_the_points_and_the_axes(key):
    grid = loss_weights_grid()
    cells = full(grid)
    rng = np.random.default_rng(0)
    scores = list(100 + 30 * rng.random(len(cells)))
    scores[3] = math.nan  # one unfinished: an incomplete line and lone points too
    fig = plots.weight_plot(grid, cells, scores, METRIC, key)
    fig.canvas.draw()
    ax = fig.axes[0]
    (legend,) = fig.legends
    box = legend.get_window_extent()
    points = _points(ax)
    assert len(points) > 0
    inside = ((points[:, 0] >= box.x0) & (points[:, 0] <= box.x1) &
              (points[:, 1] >= box.y0) & (points[:, 1] <= box.y1))
    assert not inside.any()
    assert not box.overlaps(ax.get_window_extent())
    assert box.x1 <= fig.bbox.x1 + 1 and box.y1 <= fig.bbox.y1 + 1  # and not cut off


def test_weight_plot_draws_a_line_per_group_and_says_which_cells_have_no_partner():
    cells = [cell(0.0, 0.0, "l1"), cell(0.1, 0.0, "l1"), cell(1.0, 0.0, "l1"),
             cell(0.0, 0.1, "l2"), cell(1.0, 0.1, "l2"), cell(0.1, 0.1, "l1"),
             cell(1.0, 0.1, "l1")]
    scores = [5.0, 4.0, 6.0, 7.0, 8.0, 3.0, math.nan]  # the last is not finished
    fig = plots.weight_plot(SMALL, cells, scores, METRIC, "a")
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["b=0.0 t=l1", "b=0.1 t=l2", "1 cell(s) with no partner differing only in a"]
    lines = {l.get_label(): l for l in fig.axes[0].get_lines()}
    assert list(lines["b=0.0 t=l1"].get_ydata()) == [5.0, 4.0, 6.0]
    assert list(lines["b=0.1 t=l2"].get_xdata()) == [0.0, 1.0]
    lone = lines["1 cell(s) with no partner differing only in a"]
    assert list(lone.get_xydata()[0]) == [0.1, 3.0] and lone.get_linestyle() == "None"
    assert "6 of 7 cells finished" in fig.axes[0].get_title()
    # Fewer than two lines hold every value of a: no mean is drawn.
    assert not any(l.startswith("mean") for l in labels)


def test_the_mean_is_only_over_lines_with_every_value_and_says_so():
    cells = full(SMALL)
    scores = [float(i) for i in range(len(cells))]
    scores[0] = math.nan  # (0, 0, l1) unfinished: its line lacks a=0
    fig = plots.weight_plot(SMALL, cells, scores, METRIC, "a")
    (mean,) = [l for l in fig.axes[0].get_lines() if l.get_label().startswith("mean")]
    assert mean.get_label() == "mean of the 3 lines that have every a value"
    # Complete lines are (b, t) = (0, l2), (0.1, l1), (0.1, l2): cells 1.., a-major order.
    complete = [[scores[i * 4 + j] for i in range(3)] for j in (1, 2, 3)]
    assert list(mean.get_ydata()) == pytest.approx(np.mean(complete, axis=0))


def test_demo_cells_say_points_only_where_no_pair_differs_in_the_key():
    grid = loss_weights_grid()
    cells = list(spread(full(grid), DEMO_CELLS))
    fig = plots.weight_plot(grid, cells, [101.0, 102.0, 103.0, 104.0], METRIC, "loss.w_shape")
    assert "no two finished cells differ only in w_shape: points only" in fig.axes[0].get_title()
    assert [l.get_label() for l in fig.axes[0].get_lines()] == [
        "4 cell(s) with no partner differing only in w_shape"]


def test_no_finished_cell_still_makes_the_plots():
    cells = full(SMALL)
    nothing = [math.nan] * len(cells)
    fig = plots.weight_plot(SMALL, cells, nothing, METRIC, "a")
    assert "no finished cell yet" in fig.axes[0].get_title() and not fig.legends
    fig = plots.parallel_plot(SMALL, cells, nothing, METRIC)
    (lc,) = [c for c in fig.axes[0].collections if c.get_gid() == "cells"]
    assert len(lc.get_segments()) == 0
    assert not [l for l in fig.axes[0].get_lines() if l.get_gid() == "best"]


# ------------------------------------------------------------------ parallel coordinates

def test_parallel_coordinates_has_a_line_per_finished_cell_and_marks_the_best():
    grid = loss_weights_grid()
    cells = full(grid)
    rng = np.random.default_rng(1)
    scores = list(100 + 30 * rng.random(len(cells)))
    for i in (2, 9, 17):
        scores[i] = math.nan
    fig = plots.parallel_plot(grid, cells, scores, METRIC)
    ax = fig.axes[0]
    (lc,) = [c for c in ax.collections if c.get_gid() == "cells"]
    finished = [i for i, s in enumerate(scores) if not math.isnan(s)]
    segments = lc.get_segments()
    assert len(segments) == len(finished) == 21
    assert list(lc.get_array()) == pytest.approx([scores[i] for i in finished])  # colour = metric
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel().startswith(f"best {METRIC}")  # colour bar
    (best,) = [l for l in ax.get_lines() if l.get_gid() == "best"]
    top = int(np.nanargmin(scores))
    assert np.allclose(best.get_xydata(), segments[finished.index(top)])
    assert best.get_ydata()[-1] == 0.0  # lowest on the metric axis
    assert best.get_label().startswith("best: w_body=")
    # One axis per key plus the metric; w_body's 0, 0.1, 1 equally spaced (symlog, as the plots).
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        "w_body\n(log scale, linear below 0.1)", "w_shape", "w_hand", "type", METRIC]
    w_body = sorted({round(s[0][1], 9) for s in segments})
    assert w_body == pytest.approx([0.0, 0.5, 1.0])


def test_parallel_axis_of_log_weights_spaces_decades_evenly():
    grid = {"p": [0.01, 0.1, 1.0, 10.0], "t": ["x"]}
    cells = full(grid)
    fig = plots.parallel_plot(grid, cells, [1.0, 2.0, 3.0, 4.0], METRIC)
    (lc,) = [c for c in fig.axes[0].collections if c.get_gid() == "cells"]
    assert [s[0][1] for s in lc.get_segments()] == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert [s[1][1] for s in lc.get_segments()] == [0.5] * 4  # one value: mid-axis


# ------------------------------------------------------------------ files

def test_write_makes_one_png_per_key_and_the_parallel_coordinates(tmp_path):
    grid = loss_weights_grid()
    cells = list(spread(full(grid), DEMO_CELLS))
    paths = plots.write(grid, cells, [101.0, math.nan, 103.0, 99.0], METRIC, tmp_path)
    names = [f"{METRIC}_vs_{k}.png" for k in grid] + ["parallel_coordinates.png"]
    assert [p.name for p in paths] == names
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
