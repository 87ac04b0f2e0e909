"""Config → body model: the configured SMPL-format file, or the cached licence-free stand-in;
and its Human3.6M joint regressor (configured, or generated for the stand-in)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from meshrec.config import Body
from meshrec.errors import MeshrecError
from meshrec.fileio import atomic_open, locked

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
        # Concurrent ranks: one builds (seconds), the others wait for its file.
        with locked(path.with_name(path.name + ".lock")):
            if not path.is_file():
                log.info("generating the licence-free stand-in body model (seed %d) at %s",
                         body.standin_seed, path)
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


def h36m_regressor_path(body: Body) -> Path | None:
    """The (17, V) Human3.6M regressor file of this config: `body.h36m_regressor` when set; for
    the stand-in body, the generated one cached beside it (made on first use); else None."""
    if body.h36m_regressor:
        path = Path(body.h36m_regressor).expanduser()
        if not path.is_file():
            raise MeshrecError(f"body.h36m_regressor: no such file: {path}")
        return path
    if body.model_path:
        return None
    model = resolve_model_path(body)
    path = model.with_suffix(".J_regressor_h36m.npy")   # standin-v{VERSION}-seed{S}.J_regressor_h36m.npy
    if not path.is_file():
        from meshrec.body.standin import h36m as standin_h36m
        from meshrec.body.model_file import load_arrays

        log.info("generating the stand-in's Human3.6M joint regressor at %s", path)
        write_npy(path, standin_h36m.h36m_regressor(load_arrays(model)))
    return path


def write_npy(path: Path, array: np.ndarray) -> None:
    """Write one array as .npy atomically (concurrent writers rename identical bytes)."""
    with atomic_open(path, "wb", perms=0o644) as fh:
        np.save(fh, np.asarray(array), allow_pickle=False)


def read_h36m_regressor(path: str | Path, num_vertices: int,
                        what: str = "body.h36m_regressor") -> np.ndarray:
    """A (17, num_vertices) finite float64 regressor from .npy; one-line MeshrecError otherwise."""
    if not Path(path).is_file():
        raise MeshrecError(f"{what}: no such file: {path}")
    try:
        reg = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise MeshrecError(f"{what}: cannot read {path}: {reason}") from None
    if not isinstance(reg, np.ndarray):
        reg.close()
        raise MeshrecError(f"{what}: {path} is an .npz archive; expected one (17, V) .npy array")
    return check_h36m_regressor(reg, num_vertices, f"{what}: {path}")


def check_h36m_regressor(reg: np.ndarray, num_vertices: int, name: str) -> np.ndarray:
    """`reg` as float64 when it is a finite (17, num_vertices) array; else one line starting `name`."""
    from meshrec.body import h36m

    expected = (h36m.NUM_JOINTS, num_vertices)
    if reg.shape != expected:
        raise MeshrecError(f"{name} has shape {reg.shape}; expected {expected}: "
                           f"17 Human3.6M joints × the body's vertices")
    if reg.dtype.kind not in "fiu":
        raise MeshrecError(f"{name} has dtype {reg.dtype}; expected numbers")
    if not np.all(np.isfinite(reg)):
        raise MeshrecError(f"{name} holds NaN or infinite values")
    return reg.astype(np.float64)


def load_h36m_regressor(body: Body, num_vertices: int) -> np.ndarray | None:
    """The regressor of `h36m_regressor_path`, checked against the body's vertex count; or None."""
    path = h36m_regressor_path(body)
    return None if path is None else read_h36m_regressor(path, num_vertices)
