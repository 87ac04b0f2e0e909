"""One typed configuration for the whole system: load, merge, override, validate, dump, hash.

A config is YAML read with `yaml.safe_load`. A file may start from other files:

    defaults: [base.yaml, other.yaml]   # paths relative to this file; merged in order, recursively

then its own keys are merged over them (mappings deep-merged, lists replaced), then dotted command
line overrides (`train.epochs=3 loss.w_vert=0.5 data.train_subjects=[S1,S5]`, each value read as
YAML; for a string field a value YAML would read as another type is kept as typed). Every layer is
checked against the dataclasses (meshrec.config_schema) before it is merged, so an unknown key, a
wrong type or a value out of range is reported as one line naming the key and the file (or
override) that set it.

Types are strict: bool is not an int, an int is accepted for a float, a list field needs a list.
Float fields also accept strings such as `1e-4`, which YAML 1.1 (PyYAML) reads as text.

`config_hash(cfg)` is 12 hex digits of sha256 over canonical JSON (sorted keys, no spaces) of the
resolved values of every field that can change a result. Fields whose metadata says
`hash: False` are left out: where things are written or found (`train.output_dir`,
`data.shards`, `body.cache_dir`, `features.dir` - data identity is the shard manifest hash that runs
record beside it), how often to log, checkpoint or evaluate, resuming, the number of local
processes, and the whole `track` and `launch` sections. `body.model_path` stays in: '' (the
stand-in) and a file are different bodies. Adding a field later changes every hash (the new default enters it); that is
deliberate: the hash describes the resolved config, not the file.

Public API: `Config` (and its section dataclasses), `ConfigError`, `load_config`,
`load_config_and_extras` (a sweep file's `grid:` beside the config), `from_dict`,
`with_overrides`, `to_dict`, `dump_yaml`, `render` (what `meshrec config` prints), `config_hash`. `configs/base.yaml` is
`meshrec config --commented`: every key with its default, meaning and limits (a test keeps it
current). Sections are frozen dataclasses; list fields hold tuples, `to_dict` gives lists.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import math
import operator
import os
import re
import typing
from typing import Any, Mapping, Sequence

import yaml

from meshrec.config_schema import (Augment, Body, Config, Data, Eval, Features, Launch, Loss, Model,
                                   Optim, Slurm, Synth, Track, Train)
from meshrec.errors import MeshrecError

# The section classes are defined in meshrec.config_schema and imported from here.
__all__ = ["Augment", "Body", "Config", "ConfigError", "Data", "Eval", "Features", "Launch", "Loss",
           "Model", "Optim", "Slurm", "Synth", "Track", "Train", "config_hash", "dump_yaml",
           "from_dict", "load_config", "load_config_and_extras", "render", "to_dict",
           "with_overrides"]

_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


class ConfigError(MeshrecError):
    """A config file or override that does not fit the schema (one line: source, key, problem)."""


# ---------------------------------------------------------------- schema walking and checking

@functools.cache
def _fields(cls: type) -> dict[str, tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls)}


@functools.cache
def _all_keys(cls: type = Config, prefix: str = "") -> tuple[str, ...]:
    keys: list[str] = []
    for name, (_, tp) in _fields(cls).items():
        keys.append(prefix + name)
        if dataclasses.is_dataclass(tp):
            keys.extend(_all_keys(tp, f"{prefix}{name}."))
    return tuple(keys)


def _show(value: Any) -> str:
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list",
            dict: "mapping", type(None): "null"}.get(type(value), type(value).__name__)
    if value is None:
        return "null"
    text = json.dumps(value, ensure_ascii=False, default=str)
    return f"{kind} {text[:57] + '...' if len(text) > 60 else text}"


_TYPE_NAMES = {bool: ("true/false", "booleans"), int: ("an integer", "integers"),
               float: ("a number", "numbers"), str: ("a string", "strings")}


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is tuple:
        return f"a list of {_TYPE_NAMES[args[0]][1]}"
    if origin is dict:
        return f"a mapping of names to {_TYPE_NAMES[args[1]][1]}"
    return _TYPE_NAMES[tp][0]


def _scalar(value: Any, tp: type) -> tuple[bool, Any]:
    """(ok, converted) for one scalar against bool/int/float/str."""
    if tp is bool or tp is str:
        return isinstance(value, tp), value
    if isinstance(value, bool):
        return False, value
    if tp is int:
        return isinstance(value, int), value
    if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
        value = float(value)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return True, float(value)
    return False, value


def _limits(value: Any, meta: Mapping[str, Any]) -> str | None:
    """The first limit `value` breaks, as a message; None if it keeps them all."""
    if "choices" in meta and value not in meta["choices"]:
        near = difflib.get_close_matches(str(value), meta["choices"], n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        return f"must be one of {', '.join(meta['choices'])}; got {value!r}{hint}"
    if "pattern" in meta and not re.fullmatch(meta["pattern"], value):
        return f"{value!r} does not look like {meta['pattern']} (e.g. S1)"
    for bound, ok, word in (("min", operator.ge, ">="), ("max", operator.le, "<="),
                            ("gt", operator.gt, ">"), ("lt", operator.lt, "<")):
        if bound in meta and not ok(value, meta[bound]):
            return f"must be {word} {meta[bound]}, got {value!r}"
    return None


def _convert(value: Any, tp: Any, meta: Mapping[str, Any], key: str, source: str) -> Any:
    def fail(msg: str) -> ConfigError:
        return ConfigError(f"{source}: {key}: {msg}")

    origin = typing.get_origin(tp)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            hint = " (write [a, b])" if isinstance(value, str) else ""
            raise fail(f"expected {_describe(tp)}, got {_show(value)}{hint}")
        out = [_convert(item, typing.get_args(tp)[0], meta, f"{key}[{i}]", source)
               for i, item in enumerate(value)]
        if len(out) < meta.get("min_len", 0):
            raise fail("must not be empty" if not out else f"needs {meta['min_len']} entries")
        if meta.get("unique") and len(set(out)) != len(out):
            dup = next(x for x in out if out.count(x) > 1)
            raise fail(f"{dup!r} is listed twice")
        return tuple(out)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise fail(f"expected {_describe(tp)}, got {_show(value)}")
        out_map = {}
        for k, v in value.items():
            ok, v = _scalar(v, typing.get_args(tp)[1])
            if not isinstance(k, str) or not ok:
                raise fail(f"expected {_describe(tp)}, got {k!r}: {_show(v)} (quote it)")
            out_map[k] = v
        return out_map
    ok, converted = _scalar(value, tp)
    if not ok:
        raise fail(f"expected {_describe(tp)}, got {_show(value)}")
    problem = _limits(converted, meta)
    if problem:
        raise fail(problem)
    return converted


def _unknown(name: Any, cls: type, prefix: str, source: str) -> ConfigError:
    siblings = list(_fields(cls))
    near = difflib.get_close_matches(str(name), siblings, n=1)
    guess = prefix + near[0] if near else next(
        (k for k in _all_keys() if k.rsplit(".", 1)[-1] == str(name)), None)
    hint = f" (did you mean {guess}?)" if guess else f" (known: {', '.join(siblings)})"
    return ConfigError(f"{source}: {prefix}{name}: unknown key{hint}")


def _check_layer(data: Mapping[str, Any], cls: type, source: str, prefix: str = "") -> dict:
    """Check one layer (a file's keys or an override) against `cls`; return converted values."""
    out: dict[str, Any] = {}
    fields = _fields(cls)
    for name, value in data.items():
        if name not in fields:
            raise _unknown(name, cls, prefix, source)
        f, tp = fields[name]
        key = prefix + name
        if dataclasses.is_dataclass(tp):
            if value is None:  # a section whose keys are all commented out
                value = {}
            if not isinstance(value, Mapping):
                raise ConfigError(f"{source}: {key}: is a section; expected a mapping of its keys, "
                                  f"got {_show(value)}")
            out[name] = _check_layer(value, tp, source, key + ".")
        else:
            out[name] = _convert(value, tp, f.metadata, key, source)
    return out


def _merge(dst: dict, src: Mapping, origins: dict[str, tuple[int, str]], source: tuple[int, str],
           prefix: str = "") -> None:
    """Deep-merge mappings of `src` into `dst`; anything else (lists included) replaces."""
    for name, value in src.items():
        key = prefix + name
        if isinstance(value, dict):
            _merge(dst.setdefault(name, {}), value, origins, source, key + ".")
        else:
            dst[name] = value
        origins[key] = source


def _build(cls: type, data: Mapping[str, Any]) -> Any:
    kwargs = {}
    for name, (_, tp) in _fields(cls).items():
        if name in data:
            kwargs[name] = _build(tp, data[name]) if dataclasses.is_dataclass(tp) else data[name]
    return cls(**kwargs)


def _cross_check(cfg: Config, origins: Mapping[str, tuple[int, str]]) -> None:
    def fail(keys: Sequence[str], msg: str) -> ConfigError:
        # Name the involved key set last: most likely the one just changed.
        key = max(keys, key=lambda k: origins.get(k, (-1, ""))[0])
        return ConfigError(f"{origins.get(key, (-1, 'defaults'))[1]}: {key}: {msg}")

    loss = cfg.loss
    weights = ("w_vert", "w_joint", "w_shape", "w_body", "w_hand", "w_loc", "w_joint3d", "w_kp2d")
    if not any(getattr(loss, w) for w in weights):
        raise fail([f"loss.{w}" for w in weights],
                   "every loss weight is 0; nothing would be trained")
    steps = cfg.optim.step_epochs
    if cfg.optim.schedule == "step" and not steps:
        raise fail(["optim.step_epochs", "optim.schedule"],
                   "optim.schedule is 'step' but optim.step_epochs is empty")
    if list(steps) != sorted(steps):
        raise fail(["optim.step_epochs"], f"must be increasing, got {list(steps)}")
    if cfg.data.batch_size % cfg.optim.accumulate:
        raise fail(["optim.accumulate", "data.batch_size"],
                   f"optim.accumulate {cfg.optim.accumulate} does not divide data.batch_size "
                   f"{cfg.data.batch_size}")
    if not cfg.data.shards and cfg.data.image_size > cfg.data.synth.size:
        raise fail(["data.image_size", "data.synth.size", "data.shards"],
                   f"data.image_size {cfg.data.image_size} exceeds the generated crops "
                   f"(data.synth.size {cfg.data.synth.size})")
    if cfg.data.backend == "dali" and cfg.data.num_threads < 1:
        raise fail(["data.num_threads", "data.backend"],
                   "DALI needs at least 1 decode thread (0, decoding in the rank's own process, "
                   "is for data.backend: torch)")
    if cfg.features.enabled and not cfg.model.freeze_encoder:
        raise fail(["features.enabled", "model.freeze_encoder"],
                   "features.enabled needs model.freeze_encoder: true")
    slurm = cfg.launch.slurm
    if slurm.signal_delay_s >= slurm.time_min * 60:
        raise fail(["launch.slurm.signal_delay_s", "launch.slurm.time_min"],
                   f"launch.slurm.signal_delay_s {slurm.signal_delay_s} is not shorter than the "
                   f"time limit ({slurm.time_min} min)")


# ---------------------------------------------------------------- reading files and overrides

def _read_file(path: str, chain: tuple[tuple[str, str], ...], layers: list,
               extra_keys: Sequence[str], extras: dict[str, Any],
               named_in: str | None = None) -> None:
    """Append (source, checked layer) for `path`'s defaults, then for its own keys.
    `chain` holds (real path, path as named) of the files that include this one."""
    real = os.path.realpath(path)
    reals = [r for r, _ in chain]
    if real in reals:
        names = [p for _, p in chain[reals.index(real):]] + [path]
        raise ConfigError(f"{named_in}: defaults: cycle {' -> '.join(names)}")
    where = f"{named_in}: defaults: " if named_in else f"{path}: "
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{where}no such config file {path!r}") from None
    except OSError as exc:
        raise ConfigError(f"{where}cannot read {path!r}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}{at}: invalid YAML: {problem}") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top, got {_show(data)}")
    defaults = data.pop("defaults", [])
    defaults = [defaults] if isinstance(defaults, str) else defaults
    if not isinstance(defaults, list) or not all(isinstance(d, str) for d in defaults):
        raise ConfigError(f"{path}: defaults: expected a list of file paths, got {_show(defaults)}")
    for name in defaults:
        child = os.path.normpath(os.path.join(os.path.dirname(path), os.path.expanduser(name)))
        _read_file(child, (*chain, (real, path)), layers, extra_keys, extras, named_in=path)
    for name in extra_keys:
        if name in data:
            extras[name] = data.pop(name)
    layers.append((path, _check_layer(data, Config, path)))


def _field_type(dotted: Sequence[str]) -> Any:
    """Declared type at a dotted key (inside a mapping field: its value type); None if unknown."""
    tp: Any = Config
    for name in dotted:
        if typing.get_origin(tp) is dict:
            tp = typing.get_args(tp)[1]
        elif dataclasses.is_dataclass(tp) and name in _fields(tp):
            tp = _fields(tp)[name][1]
        else:
            return None
    return tp


def _override_layer(text: str) -> tuple[str, dict]:
    source = f"override {text}"
    key, eq, raw = text.partition("=")
    parts = key.strip().split(".")
    if not eq or not all(p and not p.isspace() and " " not in p for p in parts):
        raise ConfigError(f"{source}: expected KEY=VALUE with a dotted key, e.g. train.epochs=3")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or "cannot parse"
        raise ConfigError(f"{source}: {key}: invalid YAML value: {problem}") from None
    if _field_type(parts) is str and not isinstance(value, str):
        value = raw  # `run_name=123`, `weights=null`: the user typed a string
    nested: Any = value
    for name in reversed(parts):
        nested = {name: nested}
    return source, _check_layer(nested, Config, source)


def load_config_and_extras(path: str | os.PathLike | None = None, overrides: Sequence[str] = (),
                           extra_keys: Sequence[str] = ()) -> tuple[Config, dict[str, Any]]:
    """Like load_config; top-level keys named in `extra_keys` (e.g. a sweep's `grid`) are
    taken out of the files, unchecked, and returned beside the config (the last file wins)."""
    layers: list[tuple[str, dict]] = []
    extras: dict[str, Any] = {}
    if path is not None:
        _read_file(os.fspath(path), (), layers, extra_keys, extras)
    if isinstance(overrides, str):
        overrides = [overrides]
    layers.extend(_override_layer(text) for text in overrides)
    return _resolve(layers), extras


def _resolve(layers: Sequence[tuple[str, dict]]) -> Config:
    """Merge checked layers in order, build the Config, run the cross-field checks."""
    merged: dict[str, Any] = {}
    origins: dict[str, tuple[int, str]] = {}
    for order, (source, layer) in enumerate(layers):
        _merge(merged, layer, origins, (order, source))
    cfg = _build(Config, merged)
    _cross_check(cfg, origins)
    return cfg


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> Config:
    """Read `path` (with its `defaults` chain) and dotted `overrides`; None = all defaults."""
    return load_config_and_extras(path, overrides)[0]


def from_dict(data: Mapping[str, Any], source: str = "config") -> Config:
    """A Config from a nested dict such as `to_dict` gives (a checkpoint's), checked as a file is."""
    return _resolve([(source, _check_layer(data, Config, source))])


def with_overrides(cfg: Config, overrides: Sequence[str], source: str = "config") -> Config:
    """`cfg` with dotted overrides applied and the result checked again."""
    layers = [(source, _check_layer(to_dict(cfg), Config, source))]
    layers.extend(_override_layer(text) for text in overrides)
    return _resolve(layers)


# ---------------------------------------------------------------- dump and hash

def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def to_dict(cfg: Any, *, hashed_only: bool = False) -> dict[str, Any]:
    """Plain YAML/JSON-safe nested dict of a config (or a section) in declaration order."""
    out = {}
    for f in dataclasses.fields(cfg):
        if hashed_only and not f.metadata.get("hash", True):
            continue
        value = getattr(cfg, f.name)
        out[f.name] = (to_dict(value, hashed_only=hashed_only) if dataclasses.is_dataclass(value)
                       else _plain(value))
    return out


def config_hash(cfg: Config) -> str:
    """12 hex digits naming what the config computes (see the module docstring for exclusions)."""
    canonical = json.dumps(to_dict(cfg, hashed_only=True), sort_keys=True, separators=(",", ":"),
                           ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()[:12]


def _flow(value: Any) -> str:
    """One value as single-line YAML (PyYAML does the quoting)."""
    text = yaml.safe_dump([_plain(value)], default_flow_style=True, width=1 << 30,
                          allow_unicode=True).strip()
    return text[1:-1]


def _hint(meta: Mapping[str, Any]) -> str:
    parts = []
    if "choices" in meta:
        parts.append("|".join(meta["choices"]))
    for bound, word in (("min", ">="), ("gt", ">"), ("max", "<="), ("lt", "<")):
        if bound in meta:
            parts.append(f"{word} {meta[bound]}")
    if not meta.get("hash", True):
        parts.append("not hashed")
    return f" [{', '.join(parts)}]" if parts else ""


def _emit(obj: Any, depth: int, comments: bool, lines: list[str]) -> None:
    pad = "  " * depth
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        note = f"  # {f.metadata['help']}{_hint(f.metadata)}" if comments else ""
        if dataclasses.is_dataclass(value):
            if depth == 0 and lines:
                lines.append("")
            lines.append(f"{pad}{f.name}:{note}")
            _emit(value, depth + 1, comments, lines)
        else:
            lines.append(f"{pad}{f.name}: {_flow(value)}{note}")


def dump_yaml(cfg: Config, *, comments: bool = False) -> str:
    """Every key of `cfg` as YAML that load_config reads back equal; optionally with help."""
    lines: list[str] = []
    if comments:
        lines.append("# Every key with its value, meaning and limits; [not hashed] keys do not "
                     "enter config_hash.")
    _emit(cfg, 0, comments, lines)
    return "\n".join(lines) + "\n"


def render(cfg: Config, *, comments: bool = False) -> str:
    """What `meshrec config` prints: the hash as a comment line, then the YAML."""
    return f"# config_hash: {config_hash(cfg)}\n" + dump_yaml(cfg, comments=comments)
