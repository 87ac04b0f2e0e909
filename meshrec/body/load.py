"""Config → body model: the configured SMPL-format file, or the cached licence-free stand-in."""

from __future__ import annotations

import logging
from pathlib import Path

from meshrec.config import Body
from meshrec.errors import MeshrecError

log = logging.getLogger(__name__)


def standin_path(body: Body) -> Path:
    """Where the stand-in for this config is cached (named by generator version and seed)."""
    from meshrec.body import standin

    return Path(body.cache_dir).expanduser() / f"standin-v{standin.VERSION}-seed{body.standin_seed}.npz"


def resolve_model_path(body: Body) -> Path:
    """The body model file a run uses; generates the stand-in on first use."""
    if body.model_path:
        path = Path(body.model_path).expanduser()
        if not path.is_file():
            raise MeshrecError(f"body.model_path: no such file: {path}")
        return path
    from meshrec.body import standin

    path = standin_path(body)
    if not path.is_file():
        log.info("generating the licence-free stand-in body model (seed %d) at %s",
                 body.standin_seed, path)
        # Concurrent ranks may race here: each writes a temp file and renames identical bytes.
        standin.write_standin(path, seed=body.standin_seed)
    return path


def load_body_model(body: Body):
    """A `BodyModel` for this config; says loudly when it is the stand-in rather than SMPL."""
    from meshrec.body.model_file import load_arrays
    from meshrec.body.smpl import BodyModel

    path = resolve_model_path(body)
    model = BodyModel(load_arrays(path))
    if model.kind == "standin":
        log.warning("body model: licence-free STAND-IN (%s), not SMPL; numbers are not comparable "
                    "with SMPL results", path)
    else:
        log.info("body model: SMPL-format file %s", path)
    return model


def load_h36m_regressor(body: Body, num_vertices: int):
    """(17, V) Human3.6M joint regressor of the configured body, or None.  (provisional)"""
    import numpy as np

    if not body.h36m_regressor:
        return None
    reg = np.load(Path(body.h36m_regressor).expanduser(), allow_pickle=False)
    if reg.shape != (17, num_vertices):
        raise MeshrecError(f"body.h36m_regressor: {body.h36m_regressor} has shape {reg.shape}; "
                           f"expected (17, {num_vertices})")
    return reg
