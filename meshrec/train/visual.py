"""Pictures of predictions: [input crop | truth | prediction], each PANEL px, with a legend.

Both meshes are drawn over the crop with one weak-perspective camera (s, tx, ty), the model's
own kind (meshrec.loss.project): a point X lands at s·(X_xy + t) in the crop's normalised
coordinates, so a perfect prediction lies exactly on the truth, and a good one on the person.
Which camera:
  * a sample with 2D keypoints: the (s, t) that best fits the true 3D joints to them (least
    squares, `fit_weak_perspective`) — the image's own framing, independent of the prediction;
  * otherwise (and in `meshrec predict`, which has no truth): the predicted camera.
Meshes are centred as the camera expects them: minus their SMPL pelvis joint, as the loss's 2D
term centres them (the predicted camera is trained that way), or, for a joints-only sample whose
camera is fit to its pelvis-centred mocap joints, minus the mesh's regressed H36M pelvis.
A joints-only sample (has_smpl false) has no true mesh: its truth panel shows the 2D keypoints
as an H36M-17 skeleton. The legend names the colours and the camera and gives the sample's error
as validation computes it: PVE (SMPL label) or MPJPE / PA-MPJPE on the 14 joints (joints only).

The renderer is perspective; `weak_perspective_view` turns the weak-perspective camera into an
exact pinhole one (see there). Speed: about 0.1 s per picture on one core (two 256 px renders).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional, Sequence

import numpy as np
import torch

from meshrec.body import h36m
from meshrec.data.augment import IMAGENET_MEAN, IMAGENET_STD
from meshrec.errors import MeshrecError
from meshrec.loss import normalized_keypoints
from meshrec.render import Camera, RenderResult, overlay, render_mesh

PANEL = 256             # side of each tile, px
TRUE_RGB = (60, 200, 90)
PRED_RGB = (245, 140, 40)
MESH_ALPHA = 0.6        # the person stays visible under the mesh
DEPTH_M = 10.0          # distance of the pinhole camera standing in for weak perspective
MIN_FIT_JOINTS = 2      # a scale and a 2D shift need two points
TITLE_PX = 26
LINE_PX = 22
FONT_PX = 15
BAR_RGB = (32, 32, 32)
TEXT_RGB = (235, 235, 235)
FIT = "fit to the true 2D joints"
PREDICTED = "predicted"


# ------------------------------------------------------------------ weak-perspective math (pure)

def to_pixels(normalised: np.ndarray, size: int) -> np.ndarray:
    """Normalised crop coordinates [-1, 1] → OpenCV pixels of a size×size picture (pixel i's
    centre at i): the inverse of meshrec.loss.normalized_keypoints."""
    return (np.asarray(normalised, dtype=np.float64) + 1.0) * (size / 2.0) - 0.5


def fit_weak_perspective(joints: np.ndarray, uv: np.ndarray, conf: np.ndarray
                         ) -> Optional[np.ndarray]:
    """The camera (s, tx, ty) minimising Σ c·‖s·(X_xy + t) − uv‖² over joints (J, 3) and their
    normalised 2D positions uv (J, 2) with confidences c (J,); None when fewer than two joints
    count, they coincide, or the best scale is not positive (no camera shows that).

    With a = s·t the problem is linear, s·X + a ≈ uv: around the weighted means, s is the
    regression slope over both axes, then t = mean(uv)/s − mean(X)."""
    X = np.asarray(joints, dtype=np.float64)[:, :2]
    y = np.asarray(uv, dtype=np.float64)
    c = np.clip(np.asarray(conf, dtype=np.float64), 0.0, None)
    ok = (c > 0) & np.isfinite(X).all(1) & np.isfinite(y).all(1)
    if ok.sum() < MIN_FIT_JOINTS:
        return None
    X, y, c = X[ok], y[ok], c[ok]
    w = c / c.sum()
    mx, my = w @ X, w @ y
    dx, dy = X - mx, y - my
    spread = float(w @ (dx * dx).sum(1))
    if spread < 1e-12:
        return None
    s = float(w @ (dx * dy).sum(1)) / spread
    if not s > 0:
        return None
    t = my / s - mx
    return np.array([s, t[0], t[1]])


def usable_camera(camera: Optional[np.ndarray]) -> bool:
    return camera is not None and bool(np.isfinite(camera).all()) and float(camera[0]) > 0


def weak_perspective_view(vertices: np.ndarray, camera: Sequence[float], size: int,
                          depth: float = DEPTH_M) -> tuple[np.ndarray, Camera]:
    """Vertices (V, 3) and a pinhole camera whose picture of them is exactly the weak-perspective
    one in a size×size image.

    The vertices are moved to depth z = depth + Z and their x, y scaled by z / depth, so the
    perspective division undoes the scaling: with f = s·depth·size/2, u = f·x/z + size/2 =
    (s·(X + tx) + 1)·size/2 for every vertex (render's pixel centres sit at j + 0.5, so this is
    to_pixels + 0.5). A triangle's image is the triangle of its projected vertices, so
    rasterising is exact too; depth order stays that of Z (the mesh must lie within ±depth)."""
    v = np.asarray(vertices, dtype=np.float64)
    s, tx, ty = (float(c) for c in camera)
    z = depth + v[:, 2]
    if not (s > 0 and np.isfinite(v).all() and (z > 0.1 * depth).all()):
        raise MeshrecError(f"cannot draw with weak-perspective camera s={s:g}: the scale must be "
                           f"positive and the mesh within {0.9 * depth:g} m of its centre")
    k = z / depth
    moved = np.stack([(v[:, 0] + tx) * k, (v[:, 1] + ty) * k, z], axis=1)
    f = s * depth * size / 2.0
    return moved, Camera(f, f, size / 2.0, size / 2.0, size, size)


def render_weak(vertices: np.ndarray, faces: np.ndarray, camera: Sequence[float], size: int,
                rgb: Sequence[int]) -> RenderResult:
    """One-colour shaded mesh through a weak-perspective camera, size×size."""
    moved, pinhole = weak_perspective_view(vertices, camera, size)
    colors = np.tile(np.asarray(rgb, dtype=np.uint8), (len(moved), 1))
    return render_mesh(moved, faces, pinhole, vertex_colors=colors)


# ------------------------------------------------------------------ what to draw (pure)

class View(NamedTuple):
    camera: Optional[np.ndarray]  # (s, tx, ty); None: no usable camera
    source: str                   # FIT or PREDICTED
    pred: np.ndarray              # (V, 3) predicted vertices, centred as the camera expects
    true: Optional[np.ndarray]    # (V, 3) true vertices centred the same way; None: no mesh


def choose_view(pred_v: np.ndarray, pred_root: np.ndarray, pred_camera: np.ndarray, size: int,
                true_v: Optional[np.ndarray] = None, true_root: Optional[np.ndarray] = None,
                true_j17: Optional[np.ndarray] = None, pred_j17: Optional[np.ndarray] = None,
                j3d: Optional[np.ndarray] = None, kp2d: Optional[np.ndarray] = None) -> View:
    """The camera and the centred meshes of one sample (module docstring).

    pred_v / true_v: meshes without translation (V, 3); *_root: their SMPL pelvis joint (3,);
    true_j17 / pred_j17: the 17 H36M joints regressed from them (None without a regressor);
    j3d (17, 4): mocap joints, pelvis-centred + confidence; kp2d (17, 3): keypoints in the
    size×size network crop's pixels + confidence; pred_camera (3,) the model's (s, tx, ty)."""
    if true_v is not None and true_root is None:
        raise MeshrecError("choose_view: a true mesh needs its root joint (true_root)")
    pred_v, pred_root = np.asarray(pred_v, np.float64), np.asarray(pred_root, np.float64)
    camera = None
    if kp2d is not None:
        kp = np.asarray(kp2d, dtype=np.float64)
        uv, conf = normalized_keypoints(kp[:, :2], size), kp[:, 2]
        if true_v is not None and true_j17 is not None:   # the loss's frame: minus SMPL pelvis
            camera = fit_weak_perspective(np.asarray(true_j17) - true_root, uv, conf)
            pred_centre, true_centre = pred_root, true_root
        elif true_v is None and pred_j17 is not None and j3d is not None:  # the labels' frame
            j = np.asarray(j3d, dtype=np.float64)
            camera = fit_weak_perspective(j[:, :3], uv, conf * (j[:, 3] > 0))
            pred_centre, true_centre = np.asarray(pred_j17, np.float64)[h36m.PELVIS], None
    source = FIT
    if camera is None:  # the predicted camera works in the loss's frame
        camera, source = np.asarray(pred_camera, dtype=np.float64), PREDICTED
        pred_centre, true_centre = pred_root, true_root
        if not usable_camera(camera):
            camera = None
    true = None if true_v is None else np.asarray(true_v, np.float64) - true_centre
    return View(camera, source, pred_v - pred_centre, true)


def camera_text(view: View) -> str:
    """The legend's camera line."""
    if view.camera is None:
        return "camera: none usable (the predicted scale is not a positive number)"
    s, tx, ty = view.camera
    return f"camera (weak persp.): {view.source}, s={s:.2f} t=({tx:+.2f}, {ty:+.2f})"


def error_text(pve_mm: Optional[float] = None, mpjpe_mm: Optional[float] = None,
               pa_mpjpe_mm: Optional[float] = None) -> str:
    """The legend's error line."""
    if pve_mm is not None:
        return f"error: PVE {pve_mm:.1f} mm"
    if mpjpe_mm is not None:
        return f"error (14 joints): MPJPE {mpjpe_mm:.1f} mm, PA-MPJPE {pa_mpjpe_mm:.1f} mm"
    return "error: none (no 3D label to score against)"


# ------------------------------------------------------------------ pixels

def crop_pixels(image: torch.Tensor) -> np.ndarray:
    """One normalised (3,S,S) network input → (S,S,3) uint8."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    pix = (image.detach().float().cpu() * std + mean).clamp(0, 1) * 255
    return pix.round().to(torch.uint8).permute(1, 2, 0).numpy()


def upsample(crop: np.ndarray, size: int) -> np.ndarray:
    """(S,S,3) uint8 → (size,size,3); PIL keeps the image edges fixed, as normalised coords do."""
    from PIL import Image

    return np.asarray(Image.fromarray(crop).resize((size, size), Image.BICUBIC))


def _font(px: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=px)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()


def draw_skeleton(tile: np.ndarray, kp2d: np.ndarray, crop_size: int,
                  rgb: Sequence[int] = TRUE_RGB) -> np.ndarray:
    """The H36M-17 keypoints (crop pixels + confidence) as bones and dots over a tile."""
    from PIL import Image, ImageDraw

    size = tile.shape[0]
    kp = np.asarray(kp2d, dtype=np.float64)
    xy = to_pixels(normalized_keypoints(kp[:, :2], crop_size), size)
    seen = kp[:, 2] > 0
    im = Image.fromarray(tile)
    pen = ImageDraw.Draw(im)
    width, r = max(2, size // 80), max(3, size // 60)
    for a, b in h36m.BONES:
        if seen[a] and seen[b]:
            pen.line([tuple(xy[a]), tuple(xy[b])], fill=(0, 0, 0), width=width + 2)
            pen.line([tuple(xy[a]), tuple(xy[b])], fill=tuple(rgb), width=width)
    for (x, y), ok in zip(xy, seen):
        if ok:
            pen.ellipse([x - r, y - r, x + r, y + r], fill=tuple(rgb), outline=(0, 0, 0))
    return np.asarray(im)


@dataclass
class Picture:
    image: np.ndarray                    # (H, W, 3) uint8: titles, tiles, legend
    pred_mask: Optional[np.ndarray]      # (size, size) bool, the predicted mesh's pixels
    true_mask: Optional[np.ndarray]      # the true mesh's (None when none was drawn)
    tiles: list[np.ndarray]              # the tiles alone, left to right
    titles: list[str]                    # above each tile
    legend: list[str]                    # the lines below


def picture(image: torch.Tensor, faces: np.ndarray, view: View, *, truth: bool = True,
            kp2d: Optional[np.ndarray] = None, error: str = "", size: int = PANEL) -> Picture:
    """[input | truth | prediction] (or [input | prediction] without `truth`) with titles and a
    legend; kp2d (17, 3) in network-crop pixels is drawn when there is no true mesh."""
    if size < 64:
        raise MeshrecError(f"overlay panels must be at least 64 px, got {size}")
    crop = crop_pixels(image)
    base = upsample(crop, size)
    titles: list[tuple[str, tuple]] = [("input", TEXT_RGB)]
    tiles = [base]
    true_mask = pred_mask = None
    if truth:
        if view.true is not None and view.camera is not None:
            r = render_weak(view.true, faces, view.camera, size, TRUE_RGB)
            tiles.append(overlay(base, r, MESH_ALPHA))
            true_mask = r.mask
            titles.append(("truth: SMPL mesh", TRUE_RGB))
        elif view.true is None and kp2d is not None and (np.asarray(kp2d)[:, 2] > 0).any():
            tiles.append(draw_skeleton(base, kp2d, crop.shape[0]))
            titles.append(("truth: 2D joints", TRUE_RGB))
        else:
            tiles.append(base)
            titles.append(("truth: not drawable" if view.true is not None else "truth: none",
                           TEXT_RGB))
    if view.camera is not None and np.isfinite(view.pred).all():  # NaN weights draw nothing
        r = render_weak(view.pred, faces, view.camera, size, PRED_RGB)
        tiles.append(overlay(base, r, MESH_ALPHA))
        pred_mask = r.mask
        titles.append(("prediction", PRED_RGB))
    else:
        tiles.append(base)
        titles.append(("prediction: not drawable", PRED_RGB))
    lines = [[("truth = green", TRUE_RGB), ("   ", TEXT_RGB), ("prediction = orange", PRED_RGB)]
             if truth else [("prediction = orange", PRED_RGB)],
             [(camera_text(view), TEXT_RGB)]]
    if error:
        lines.append([(error, TEXT_RGB)])
    return Picture(compose(tiles, titles, lines), pred_mask, true_mask, tiles,
                   [t for t, _ in titles], ["".join(t for t, _ in line) for line in lines])


def compose(tiles: list[np.ndarray], titles: list[tuple[str, tuple]],
            lines: list[list[tuple[str, tuple]]]) -> np.ndarray:
    """Tiles side by side, a title bar above each, legend lines (coloured runs) below."""
    from PIL import Image, ImageDraw

    size = tiles[0].shape[0]
    width = size * len(tiles)
    height = TITLE_PX + size + LINE_PX * len(lines) + 6
    im = Image.new("RGB", (width, height), BAR_RGB)
    for k, tile in enumerate(tiles):
        im.paste(Image.fromarray(tile), (k * size, TITLE_PX))
    pen = ImageDraw.Draw(im)
    font = _font(FONT_PX)
    for k, (text, rgb) in enumerate(titles):
        pen.text((k * size + 6, 5), text, fill=tuple(rgb), font=font)
    y = TITLE_PX + size + 4
    for line in lines:
        x = 6
        for text, rgb in line:
            pen.text((x, y), text, fill=tuple(rgb), font=font)
            x += pen.textlength(text, font=font)
        y += LINE_PX
    return np.asarray(im)


# ------------------------------------------------------------------ a validation batch

@torch.no_grad()
def batch_pictures(batch: dict, prediction, body, regressor: Optional[torch.Tensor],
                   count: int, size: int = PANEL) -> list[tuple[str, Picture]]:
    """(key, picture) of the first `count` samples of `batch`, given the model's `prediction`
    (meshrec.model.Prediction) for them; `regressor` (17, V) or None."""
    from meshrec import protocols
    from meshrec.body import params as layout
    from meshrec.train import evaluate

    n = min(count, len(batch["key"]))
    crop_size = batch["image"].shape[-1]
    pred = body(prediction.params[-1][:n, : layout.SIZE].float())
    cams = prediction.camera[-1][:n].float().cpu().numpy()
    true = body(batch["params"][:n, : layout.SIZE].float())
    has = batch.get("has_smpl")
    has = [True] * n if has is None else [bool(h) for h in has[:n]]
    joints = evaluate.Joints(regressor)
    pred_j, true_j = joints(pred.vertices, pred.joints), joints(true.vertices, true.joints)
    smpl_err = evaluate.sample_errors(pred.vertices, true.vertices, pred_j, true_j)
    j3d = batch["j3d"][:n].float().cpu()
    kp2d = batch["kp2d"][:n].float().cpu().numpy()
    h36m_err = protocols.h36m_errors(pred_j, j3d[..., :3]) if regressor is not None else None
    scored14 = (j3d[:, list(h36m.H36M_TO_J14), 3] > 0).all(1).tolist()

    def np_(t: torch.Tensor, i: int) -> np.ndarray:
        return t[i].detach().cpu().double().numpy()

    pics = []
    for i in range(n):
        r17 = regressor is not None
        view = choose_view(np_(pred.vertices, i), np_(pred.joints, i)[0], cams[i], crop_size,
                           true_v=np_(true.vertices, i) if has[i] else None,
                           true_root=np_(true.joints, i)[0] if has[i] else None,
                           true_j17=np_(true_j, i) if has[i] and r17 else None,
                           pred_j17=np_(pred_j, i) if r17 else None,
                           j3d=j3d[i].double().numpy(), kp2d=kp2d[i])
        if has[i]:
            error = error_text(pve_mm=smpl_err["pve_mm"][i])
        elif h36m_err is not None and scored14[i]:
            error = error_text(mpjpe_mm=float(h36m_err["mpjpe_mm"][i]),
                               pa_mpjpe_mm=float(h36m_err["pa_mpjpe_mm"][i]))
        else:
            error = error_text()
        pics.append((batch["key"][i], picture(batch["image"][i], body.faces, view,
                                              kp2d=kp2d[i], error=error, size=size)))
    return pics
