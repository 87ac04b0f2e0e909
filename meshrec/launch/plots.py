"""A sweep's report plots, from plain data: the grid (key → values), each cell's grid values and
its metric (NaN: no result yet). No MLflow here: `meshrec.launch.report.report` logs the files.

- `<metric>_vs_<key>.png`: the metric against one key. A line joins finished cells that differ in
  that key alone (`partner_groups`); a cell without such a partner is a lone point, counted in
  the legend. A mean "over the other weights" is not drawn: in a partial grid (the demo runs 4 of
  24 cells) it would mix different settings at each value. The one average drawn is over the
  lines that hold every value of the key, and its legend entry says so.
- `parallel_coordinates.png`: the whole grid, one axis per key plus the metric, one line per
  finished cell coloured by the metric, the best (lowest) cell in red.

Numeric keys whose non-zero values span a decade or more get a log axis; with 0 among them a
symlog axis, linear below the smallest non-zero value, so 0 keeps its own labelled tick
(`axis_scale`). Other keys are categorical, in the grid's order. Figures are made without pyplot
(no global state, no backend switch), each on its own Agg canvas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.scale import SymmetricalLogTransform
from matplotlib.ticker import MaxNLocator, NullLocator

from meshrec.errors import MeshrecError
from meshrec.launch.grid import as_text, label, short_names

PARALLEL_FILE = "parallel_coordinates.png"
# symlog: [0, linthresh] as wide as one decade (matplotlib widens the linear part by linscale /
# (1 - 1/base)), so weights 0, 0.1, 1 sit evenly spaced, as a reader of their labels expects.
LINSCALE = 0.9
DPI = 100
_LABEL_BOX = dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor="none", alpha=0.85)


@dataclass(frozen=True)
class Scale:
    kind: str              # "log", "symlog", "linear" or "categorical"
    linthresh: float = 0.0  # symlog: linear within ±linthresh (the smallest non-zero |value|)

    @property
    def note(self) -> str:
        """What an axis label adds, so a reader knows the spacing is not linear."""
        if self.kind == "log":
            return " (log scale)"
        if self.kind == "symlog":
            return f" (log scale, linear below {as_text(self.linthresh)})"
        return ""


@dataclass(frozen=True)
class Group:
    others: tuple[tuple[str, Any], ...]  # the other keys and the values its cells share
    members: tuple[int, ...]             # indices into the cells, in the grid's order of the key


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _figure(width: float, height: float) -> Figure:
    """A figure on its own Agg canvas: `fig.canvas.draw()` lays it out, no pyplot state."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def axis_scale(values: Sequence[Any]) -> Scale:
    """Log when the non-zero magnitudes span a decade or more (symlog if 0 or a negative is among
    them), linear for other numbers, categorical for anything else (l1/l2, booleans)."""
    if not values or not all(_numeric(v) for v in values):
        return Scale("categorical")
    nonzero = [abs(v) for v in values if v != 0]
    if len(nonzero) < 2 or max(nonzero) < 10 * min(nonzero):
        return Scale("linear")
    if all(v > 0 for v in values):
        return Scale("log")
    return Scale("symlog", min(nonzero))  # its own type: "linear below 1", as the tick says


def _index(grid: Mapping[str, Sequence[Any]], key: str, value: Any) -> int:
    """Position of a cell's value in the grid's list (True is not 1 here)."""
    for i, v in enumerate(grid[key]):
        if isinstance(v, bool) == isinstance(value, bool) and v == value:
            return i
    raise MeshrecError(f"grid.{key}: a cell has {as_text(value)!r}, not one of the grid's values")


def _check(grid: Mapping[str, Sequence[Any]], cells: Sequence[Mapping[str, Any]],
           scores: Sequence[float] | None = None) -> None:
    if not grid:
        raise MeshrecError("report plots: the grid has no keys")
    if scores is not None and len(scores) != len(cells):
        raise MeshrecError(f"report plots: {len(cells)} cells but {len(scores)} metric values")
    for cell in cells:
        missing = [k for k in grid if k not in cell]
        if missing:
            raise MeshrecError(f"report plots: a cell has no value for grid key {missing[0]}")
        for key in grid:
            _index(grid, key, cell[key])


def partner_groups(grid: Mapping[str, Sequence[Any]], cells: Sequence[Mapping[str, Any]],
                   key: str) -> list[Group]:
    """The cells grouped by their values of every grid key but `key`: within a group cells differ
    in `key` alone, so a line through them shows its effect with nothing else changed. Groups
    come in grid order of the other values; a one-member group is a cell without a partner."""
    if key not in grid:
        raise MeshrecError(f"report plots: {key} is not a grid key")
    _check(grid, cells)
    others = [k for k in grid if k != key]
    found: dict[tuple[int, ...], list[int]] = {}
    for i, cell in enumerate(cells):
        found.setdefault(tuple(_index(grid, k, cell[k]) for k in others), []).append(i)
    groups = []
    for where in sorted(found):
        members = sorted(found[where], key=lambda i: _index(grid, key, cells[i][key]))
        spots = [_index(grid, key, cells[i][key]) for i in members]
        if len(set(spots)) != len(spots):
            raise MeshrecError(f"report plots: two cells have the same grid values "
                               f"({_label(grid, cells[members[0]])})")
        groups.append(Group(tuple((k, grid[k][j]) for k, j in zip(others, where)),
                            tuple(members)))
    return groups


def _label(grid: Mapping[str, Sequence[Any]], values: Mapping[str, Any] | Sequence[tuple]) -> str:
    pairs = values.items() if isinstance(values, Mapping) else values
    return label(pairs, list(grid)) or "(no other key)"


def _finished(scores: Sequence[float]) -> list[int]:
    return [i for i, s in enumerate(scores) if s is not None and math.isfinite(s)]


def _set_axis(ax: Any, grid: Mapping[str, Sequence[Any]], key: str, scale: Scale) -> None:
    values = grid[key]
    name = short_names(list(grid))[key]
    if scale.kind == "categorical":
        ax.set_xticks(range(len(values)), [as_text(v) for v in values])
        ax.set_xlim(-0.5, len(values) - 0.5)
    else:
        if scale.kind == "symlog":
            ax.set_xscale("symlog", linthresh=scale.linthresh, linscale=LINSCALE)
        elif scale.kind == "log":
            ax.set_xscale("log")
        ax.set_xticks(list(values), [as_text(v) for v in values])  # every grid value, 0 included
        ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel(f"{name}{scale.note}")


def _x(grid: Mapping[str, Sequence[Any]], key: str, scale: Scale, value: Any) -> float:
    return _index(grid, key, value) if scale.kind == "categorical" else value


def weight_plot(grid: Mapping[str, Sequence[Any]], cells: Sequence[Mapping[str, Any]],
                scores: Sequence[float], metric: str, key: str) -> Figure:
    """The metric against one grid key: a line per group of finished cells differing only in
    `key`, lone cells as grey crosses, the legend outside the axes."""
    _check(grid, cells, scores)
    done = _finished(scores)
    sub = [cells[i] for i in done]
    ys = [scores[i] for i in done]
    groups = partner_groups(grid, sub, key)
    lines = [g for g in groups if len(g.members) > 1]
    lone = [g.members[0] for g in groups if len(g.members) == 1]
    complete = [g for g in lines if len(g.members) == len(grid[key])]
    name = short_names(list(grid))[key]
    scale = axis_scale(grid[key])

    entries = len(lines) + bool(lone) + (len(complete) >= 2)
    fig = _figure(8, max(3.8, 1.4 + 0.2 * entries))
    ax = fig.add_subplot()
    cmap = colormaps["tab10" if len(lines) <= 10 else "tab20"]
    for n, g in enumerate(lines):
        ax.plot([_x(grid, key, scale, sub[i][key]) for i in g.members], [ys[i] for i in g.members],
                "-o", ms=5, lw=1.5, color=cmap(n % cmap.N), label=_label(grid, g.others))
    if len(complete) >= 2:  # balanced: every line averaged has a point at every value
        means = [sum(ys[g.members[j]] for g in complete) / len(complete)
                 for j in range(len(grid[key]))]
        ax.plot([_x(grid, key, scale, v) for v in grid[key]], means, "--", color="black", lw=2.5,
                label=f"mean of the {len(complete)} lines that have every {name} value")
    if lone:
        ax.plot([_x(grid, key, scale, sub[i][key]) for i in lone], [ys[i] for i in lone],
                linestyle="none", marker="X", ms=8, color="0.45",
                label=f"{len(lone)} cell(s) with no partner differing only in {name}")
    _set_axis(ax, grid, key, scale)
    ax.set_ylabel(f"best {metric} (lower is better)")
    ax.grid(alpha=0.3)
    if not done:
        how = "no finished cell yet"
        ax.text(0.5, 0.5, how, transform=ax.transAxes, ha="center", va="center", color="0.4")
    elif lines:
        how = f"a line joins cells that differ only in {name}"
    else:
        how = f"no two finished cells differ only in {name}: points only"
    ax.set_title(f"{metric} vs {name}: {len(done)} of {len(cells)} cells finished\n{how}",
                 fontsize=9)
    if lines or lone:
        fig.legend(loc="outside right upper", fontsize=7, title="other grid values",
                   title_fontsize=7, ncols=1 + entries // 24)
    return fig


def _positions(grid: Mapping[str, Sequence[Any]], key: str) -> list[float]:
    """Where each grid value of `key` sits on its parallel axis, 0..1 (the axis's own scale)."""
    values = grid[key]
    scale = axis_scale(values)
    if scale.kind == "categorical":
        raw = [float(i) for i in range(len(values))]
    elif scale.kind == "log":
        raw = [math.log10(v) for v in values]
    elif scale.kind == "symlog":
        raw = list(SymmetricalLogTransform(10, scale.linthresh, LINSCALE).transform(values))
    else:
        raw = [float(v) for v in values]
    lo, hi = min(raw), max(raw)
    return [0.5 if hi == lo else (r - lo) / (hi - lo) for r in raw]


def parallel_plot(grid: Mapping[str, Sequence[Any]], cells: Sequence[Mapping[str, Any]],
                  scores: Sequence[float], metric: str) -> Figure:
    """The whole grid: an axis per key (log-spaced where its weights span decades) and one for
    the metric; a line per finished cell coloured by its metric; the best cell in red."""
    _check(grid, cells, scores)
    keys = list(grid)
    names = short_names(keys)
    done = _finished(scores)
    ys = [scores[i] for i in done]
    lo, hi = (min(ys), max(ys)) if ys else (0.0, 1.0)
    at = {k: _positions(grid, k) for k in keys}
    span = hi - lo

    def coords(i: int) -> list[tuple[float, float]]:
        cell, y = cells[i], scores[i]
        return [*((x, at[k][_index(grid, k, cell[k])]) for x, k in enumerate(keys)),
                (len(keys), 0.5 if span == 0 else (y - lo) / span)]

    fig = _figure(1.7 * len(keys) + 3.5, 4.6)
    ax = fig.add_subplot()
    for x, k in enumerate(keys):
        ax.axvline(x, color="0.55", lw=1, zorder=1)
        for v, y in zip(grid[k], at[k]):
            ax.text(x - 0.04, y, as_text(v), ha="right", va="center", fontsize=7, zorder=4,
                    bbox=_LABEL_BOX)  # readable over the lines
    ax.axvline(len(keys), color="0.55", lw=1, zorder=1)
    ticks = [t for t in MaxNLocator(5).tick_values(lo, hi) if lo <= t <= hi] if span else [lo]
    for t in ticks if ys else []:
        ax.text(len(keys) + 0.04, 0.5 if span == 0 else (t - lo) / span, f"{t:.4g}",
                ha="left", va="center", fontsize=7, zorder=4, bbox=_LABEL_BOX)
    lc = LineCollection([coords(i) for i in done], array=ys, cmap="viridis",
                        norm=Normalize(lo, hi), lw=1.5, alpha=0.85, zorder=2)
    lc.set_gid("cells")
    ax.add_collection(lc)
    fig.colorbar(lc, ax=ax, label=f"best {metric} (lower is better)", pad=0.02)
    if done:
        best = min(done, key=lambda i: scores[i])  # the first of equals, like report.best_row
        xs, bys = zip(*coords(best))
        ax.plot(xs, bys, "-o", color="red", lw=3, ms=5, zorder=3, gid="best",
                label=f"best: {_label(grid, cells[best])}  {metric}={scores[best]:.4g}")
        fig.legend(loc="outside lower center", fontsize=8, frameon=False)
    notes = {k: axis_scale(grid[k]).note.strip() for k in keys}
    axis_names = [f"{names[k]}\n{notes[k]}" if notes[k] else names[k] for k in keys]
    ax.set_xticks(range(len(keys) + 1), [*axis_names, metric], fontsize=8)
    ax.set_yticks([])
    ax.set_xlim(-0.6, len(keys) + 0.4)
    ax.set_ylim(-0.06, 1.06)
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    total = math.prod(len(v) for v in grid.values())
    ax.set_title(f"{len(done)} finished of {len(cells)} cells run (the grid has {total}); "
                 f"one line per finished cell", fontsize=9)
    return fig


def write(grid: Mapping[str, Sequence[Any]], cells: Sequence[Mapping[str, Any]],
          scores: Sequence[float], metric: str, folder: Path) -> list[Path]:
    """`<metric>_vs_<key>.png` for each grid key and parallel_coordinates.png into `folder`."""
    figures = [(f"{metric}_vs_{key}.png", weight_plot(grid, cells, scores, metric, key))
               for key in grid]
    figures.append((PARALLEL_FILE, parallel_plot(grid, cells, scores, metric)))
    paths = []
    for name, fig in figures:
        fig.savefig(Path(folder) / name, dpi=DPI)
        paths.append(Path(folder) / name)
    return paths
