"""Config → body model: stand-in generated once into the cache, real files used as given."""

from __future__ import annotations

import logging

import pytest

from meshrec.body import load
from meshrec.config import load_config
from meshrec.errors import MeshrecError


def test_standin_generated_once_into_cache(tmp_path, standin_file, caplog):
    cfg = load_config(overrides=[f"body.cache_dir={tmp_path}"])
    path = load.resolve_model_path(cfg.body)
    assert path.parent == tmp_path and path.is_file()
    assert path.read_bytes() == standin_file.read_bytes()  # same bytes as a direct build
    stamp = path.stat().st_mtime_ns
    with caplog.at_level(logging.WARNING, logger="meshrec.body.load"):
        model = load.load_body_model(cfg.body)
    assert path.stat().st_mtime_ns == stamp  # reused, not regenerated
    assert model.kind == "standin" and model.num_vertices == 6890
    assert "STAND-IN" in caplog.text


def test_configured_file_is_used_and_named(tmp_path, standin_file):
    cfg = load_config(overrides=[f"body.model_path={standin_file}", f"body.cache_dir={tmp_path}"])
    assert load.resolve_model_path(cfg.body) == standin_file
    assert list(tmp_path.iterdir()) == []  # nothing generated
    missing = load_config(overrides=[f"body.model_path={tmp_path / 'SMPL_NEUTRAL.pkl'}"])
    with pytest.raises(MeshrecError, match="body.model_path: no such file"):
        load.resolve_model_path(missing.body)
