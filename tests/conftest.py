"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def standin_model() -> dict[str, np.ndarray]:
    """The default stand-in body's arrays, built once per test session (~5 s)."""
    from meshrec.body import standin

    return standin.build_standin(0)


@pytest.fixture(scope="session")
def standin_file(standin_model, tmp_path_factory) -> Path:
    """The default stand-in written to an .npz, as `meshrec body standin` writes it."""
    from meshrec.fileio import save_npz

    path = tmp_path_factory.mktemp("body") / "standin.npz"
    save_npz(path, standin_model)
    return path
