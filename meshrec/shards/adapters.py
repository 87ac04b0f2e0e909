"""Source adapters: preprocessed Human3.6M files → one `SampleTable`, sorted by subject and key.

spin       SPIN's h36m npz (and meshrec's generated data, which writes the same layout):
           imgname (N,) · center (N,2) px · scale (N,) = box side/200, and optionally
           pose (N,72) axis-angle + shape (N,10) (both or neither) · has_smpl (N,) (0: the row's
           pose/shape are no label, as SPIN's base_dataset.py) · transl (N,3) m
           · S (N,24,4) J24 3D joints, pelvis-centred m + confidence · part (N,24,3) J24 2D
           keypoints, full-frame px + visibility · cam_K (N,3,3) full-frame intrinsics.
           S and part keep the 17 rows SPIN's preprocessing filled (h36m.J24_OF_H36M), in
           Human3.6M's order; `openpose` is ignored. SPIN's training file has no SMPL
           (imgname center scale part S openpose), its evaluation files imgname center scale S.
humandata  mmhuman3d HumanData npz: image_path (N,) · bbox_xywh (N,4) or (N,5) with a
           confidence (≤ 0: the row is rejected), and smpl or keypoints or both: smpl, a pickled
           dict of global_orient (N,3), body_pose (N,69) or (N,23,3), betas (N,10), optional
           transl (N,3) (absent or empty: has_smpl false) · keypoints3d (N,J,4) root-centred m
           + confidence and keypoints2d (N,J,3) full-frame px + confidence, each with its (J,)
           *_mask, in the 'human_data' convention (190 joints; compressed to the masked ones, as
           mmhuman3d's H36M converter writes them) or 'h36m' (see humandata.py); a joint's
           confidence is its own × its mask. The box becomes center = (x + w/2, y + h/2),
           scale = max(w, h)/200. The pickle is read by meshrec.safe_pickle: only NumPy arrays,
           dicts and lists load, nothing runs.

Whole-file problems (missing key, wrong shape, non-Human3.6M image names, duplicate keys)
raise MeshrecError naming the file and key; per-row problems travel in `problem` or are found
later by `sample.check_row` and the packer, and end up in rejects.jsonl.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import numpy as np

from meshrec.body import h36m
from meshrec.body import params as layout
from meshrec.errors import MeshrecError
from meshrec.safe_pickle import load_npz
from meshrec.shards import humandata, naming
from meshrec.shards.sample import SampleTable, concat


def _strings(value: np.ndarray, key: str, display: str) -> np.ndarray:
    if value.ndim != 1 or value.dtype.kind not in "US":
        raise MeshrecError(f"{display}: '{key}' must be a 1-D array of paths, got "
                           f"shape {value.shape} dtype {value.dtype}")
    if value.dtype.kind == "S":
        value = np.char.decode(value, "utf-8")
    return value.astype(str)


def _numeric(value: Any, key: str, display: str, shapes: Sequence[tuple], n: int) -> np.ndarray:
    """`value` as float64 with one of `shapes` (None = any length; first axis is N)."""
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiu":
        raise MeshrecError(f"{display}: '{key}' has dtype {arr.dtype}, expected numbers")
    for shape in shapes:
        if arr.ndim == len(shape) + 1 and arr.shape[0] == n and all(
                want is None or got == want for got, want in zip(arr.shape[1:], shape)):
            return arr.astype(np.float64)
    wanted = " or ".join(str((n, *shape)).replace("None", "any") for shape in shapes)
    raise MeshrecError(f"{display}: '{key}' has shape {arr.shape}, expected {wanted}")


def _require(entries: dict[str, Any], skipped: set[str], keys: Sequence[str], display: str,
             kind: str) -> None:
    for key in keys:
        if key in skipped:
            raise MeshrecError(f"{display}: '{key}' holds pickled Python objects; the {kind} layout "
                               f"needs a plain array there")
        if key not in entries:
            raise MeshrecError(f"{display} has no key '{key}' (the {kind} layout needs "
                               f"{', '.join(keys)})")


def _table(display: str, images: np.ndarray, center: np.ndarray, scale: np.ndarray,
           params: np.ndarray, has_smpl: np.ndarray, j3d: np.ndarray | None,
           kp2d: np.ndarray | None, cam_k: np.ndarray | None,
           problem: np.ndarray | None = None) -> SampleTable:
    n = images.shape[0]
    names = [naming.parse_or_fail(path, display) for path in images]
    keys = np.array([naming.sample_key(name) for name in names], dtype=str)
    return SampleTable(
        key=keys,
        subject=np.array([m.subject for m in names], dtype=str),
        action=np.array([m.action for m in names], dtype=str),
        camera=np.array([m.camera for m in names], dtype=str),
        frame=np.array([m.frame for m in names], dtype=np.int64).reshape(n),
        image=images, center=center, scale=scale, params=params, has_smpl=has_smpl, j3d=j3d,
        kp2d=kp2d, cam_K=cam_k,
        source=np.full(n, os.path.basename(display), dtype=object).astype(str),
        row=np.arange(n, dtype=np.int64),
        problem=np.full(n, "", dtype=object).astype(str) if problem is None else problem,
    )


def _spin_smpl(entries: dict[str, Any], path: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(params (N, P) with zeros where unlabelled, has_smpl (N,) bool) of a SPIN file."""
    present = [k for k in ("pose", "shape") if k in entries]
    if len(present) == 1:
        other = "shape" if present[0] == "pose" else "pose"
        raise MeshrecError(f"{path} has '{present[0]}' but no '{other}' (SMPL parameters need "
                           f"both, or neither for a file of joints only)")
    flags = (_numeric(entries["has_smpl"], "has_smpl", path, [()], n) > 0
             if "has_smpl" in entries else None)
    if not present:
        if flags is not None and flags.any():
            raise MeshrecError(f"{path}: 'has_smpl' marks {int(flags.sum())} rows as SMPL-labelled "
                               "but the file has no 'pose' and 'shape'")
        return np.zeros((n, layout.SIZE)), np.zeros(n, dtype=bool)
    pose = _numeric(entries["pose"], "pose", path, [(3 * layout.NUM_JOINTS,)], n)
    betas = _numeric(entries["shape"], "shape", path, [(layout.NUM_BETAS,)], n)
    transl = _numeric(entries["transl"], "transl", path, [(3,)], n) if "transl" in entries else None
    params = layout.join(pose[:, layout.GLOBAL_ORIENT], pose[:, layout.BODY_POSE], betas, transl)
    has_smpl = np.ones(n, dtype=bool) if flags is None else flags
    params[~has_smpl] = 0.0  # what an unlabelled row holds is no label (SPIN fills it with anything)
    return params, has_smpl


def _spin_joints(entries: dict[str, Any], key: str, width: int, path: str,
                 n: int) -> np.ndarray | None:
    """SPIN's J24 `S` / `part` → (N, 17, width) in Human3.6M's order, or None when absent."""
    if key not in entries:
        return None
    j24 = _numeric(entries[key], key, path, [(len(h36m.J24_NAMES), width)], n)
    return h36m.j24_to_h36m(j24)


def _no_label(has_smpl: np.ndarray, *joints: np.ndarray | None) -> np.ndarray:
    """(N,) object array of row problems: "" or why a row has no label at all."""
    seen = np.zeros(has_smpl.shape[0], dtype=bool)
    for arr in joints:
        if arr is not None:
            seen |= (arr[..., -1] > 0).any(axis=-1)
    problem = np.full(has_smpl.shape[0], "", dtype=object)
    problem[~has_smpl & ~seen] = "no label: no SMPL parameters and every joint's confidence is 0"
    return problem


def _image_paths(entries: dict[str, Any], key: str, path: str) -> tuple[np.ndarray, int]:
    """The file's image paths (a non-empty 1-D array) and their count."""
    images = _strings(entries[key], key, path)
    if images.shape[0] == 0:
        raise MeshrecError(f"{path}: '{key}' is empty")
    return images, int(images.shape[0])


def load_spin(path: str) -> SampleTable:
    required = ("imgname", "center", "scale")
    entries, skipped = load_npz(path, purpose="a SPIN data file")
    _require(entries, skipped, required, path, "spin")
    smpl_keys, joint_keys = ("pose", "shape"), ("S", "part")
    _require(entries, skipped, [k for k in (*smpl_keys, *joint_keys, "has_smpl") if k in entries],
             path, "spin")
    if not any(k in entries for k in (*smpl_keys, *joint_keys)):
        raise MeshrecError(f"{path} has neither SMPL parameters (pose, shape) nor joints (S, part): "
                           "nothing to train or evaluate on")
    images, n = _image_paths(entries, "imgname", path)
    center = _numeric(entries["center"], "center", path, [(2,)], n)
    scale = _numeric(entries["scale"], "scale", path, [()], n)
    params, has_smpl = _spin_smpl(entries, path, n)
    j3d = _spin_joints(entries, "S", 4, path, n)
    kp2d = _spin_joints(entries, "part", 3, path, n)
    cam_k = _numeric(entries["cam_K"], "cam_K", path, [(3, 3)], n) if "cam_K" in entries else None
    return _table(path, images, center, scale, params, has_smpl, j3d, kp2d, cam_k,
                  _no_label(has_smpl, j3d, kp2d).astype(str))


def _humandata_smpl(entries: dict[str, Any], path: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(params (N, P), has_smpl (N,)) of a HumanData file; no (or an empty) `smpl`: no labels."""
    smpl = entries.get("smpl", {})
    if not isinstance(smpl, dict):
        raise MeshrecError(f"{path}: 'smpl' holds a {type(smpl).__name__}, expected a dict of arrays")
    smpl = {k: v for k, v in smpl.items() if v is not None}
    if not smpl:
        return np.zeros((n, layout.SIZE)), np.zeros(n, dtype=bool)
    for key in ("global_orient", "body_pose", "betas"):
        if key not in smpl:
            raise MeshrecError(f"{path}: 'smpl' has no key '{key}' (HumanData's smpl needs "
                               f"global_orient, body_pose, betas; transl is optional)")
    orient = _numeric(smpl["global_orient"], "smpl.global_orient", path, [(3,), (1, 3)], n).reshape(n, 3)
    body = _numeric(smpl["body_pose"], "smpl.body_pose", path,
                    [(3 * (layout.NUM_JOINTS - 1),), (layout.NUM_JOINTS - 1, 3)], n).reshape(n, -1)
    betas = _numeric(smpl["betas"], "smpl.betas", path, [(layout.NUM_BETAS,)], n)
    transl = _numeric(smpl["transl"], "smpl.transl", path, [(3,)], n) if "transl" in smpl else None
    return layout.join(orient, body, betas, transl), np.ones(n, dtype=bool)


def load_humandata(path: str) -> SampleTable:
    entries, skipped = load_npz(path, pickled=("smpl",), purpose="a HumanData file")
    _require(entries, skipped, ("image_path", "bbox_xywh"), path, "humandata")
    _require(entries, skipped, [k for k in humandata.KEYS if k in entries or k in skipped],
             path, "humandata")
    if "smpl" not in entries and not any(k in entries for k in humandata.KEYS):
        raise MeshrecError(f"{path} has neither SMPL parameters (smpl) nor keypoints "
                           "(keypoints3d, keypoints2d): nothing to train or evaluate on")
    images, n = _image_paths(entries, "image_path", path)
    bbox = _numeric(entries["bbox_xywh"], "bbox_xywh", path, [(4,), (5,)], n)
    params, has_smpl = _humandata_smpl(entries, path, n)
    j3d = humandata.keypoints(entries, "keypoints3d", 4, path, n)
    kp2d = humandata.keypoints(entries, "keypoints2d", 3, path, n)
    x, y, w, h = bbox[:, 0], bbox[:, 1], bbox[:, 2], bbox[:, 3]
    center = np.stack([x + w / 2, y + h / 2], axis=1)
    scale = np.maximum(w, h) / 200.0
    problem = _no_label(has_smpl, j3d, kp2d)
    if bbox.shape[1] == 5:
        problem[bbox[:, 4] <= 0] = "bbox confidence is 0 (no valid box)"
    problem[(w <= 0) | (h <= 0)] = "bbox has zero or negative width/height"
    return _table(path, images, center, scale, params, has_smpl, j3d, kp2d, None,
                  problem.astype(str))


ADAPTERS: dict[str, Callable[[str], SampleTable]] = {"spin": load_spin, "humandata": load_humandata}


def load_sources(kind: str, paths: Sequence[str]) -> SampleTable:
    """Read every source file with the `kind` adapter; one table sorted by (subject, key)."""
    if kind not in ADAPTERS:
        raise MeshrecError(f"unknown source '{kind}' (choose from {', '.join(ADAPTERS)})")
    if not paths:
        raise MeshrecError("no source files given")
    tables = [ADAPTERS[kind](os.fspath(p)) for p in paths]
    return sorted_unique(concat(tables, [os.fspath(p) for p in paths]))


def sorted_unique(table: SampleTable) -> SampleTable:
    """The table sorted by (subject, key); two rows naming one frame are an error."""
    order = sorted(range(len(table)),
                   key=lambda i: (naming.subject_order(str(table.subject[i])), str(table.key[i])))
    table = table.take(np.asarray(order, dtype=np.int64))
    same = np.flatnonzero(table.key[1:] == table.key[:-1])
    if same.size:
        i = int(same[0])
        raise MeshrecError(f"two rows name the same frame '{table.key[i]}': {table.source[i]} "
                           f"row {table.row[i]} ('{table.image[i]}') and {table.source[i + 1]} "
                           f"row {table.row[i + 1]} ('{table.image[i + 1]}')")
    return table
