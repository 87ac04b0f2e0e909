"""Crash-safe file writes: a file appears whole under its final name or not at all."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np

# Fixed zip member timestamp so the same arrays always give the same bytes.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


@contextlib.contextmanager
def locked(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing): a build that concurrent processes
    (ranks, test workers) would each start runs once; the others wait, then find it done."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb",
                perms: int | None = None) -> Iterator[io.IOBase]:
    """Write to a temporary file beside `path`, fsync, then rename over `path`.

    The file gets mkstemp's 0600 unless `perms` is given (e.g. 0o644 for data others read).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if perms is not None:
            os.fchmod(fd, perms)
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> str:
    """Write arrays as an uncompressed .npz with deterministic bytes; return its sha256.

    numpy.savez stamps members with the current time; this writer does not, so equal
    arrays give byte-identical files. Keys are written in sorted order.
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for key in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            zf.writestr(info, member.getvalue())
    data = buf.getvalue()
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
