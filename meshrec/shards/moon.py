"""Moon's Human3.6M release (I2L-MeshNet, Hand4Whole) with NeuralAnnot SMPL fits → one `SampleTable`.

Per subject N, under the annotations folder (layout: /work/shared/H36M.md):
  Human36M_subjectN_data.json     COCO style: images (id, file_name, width, height, subject,
                                  action_name, action_idx, subaction_idx, cam_idx, frame_idx),
                                  annotations (image_id, bbox [x, y, w, h], keypoints_vis)
  Human36M_subjectN_camera.json   {"1".."4": {R, t (mm), f, c}}, X_cam = R·X_world + t
  Human36M_subjectN_joint_3d.json [action][subaction][frame] → 17×3 world mm, rows in Moon's
                                  order (legs right first: h36m.MOON_NAMES), reordered to meshrec's
  Human36M_subjectN_SMPL_NeuralAnnot.json (optional) [action][subaction][frame] → pose 72,
                                  shape 10, trans 3 m, WORLD frame; one fit serves all cameras
NeuralAnnot's demo_smpl.py moves a fit into camera c by running SMPL with root orientation
R·R_w and `transl=trans`, then X_cam = X − root + R·root + t/1000 (root = SMPL's joint 0). As
SMPL's root turns about the rest pelvis J0(β), that is SMPL(R·R_w, β) + transl_cam with
transl_cam = R·(J0 + trans) + t/1000 − J0: meshrec's layout (85), which needs J0, hence the
body model. Rows: one per selected image; a frame without a fit is joints-only (has_smpl 0);
a frame without a box, without joints or with a malformed fit carries a `problem` (→ rejects).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from meshrec.body import h36m
from meshrec.body import params as layout
from meshrec.errors import MeshrecError
from meshrec.shards import naming
from meshrec.shards.adapters import sorted_unique
from meshrec.shards.sample import SampleTable, concat

KIND = "h36m-moon"
PARTS = ("data", "camera", "joint_3d", "SMPL_NeuralAnnot")
TRAIN_SUBJECTS = ("S1", "S5", "S6", "S7", "S8")
TEST_SUBJECTS = ("S9", "S11")
CAMERAS = (1, 2, 3, 4)
# Human3.6M's action_idx 2..16, named as I2L-MeshNet's Human36M.py (the videos say "TakingPhoto").
ACTION_IDX = {name: i + 2 for i, name in enumerate((
    "Directions", "Discussion", "Eating", "Greeting", "Phoning", "Posing", "Purchases", "Sitting",
    "SittingDown", "Smoking", "Photo", "Waiting", "Walking", "WalkDog", "WalkTogether"))}
MAX_PELVIS_GAP_M = 0.2  # a fit's pelvis vs the mocap pelvis, median: NeuralAnnot's are cm apart


@dataclass(frozen=True)
class Selection:
    """Which images become samples: subjects, every `every`-th frame_idx, cameras by cam_idx."""

    subjects: tuple[str, ...] = TRAIN_SUBJECTS
    every: int = 5
    cameras: tuple[int, ...] = CAMERAS

    def check(self) -> None:
        for s in self.subjects:
            if not re.fullmatch(r"S[1-9]\d*", s):
                raise MeshrecError(f"--subjects: '{s}' is not a Human3.6M subject name (S1, S5, ..., S11)")
        if not self.subjects:
            raise MeshrecError("--subjects is empty")
        if self.every < 1:
            raise MeshrecError(f"--every {self.every} must be at least 1")
        if not self.cameras or any(c not in CAMERAS for c in self.cameras):
            raise MeshrecError(f"--cameras {self.cameras}: camera indices are 1..4")

    def as_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


# The evaluation sets of the literature: SPIN's protocols 1 and 2, and Moon's test set.
EVAL_SETS = {
    "h36m-p1": Selection(TEST_SUBJECTS, 5, CAMERAS),
    "h36m-p2": Selection(TEST_SUBJECTS, 5, (4,)),
    "h36m-moon": Selection(TEST_SUBJECTS, 64, (4,)),
}


def annotation_path(folder: str, subject: str, part: str) -> str:
    return os.path.join(folder, f"Human36M_subject{subject[1:]}_{part}.json")


def image_name(subject: str, action_idx: int, subaction: int, cam_idx: int, frame_idx: int) -> str:
    """Moon's image path (relative to the images root): number = frame_idx + 1."""
    folder = f"s_{int(subject[1:]):02d}_act_{action_idx:02d}_subact_{subaction:02d}_ca_{cam_idx:02d}"
    return f"{folder}/{folder}_{frame_idx + 1:06d}.jpg"


# ---------------------------------------------------------------------------------------
# The math (pure)


def rest_pelvis(arrays: dict[str, np.ndarray], betas: np.ndarray) -> np.ndarray:
    """(N, 10) betas → (N, 3) SMPL's joint 0 before any pose: J_regressor[0] on the shaped template."""
    r0 = np.asarray(arrays["J_regressor"], dtype=np.float64)[0]
    dirs = np.asarray(arrays["shapedirs"], dtype=np.float64)[:, :, :layout.NUM_BETAS]
    return r0 @ np.asarray(arrays["v_template"], dtype=np.float64) + np.einsum(
        "v,vcb,nb->nc", r0, dirs, betas)


def camera_params(pose: np.ndarray, betas: np.ndarray, trans: np.ndarray, R: np.ndarray,
                  t_mm: np.ndarray, pelvis: np.ndarray) -> np.ndarray:
    """World fits (N,72), (N,10), (N,3) m seen by cameras R (N,3,3), t (N,3) mm → (N, 85) in
    meshrec's layout: SMPL(pose_cam, β).vertices + transl_cam = NeuralAnnot's camera-frame mesh."""
    orient = Rotation.from_matrix(R @ Rotation.from_rotvec(pose[:, :3]).as_matrix()).as_rotvec()
    transl = np.einsum("nij,nj->ni", R, pelvis + trans) + t_mm / 1000.0 - pelvis
    return layout.join(orient, pose[:, 3:], betas, transl)


def camera_joints(world_mm: np.ndarray, R: np.ndarray, t_mm: np.ndarray, f: np.ndarray,
                  c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N,17,3) world mm → j3d (N,17,4) pelvis-centred m + 1, kp2d (N,17,3) full-frame px + 1."""
    cam = (np.einsum("nij,nkj->nki", R, world_mm) + t_mm[:, None]) / 1000.0
    ones = np.ones(cam.shape[:2] + (1,))
    uv = cam[..., :2] / cam[..., 2:] * f[:, None] + c[:, None]
    return (np.concatenate([cam - cam[:, h36m.PELVIS:h36m.PELVIS + 1], ones], axis=2),
            np.concatenate([uv, ones], axis=2))


def intrinsics(f: np.ndarray, c: np.ndarray) -> np.ndarray:
    K = np.zeros((len(f), 3, 3))
    K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = f[:, 0], f[:, 1], c[:, 0], c[:, 1], 1.0
    return K


# ---------------------------------------------------------------------------------------
# Reading


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise MeshrecError(f"{path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise MeshrecError(f"cannot read {path}: {exc}") from None


def _array(value: Any, shape: tuple[int, ...], what: str, path: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.shape != shape or not np.isfinite(arr).all():
        raise MeshrecError(f"{path}: {what} must be {shape} finite numbers")
    return arr


def _cameras(path: str, used: set[int], data_path: str) -> dict[int, dict[str, np.ndarray]]:
    raw = _read_json(path)
    if not isinstance(raw, dict):
        raise MeshrecError(f"{path}: expected an object of cameras \"1\"..\"4\"")
    out = {}
    for cam in sorted(used):
        if str(cam) not in raw:
            raise MeshrecError(f"{path} has no camera \"{cam}\", which {os.path.basename(data_path)} uses")
        entry = raw[str(cam)]
        if not isinstance(entry, dict):
            raise MeshrecError(f"{path}: camera \"{cam}\" is not an object with R, t, f, c")
        out[cam] = {k: _array(entry.get(k), s, f"camera \"{cam}\" {k}", path)
                    for k, s in (("R", (3, 3)), ("t", (3,)), ("f", (2,)), ("c", (2,)))}
    return out


_IMAGE_FIELDS = ("id", "file_name", "subject", "action_name", "action_idx", "subaction_idx",
                 "cam_idx", "frame_idx")


def _data(path: str, subject: str) -> tuple[list[dict[str, Any]], dict[int, list]]:
    """data.json's images (checked to be this subject's) and image id → bbox."""
    raw = _read_json(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("images"), list) \
            or not isinstance(raw.get("annotations"), list):
        raise MeshrecError(f"{path}: expected a COCO-style object with 'images' and 'annotations' lists")
    number = int(subject[1:])
    for img in raw["images"]:
        missing = [k for k in _IMAGE_FIELDS if not isinstance(img, dict) or k not in img]
        if missing:
            raise MeshrecError(f"{path}: an image entry has no '{missing[0]}'")
        if int(img["subject"]) != number:
            raise MeshrecError(f"{path}: image {img['id']} is of subject {img['subject']}, "
                               f"not {number} as the file name says")
    boxes: dict[int, list] = {}
    for ann in raw["annotations"]:
        if isinstance(ann, dict) and "image_id" in ann:
            boxes.setdefault(ann["image_id"], ann.get("bbox"))
    return raw["images"], boxes


def _frames(images: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {(str(i["action_idx"]), str(i["subaction_idx"]), str(i["frame_idx"])) for i in images}


def _fits(path: str, subject: str, frames: set[tuple[str, str, str]], data_path: str) -> dict:
    """NeuralAnnot's fits ({} when the file is absent), refused when they are another subject's."""
    if not os.path.exists(path):
        return {}
    raw = _read_json(path)
    if not isinstance(raw, dict):
        raise MeshrecError(f"{path}: expected [action][subaction][frame] objects")
    inside = raw.pop("subject", None)
    if inside is not None and str(inside).lstrip("S") != subject[1:]:
        raise MeshrecError(f"{path} holds subject {inside}'s fits, not {subject}'s")
    for a, subs in raw.items():
        for s, per_frame in (subs.items() if isinstance(subs, dict) else [(None, None)]):
            if not isinstance(per_frame, dict):
                raise MeshrecError(f"{path}: expected [action][subaction][frame] objects")
            for f in per_frame:
                if (a, s, f) not in frames:
                    raise MeshrecError(f"{path} has a fit for action {a} subaction {s} frame {f}, "
                                       f"which {os.path.basename(data_path)} does not have: "
                                       f"another subject's fits?")
    return raw


def _lookup(tree: Any, a: Any, s: Any, f: Any) -> Any:
    try:
        return tree[str(a)][str(s)][str(f)]
    except (KeyError, TypeError):
        return None


def _fit_vector(fit: Any) -> tuple[np.ndarray | None, str]:
    """(pose 72 | shape 10 | trans 3) of one fit, or why it cannot be used."""
    if fit is None:
        return None, ""
    sizes = (("pose", 3 * layout.NUM_JOINTS), ("shape", layout.NUM_BETAS), ("trans", 3))
    parts = []
    for key, size in sizes:
        value = fit.get(key) if isinstance(fit, dict) else None
        arr = np.asarray(value if value is not None else [], dtype=object).ravel()
        if arr.size != size:
            return None, f"NeuralAnnot fit has {arr.size} '{key}' values, expected {size}"
        parts.append(arr.astype(np.float64))
    return np.concatenate(parts), ""


def load_subject(folder: str, subject: str, selection: Selection,
                 arrays: dict[str, np.ndarray]) -> SampleTable:
    data_path = annotation_path(folder, subject, "data")
    images, boxes = _data(data_path, subject)
    cameras = _cameras(annotation_path(folder, subject, "camera"),
                       {int(i["cam_idx"]) for i in images}, data_path)
    joints_path = annotation_path(folder, subject, "joint_3d")
    joints = _read_json(joints_path)
    fits_path = annotation_path(folder, subject, "SMPL_NeuralAnnot")
    fits = _fits(fits_path, subject, _frames(images), data_path)
    rows = [(k, i) for k, i in enumerate(images)
            if int(i["frame_idx"]) % selection.every == 0 and int(i["cam_idx"]) in selection.cameras]
    n = len(rows)
    world = np.zeros((n, h36m.NUM_JOINTS, 3))
    fit_vec = np.zeros((n, layout.SIZE_WITH_TRANSL))
    has_smpl = np.zeros(n, dtype=bool)
    problem = np.full(n, "", dtype=object)
    center, scale = np.zeros((n, 2)), np.ones(n)
    for r, (_, img) in enumerate(rows):
        a, s, f = img["action_idx"], img["subaction_idx"], img["frame_idx"]
        mocap = np.asarray(_lookup(joints, a, s, f) or [], dtype=object)
        if mocap.shape != (h36m.NUM_JOINTS, 3):
            problem[r] = f"{os.path.basename(joints_path)} has no 17×3 joints for this frame"
        else:
            world[r] = h36m.reorder_moon(mocap.astype(np.float64))  # legs right first there
        vec, why = _fit_vector(_lookup(fits, a, s, f))
        if vec is not None:
            fit_vec[r], has_smpl[r] = vec, True
        problem[r] = problem[r] or why
        box = boxes.get(img["id"])
        if box is None or np.asarray(box, dtype=object).size != 4:
            problem[r] = problem[r] or f"{os.path.basename(data_path)} has no box for this frame"
        else:
            x, y, w, h = (float(v) for v in box)
            center[r], scale[r] = (x + w / 2, y + h / 2), max(w, h) / 200.0
            if w <= 0 or h <= 0:
                problem[r] = problem[r] or "box has zero or negative width/height"
    cam = [cameras[int(img["cam_idx"])] for _, img in rows]
    R, t, f, c = (np.array([k[name] for k in cam]).reshape((n,) + shape)
                  for name, shape in (("R", (3, 3)), ("t", (3,)), ("f", (2,)), ("c", (2,))))
    j3d, kp2d = camera_joints(world, R, t, f, c)
    pose, betas, trans = fit_vec[:, layout.POSE], fit_vec[:, layout.BETAS], fit_vec[:, layout.TRANSL]
    pelvis = rest_pelvis(arrays, betas)
    _check_pelvis(pelvis + trans, world[:, h36m.PELVIS] / 1000.0, has_smpl & (problem == ""), fits_path)
    params = camera_params(pose, betas, trans, R, t, pelvis)
    params[~has_smpl] = 0.0
    names = [naming.FrameName(subject, f"{img['action_name']}_{img['subaction_idx']}",
                              h36m.CAMERA_IDS[int(img["cam_idx"]) - 1], int(img["frame_idx"]) + 1)
             for _, img in rows]
    bad = ~np.isfinite(j3d).all(axis=(1, 2)) & (problem == "")
    problem[bad] = "joints project to Inf (a joint at depth 0)"
    return SampleTable(
        key=np.array([naming.sample_key(m) for m in names], dtype=str).reshape(n),
        subject=np.full(n, subject).astype(str),
        action=np.array([naming.clean(m.action) for m in names], dtype=str).reshape(n),
        camera=np.array([m.camera for m in names], dtype=str).reshape(n),
        frame=np.array([m.frame for m in names], dtype=np.int64).reshape(n),
        image=np.array([str(img["file_name"]) for _, img in rows], dtype=str).reshape(n),
        center=center, scale=scale, params=params, has_smpl=has_smpl,
        j3d=np.nan_to_num(j3d), kp2d=np.nan_to_num(kp2d), cam_K=intrinsics(f, c),
        source=np.full(n, os.path.basename(data_path)).astype(str),
        row=np.array([k for k, _ in rows], dtype=np.int64).reshape(n),
        problem=problem.astype(str),
    )


def _check_pelvis(fit_pelvis: np.ndarray, mocap_pelvis: np.ndarray, usable: np.ndarray, path: str) -> None:
    """Fits of another subject (whose frame keys happen to match) sit away from this one's mocap."""
    if not usable.any():
        return
    gap = float(np.median(np.linalg.norm(fit_pelvis[usable] - mocap_pelvis[usable], axis=1)))
    if gap > MAX_PELVIS_GAP_M:
        raise MeshrecError(f"{path}: the fits' pelvis is {gap:.2f} m from the joints' pelvis "
                           f"(median): another subject's fits?")


def annotation_files(folder: str, selection: Selection) -> list[str]:
    """The files a selection reads (for the manifest's sources), NeuralAnnot's where present."""
    paths = [annotation_path(folder, s, p) for s in selection.subjects for p in PARTS]
    return [p for p in paths if not p.endswith("_SMPL_NeuralAnnot.json") or os.path.exists(p)]


def load_moon(folder: str, selection: Selection, arrays: dict[str, np.ndarray]) -> SampleTable:
    """Every selected subject's images as one table sorted by (subject, key); MeshrecError on bad input."""
    selection.check()
    if not os.path.isdir(folder):
        raise MeshrecError(f"--annotations {folder} is not a directory")
    tables = [load_subject(folder, s, selection, arrays) for s in selection.subjects]
    names = [annotation_path(folder, s, "data") for s in selection.subjects]
    table = concat(tables, names)
    if len(table) == 0:
        raise MeshrecError(f"{folder}: no image of {','.join(selection.subjects)} is selected "
                           f"(every {selection.every}th frame, cameras {selection.cameras})")
    return sorted_unique(table)


@dataclass(frozen=True)
class MoonSource:
    """What the packer needs for `--source h36m-moon`."""

    annotations: str
    selection: Selection
    body: str  # the SMPL-format model the fits were made with (NeuralAnnot: neutral SMPL)
    image_prefix: str = ""  # Moon's images root relative to the packer's (sources mixed in one pack)

    def files(self) -> list[str]:
        return [*annotation_files(self.annotations, self.selection), self.body]

    def load(self) -> SampleTable:
        from meshrec.body.model_file import load_arrays

        table = load_moon(self.annotations, self.selection, load_arrays(self.body))
        if self.image_prefix:
            table.image = np.char.add(f"{self.image_prefix.rstrip('/')}/", table.image).astype(str)
        return table
