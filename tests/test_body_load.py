"""Config → body model: stand-in generated once into the cache, real files used as given."""

from __future__ import annotations

import concurrent.futures as cf
import logging

import numpy as np
import pytest

from meshrec.body import load
from meshrec.config import load_config
from meshrec.errors import MeshrecError


def test_standin_generated_once_into_cache(tmp_path, standin_file, caplog):
    cfg = load_config(overrides=[f"body.cache_dir={tmp_path}"])
    # Two at once (as the ranks of a job): one builds, the other waits for its file.
    with caplog.at_level(logging.INFO, logger="meshrec.body.load"):
        with cf.ThreadPoolExecutor(2) as pool:
            paths = list(pool.map(lambda _: load.resolve_model_path(cfg.body), range(2)))
    assert caplog.text.count("generating the licence-free stand-in") == 1
    path = paths[0]
    assert paths[1] == path and path.parent == tmp_path and path.is_file()
    caplog.clear()
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


# --- the Human3.6M joint regressor ---------------------------------------------------------------

def test_standin_h36m_regressor_generated_once_beside_the_model(tmp_path, standin_file, standin_model):
    from meshrec.body.standin.h36m import h36m_regressor

    cfg = load_config(overrides=[f"body.cache_dir={tmp_path}"])
    load.standin_path(cfg.body).write_bytes(standin_file.read_bytes())  # the model, pre-cached
    path = load.h36m_regressor_path(cfg.body)
    assert path == tmp_path / f"{load.standin_path(cfg.body).stem}.J_regressor_h36m.npy"
    assert path.name == "standin-v2-seed0.J_regressor_h36m.npy"
    assert np.array_equal(np.load(path), h36m_regressor(standin_model))
    stamp = path.stat().st_mtime_ns
    reg = load.load_h36m_regressor(cfg.body, 6890)
    assert path.stat().st_mtime_ns == stamp  # reused, not regenerated
    assert reg.shape == (17, 6890) and reg.dtype == np.float64
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, load.standin_path(cfg.body).name])


def test_configured_regressor_is_used_and_bad_ones_refused(tmp_path, standin_file):
    good = tmp_path / "J_regressor_h36m.npy"
    np.save(good, np.full((17, 6890), 1 / 6890))
    cfg = load_config(overrides=[f"body.h36m_regressor={good}", f"body.cache_dir={tmp_path / 'c'}"])
    assert load.h36m_regressor_path(cfg.body) == good
    assert np.array_equal(load.load_h36m_regressor(cfg.body, 6890), np.load(good))
    assert not (tmp_path / "c").exists()  # nothing generated
    for shape in ((16, 6890), (17, 6889)):
        np.save(good, np.zeros(shape))
        with pytest.raises(MeshrecError) as err:
            load.load_h36m_regressor(cfg.body, 6890)
        assert str(err.value) == (f"body.h36m_regressor: {good} has shape {shape}; expected (17, 6890): "
                                  f"17 Human3.6M joints × the body's vertices")
    np.save(good, np.full((17, 6890), np.nan))
    with pytest.raises(MeshrecError, match="NaN or infinite"):
        load.load_h36m_regressor(cfg.body, 6890)
    good.write_text("not an array\n")
    with pytest.raises(MeshrecError, match="cannot read") as err:
        load.load_h36m_regressor(cfg.body, 6890)
    assert "\n" not in str(err.value)
    missing = load_config(overrides=[f"body.h36m_regressor={tmp_path / 'none.npy'}"])
    with pytest.raises(MeshrecError, match="body.h36m_regressor: no such file"):
        load.h36m_regressor_path(missing.body)
    smpl = load_config(overrides=[f"body.model_path={standin_file}", f"body.cache_dir={tmp_path / 'c'}"])
    assert load.h36m_regressor_path(smpl.body) is None and load.load_h36m_regressor(smpl.body, 6890) is None


def test_cli_standin_writes_the_regressor_beside_the_model(tmp_path, standin_file, standin_model, capsys):
    from meshrec.body.standin.h36m import h36m_regressor
    from meshrec.cli import main

    assert main(["body", "standin", str(tmp_path / "body.npz")]) == 0
    assert "J_regressor_h36m.npy (17 x 6890)" in capsys.readouterr().out
    assert (tmp_path / "body.npz").read_bytes() == standin_file.read_bytes()
    assert np.array_equal(np.load(tmp_path / "J_regressor_h36m.npy"), h36m_regressor(standin_model))
