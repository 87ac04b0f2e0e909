"""One (subject, action, camera) sequence: the posed body, its labels in the camera, its frames.

World frame: y up, floor y = 0 (cameras.py). The body model is posed in the world with global
orientation R_w = R_y(heading) · R_tilt and no translation, then moved by T_w so that its lowest
point touches the floor (or, seated, its pelvis part rests on the seat) and its pelvis is at the
sequence's (x, z). SMPL's root rotation turns about the rest pelvis joint J0, which stays put,
so in the camera (R, t):

    global orient  R_c = R · R_w
    transl         = R (J0 + T_w) + t − J0     (smplx convention: added to every vertex)
    vertices_cam   = SMPL(R_c, body pose, betas).vertices + transl = R · vertices_world + t

Box (SPIN layout): `center` is the centre of the box around all projected vertices (the whole
person, occluded parts included, not clipped to the frame); `scale` = BOX_MARGIN (1.0) × that
box's longest side / 200: 200·scale px is the tightest square around the whole person. Context
is the cropper's to add (the packer's `context`, 1.2 by default: the usual HMR/SPIN framing).
SPIN's own h36m files use 0.9 × the longest side of the ground-truth mask's box, slightly tighter
(a 200·scale·context crop of them is about 10 % tighter than one of these).

Joints (SPIN's h36m_train.py / h36m.py layout): "mocap" = Human3.6M's 17 joints regressed from
the world mesh (the body's `h36m` regressor) plus marker noise (MARKER_NOISE_M per axis, clipped
at 3 sd, drawn once per subject, action and frame, so the four cameras see the same points),
then moved into each camera. `S` (n, 24, 4): those joints minus their pelvis (row 0, as SPIN's
`S17 -= S17[0]`), metres, in J24 rows `h36m.J24_OF_H36M` with confidence 1, other rows 0.
`part` (n, 24, 3): the same (uncentred) joints projected with K, full-frame pixels (OpenCV: pixel
centres at integers, as `center`), visibility 1 on the same rows.

Frames: 0.1 s apart, numbered 1, 6, 11, … as SPIN names every 5th frame of H36M's 50 fps videos.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from meshrec.body import h36m
from meshrec.body.params import NUM_BETAS
from meshrec.body.smpl import BodyModel
from meshrec.render import Camera, part_colors, render_mesh
from meshrec.synth import limits, motion, scene
from meshrec.synth.cameras import intrinsics
from meshrec.synth.rng import stream
from meshrec.synth.subjects import subject_betas

BOX_MARGIN = 1.0        # person box side / the longest side of the projected vertices' box
SPIN_PIXELS = 200.0     # SPIN: box side = 200 * scale
JPEG_QUALITY = 90
FRAME_STRIDE = 5        # frame numbers 1, 6, 11, ...: every 5th frame of a 50 fps video, as SPIN
SUBACTION = 1
MARKER_NOISE_M = 0.002  # sd per axis of the mocap joints' error (H36M's markers: a few mm)
MARKER_CLIP = 3.0       # noise is clipped at this many sd


def image_name(subject: str, action: str, camera_id: str, k: int) -> str:
    """Path of the k-th generated frame, relative to the image root (H36M style)."""
    return f"{subject}/{action}_{SUBACTION}.{camera_id}/frame_{FRAME_STRIDE * k + 1:06d}.jpg"


class Body:
    """The body model plus what rendering and labels need from it: faces, part colours, the seat
    region, the (17, V) Human3.6M joint regressor (None: the stand-in's, built for this body)."""

    def __init__(self, arrays: dict[str, np.ndarray], regressor: np.ndarray | None = None) -> None:
        from meshrec.body.standin.h36m import h36m_regressor

        self.model = BodyModel(arrays)
        self.h36m = np.asarray(h36m_regressor(arrays) if regressor is None else regressor,
                               dtype=np.float64)
        self.faces = np.asarray(arrays["f"], dtype=np.int64)
        weights = np.asarray(arrays["weights"])
        self.colors = part_colors(weights).astype(np.float64) / 255.0
        self.pelvis_part = np.argmax(weights, axis=1) == 0   # what sits on a seat

    def forward(self, pose: np.ndarray, betas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """pose (n, 72), betas (10,) -> vertices (n, V, 3), joints (n, 24, 3), float64, no translation."""
        params = np.concatenate([pose, np.broadcast_to(betas, (len(pose), NUM_BETAS))], axis=1)
        with torch.no_grad():
            out = self.model(torch.from_numpy(params))
        return out.vertices.double().numpy(), out.joints.double().numpy()


@dataclass(frozen=True)
class Posed:
    """An action's sequence posed in the world."""

    betas: np.ndarray        # (10,)
    body_pose: np.ndarray    # (n, 69) axis-angle of joints 1..23
    orient: np.ndarray       # (n, 3, 3) world global orientation R_w
    vertices: np.ndarray     # (n, V, 3) world
    joints: np.ndarray       # (n, 24, 3) world
    mocap: np.ndarray        # (n, 17, 3) world: Human3.6M's joints off the mesh + marker noise
    rest_pelvis: np.ndarray  # (3,) J0: the model's pelvis joint without translation
    offset: np.ndarray       # (n, 3) T_w
    seat: tuple[np.ndarray, float, float] | None  # (pelvis x z, heading, seat top) for a stool
    sequence: motion.Sequence


def pose_world(body: Body, subject: str, action: int, n: int, seed: int) -> Posed:
    """Pose the subject's body for `n` frames of action number `action`, placed in the world."""
    act = motion.ACTIONS[action]
    seq = motion.make_sequence(act, n, stream(seed, subject, act.name, "motion"))
    betas = subject_betas(subject, seed)
    local = limits.euler_to_axis_angle(seq.euler)                    # (n, 72); joint 0 = tilt
    tilt = Rotation.from_rotvec(local[:, :3])
    turn = Rotation.from_rotvec(np.outer(seq.heading, [0.0, 1.0, 0.0]))
    orient = (turn * tilt).as_matrix()
    pose = np.concatenate([(turn * tilt).as_rotvec(), local[:, 3:]], axis=1)
    verts, joints = body.forward(pose, betas)
    rest_pelvis = joints[0, 0].copy()

    lowest = verts[:, :, 1].min(axis=1)                              # feet on the floor ...
    lift = -lowest
    seat = None
    if seq.seated:                                                   # ... or seated on a stool
        sit = verts[:, body.pelvis_part, 1].min(axis=1)
        top = float(np.median(sit - lowest))
        lift = np.maximum(lift, top - sit)
        seat = (seq.position.mean(axis=0), float(np.mean(seq.heading)), top)
    offset = np.stack([seq.position[:, 0] - rest_pelvis[0], lift, seq.position[:, 1] - rest_pelvis[2]], axis=1)
    verts = verts + offset[:, None]
    mocap = np.einsum("jv,nvc->njc", body.h36m, verts) + marker_noise(seed, subject, act.name, n)
    return Posed(betas=betas, body_pose=local[:, 3:], orient=orient, vertices=verts,
                 joints=joints + offset[:, None], mocap=mocap, rest_pelvis=rest_pelvis, offset=offset,
                 seat=seat, sequence=seq)


def marker_noise(seed: int, subject: str, action: str, n: int) -> np.ndarray:
    """(n, 17, 3) world-frame error of the mocap joints, metres: one draw serves all cameras."""
    rng = stream(seed, subject, action, "markers")
    return MARKER_NOISE_M * np.clip(rng.standard_normal((n, h36m.NUM_JOINTS, 3)), -MARKER_CLIP, MARKER_CLIP)


def project(K: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(..., 3) camera-frame points → (..., 2) full-frame pixels (OpenCV: K @ X, divided by depth)."""
    return np.stack([K[0, 0] * points[..., 0] / points[..., 2] + K[0, 2],
                     K[1, 1] * points[..., 1] / points[..., 2] + K[1, 2]], axis=-1)


def camera_labels(posed: Posed, camera: Camera) -> dict[str, np.ndarray]:
    """SPIN-layout rows (n of them) for this camera: center, scale, part, S, pose, shape, transl, cam_K."""
    n = len(posed.body_pose)
    R, t = camera.R, camera.t
    orient_cam = Rotation.from_matrix(np.einsum("ij,njk->nik", R, posed.orient)).as_rotvec()
    transl = np.einsum("ij,nj->ni", R, posed.rest_pelvis + posed.offset) + t - posed.rest_pelvis
    mocap = np.einsum("ij,nkj->nki", R, posed.mocap) + t
    K = intrinsics(camera)
    uv = project(K, np.einsum("ij,nkj->nki", R, posed.vertices) + t)
    lo, hi = uv.min(axis=1), uv.max(axis=1)
    ones = np.ones((n, h36m.NUM_JOINTS, 1))
    return {
        "center": (lo + hi) / 2.0,
        "scale": BOX_MARGIN * (hi - lo).max(axis=1) / SPIN_PIXELS,
        "part": h36m.h36m_to_j24(np.concatenate([project(K, mocap), ones], axis=2)),
        "S": h36m.h36m_to_j24(np.concatenate([mocap - mocap[:, h36m.PELVIS:h36m.PELVIS + 1], ones], axis=2)),
        "pose": np.concatenate([orient_cam, posed.body_pose], axis=1),
        "shape": np.broadcast_to(posed.betas, (n, NUM_BETAS)).copy(),
        "transl": transl,
        "cam_K": np.broadcast_to(K, (n, 3, 3)).copy(),
    }


@dataclass(frozen=True)
class SequenceScene:
    """What stays fixed over one camera's view of a sequence."""

    background: np.ndarray       # (H, W, 3) uint8
    light: scene.Lighting
    boxes: tuple[scene.Box, ...]  # occluder and/or seat
    has_occluder: bool


def sequence_scene(posed: Posed, subject: str, action: int, camera_id: str, camera: Camera,
                   seed: int) -> SequenceScene:
    name = motion.ACTIONS[action].name
    rng = stream(seed, subject, name, camera_id, "scene")
    bg = scene.background(scene.pick_background_kind(rng), camera, rng)
    light = scene.lighting(stream(seed, subject, name, "light"))     # the same for all four cameras
    boxes = []
    if posed.seat is not None:
        xz, heading, top = posed.seat
        boxes.append(scene.seat(xz, heading, top, stream(seed, subject, name, "seat")))
    occ = scene.occluder(camera, posed.sequence.position, rng)
    if occ is not None:
        boxes.append(occ)
    return SequenceScene(background=bg, light=light, boxes=tuple(boxes), has_occluder=occ is not None)


def render_frame(body: Body, vertices: np.ndarray | None, camera: Camera, sc: SequenceScene) -> np.ndarray:
    """(H, W, 3) uint8 frame: the body (world vertices; None = the scene alone) with the boxes."""
    parts_v, parts_f, parts_c, count = [], [], [], 0
    if vertices is not None:
        parts_v.append(vertices)
        parts_f.append(body.faces)
        parts_c.append(body.colors * sc.light.tint)
        count = len(vertices)
    for b in sc.boxes:
        parts_v.append(b.vertices)
        parts_f.append(b.faces + count)
        parts_c.append(np.broadcast_to(b.color, b.vertices.shape))
        count += len(b.vertices)
    if not parts_v:
        return np.array(sc.background, copy=True)
    light_cam = camera.R @ sc.light.direction
    result = render_mesh(np.concatenate(parts_v), np.concatenate(parts_f), camera,
                         vertex_colors=np.concatenate(parts_c), light_dir=light_cam,
                         ambient=sc.light.ambient, background=sc.background)
    return result.image


def encode_jpeg(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()
