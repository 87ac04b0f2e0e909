"""Deterministic WebDataset tar shards and their DALI index files.

Tars are written the way webdataset's TarWriter writes them (members `key.ext` in sorted
extension order, regular files, uncompressed) but with Python's tarfile directly: importing
webdataset imports torch (~1.3 s and a few hundred MB in every worker process). Members carry
a fixed mtime, owner and mode in the USTAR format, so equal samples give byte-identical shards. The index is the text file DALI's `wds2idx`
writes and `fn.readers.webdataset(index_paths=…)` reads:

    v1.2 <number of samples>
    <ext> <data offset> <size> <member name> [<ext> <offset> <size> <name> …]   one line per sample

with offsets of member data (not headers) in bytes and members in tar order. It is computed
while writing (no second pass over the tar, no `tar` subprocess); `index_from_tar` derives it
from a finished tar for verification.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from typing import BinaryIO, Mapping

INDEX_VERSION = "v1.2"
MTIME = 946684800  # 2000-01-01T00:00:00Z: fixed, so shard bytes do not depend on when they were written
OWNER = "meshrec"
MODE = 0o444


class _HashingWriter(io.RawIOBase):
    """Forwards writes to a file and hashes them on the way, so a shard is hashed as written."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self.sha256 = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        view = memoryview(data)
        self._fh.write(view)
        self.sha256.update(view)
        self.size += view.nbytes
        return view.nbytes


def split_name(name: str) -> tuple[str, str]:
    """Member name → (sample key, extension), split at the first dot of the basename (as DALI does)."""
    slash = name.rfind("/") + 1
    dot = name.find(".", slash)
    return (name, "") if dot < 0 else (name[:dot], name[dot + 1:])


class TarShard:
    """Write samples {ext: bytes} into an open binary file; `close()` → (sha256, bytes, index text)."""

    def __init__(self, fh: BinaryIO) -> None:
        self._out = _HashingWriter(fh)
        self._tar = tarfile.open(fileobj=self._out, mode="w|", format=tarfile.USTAR_FORMAT)
        self._lines: list[str] = []

    def add(self, key: str, members: Mapping[str, bytes]) -> None:
        if "." in key or "/" in key or not key:
            raise ValueError(f"sample key {key!r} must be non-empty without dots or slashes")
        parts = []
        for ext in sorted(members):  # the order webdataset's TarWriter uses
            data = members[ext]
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), MTIME, MODE
            info.uname = info.gname = OWNER
            self._tar.addfile(info, io.BytesIO(data))
            padded = -(-len(data) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
            parts.append(f"{ext} {self._tar.offset - padded} {len(data)} {info.name}")
        self._lines.append(" ".join(parts))

    @property
    def count(self) -> int:
        return len(self._lines)

    def close(self) -> tuple[str, int, str]:
        self._tar.close()
        return self._out.sha256.hexdigest(), self._out.size, index_text(self._lines)


def index_text(lines: list[str]) -> str:
    return f"{INDEX_VERSION} {len(lines)}\n" + "".join(line + "\n" for line in lines)


def index_from_tar(path: str) -> tuple[str, list[str]]:
    """(index text, sample keys) of an existing tar, grouping consecutive members by key."""
    groups: list[tuple[str, list[str]]] = []
    with tarfile.open(path, "r:") as tf:
        for info in tf:
            if not info.isreg():
                continue
            key, ext = split_name(info.name)
            if not key or key.endswith("/"):
                continue
            entry = f"{ext} {info.offset_data} {info.size} {info.name}"
            if groups and groups[-1][0] == key:
                groups[-1][1].append(entry)
            else:
                groups.append((key, [entry]))
    return index_text([" ".join(entries) for _, entries in groups]), [key for key, _ in groups]
