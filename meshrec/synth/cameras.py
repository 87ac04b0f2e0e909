"""Four fixed cameras around the capture area, as in Human3.6M (one rig for all subjects).

World frame: y up, the floor at y = 0, the capture area's centre at the origin (metres).
Human3.6M's cameras stand near the room's corners, 4–6 m from the subject, 1.2–1.8 m high,
with focal lengths of about 1,145–1,150 px at 1000x1000 px and principal points a few pixels
off centre; the rig here is drawn from those ranges once per seed. Intrinsics scale with the
frame size, so a smaller `size` shows the same view.
"""

from __future__ import annotations

import numpy as np

from meshrec.render import Camera, look_at
from meshrec.synth.rng import stream

CAMERA_IDS = ("54138969", "55011271", "58860488", "60457274")
FOCAL_PER_PIXEL = (1.144, 1.150)   # focal length / frame width
DISTANCE_M = (4.2, 5.4)            # horizontal distance from the area's centre
HEIGHT_M = (1.2, 1.8)
AIM_HEIGHT_M = (0.8, 1.1)


def camera_rig(seed: int, size: int) -> dict[str, Camera]:
    """camera id -> Camera (world->camera extrinsics, intrinsics for a size x size frame)."""
    rng = stream(seed, "camera rig")
    rig = {}
    for i, cam_id in enumerate(CAMERA_IDS):
        azimuth = np.deg2rad(45.0 + 90.0 * i + rng.uniform(-12.0, 12.0))
        dist, height = rng.uniform(*DISTANCE_M), rng.uniform(*HEIGHT_M)
        eye = (dist * np.sin(azimuth), height, dist * np.cos(azimuth))
        target = (rng.uniform(-0.2, 0.2), rng.uniform(*AIM_HEIGHT_M), rng.uniform(-0.2, 0.2))
        R, t = look_at(eye, target)
        f = size * rng.uniform(*FOCAL_PER_PIXEL)
        cx, cy = size * (0.5 + rng.uniform(-0.015, 0.015, 2))
        rig[cam_id] = Camera(f, f, cx, cy, size, size, R, t)
    return rig


def intrinsics(camera: Camera) -> np.ndarray:
    """OpenCV K (3, 3): camera-frame points project as K @ X."""
    return np.array([[camera.fx, 0.0, camera.cx], [0.0, camera.fy, camera.cy], [0.0, 0.0, 1.0]])


def center_of(camera: Camera) -> np.ndarray:
    """The camera's position in the world."""
    return -camera.R.T @ camera.t
