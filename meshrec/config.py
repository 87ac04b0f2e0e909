"""One typed configuration for the whole system: load, merge, override, validate, dump, hash.

A config is YAML read with `yaml.safe_load`. A file may start from other files:

    defaults: [base.yaml, other.yaml]   # paths relative to this file; merged in order, recursively

then its own keys are merged over them (mappings deep-merged, lists replaced), then dotted command
line overrides (`train.epochs=3 loss.w_vert=0.5 data.train_subjects=[S1,S5]`, each value read as
YAML; for a string field a value YAML would read as another type is kept as typed). Every layer is
checked against the dataclasses below before it is merged, so an unknown key, a wrong type or a
value out of range is reported as one line naming the key and the file (or override) that set it.

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
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import yaml

from meshrec.errors import MeshrecError

SUBJECT = r"S\d+"
_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


class ConfigError(MeshrecError):
    """A config file or override that does not fit the schema (one line: source, key, problem)."""


def _f(default: Any, help: str, *, hash: bool = True, **limits: Any) -> Any:
    """A leaf field: default, one-line help, and limits (min, max, gt, lt, choices, pattern,
    min_len, unique) checked on load; `hash=False` leaves it out of config_hash."""
    meta = {"help": help, "hash": hash, **limits}
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=meta)
    return field(default=default, metadata=meta)


def _section(cls: type, help: str, *, hash: bool = True) -> Any:
    return field(default_factory=cls, metadata={"help": help, "hash": hash})


@dataclass(frozen=True)
class Body:
    model_path: str = _f("", "SMPL-format .pkl/.npz; '' = the generated licence-free stand-in")
    standin_seed: int = _f(0, "seed of the generated stand-in body model", min=0)
    cache_dir: str = _f("~/.cache/meshrec", "where generated files (stand-in body, demo shards) "
                        "are cached", hash=False)
    h36m_regressor: str = _f("", "J_regressor_h36m.npy (17 x vertices): Human3.6M's joints for "
                             "loss.w_joint3d, loss.w_kp2d, the h36m protocols and metrics; '' = the "
                             "stand-in's generated one (stand-in body) or none (an SMPL file)")


@dataclass(frozen=True)
class Augment:
    enabled: bool = _f(True, "augment training images (evaluation never is)")
    scale: float = _f(0.25, "max relative change of the crop size", min=0.0, lt=1.0)
    translate: float = _f(0.1, "max shift of the crop centre, as a fraction of the crop", min=0.0,
                          max=1.0)
    rotate_deg: float = _f(30.0, "max in-plane rotation in degrees", min=0.0, max=180.0)
    color_jitter: float = _f(0.2, "max relative change of brightness, contrast, saturation",
                             min=0.0, max=1.0)
    flip_prob: float = _f(0.5, "probability of a horizontal flip (pose mirrored with it)", min=0.0,
                          max=1.0)


@dataclass(frozen=True)
class Synth:
    frames_per_subject: int = _f(200, "frames per subject of generated data", min=1)
    size: int = _f(256, "side in pixels of the packed crops (frames are rendered at twice "
                   "that, at least 256)", min=32)
    seed: int = _f(0, "seed of the data generator", min=0)


@dataclass(frozen=True)
class Data:
    shards: str = _f("", "shard directory (manifest.json inside); '' = generated stand-in data, "
                     "made on first use under body.cache_dir", hash=False)
    train_subjects: tuple[str, ...] = _f(("S1", "S5", "S6"), "subjects to train on",
                                         pattern=SUBJECT, min_len=1, unique=True)
    val_subjects: tuple[str, ...] = _f(("S7", "S8"), "subjects validated on during training "
                                       "(may overlap train for final runs)",
                                       pattern=SUBJECT, unique=True)
    backend: str = _f("dali", "data loader", choices=("dali", "torch"))
    image_size: int = _f(224, "side of the network input crop in pixels", min=32)
    batch_size: int = _f(64, "global batch per optimizer step, over all ranks", min=1)
    num_threads: int = _f(2, "decode threads (DALI) or workers (torch) per rank", min=1)
    seed: int = _f(0, "seed of shuffling and augmentation", min=0)
    augment: Augment = _section(Augment, "training-time augmentation")
    synth: Synth = _section(Synth, "generated stand-in data, used when shards is ''")


@dataclass(frozen=True)
class Model:
    encoder: str = _f("resnet152", "torchvision backbone",
                      choices=("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"))
    weights: str = _f("imagenet", "'imagenet' (torchvision), 'none' (random init) or a file path")
    freeze_encoder: bool = _f(True, "keep the encoder in eval mode without gradients")
    head: str = _f("iterative", "regressor head", choices=("iterative", "sequential"))
    iterations: int = _f(3, "refinement steps of the iterative head", min=1)
    hidden: int = _f(1024, "width of the head's hidden layers", min=1)
    dropout: float = _f(0.5, "dropout in the head", min=0.0, lt=1.0)
    pose_repr: str = _f("axis_angle", "pose output representation", choices=("axis_angle", "6d"))
    predict_translation: bool = _f(False, "also regress translation (vertex loss in camera frame)")
    mean_params: str = _f("", "SPIN smpl_mean_params.npz; '' = mean from the shard manifest")


@dataclass(frozen=True)
class Loss:
    type: str = _f("l2", "distance of every term", choices=("l1", "l2"))
    w_vert: float = _f(1.0, "weight of the vertex term", min=0.0)
    w_joint: float = _f(0.0, "weight of the 3D joint term", min=0.0)
    w_shape: float = _f(0.0, "weight of the betas term", min=0.0)
    w_body: float = _f(0.0, "weight of the body pose term", min=0.0)
    w_hand: float = _f(0.0, "weight of the wrist/hand pose term", min=0.0)
    w_loc: float = _f(0.0, "weight of the global orientation (+ translation) term", min=0.0)
    w_joint3d: float = _f(0.0, "weight of the 17 Human3.6M joints regressed from the mesh against "
                          "the samples' 3D joints (pelvis-centred, confidence-weighted)", min=0.0)
    w_kp2d: float = _f(0.0, "weight of the 2D reprojection of those joints through the predicted "
                       "weak-perspective camera against the crop keypoints", min=0.0)
    supervise: str = _f("last", "regressor iterations supervised", choices=("all", "last"))


@dataclass(frozen=True)
class Optim:
    name: str = _f("adam", "optimizer", choices=("adam", "sgd"))
    lr: float = _f(1e-4, "peak learning rate", gt=0.0)
    weight_decay: float = _f(0.0, "weight decay", min=0.0)
    momentum: float = _f(0.9, "SGD momentum", min=0.0, lt=1.0)
    warmup_steps: int = _f(0, "linear warm-up steps", min=0)
    schedule: str = _f("constant", "LR schedule after warm-up", choices=("constant", "cosine",
                                                                          "step"))
    step_epochs: tuple[int, ...] = _f((), "epochs at which the step schedule multiplies the LR "
                                      "by gamma", min=1, unique=True)
    gamma: float = _f(0.1, "LR factor of the step schedule", gt=0.0, max=1.0)
    min_lr: float = _f(0.0, "final LR of the cosine schedule", min=0.0)
    grad_clip: float = _f(0.0, "max gradient norm; 0 = off", min=0.0)
    accumulate: int = _f(1, "micro-batches data.batch_size is split into per step", min=1)


@dataclass(frozen=True)
class Train:
    epochs: int = _f(10, "training epochs", min=1)
    amp: str = _f("auto", "mixed precision; auto = bf16 on GPUs that have it, fp16 on older "
                  "GPUs, off on CPU",
                  choices=("auto", "bf16", "fp16", "off"))
    compile: bool = _f(False, "torch.compile the model (CUDA only)")
    channels_last: bool = _f(True, "channels-last memory format (CUDA only)")
    device: str = _f("auto", "where to train", choices=("auto", "cpu", "cuda"))
    seed: int = _f(0, "seed of model init and dropout", min=0)
    init_from: str = _f("", "checkpoint whose weights start a fine-tune (its config may differ)")
    processes: int = _f(1, "local DDP processes when not started by SLURM or torchrun", min=1,
                        hash=False)
    output_dir: str = _f("runs/meshrec", "run directory (checkpoints/, metrics)", hash=False)
    resume: str = _f("auto", "'auto' = latest checkpoint in output_dir, 'never', or a path",
                     hash=False)
    checkpoint_every: int = _f(1000, "steps between checkpoints; 0 = end of epoch only", min=0,
                               hash=False)
    keep_last: int = _f(3, "checkpoints kept", min=1, hash=False)
    max_bad_steps: int = _f(10, "abort after this many NaN/Inf steps in a row", min=1, hash=False)
    log_every: int = _f(50, "steps between log lines and metrics (fewer in runs too short for "
                        "20 rows: every run draws a curve)", min=1, hash=False)


@dataclass(frozen=True)
class Eval:
    subjects: tuple[str, ...] = _f(("S9", "S11"), "test subjects of `meshrec eval`",
                                   pattern=SUBJECT, unique=True)
    every_epochs: int = _f(1, "validate every N epochs; 0 = only at the end", min=0, hash=False)
    batch_size: int = _f(64, "evaluation batch over all ranks", min=1, hash=False)
    protocol: str = _f("smpl", "validation and `meshrec eval` metrics: smpl = vertex and joint "
                       "errors against SMPL labels; h36m-p1 / h36m-p2 = SPIN's protocols (14 joints "
                       "of the regressed mesh against the mocap joints; p2: camera 60457274 only); h36m-moon = Moon's set (camera 60457274, every "
                       "64th frame)",
                       choices=("smpl", "h36m-p1", "h36m-p2", "h36m-moon"))


@dataclass(frozen=True)
class Features:
    enabled: bool = _f(False, "train from a cache of frozen-encoder features")
    views: int = _f(1, "augmented views cached per training image", min=1)
    dir: str = _f("", "cache directory; '' = next to the shards", hash=False)


@dataclass(frozen=True)
class Track:
    enabled: bool = _f(True, "log to MLflow (rank 0 only)")
    uri: str = _f("", "MLflow tracking URI; '' = MLflow's default local store")
    experiment: str = _f("meshrec", "MLflow experiment name")
    run_name: str = _f("", "MLflow run name; '' = the config hash")
    overlays: int = _f(4, "prediction overlay PNGs logged per epoch", min=0)
    flush_timeout_s: float = _f(120.0, "seconds the end of a run waits for queued MLflow calls "
                                "(a server that is down never stops training)", min=0.0)


@dataclass(frozen=True)
class Slurm:
    partition: str = _f("", "partition; '' = cluster default")
    account: str = _f("", "account; '' = none")
    qos: str = _f("", "quality of service; '' = none")
    nodes: int = _f(1, "nodes per run", min=1)
    gpus_per_node: int = _f(1, "GPUs per node (one task each)", min=0)
    tasks_per_node: int = _f(0, "tasks per node; 0 = gpus_per_node (set it on CPU-only nodes)",
                             min=0)
    gres: str = _f("", "e.g. 'gpu:4' for clusters that reject --gpus-per-node; '' = unused")
    cpus_per_task: int = _f(8, "CPUs per task", min=1)
    mem_gb: int = _f(0, "memory per node in GB; 0 = cluster default", min=0)
    time_min: int = _f(240, "time limit in minutes", min=1)
    constraint: str = _f("", "node feature constraint; '' = none")
    array_parallelism: int = _f(8, "sweep cells running at once", min=1)
    signal_delay_s: int = _f(120, "seconds before the time limit at which jobs checkpoint and "
                             "requeue", min=0)
    additional: dict[str, str] = _f({}, "extra sbatch options, name: value")


@dataclass(frozen=True)
class Launch:
    executor: str = _f("auto", "auto = slurm when sbatch is on PATH, else local",
                       choices=("auto", "slurm", "local"))
    job_name: str = _f("meshrec", "SLURM job name")
    log_dir: str = _f("runs/submitit", "submitit logs and pickles")
    slurm: Slurm = _section(Slurm, "sbatch parameters")


@dataclass(frozen=True)
class Config:
    body: Body = _section(Body, "body model")
    data: Data = _section(Data, "shards, splits, loader, augmentation")
    model: Model = _section(Model, "encoder and regressor head")
    loss: Loss = _section(Loss, "loss terms and weights")
    optim: Optim = _section(Optim, "optimizer and schedule")
    train: Train = _section(Train, "training run")
    eval: Eval = _section(Eval, "evaluation")
    features: Features = _section(Features, "frozen-encoder feature cache")
    track: Track = _section(Track, "MLflow tracking", hash=False)
    launch: Launch = _section(Launch, "SLURM / local launching", hash=False)


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
