"""Body model files in SMPL's format: safe loading (.pkl with chumpy inside, or .npz), checks, conversion.

The official SMPL_{NEUTRAL,MALE,FEMALE}.pkl files are Python-2 pickles. Some of their arrays
are chumpy objects (`chumpy.ch.Ch`, whose pickled state keeps the array under `x`) and the
joint regressor is a `scipy.sparse` CSC matrix. chumpy does not import on current NumPy, and
`pickle.load` would run whatever a file asks for, so this module reads pickles with a
restricted unpickler (meshrec.safe_pickle): chumpy and scipy.sparse classes become inert placeholders that only
keep their pickled state, a short list of NumPy reconstructors is allowed, and any other
global is refused before anything runs.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from meshrec.body.params import NUM_BETAS, NUM_JOINTS, PARENTS
from meshrec.errors import MeshrecError
from meshrec.fileio import save_npz
from meshrec.safe_pickle import RestrictedUnpickler, numpy_globals

REQUIRED_KEYS = ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table")
_FLOAT_KEYS = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "J")
_INT_KEYS = ("f", "kintree_table")
SMPL_VERTICES = 6890
SMPL_FACES = 13776

# Tolerances for sums that should be exactly 1 (files store float64 or float32 values).
_SUM_TOL = 1e-4
_JOINT_TOL_M = 1e-4


# ---------------------------------------------------------------------------------------
# Restricted unpickling


class _Inert:
    """Stands in for a chumpy or scipy.sparse class: keeps constructor args and state, runs nothing."""

    source = "?"  # "module.name" of the class it stands in for
    args: tuple = ()
    state: Any = None

    def __new__(cls, *args: Any, **kwargs: Any) -> "_Inert":
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _Chumpy(_Inert):
    pass


class _Sparse(_Inert):
    fmt = "csc"


_CHUMPY_NAME = re.compile(r"^chumpy(\.[A-Za-z_]\w*)*$")
_SPARSE_MODULES = {
    "scipy.sparse", "scipy.sparse.csc", "scipy.sparse._csc", "scipy.sparse.csr", "scipy.sparse._csr",
    "scipy.sparse._arrays",
}
_SPARSE_NAMES = {"csc_matrix": "csc", "csr_matrix": "csr", "csc_array": "csc", "csr_array": "csr"}


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """What a body model pickle may name: NumPy's reconstructors plus what Python-2 era
    pickles of chumpy and scipy.sparse objects use. Built per load (see numpy_globals)."""

    def reconstructor(cls: type, base: type, state: Any) -> Any:
        # copy_reg._reconstructor (protocols 0/1), limited to building placeholders on object.
        if base is not object or not (isinstance(cls, type) and issubclass(cls, _Inert)):
            raise pickle.UnpicklingError(f"copy_reg._reconstructor({cls!r}, {base!r}) is not allowed")
        return object.__new__(cls)

    def latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
        # _codecs.encode as Python 3 writes bytes into protocol-2 pickles; latin-1 only.
        if encoding.replace("-", "").replace("_", "").lower() not in ("latin1", "iso88591"):
            raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
        return text.encode("latin-1")

    table = numpy_globals()
    table.update({
        ("copy_reg", "_reconstructor"): reconstructor,
        ("copyreg", "_reconstructor"): reconstructor,
        ("_codecs", "encode"): latin1_encode,
    })
    for mod in ("__builtin__", "builtins"):
        for obj in (set, frozenset, object):
            table[(mod, obj.__name__)] = obj
    return table


class _SafeUnpickler(RestrictedUnpickler):
    """Body model pickles: chumpy and scipy.sparse classes become inert placeholders."""

    def __init__(self, fh: io.BufferedIOBase, display: str) -> None:
        super().__init__(fh, display, "a body model", _allowed_globals(), self._placeholder_for)
        self._placeholders: dict[str, type] = {}  # per load, like the allowed table

    def _placeholder(self, module: str, name: str, base: type, **attrs: Any) -> type:
        source = f"{module}.{name}"
        if source not in self._placeholders:
            self._placeholders[source] = type(name, (base,), {"source": source, **attrs})
        return self._placeholders[source]

    def _placeholder_for(self, module: str, name: str) -> type | None:
        if _CHUMPY_NAME.match(module) and name.isidentifier():
            return self._placeholder(module, name, _Chumpy)
        if module in _SPARSE_MODULES and name in _SPARSE_NAMES:
            return self._placeholder(module, name, _Sparse, fmt=_SPARSE_NAMES[name])
        return None


def _state_dict(obj: _Inert, key: str, display: str) -> dict:
    state = obj.state
    if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
        state = state[0]  # (dict state, slot state)
    if not isinstance(state, dict):
        raise MeshrecError(f"{display}: '{key}' is a {obj.source} object without readable state")
    return state


def _chumpy_to_array(obj: _Chumpy, key: str, display: str) -> np.ndarray:
    state = _state_dict(obj, key, display)
    name = obj.source.rsplit(".", 1)[-1]
    if name == "Ch" and "x" in state:  # a plain value node keeps its array in x
        return _to_array(state["x"], key, display)
    if name == "Select" and {"a", "idxs", "preferred_shape"} <= state.keys():
        # chumpy.reordering.Select evaluates to a.ravel()[idxs].reshape(preferred_shape)
        source = _to_array(state["a"], key, display)
        idxs = np.asarray(state["idxs"]).ravel()
        return source.ravel()[idxs].reshape(tuple(state["preferred_shape"]))
    raise MeshrecError(f"{display}: '{key}' is a {obj.source} object, which meshrec cannot "
                       f"evaluate without chumpy (only chumpy.ch.Ch and reordering.Select)")


def _sparse_to_array(obj: _Sparse, key: str, display: str) -> np.ndarray:
    import scipy.sparse

    state = _state_dict(obj, key, display)
    shape = state.get("_shape", state.get("shape"))
    try:
        parts = (np.asarray(state["data"]), np.asarray(state["indices"]), np.asarray(state["indptr"]))
        make = scipy.sparse.csc_matrix if obj.fmt == "csc" else scipy.sparse.csr_matrix
        return make(parts, shape=tuple(int(s) for s in shape)).toarray()
    except (KeyError, TypeError, ValueError) as exc:
        raise MeshrecError(f"{display}: '{key}' is a malformed {obj.source}: {exc}") from None


def _to_array(value: Any, key: str, display: str) -> np.ndarray:
    if isinstance(value, _Chumpy):
        return _chumpy_to_array(value, key, display)
    if isinstance(value, _Sparse):
        return _sparse_to_array(value, key, display)
    if isinstance(value, (np.ndarray, np.generic, str, int, float, bool)):
        arr = np.asarray(value)
        if arr.dtype == object:
            raise MeshrecError(f"{display}: '{key}' holds Python objects, not numbers")
        return arr
    raise MeshrecError(f"{display}: '{key}' is a {type(value).__name__}, not an array")


def _load_pickle(path: Path, display: str) -> dict[str, np.ndarray]:
    try:
        with open(path, "rb") as fh:
            raw = _SafeUnpickler(fh, display).load()
    except MeshrecError:
        raise
    except OSError as exc:
        raise MeshrecError(f"cannot read {display}: {exc.strerror or exc}") from None
    except Exception as exc:  # a damaged or foreign pickle: say so in one line
        raise MeshrecError(f"cannot read {display}: not a readable body model pickle "
                           f"({type(exc).__name__}: {exc})") from None
    if not isinstance(raw, dict):
        raise MeshrecError(f"{display} holds a {type(raw).__name__}, not a dict of body model arrays")
    arrays: dict[str, np.ndarray] = {}
    for key, value in raw.items():
        if not isinstance(key, str):
            continue
        try:
            try:
                arrays[key] = _to_array(value, key, display)
            except (ValueError, TypeError, IndexError, RecursionError) as exc:
                raise MeshrecError(f"{display}: '{key}' is malformed ({type(exc).__name__}: {exc})") from None
        except MeshrecError:
            if key in REQUIRED_KEYS or key == "J":
                raise
            # Extras such as pose_training_info (a dict) are not arrays: leave them out.
    return arrays


def _load_npz(path: Path, display: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: np.asarray(data[key]) for key in data.files}
    except OSError as exc:
        raise MeshrecError(f"cannot read {display}: {exc.strerror or exc}") from None
    except (ValueError, zipfile.BadZipFile, EOFError) as exc:
        # allow_pickle=False refuses object arrays here: nothing in the file runs.
        raise MeshrecError(f"cannot read {display}: {exc}") from None


_SHAPES: dict[str, str] = {
    "v_template": "(V, 3)", "f": "(F, 3)", "shapedirs": "(V, 3, betas)",
    "posedirs": "(V, 3, 9·(joints−1))", "J_regressor": "(joints, V)", "weights": "(V, joints)",
    "kintree_table": "(2, joints)", "J": "(joints, 3)",
}


def _validate_structure(arrays: dict[str, np.ndarray], display: str) -> None:
    """Missing keys and wrong shapes: MeshrecError naming the key and the file."""
    for key in REQUIRED_KEYS:
        if key not in arrays:
            raise MeshrecError(f"{display} has no '{key}' (a body model needs "
                               f"{', '.join(REQUIRED_KEYS)})")
    v = arrays["v_template"].shape[0] if arrays["v_template"].ndim == 2 else -1
    j = arrays["J_regressor"].shape[0] if arrays["J_regressor"].ndim == 2 else -1
    expect: dict[str, Callable[[tuple], bool]] = {
        "v_template": lambda s: len(s) == 2 and s[1] == 3 and s[0] >= 4,
        "f": lambda s: len(s) == 2 and s[1] == 3 and s[0] >= 1,
        "shapedirs": lambda s: len(s) == 3 and s[:2] == (v, 3) and s[2] >= 1,
        "posedirs": lambda s: len(s) == 3 and s[:2] == (v, 3),
        "J_regressor": lambda s: len(s) == 2 and s[1] == v and s[0] >= 1,
        "weights": lambda s: s == (v, j),
        "kintree_table": lambda s: s == (2, j),
        "J": lambda s: s == (j, 3),
    }
    for key, ok in expect.items():
        if key in arrays and not ok(arrays[key].shape):
            raise MeshrecError(f"{display}: '{key}' has shape {arrays[key].shape}, expected "
                               f"{_SHAPES[key]} with V={v}, joints={j}")
    for key in _INT_KEYS:
        if arrays[key].dtype.kind not in "iu":
            raise MeshrecError(f"{display}: '{key}' has dtype {arrays[key].dtype}, expected integers")
    for key in _FLOAT_KEYS:
        if key in arrays and arrays[key].dtype.kind not in "fiu":
            raise MeshrecError(f"{display}: '{key}' has dtype {arrays[key].dtype}, expected numbers")


def _normalize(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = dict(arrays)
    for key in _FLOAT_KEYS:
        if key in out:
            out[key] = np.ascontiguousarray(out[key], dtype=np.float64)
    for key in _INT_KEYS:
        out[key] = np.ascontiguousarray(out[key], dtype=np.int64)
    return out


def load_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a body model (.pkl safely, or .npz) into plain arrays.

    Required keys (v_template, f, shapedirs, posedirs, J_regressor, weights, kintree_table)
    are checked for presence and shape; float arrays come back float64 (J_regressor dense),
    faces and kintree_table int64. Other array-like keys (J, model_kind, seed, …) are kept.
    """
    p = Path(path)
    display = os.fspath(path)
    if not p.is_file():
        raise MeshrecError(f"body model file {display} does not exist")
    # A run reads its body file several times (data, loaders, model): parsed and checked once
    # per file version, each caller gets its own copy.
    st = p.stat()
    key = (os.fspath(p.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = _read_arrays(p, display)
    return {name: array.copy() for name, array in _LOADED[key].items()}


_LOADED: dict[tuple, dict[str, np.ndarray]] = {}  # the last file load_arrays read


def _read_arrays(p: Path, display: str) -> dict[str, np.ndarray]:
    suffix = p.suffix.lower()
    if suffix in (".pkl", ".pickle"):
        arrays = _load_pickle(p, display)
    elif suffix == ".npz":
        arrays = _load_npz(p, display)
    else:
        raise MeshrecError(f"{display}: unknown body model format '{suffix}' (expected .pkl or .npz)")
    _validate_structure(arrays, display)
    return _normalize(arrays)


# ---------------------------------------------------------------------------------------
# Checks


@dataclass
class Report:
    ok: bool = True
    lines: list[str] = field(default_factory=list)

    def add(self, passed: bool, text: str) -> None:
        self.ok = self.ok and passed
        self.lines.append(f"{'ok  ' if passed else 'FAIL'}  {text}")

    def note(self, text: str) -> None:
        self.lines.append(f"note  {text}")


def _surface(faces: np.ndarray, num_vertices: int) -> tuple[bool, bool, int, int]:
    """(closed: every edge in exactly two faces, consistently oriented, Euler χ, unused vertices)."""
    a, b = faces.ravel(), np.roll(faces, -1, axis=1).ravel()  # directed edges (0,1),(1,2),(2,0)
    directed = a * num_vertices + b
    undirected = np.minimum(a, b) * num_vertices + np.maximum(a, b)
    _, counts = np.unique(undirected, return_counts=True)
    closed = bool((counts == 2).all())
    oriented = closed and np.unique(directed).size == directed.size
    used = np.unique(faces).size
    return closed, oriented, used - counts.size + faces.shape[0], num_vertices - used


def check(arrays: dict[str, np.ndarray], name: str = "body model") -> Report:
    """Sizes and consistency checks of a body model's arrays; `ok` is False if any check fails."""
    _validate_structure(arrays, name)
    arrays = _normalize(arrays)
    rep = Report()
    v, f = arrays["v_template"], arrays["f"]
    jr, w, kt = arrays["J_regressor"], arrays["weights"], arrays["kintree_table"]
    nv, nf, nj = v.shape[0], f.shape[0], jr.shape[0]
    nb, npose = arrays["shapedirs"].shape[2], arrays["posedirs"].shape[2]
    kind = str(arrays["model_kind"]) if "model_kind" in arrays else "smpl"
    rep.lines.append(f"kind {kind}: {nv} vertices, {nf} faces, {nj} joints, {nb} betas, "
                     f"{npose} pose blend shapes")

    rep.add(nj == NUM_JOINTS, f"joints: {nj} (SMPL: {NUM_JOINTS})")
    rep.add(nb >= NUM_BETAS, f"betas: {nb} shape directions (meshrec uses {NUM_BETAS})")
    rep.add(npose == 9 * (nj - 1), f"pose blend shapes: {npose} (9·(joints−1) = {9 * (nj - 1)})")
    if (nv, nf) != (SMPL_VERTICES, SMPL_FACES):
        rep.note(f"{nv} vertices / {nf} faces differ from SMPL's {SMPL_VERTICES} / {SMPL_FACES}")

    finite = [k for k in _FLOAT_KEYS if k in arrays and not np.isfinite(arrays[k]).all()]
    rep.add(not finite, "all values finite" if not finite else f"NaN/Inf in {', '.join(finite)}")

    parents = kt[0]
    tree_ok = bool((kt[1] == np.arange(nj)).all()
                   and all(0 <= parents[j] < j for j in range(1, nj)))
    rep.add(tree_ok, "kinematic tree: every joint's parent comes before it" if tree_ok
            else "kinematic tree: row 1 must be 0..J−1 and each parent must precede its joint")
    is_smpl_tree = nj == NUM_JOINTS and tuple(parents[1:]) == PARENTS[1:]
    rep.add(is_smpl_tree, "kinematic tree is SMPL's" if is_smpl_tree
            else "kinematic tree differs from SMPL's (the parameter layout assumes SMPL's)")

    wsum = np.abs(w.sum(axis=1) - 1.0).max()
    rep.add(w.min() >= 0.0 and wsum <= _SUM_TOL,
            f"skinning weights: min {w.min():.3g}, max |row sum − 1| {wsum:.2g}")
    jsum = np.abs(jr.sum(axis=1) - 1.0).max()
    rep.add(jsum <= _SUM_TOL, f"J_regressor: max |row sum − 1| {jsum:.2g}")
    if "J" in arrays:
        dj = np.abs(jr @ v - arrays["J"]).max()
        if dj <= _JOINT_TOL_M:
            rep.add(True, f"J_regressor @ v_template reproduces J (max diff {dj:.2g} m)")
        else:  # J itself is never used: joints are always regressed from the vertices
            rep.note(f"stored J differs from J_regressor @ v_template by up to {dj:.3g} m (J is unused)")

    in_range = bool(f.min() >= 0 and f.max() < nv)
    rep.add(in_range, f"faces index vertices 0..{nv - 1}" if in_range
            else f"faces index vertices {f.min()}..{f.max()}, outside 0..{nv - 1}")
    if in_range:
        degenerate = int(((f[:, 0] == f[:, 1]) | (f[:, 1] == f[:, 2]) | (f[:, 2] == f[:, 0])).sum())
        rep.add(degenerate == 0, f"degenerate faces: {degenerate}")
        closed, oriented, euler, unused = _surface(f, nv)
        rep.add(closed, "closed surface: every edge is shared by exactly two faces" if closed
                else "surface is not closed: some edge is not shared by exactly two faces")
        if closed:
            rep.add(oriented, "faces consistently oriented" if oriented
                    else "faces not consistently oriented")
        rep.note(f"Euler characteristic {euler}, unused vertices {unused}")
    return rep


def convert(src: str | os.PathLike, dst: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load `src` (.pkl or .npz), check it, and write the arrays to `dst` as a plain .npz.

    Refuses (MeshrecError, nothing written) a file whose checks fail.
    """
    arrays = load_arrays(src)
    report = check(arrays, os.fspath(src))
    if not report.ok:
        failed = "; ".join(line[6:] for line in report.lines if line.startswith("FAIL"))
        raise MeshrecError(f"{os.fspath(src)} fails body model checks ({failed}); nothing written")
    save_npz(dst, arrays)
    return arrays
