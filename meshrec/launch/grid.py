"""A sweep file: a config (with `defaults:`) plus a `grid:` of dotted keys → lists of values.

    defaults: [study.yaml]
    grid:
      loss.w_vert: [1.0, 0.5]
      loss.type: [l1, l2]

Cells are the cartesian product, in the order the keys are written and the values listed. Each
cell is the base config with that cell's values as overrides, validated like any config, and is
named by its config hash, so the same settings always get the same name. Every cell is checked
before anything is queued; a grid key that does not exist, a value of the wrong type, an empty
list or two cells that resolve to the same config are one-line errors naming the file.

How a reader sees a cell (`label`): its grid values, each key by its last part unless two keys
share it (`w_body=0.1 w_shape=0.1 type=l1`). The MLflow run names and the report's plots both
use this rule.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import yaml

from meshrec.config import Config, ConfigError, config_hash, load_config_and_extras, with_overrides


@dataclass(frozen=True)
class Cell:
    name: str                  # the cell config's hash
    values: dict[str, Any]     # grid key → this cell's value
    config: Config

    @property
    def overrides(self) -> list[str]:
        return as_overrides(self.values)


@dataclass(frozen=True)
class Sweep:
    path: str
    base: Config
    grid: dict[str, list[Any]]
    cells: tuple[Cell, ...]


def _flow(value: Any) -> str:
    """A value as one-line YAML, so the override parses back to the same value."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**9).strip().removesuffix("\n...")


def as_overrides(values: Mapping[str, Any]) -> list[str]:
    """Dotted key → value as `key=value` overrides that parse back to the same values."""
    return [f"{key}={_flow(value)}" for key, value in values.items()]


def as_text(value: Any) -> str:
    """A grid value as a reader (and an MLflow tag) sees it: YAML-style booleans."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def short_names(keys: Sequence[str]) -> dict[str, str]:
    """Each key by its last part unless two keys share it (`loss.w_body` → `w_body`)."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: s if last.count(s) == 1 else k for k, s in zip(keys, last)}


def label(pairs: Iterable[tuple[str, Any]], keys: Sequence[str]) -> str:
    """`w_body=0.1 type=l1`: grid values named by `short_names(keys)` ('' for none)."""
    names = short_names(keys)
    return " ".join(f"{names[k]}={as_text(v)}" for k, v in pairs)


def load_sweep(path: str | os.PathLike, overrides: Sequence[str] = ()) -> Sweep:
    """Read a sweep file, expand and validate every cell (nothing is submitted here)."""
    source = os.fspath(path)
    base, extras = load_config_and_extras(source, overrides, extra_keys=("grid",))
    grid = extras.get("grid")
    if grid is None:
        raise ConfigError(f"{source}: grid: missing (a sweep file needs a `grid:` of key: [values])")
    if not isinstance(grid, dict) or not grid:
        raise ConfigError(f"{source}: grid: expected a mapping of dotted keys to lists of values")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{source}: grid.{key}: expected a non-empty list of values")
    cells: list[Cell] = []
    seen: dict[str, dict[str, Any]] = {}
    for combo in itertools.product(*grid.values()):
        values = dict(zip(grid, combo))
        try:
            cfg = with_overrides(base, as_overrides(values))
        except ConfigError as exc:
            raise ConfigError(f"{source}: grid: {exc}") from None
        name = config_hash(cfg)
        if name in seen:
            raise ConfigError(f"{source}: grid: cells {seen[name]} and {values} resolve to the same "
                              f"config ({name}); a grid key probably does not change the result")
        seen[name] = values
        cells.append(Cell(name=name, values=values, config=cfg))
    return Sweep(path=source, base=base, grid=dict(grid), cells=tuple(cells))


def describe(sweep: Sweep) -> list[str]:
    """A table of the cells: name and grid values, one line each."""
    keys = list(sweep.grid)
    widths = [max(len(k), *(len(_flow(c.values[k])) for c in sweep.cells)) for k in keys]
    head = "cell          " + "  ".join(k.ljust(w) for k, w in zip(keys, widths))
    rows = [f"{c.name}  " + "  ".join(_flow(c.values[k]).ljust(w) for k, w in zip(keys, widths))
            for c in sweep.cells]
    return [head, *rows]
