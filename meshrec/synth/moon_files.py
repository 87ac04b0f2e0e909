"""The generated frames in Moon's Human3.6M layout (I2L-MeshNet's loader), with NeuralAnnot-style fits.

    DIR/annotations/Human36M_subjectN_data.json       COCO: images + annotations (bbox = the person box)
    DIR/annotations/Human36M_subjectN_camera.json     the rig, R and t (mm) world→camera, f, c
    DIR/annotations/Human36M_subjectN_joint_3d.json   the mocap joints, world mm
    DIR/annotations/Human36M_subjectN_SMPL_NeuralAnnot.json   world fits: pose with the world
        global orientation R_w, shape, trans = T_w (generate.py): SMPL(pose, shape) + trans is
        the world mesh, so NeuralAnnot's demo_smpl.py recovers the camera-frame mesh
    DIR/images/s_01_act_02_subact_01_ca_01/s_01_act_02_subact_01_ca_01_000001.jpg   hard links
        (symlinks where the file system refuses) to the generated frames
Frames are every 5th (frame_idx 0, 5, 10, … = frame numbers 1, 6, 11, …), sub-action 1.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy.spatial.transform import Rotation

from meshrec.body import h36m
from meshrec.errors import MeshrecError
from meshrec.fileio import atomic_open
from meshrec.shards import moon
from meshrec.synth import generate, motion
from meshrec.synth.cameras import CAMERA_IDS, camera_rig

ANNOTATIONS, IMAGES = "annotations", "images"


def camera_json(seed: int, size: int) -> dict[str, dict[str, list]]:
    """The rig as Moon's camera.json: {"1".."4": {R, t (mm), f, c}}."""
    rig = camera_rig(seed, size)
    return {str(i + 1): {"R": rig[c].R.tolist(), "t": (1000.0 * np.asarray(rig[c].t)).tolist(),
                         "f": [rig[c].fx, rig[c].fy], "c": [rig[c].cx, rig[c].cy]}
            for i, c in enumerate(CAMERA_IDS)}


def world_fit(posed: generate.Posed, k: int) -> dict[str, list[float]]:
    """Frame k as a NeuralAnnot fit: world orientation, body pose, shape, trans (m)."""
    orient = Rotation.from_matrix(posed.orient[k]).as_rotvec()
    return {"pose": np.concatenate([orient, posed.body_pose[k]]).tolist(),
            "shape": posed.betas.tolist(), "trans": posed.offset[k].tolist()}


def _link(target: Path, link: Path) -> None:
    if link.exists() or link.is_symlink():
        return
    link.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(target, link)
    except OSError:
        os.symlink(os.path.relpath(target, link.parent), link)


def _write_json(path: Path, value: Any) -> None:
    with atomic_open(path, "w") as fh:
        json.dump(value, fh, separators=(",", ":"))


def write_moon_files(out: Path, tasks: Sequence[Any], rows: dict[int, dict[str, np.ndarray]],
                     body: generate.Body, seed: int, size: int) -> list[Path]:
    """Moon's files for the run's tasks (writer.Task, rows by task index); the paths written."""
    subjects: dict[str, dict[str, Any]] = {}
    posed_cache: dict[tuple[str, int], generate.Posed] = {}
    for i, task in enumerate(tasks):
        name = motion.ACTIONS[task.action].name
        action_idx = moon.ACTION_IDX[name]
        cam_idx = CAMERA_IDS.index(task.camera_id) + 1
        if (task.subject, task.action) not in posed_cache:
            posed_cache[(task.subject, task.action)] = generate.pose_world(
                body, task.subject, task.action, task.frames, seed)
        posed = posed_cache[(task.subject, task.action)]
        files = subjects.setdefault(task.subject, {"images": [], "annotations": [], "joints": {}, "fits": {}})
        sub = str(generate.SUBACTION)
        joints = files["joints"].setdefault(str(action_idx), {}).setdefault(sub, {})
        fits = files["fits"].setdefault(str(action_idx), {}).setdefault(sub, {})
        for k in range(task.frames):
            frame_idx = generate.FRAME_STRIDE * k
            file_name = moon.image_name(task.subject, action_idx, generate.SUBACTION, cam_idx, frame_idx)
            _link(out / str(rows[i]["imgname"][k]), out / IMAGES / file_name)
            image_id = len(files["images"])
            files["images"].append({
                "id": image_id, "file_name": file_name, "width": size, "height": size,
                "subject": int(task.subject[1:]), "action_name": name, "action_idx": action_idx,
                "subaction_idx": generate.SUBACTION, "cam_idx": cam_idx, "frame_idx": frame_idx})
            side = generate.SPIN_PIXELS * float(rows[i]["scale"][k])
            cx, cy = (float(v) for v in rows[i]["center"][k])
            files["annotations"].append({
                "id": image_id, "image_id": image_id, "bbox": [cx - side / 2, cy - side / 2, side, side],
                "keypoints_vis": [True] * h36m.NUM_JOINTS})
            joints[str(frame_idx)] = (1000.0 * h36m.reorder_moon(posed.mocap[k])).tolist()
            fits[str(frame_idx)] = world_fit(posed, k)
    written = []
    try:
        (out / ANNOTATIONS).mkdir(parents=True, exist_ok=True)
        for subject, files in subjects.items():
            parts = {"data": {"images": files["images"], "annotations": files["annotations"]},
                     "camera": camera_json(seed, size), "joint_3d": files["joints"],
                     "SMPL_NeuralAnnot": files["fits"]}
            for part, value in parts.items():
                path = Path(moon.annotation_path(str(out / ANNOTATIONS), subject, part))
                _write_json(path, value)
                written.append(path)
    except OSError as exc:
        raise MeshrecError(f"cannot write Moon's files under {out}: {exc}") from None
    return written
