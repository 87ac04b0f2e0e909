"""Training loss: vertices through the SMPL layer, optional parameter-group terms, and joint terms
for samples that carry joints instead of (or beside) SMPL labels.

    total = w_vert·D(vertices) + w_joint·D(24 SMPL joints) + w_shape·D(betas)
          + w_body·D(body pose) + w_hand·D(wrist/hand pose) + w_loc·D(global orient [+ transl])
          + w_joint3d·Dc(17 H36M joints) + w_kp2d·Dc(their 2D projections)

SMPL terms (vertices, SMPL joints, groups) use only the samples with an SMPL label (`has_smpl`)
and are means over those samples; a batch without any contributes 0 (never NaN). The joint
terms use every sample: the 17 Human3.6M joints are regressed from the predicted mesh
(`body.h36m_regressor`); 3D: pelvis-centred, against the sample's pelvis-centred joints; 2D: the
regressed joints (root-relative) through the predicted weak-perspective camera, s·(X_xy + t), in
the crop's normalised coordinates (2·(u + 0.5)/S − 1 of OpenCV pixel u, S the input side), against
the crop keypoints. Dc weighs each joint by its confidence c: Σ c·d / (k·Σ c) over the k
coordinates, 0 when Σ c = 0 (a batch without joints).

D is the mean squared error (`loss.type: l2`, the study's loss) or the mean absolute error
(`l1`) over every entry. Vertices and joints are root-relative (the pelvis joint subtracted
from prediction and truth alike) unless the model predicts translation (P = 85): then they are
compared in the camera frame. Pose terms compare axis-angle entries, or rotation matrices when
the head works in 6D (axis-angle is ambiguous by 2π there). Terms with weight 0 are not computed.

`loss.supervise: all` averages each term over the regressor's iterations (so the scale does
not change with their number); `last` supervises the final estimate only. The SMPL layer runs
in float32 with autocast off (BodyModel does it); the true mesh is computed without gradients.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from meshrec.body import params as layout
from meshrec.body.rotations import axis_angle_to_matrix
from meshrec.body.smpl import BodyModel
from meshrec.config import Config
from meshrec.errors import MeshrecError

GROUP_TERMS = ("shape", "body", "hand", "loc")


def _per_entry(pred: Tensor, true: Tensor, kind: str) -> Tensor:
    """Squared (l2) or absolute (l1) difference of every entry; `true` broadcasts."""
    diff = pred - true
    if kind == "l2":
        return diff * diff
    if kind == "l1":
        return diff.abs()
    raise MeshrecError(f"loss.type must be 'l1' or 'l2'; got {kind!r}")


def distance_rows(pred: Tensor, true: Tensor, rows: Tensor, kind: str) -> Tensor:
    """Mean squared (l2) or absolute (l1) difference over the batch rows where `rows` ([B]
    bool) is true, 0 when none is: pred [n, B, ...] (n iterations), true [B, ...]. Other rows
    are left out, whatever they hold."""
    per = _per_entry(pred, true, kind)
    per = per.flatten(2) if per.dim() > 2 else per.unsqueeze(-1)   # [n, B, k]
    per = torch.where(rows[:, None], per, 0.0)
    return per.sum() / (rows.sum() * (per.shape[0] * per.shape[2])).clamp_min(1)


def _true_params(batch: dict, size: int, device: torch.device) -> Tensor:
    true = batch["params"].to(device=device, dtype=torch.float32)
    if true.shape[-1] == size:
        return true
    if size == layout.SIZE and true.shape[-1] == layout.SIZE_WITH_TRANSL:
        return true[:, : layout.SIZE]  # the model does not predict translation: ignore it
    raise MeshrecError(f"the model predicts {size} parameters but the data has "
                       f"{true.shape[-1]}; model.predict_translation needs data with translation")


def _group_entries(name: str, with_transl: bool) -> tuple[list[int], np.ndarray]:
    """(joints whose rotations belong to the group, other vector entries of the group)."""
    idx = layout.groups(with_transl)[name]
    pose = idx[idx < layout.POSE.stop]
    return sorted(set((pose // 3).tolist())), idx[idx >= layout.POSE.stop]


def _group_values(name: str, params: Tensor, rotmat: Tensor | None, with_transl: bool) -> Tensor:
    """[..., k] values of one group: axis-angle (or flattened matrices) of its joints, then
    its non-rotation entries (betas, transl)."""
    joints, rest = _group_entries(name, with_transl)
    parts = []
    if joints:
        if rotmat is None:
            cols = [3 * j + k for j in joints for k in range(3)]
            parts.append(params[..., cols])
        else:
            parts.append(rotmat[..., joints, :, :].flatten(-3))
    if len(rest):
        parts.append(params[..., rest.tolist()])
    return torch.cat(parts, dim=-1)


def _mesh(body: BodyModel, params: Tensor, rotmat: Tensor | None, camera: bool
          ) -> tuple[Tensor, Tensor]:
    """(vertices, joints) of [N, P] params, root-relative unless in the camera frame."""
    if rotmat is None:
        out = body(params)
    else:
        transl = params[:, layout.TRANSL] if camera else None
        out = body.forward_rotmat(rotmat[:, :1], rotmat[:, 1:], params[:, layout.BETAS], transl)
    verts, joints = out.vertices, out.joints
    if not camera:
        root = joints[:, :1]
        verts, joints = verts - root, joints - root
    return verts, joints


def _weighted(pred: Tensor, true: Tensor, conf: Tensor, kind: str) -> Tensor:
    """Confidence-weighted mean distance over joints: pred/true [..., J, k], conf [..., J];
    pred may carry a leading iterations axis that `true` and `conf` broadcast over."""
    per = _per_entry(pred, true, kind)
    conf = conf.expand(per.shape[:-1])
    total = conf.sum() * per.shape[-1]
    return (per.sum(-1) * conf).sum() / total.clamp_min(1e-12)


def normalized_keypoints(uv: Tensor, size: int) -> Tensor:
    """Crop pixels (OpenCV: pixel i's centre at i) → the crop's normalised coordinates [-1, 1]."""
    return (uv + 0.5) * (2.0 / size) - 1.0


def project(joints: Tensor, camera: Tensor) -> Tensor:
    """Weak perspective (HMR): [..., J, 3] points, [..., 3] cameras (s, tx, ty) → [..., J, 2]."""
    return camera[..., None, :1] * (joints[..., :2] + camera[..., None, 1:])


def compute_loss(pred, batch: dict, body: BodyModel, cfg: Config,
                 regressor: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """(total loss, {term: detached unweighted value}) for a `meshrec.model.Prediction`.

    `regressor` (17, V) is needed when loss.w_joint3d or loss.w_kp2d is set."""
    w = cfg.loss
    last = slice(None) if w.supervise == "all" else slice(-1, None)
    steps, cams = pred.params[last], pred.camera[last]
    rots = None if pred.rotmat is None else pred.rotmat[last]
    n, size = len(steps), steps[0].shape[-1]
    camera = layout.has_transl(steps[0])
    device = steps[0].device
    true = _true_params(batch, size, device)
    batch_size = true.shape[0]
    labelled = batch.get("has_smpl")
    labelled = (torch.ones(batch_size, dtype=torch.bool, device=device) if labelled is None
                else labelled.to(device=device, dtype=torch.bool))
    p = torch.stack(steps).float()                       # [n, B, P]
    r = None if rots is None else torch.stack(rots).float()

    weighted: list[Tensor] = []
    terms: dict[str, Tensor] = {}

    def add(name: str, weight: float, value: Tensor) -> None:
        terms[name] = value.detach()
        weighted.append(weight * value)

    joint_terms = w.w_joint3d > 0 or w.w_kp2d > 0
    if joint_terms and regressor is None:
        raise MeshrecError("loss.w_joint3d / loss.w_kp2d need the Human3.6M joint regressor "
                           "(body.h36m_regressor)")
    # Every row goes through the SMPL layer and unlabelled rows are masked out of the means:
    # selecting the labelled rows would read the mask back to the host (a sync per step).
    smpl_mesh = w.w_vert > 0 or w.w_joint > 0
    if joint_terms or smpl_mesh:
        m = p.shape[1]
        flat_r = None if r is None else r.flatten(0, 1)
        pred_v, pred_j = _mesh(body, p.flatten(0, 1), flat_r, camera)
        pred_v = pred_v.unflatten(0, (n, m))
        pred_j = pred_j.unflatten(0, (n, m))
        if smpl_mesh:
            with torch.no_grad():
                true_v, true_j = _mesh(body, true, None, camera)
            if w.w_vert > 0:
                add("vert", w.w_vert, distance_rows(pred_v, true_v, labelled, w.type))
            if w.w_joint > 0:
                add("joint", w.w_joint, distance_rows(pred_j, true_j, labelled, w.type))
        if joint_terms:
            # Root-relative vertices (no translation) → the 17 regressed joints.
            rel = pred_v - pred_j[..., :1, :] if camera else pred_v
            j17 = torch.einsum("jv,nbvc->nbjc", regressor.to(rel), rel)
            if w.w_joint3d > 0:
                j3d = batch["j3d"].to(device=device, dtype=torch.float32)
                centred = j17 - j17[..., :1, :]
                add("joint3d", w.w_joint3d,
                    _weighted(centred, j3d[..., :3] - j3d[:, :1, :3], j3d[..., 3], w.type))
            if w.w_kp2d > 0:
                kp = batch["kp2d"].to(device=device, dtype=torch.float32)
                uv = project(j17, torch.stack(cams).float())
                add("kp2d", w.w_kp2d, _weighted(
                    uv, normalized_keypoints(kp[..., :2], cfg.data.image_size), kp[..., 2],
                    w.type))
    true_r = None
    for name in GROUP_TERMS:
        weight = getattr(cfg.loss, f"w_{name}")
        if weight <= 0:
            continue
        if r is not None and true_r is None:
            true_r = axis_angle_to_matrix(true[:, layout.POSE].reshape(batch_size, -1, 3))
        add(name, weight, distance_rows(_group_values(name, p, r, camera),
                                        _group_values(name, true, true_r, camera), labelled,
                                        w.type))

    if not weighted:
        raise MeshrecError("every loss weight is 0; nothing would be trained")
    total = torch.stack(weighted).sum()
    return total, terms
