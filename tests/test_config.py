"""Config: files, defaults chains, overrides, validation messages, dump/load, hash, CLI."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import textwrap
import typing
from pathlib import Path

import pytest
import yaml

from meshrec import config as C
from meshrec.config import Config, ConfigError, config_hash, dump_yaml, load_config
from meshrec.errors import MeshrecError

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def error_of(*args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


# ---------------------------------------------------------------- shipped files

def test_defaults_without_a_file():
    cfg = load_config()
    assert cfg == Config()
    assert cfg.data.train_subjects == ("S1", "S5", "S6")
    assert isinstance(cfg.optim.lr, float) and cfg.optim.lr == 1e-4


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads(path):
    """Plain configs load as a Config; sweep files (a `grid:` block) expand into valid cells."""
    from meshrec.launch.grid import load_sweep

    if "grid" in (yaml.safe_load(path.read_text()) or {}):
        cells = load_sweep(path).cells
        assert cells and all(re.fullmatch(r"[0-9a-f]{12}", c.name) for c in cells)
        return
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert re.fullmatch(r"[0-9a-f]{12}", config_hash(cfg))


def test_shipped_configs_exist():
    assert {"base.yaml", "study.yaml", "demo.yaml"} <= {p.name for p in CONFIGS}


def test_base_yaml_is_the_generated_listing_of_all_defaults():
    text = (ROOT / "configs" / "base.yaml").read_text()
    assert load_config(ROOT / "configs" / "base.yaml") == Config()
    assert text == C.render(Config(), comments=True), (
        "configs/base.yaml is stale: regenerate it with "
        "`meshrec config --commented > configs/base.yaml`")


def test_study_is_the_reference_setup():
    cfg = load_config(ROOT / "configs" / "study.yaml")
    assert (cfg.model.encoder, cfg.model.freeze_encoder, cfg.model.head) == ("resnet152", True,
                                                                            "iterative")
    assert (cfg.model.iterations, cfg.model.dropout) == (3, 0.5)
    assert (cfg.optim.name, cfg.optim.lr, cfg.data.batch_size) == ("adam", 1e-4, 64)
    assert (cfg.train.epochs, cfg.loss.type, cfg.loss.w_vert) == (10, "l2", 1.0)
    assert cfg.loss.w_body == cfg.loss.w_shape == cfg.loss.w_hand == cfg.loss.w_loc == 0.0
    assert cfg.data.train_subjects == ("S1", "S5", "S6")
    assert cfg.data.val_subjects == ("S7", "S8")


def test_demo_is_small():
    cfg = load_config(ROOT / "configs" / "demo.yaml")
    assert (cfg.model.encoder, cfg.model.weights) == ("resnet18", "none")
    assert 64 <= cfg.data.image_size <= 128 and cfg.data.image_size <= cfg.data.synth.size
    # images a cell trains on (5 subjects × 4 cameras): a few minutes for 4 cells on 2 cores
    assert cfg.train.epochs * cfg.data.synth.frames_per_subject * 5 * 4 <= 6000
    # Validated where slurm/train_full.sh evaluates, on subjects it never trains on.
    assert cfg.data.val_subjects == cfg.eval.subjects == ("S9", "S11")
    assert not set(cfg.data.train_subjects) & set(cfg.data.val_subjects)
    assert cfg.data.shards == ""  # generated data under the cache


# ---------------------------------------------------------------- errors name key and source

@pytest.mark.parametrize("body, key, words", [
    ("train: {epoch: 3}", "train.epoch", "did you mean train.epochs"),
    ("train: {lr: 0.1}", "train.lr", "did you mean optim.lr"),
    ("trian: {epochs: 3}", "trian", "did you mean train"),
    ("train: {epochs: abc}", "train.epochs", "expected an integer, got string"),
    ("train: {epochs: 2.5}", "train.epochs", "expected an integer"),
    ("train: {epochs: true}", "train.epochs", "expected an integer, got boolean"),
    ("train: {compile: 1}", "train.compile", "expected true/false"),
    ("model: {encoder: 50}", "model.encoder", "expected a string"),
    ("data: {train_subjects: S1}", "data.train_subjects", "expected a list of strings"),
    ("data: {train_subjects: [S1, 5]}", "data.train_subjects[1]", "expected a string"),
    ("data: {train_subjects: []}", "data.train_subjects", "must not be empty"),
    ("data: {train_subjects: [S1, S1]}", "data.train_subjects", "listed twice"),
    ("data: {val_subjects: [Subject7]}", "data.val_subjects[0]", "does not look like"),
    ("model: {dropout: 1.0}", "model.dropout", "must be < 1.0"),
    ("train: {epochs: 0}", "train.epochs", "must be >= 1"),
    ("optim: {lr: 0}", "optim.lr", "must be > 0.0"),
    ("optim: {lr: .nan}", "optim.lr", "expected a number"),
    ("loss: {type: l3}", "loss.type", "one of l1, l2"),
    ("data: {augment: {flip_prob: 1.5}}", "data.augment.flip_prob", "must be <= 1.0"),
    ("train: 5", "train", "is a section"),
    ("data: {augment: [1, 2]}", "data.augment", "is a section"),
    ("launch: {slurm: {additional: {nice: 10}}}", "launch.slurm.additional", "quote it"),
    ("launch: {slurm: {additional: [a]}}", "launch.slurm.additional", "expected a mapping"),
    ("loss: {w_vert: 0}", "loss.w_vert", "every loss weight is 0"),
    ("optim: {schedule: step}", "optim.schedule", "optim.step_epochs is empty"),
    ("optim: {schedule: step, step_epochs: [5, 2]}", "optim.step_epochs", "increasing"),
    ("optim: {accumulate: 3}", "optim.accumulate", "does not divide"),
    ("features: {enabled: true}\nmodel: {freeze_encoder: false}", "features.enabled",
     "freeze_encoder"),
])
def test_file_errors_name_the_key_and_the_file(tmp_path, body, key, words):
    path = write(tmp_path / "bad.yaml", body + "\n")
    msg = error_of(path)
    assert msg.startswith(f"{path}: {key}: "), msg
    assert words in msg


@pytest.mark.parametrize("override, key, words", [
    ("train.epochs=abc", "train.epochs", "expected an integer"),
    ("train.epoch=3", "train.epoch", "did you mean train.epochs"),
    ("loss.type=huber", "loss.type", "one of l1, l2"),
    ("train=3", "train", "is a section"),
    ("train.epochs.x=3", "train.epochs", "expected an integer, got mapping"),
    ("data.train_subjects=S1,S5", "data.train_subjects", "write [a, b]"),
    ("data.train_subjects=[S1,S1]", "data.train_subjects", "listed twice"),
    ("train.compile=maybe", "train.compile", "expected true/false"),
    ("train.epochs=", "train.epochs", 'got string ""'),
    ("loss.w_vert=[1", "loss.w_vert", "invalid YAML"),
])
def test_override_errors_name_the_key_and_the_override(override, key, words):
    msg = error_of(None, [override])
    assert msg.startswith(f"override {override}: {key}: "), msg
    assert words in msg


@pytest.mark.parametrize("override", ["train.epochs", "train..epochs=3", "=3", "train epochs=3"])
def test_malformed_override(override):
    msg = error_of(None, [override])
    assert msg.startswith(f"override {override}: ") and "KEY=VALUE" in msg


def test_cross_field_error_names_the_file_that_set_the_key(tmp_path):
    write(tmp_path / "base.yaml", "optim: {schedule: step, step_epochs: [3]}\n")
    child = write(tmp_path / "child.yaml", "defaults: [base.yaml]\noptim: {step_epochs: []}\n")
    msg = error_of(child)
    assert msg.startswith(f"{child}: optim.step_epochs: optim.schedule is 'step' but")
    msg = error_of(tmp_path / "base.yaml", ["optim.step_epochs=[]"])
    assert msg.startswith("override optim.step_epochs=[]: optim.step_epochs")


def test_bad_files(tmp_path):
    assert error_of(tmp_path / "nope.yaml").startswith(f"{tmp_path / 'nope.yaml'}: no such config")
    broken = write(tmp_path / "broken.yaml", "train:\n  epochs: [1\n")
    assert re.match(rf"{re.escape(str(broken))}:\d+: invalid YAML", error_of(broken))
    top = write(tmp_path / "list.yaml", "- train\n")
    assert "expected a mapping of sections" in error_of(top)
    incl = write(tmp_path / "incl.yaml", "defaults: [missing.yaml]\n")
    msg = error_of(incl)
    assert msg.startswith(f"{incl}: defaults: no such config file") and "missing.yaml" in msg
    bad_defaults = write(tmp_path / "bd.yaml", "defaults: {a: 1}\n")
    assert error_of(bad_defaults).startswith(f"{bad_defaults}: defaults: expected a list")


def test_config_error_is_a_meshrec_error():
    assert issubclass(ConfigError, MeshrecError)


# ---------------------------------------------------------------- accepted values and overrides

def test_lenient_where_it_is_safe(tmp_path):
    path = write(tmp_path / "ok.yaml", """\
        loss: {w_vert: 2}      # int for a float
        optim: {lr: 1e-4}      # PyYAML reads this as a string
        train:                 # a section with every key commented out
        """)
    cfg = load_config(path)
    assert cfg.loss.w_vert == 2.0 and isinstance(cfg.loss.w_vert, float)
    assert cfg.optim.lr == 1e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.train == Config().train


def test_overrides_nested_list_dict_and_strings(tmp_path):
    path = write(tmp_path / "c.yaml", """\
        launch: {slurm: {additional: {mail-type: END, exclusive: ''}}}
        data: {train_subjects: [S1]}
        """)
    cfg = load_config(path, [
        "data.augment.flip_prob=0",
        "data.train_subjects=[S1, S5, S6, S7, S8]",
        "launch.slurm.additional.mail-user=me@example.org",
        "launch.slurm.additional.nice=10",  # typed as a number; the values are strings
        "launch.slurm.additional={gres: 'gpu:2'}",
        "track.run_name=123",          # YAML int, but the field is a string
        "model.weights=none",
        "body.model_path=~/smpl/SMPL_NEUTRAL.pkl",
        "track.uri=",
        "train.epochs=3",
        "train.epochs=4",              # the last one wins
        "loss.w_vert=0.5",
    ])
    assert cfg.data.augment.flip_prob == 0.0
    assert cfg.data.augment.rotate_deg == Config().data.augment.rotate_deg
    assert cfg.data.train_subjects == ("S1", "S5", "S6", "S7", "S8")
    assert cfg.launch.slurm.additional == {"mail-type": "END", "exclusive": "",
                                           "mail-user": "me@example.org", "gres": "gpu:2",
                                           "nice": "10"}
    assert cfg.track.run_name == "123"
    assert cfg.model.weights == "none"
    assert cfg.body.model_path == "~/smpl/SMPL_NEUTRAL.pkl"
    assert cfg.track.uri == ""
    assert (cfg.train.epochs, cfg.loss.w_vert) == (4, 0.5)


def test_with_overrides_rechecks():
    cfg = C.with_overrides(Config(), ["loss.w_body=0.3", "loss.type=l1"])
    assert (cfg.loss.w_body, cfg.loss.type) == (0.3, "l1")
    with pytest.raises(ConfigError, match=r"^override loss.w_body=-1: loss.w_body: must be >= 0"):
        C.with_overrides(cfg, ["loss.w_body=-1"])


def test_extra_keys_are_returned_not_rejected(tmp_path):
    path = write(tmp_path / "grid.yaml", "grid: {loss.w_vert: [1, 2]}\ntrain: {epochs: 2}\n")
    assert "unknown key" in error_of(path)
    cfg, extras = C.load_config_and_extras(path, extra_keys=("grid",))
    assert cfg.train.epochs == 2 and extras == {"grid": {"loss.w_vert": [1, 2]}}


# ---------------------------------------------------------------- defaults chains

def test_defaults_chain_merges_in_order(tmp_path):
    write(tmp_path / "common" / "root.yaml", """\
        train: {epochs: 7, seed: 1}
        loss: {w_body: 0.1, w_shape: 0.2}
        data: {train_subjects: [S1, S5, S6, S7]}
        launch: {slurm: {partition: gpu, additional: {a: '1', b: '2'}}}
        """)
    write(tmp_path / "common" / "mid.yaml", """\
        defaults: [root.yaml]
        train: {epochs: 8}
        launch: {slurm: {additional: {b: '3'}}}
        """)
    write(tmp_path / "other.yaml", "loss: {w_shape: 0.5}\ntrain: {seed: 2}\n")
    top = write(tmp_path / "top.yaml", """\
        defaults: [common/mid.yaml, other.yaml]
        train: {seed: 3}
        data: {train_subjects: [S9]}
        """)
    cfg = load_config(top, ["loss.w_body=0.4"])
    assert cfg.train.epochs == 8                       # mid over root
    assert cfg.loss.w_shape == 0.5                     # later default over earlier
    assert cfg.train.seed == 3                         # the file's own keys over its defaults
    assert cfg.loss.w_body == 0.4                      # overrides over everything
    assert cfg.data.train_subjects == ("S9",)          # lists replaced, not appended
    assert cfg.launch.slurm.additional == {"a": "1", "b": "3"}   # mappings merged
    assert cfg.launch.slurm.partition == "gpu"
    assert cfg.model == Config().model                 # untouched sections keep defaults


def test_error_in_a_default_names_that_file(tmp_path):
    inner = write(tmp_path / "inner.yaml", "model: {hiden: 3}\n")
    outer = write(tmp_path / "outer.yaml", "defaults: [inner.yaml]\n")
    msg = error_of(outer)
    assert msg.startswith(f"{inner}: model.hiden: unknown key (did you mean model.hidden?)")


def test_defaults_cycles_are_errors_but_diamonds_are_not(tmp_path):
    write(tmp_path / "a.yaml", "defaults: [b.yaml]\n")
    write(tmp_path / "b.yaml", "defaults: [c.yaml]\n")
    write(tmp_path / "c.yaml", "defaults: [a.yaml]\n")
    msg = error_of(tmp_path / "a.yaml")
    d = tmp_path
    chain = " -> ".join(f"{d}/{n}.yaml" for n in "abca")
    assert msg == f"{d}/c.yaml: defaults: cycle {chain}"
    write(tmp_path / "self.yaml", "defaults: [self.yaml]\n")
    assert "cycle" in error_of(tmp_path / "self.yaml")
    write(tmp_path / "base.yaml", "train: {epochs: 2}\n")
    write(tmp_path / "l.yaml", "defaults: [base.yaml]\nloss: {w_body: 1}\n")
    write(tmp_path / "r.yaml", "defaults: [base.yaml]\nloss: {w_hand: 1}\n")
    cfg = load_config(write(tmp_path / "d.yaml", "defaults: [l.yaml, r.yaml]\n"))
    assert (cfg.train.epochs, cfg.loss.w_body, cfg.loss.w_hand) == (2, 1.0, 1.0)


# ---------------------------------------------------------------- dump / load round trip

def odd_config() -> Config:
    return C.with_overrides(Config(), [
        "body.model_path='yes'", "body.cache_dir='~'", "track.run_name='null'",
        "track.experiment='a: b #c'", "track.uri=http://127.0.0.1:5000", "model.weights='1e-4'",
        "train.output_dir='runs/été'", "model.mean_params=''", "optim.lr=1e-10", "loss.w_joint=0.1",
        "optim.schedule=step", "optim.step_epochs=[3, 6]", "data.val_subjects=[]",
        "launch.slurm.additional={mail-type: END, 'x y': '#1', n: '10'}", "train.compile=true",
    ])


@pytest.mark.parametrize("comments", [False, True])
def test_dump_load_round_trip(tmp_path, comments):
    for cfg in (Config(), odd_config(), load_config(ROOT / "configs" / "study.yaml")):
        path = tmp_path / "dumped.yaml"
        path.write_text(dump_yaml(cfg, comments=comments))
        assert load_config(path) == cfg
        assert yaml.safe_load(dump_yaml(cfg, comments=comments)) == C.to_dict(cfg)


def test_to_dict_is_plain():
    def plain(x):
        if isinstance(x, dict):
            return all(isinstance(k, str) and plain(v) for k, v in x.items())
        if isinstance(x, list):
            return all(plain(v) for v in x)
        return isinstance(x, (str, int, float, bool))
    d = C.to_dict(odd_config())
    assert plain(d) and d["data"]["train_subjects"] == ["S1", "S5", "S6"]


# ---------------------------------------------------------------- hash

def test_hash_ignores_key_order_and_spelling(tmp_path):
    a = write(tmp_path / "a.yaml", """\
        loss: {type: l1, w_vert: 1, w_body: 0.25}
        train: {epochs: 3, seed: 4}
        data: {train_subjects: [S1, S5], augment: {flip_prob: 0.0, scale: 0.1}}
        """)
    b = write(tmp_path / "b.yaml", """\
        data:
          augment: {scale: 0.10, flip_prob: 0}
          train_subjects: [S1, S5]
        train: {seed: 4, epochs: 3}
        loss: {w_body: 2.5e-1, w_vert: 1.0, type: l1}
        """)
    ca, cb = load_config(a), load_config(b)
    assert config_hash(ca) == config_hash(cb)
    assert config_hash(ca) != config_hash(Config())
    # The subject list is ordered data (it fixes the sample order): reordering it is a change.
    assert config_hash(C.with_overrides(ca, ["data.train_subjects=[S5,S1]"])) != config_hash(ca)


def _other_value(f: dataclasses.Field, tp, value):
    """A valid value different from `value` for a leaf field."""
    meta = f.metadata
    if "choices" in meta:
        return next(c for c in meta["choices"] if c != value)
    if tp is bool:
        return not value
    if tp is int:
        return value + 1
    if tp is float:
        return next(v for v in (value / 2, 0.5, 0.25) if v != value and not C._limits(v, meta))
    if tp is str:
        return value + "x"
    if typing.get_origin(tp) is tuple:
        return ("S99",) if typing.get_args(tp)[0] is str else (*value, 99)
    return {**value, "extra": "1"}


def _leaves(cls, prefix="", hashed=True):
    for name, (f, tp) in C._fields(cls).items():
        h = hashed and f.metadata.get("hash", True)
        if dataclasses.is_dataclass(tp):
            yield from _leaves(tp, f"{prefix}{name}.", h)
        else:
            yield prefix + name, f, tp, h


def _get(obj, path):
    for name in path.split("."):
        obj = getattr(obj, name)
    return obj


def _replace(obj, path, value):
    head, _, rest = path.partition(".")
    new = _replace(getattr(obj, head), rest, value) if rest else value
    return dataclasses.replace(obj, **{head: new})


def test_hash_covers_exactly_the_hashed_fields():
    base = Config()
    h0 = config_hash(base)
    leaves = list(_leaves(Config))
    assert sum(h for *_, h in leaves) > 30 and sum(not h for *_, h in leaves) > 15
    for key, f, tp, hashed in leaves:
        value = _other_value(f, tp, _get(base, key))
        changed = config_hash(_replace(base, key, value)) != h0
        assert changed == hashed, f"{key}: hash {'ignores' if hashed else 'depends on'} it"


def test_hash_rules_named_in_the_brief():
    base = load_config(ROOT / "configs" / "study.yaml")
    h = config_hash(base)
    assert config_hash(C.with_overrides(base, ["loss.w_vert=0.9"])) != h
    assert config_hash(C.with_overrides(base, ["loss.w_hand=0.01"])) != h
    for same in ("track.uri=http://mlflow:5000", "launch.slurm.partition=gpu",
                 "train.output_dir=/scratch/x", "data.shards=/tmp/staged", "train.log_every=7",
                 "train.resume=never"):
        assert config_hash(C.with_overrides(base, [same])) == h, same


def test_hash_is_stable_across_processes():
    code = ("from meshrec.config import load_config, config_hash;"
            "print(config_hash(load_config('configs/study.yaml', ['loss.w_body=0.3'])))")
    outs = {subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                           check=True, env={**os.environ, "PYTHONHASHSEED": seed}).stdout.strip()
            for seed in ("1", "2")}
    assert outs == {config_hash(load_config(ROOT / "configs" / "study.yaml", ["loss.w_body=0.3"]))}


# ---------------------------------------------------------------- CLI

def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "meshrec.cli", "config", *args], cwd=ROOT,
                          capture_output=True, text=True)


def test_cli_prints_yaml_and_hash():
    r = cli("--config", "configs/study.yaml", "train.epochs=3")
    assert r.returncode == 0, r.stderr
    cfg = load_config(ROOT / "configs" / "study.yaml", ["train.epochs=3"])
    assert r.stdout.splitlines()[0] == f"# config_hash: {config_hash(cfg)}"
    assert yaml.safe_load(r.stdout) == C.to_dict(cfg)
    r = cli("--hash", "--config", "configs/study.yaml", "train.epochs=3")
    assert (r.returncode, r.stdout) == (0, config_hash(cfg) + "\n")


@pytest.mark.parametrize("args, words", [
    (("train.epoch=3",), "override train.epoch=3: train.epoch: unknown key"),
    (("train.epochs",), "override train.epochs: expected KEY=VALUE"),
    (("--config", "configs/nope.yaml"), "configs/nope.yaml: no such config file"),
])
def test_cli_bad_input_is_one_line_exit_2(args, words):
    r = cli(*args)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("meshrec: error: ") and words in r.stderr
