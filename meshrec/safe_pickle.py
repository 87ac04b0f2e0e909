"""Reading pickles from user files without running anything they ask for.

`pickle.load` calls whatever a file names. meshrec reads pickles in two places — SMPL body
model files and mmhuman3d HumanData `.npz` files, whose `smpl` entry is a pickled dict of
arrays — so both go through `RestrictedUnpickler`: a global is looked up in an explicit
table (NumPy's array reconstructors by default) or refused with a `MeshrecError` before it
runs. Dicts, lists, tuples, strings and numbers need no global and always load.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from typing import Any, Callable, Collection, Optional

import numpy as np

from meshrec.errors import MeshrecError

Finder = Callable[[str, str], Optional[Any]]


def numpy_globals() -> dict[tuple[str, str], Any]:
    """What a pickle of NumPy arrays and scalars may name (NumPy 1.x and 2.x module paths).

    Built per load: a file can set attributes on objects it names (pickle's BUILD), and
    that must not outlive its own load.
    """
    try:  # NumPy ≥ 2 keeps these under numpy._core; older files name numpy.core
        from numpy._core import multiarray, numeric
    except ImportError:  # pragma: no cover - NumPy 1.x
        from numpy.core import multiarray, numeric

    table: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[(mod, "_reconstruct")] = multiarray._reconstruct
        table[(mod, "scalar")] = multiarray.scalar
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        table[(mod, "_frombuffer")] = numeric._frombuffer
    return table


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves globals only from `allowed`, then `fallback`, else refuses.

    `purpose` completes the refusal: "refusing to load FILE: it references os.system,
    which {purpose} never needs".
    """

    def __init__(self, fh: io.BufferedIOBase, display: str, purpose: str,
                 allowed: dict[tuple[str, str], Any] | None = None,
                 fallback: Finder | None = None) -> None:
        super().__init__(fh, encoding="latin1")  # Python-2 pickles hold latin-1 byte strings
        self._display = display
        self._purpose = purpose
        self._allowed = numpy_globals() if allowed is None else allowed
        self._fallback = fallback

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._allowed:
            return self._allowed[(module, name)]
        if self._fallback is not None:
            found = self._fallback(module, name)
            if found is not None:
                return found
        shown = f"os.{name}" if module in ("posix", "nt") else f"{module}.{name}"  # os.system pickles as posix.system
        raise MeshrecError(f"refusing to load {self._display}: it references {shown}, "
                           f"which {self._purpose} never needs")

    def persistent_load(self, pid: Any) -> Any:
        raise MeshrecError(f"refusing to load {self._display}: it uses persistent ids, "
                           f"which {self._purpose} never needs")


def _check_plain(value: Any, where: str, display: str) -> None:
    """Only arrays of numbers/strings, dicts, lists, tuples, strings and numbers may come back."""
    if isinstance(value, dict):
        for key, item in value.items():
            _check_plain(item, f"{where}.{key}", display)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]", display)
    elif isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            for i, item in enumerate(value.ravel()):
                _check_plain(item, f"{where}[{i}]", display)
    elif not isinstance(value, (str, bytes, int, float, bool, np.generic, type(None))):
        raise MeshrecError(f"{display}: '{where}' holds a {type(value).__name__}, not plain data")


def _skip_npy_header(fh: io.BufferedIOBase) -> None:
    """Advance past an .npy header (format versions 1–3): magic, version, length, text."""
    magic = fh.read(8)
    if len(magic) != 8 or magic[:6] != b"\x93NUMPY":
        raise ValueError("not an .npy member")
    size_bytes = 2 if magic[6] == 1 else 4
    (length,) = struct.unpack("<H" if size_bytes == 2 else "<I", fh.read(size_bytes))
    fh.read(length)


def load_npz(path: str, display: str | None = None, pickled: Collection[str] = (),
             purpose: str = "a data file") -> tuple[dict[str, Any], set[str]]:
    """Read an .npz: plain arrays always; object (pickled) entries only if named in `pickled`.

    Returns (entries, skipped): entries maps key → array, or for a `pickled` key the
    unpickled value (a 0-d object array is unwrapped) holding only plain data; skipped holds
    the keys of object entries that were left unread. Nothing pickled in a skipped entry runs.
    """
    display = display or path
    entries: dict[str, Any] = {}
    skipped: set[str] = set()
    try:
        with zipfile.ZipFile(path) as zf:
            for member in zf.namelist():
                if not member.endswith(".npy"):
                    continue
                key = member[: -len(".npy")]
                try:
                    with zf.open(member) as fh:
                        entries[key] = np.lib.format.read_array(fh, allow_pickle=False)
                    continue
                except ValueError as exc:
                    if "allow_pickle" not in str(exc):
                        raise
                if key not in pickled:
                    skipped.add(key)
                    continue
                with zf.open(member) as fh:
                    _skip_npy_header(fh)
                    value = RestrictedUnpickler(fh, f"{display} ('{key}')", purpose).load()
                if isinstance(value, np.ndarray) and value.dtype.hasobject and value.ndim == 0:
                    value = value.item()
                _check_plain(value, key, display)
                entries[key] = value
    except MeshrecError:
        raise
    except FileNotFoundError:
        raise MeshrecError(f"{display} does not exist") from None
    except OSError as exc:
        raise MeshrecError(f"cannot read {display}: {exc.strerror or exc}") from None
    except (zipfile.BadZipFile, ValueError, EOFError, pickle.UnpicklingError, struct.error,
            TypeError, AttributeError, IndexError, KeyError, RecursionError) as exc:
        raise MeshrecError(f"cannot read {display}: not a readable .npz "
                           f"({type(exc).__name__}: {exc})") from None
    return entries, skipped
