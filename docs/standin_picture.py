"""Draw the stand-in body in a few poses to docs/standin.png (so a reader can see what it is).

    python docs/standin_picture.py [--out docs/standin.png] [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from meshrec.body import params as layout
from meshrec.body import standin
from meshrec.body.smpl import BodyModel
from meshrec.render import Camera, look_at, part_colors, render_mesh, save_png

DEG = np.pi / 180


def _pose(**joint_rotations: tuple[float, float, float]) -> np.ndarray:
    """An 82-vector with the given joints' axis-angle rotations (degrees), zero shape."""
    vec = np.zeros(layout.SIZE)
    for name, rot in joint_rotations.items():
        j = layout.JOINT_NAMES.index(name)
        vec[3 * j: 3 * j + 3] = np.asarray(rot) * DEG
    return vec


POSES = {
    "rest (T-pose)": _pose(),
    "walking": _pose(left_hip=(-30, 0, 0), right_hip=(25, 0, 0), right_knee=(35, 0, 0),
                     left_knee=(10, 0, 0), left_shoulder=(0, 0, -70), right_shoulder=(0, 0, 70),
                     left_elbow=(0, -20, 0), right_elbow=(0, 20, 0)),
    "sitting": _pose(left_hip=(-90, 0, -5), right_hip=(-90, 0, 5), left_knee=(90, 0, 0),
                     right_knee=(90, 0, 0), left_shoulder=(0, 0, -60), right_shoulder=(0, 0, 60),
                     left_elbow=(0, -60, 0), right_elbow=(0, 60, 0)),
    "waving, tall (beta0 = +2)": _pose(left_shoulder=(0, 0, 40), left_elbow=(0, -80, 0),
                                       right_shoulder=(0, 0, 75), spine2=(0, 0, -8)),
}
POSES["waving, tall (beta0 = +2)"][layout.BETAS.start] = 2.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).with_name("standin.png")))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=400, help="pixels per panel")
    args = ap.parse_args()

    arrays = standin.build_standin(args.seed)
    body = BodyModel(arrays)
    colors = part_colors(arrays["weights"])
    with torch.no_grad():
        verts = body(torch.from_numpy(np.stack(list(POSES.values())))).vertices.numpy()

    s = args.size
    R, t = look_at(eye=(1.6, 0.2, 3.6), target=(0.0, -0.35, 0.0))
    cam = Camera(fx=1.55 * s, fy=1.55 * s, cx=s / 2, cy=s / 2, width=s, height=s, R=R, t=t)
    panels = [render_mesh(v, body.faces, cam, vertex_colors=colors, background=(236, 236, 236),
                          supersample=2).image for v in verts]
    save_png(args.out, np.concatenate(panels, axis=1))
    print(f"wrote {args.out}: " + " | ".join(POSES))


if __name__ == "__main__":
    main()
