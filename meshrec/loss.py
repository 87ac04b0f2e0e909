"""Training loss: vertices through the SMPL layer, plus optional weighted parameter-group terms.

    total = w_vert·D(vertices) + w_joint·D(24 SMPL joints) + w_shape·D(betas)
          + w_body·D(body pose) + w_hand·D(wrist/hand pose) + w_loc·D(global orient [+ transl])

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


def distance(pred: Tensor, true: Tensor, kind: str) -> Tensor:
    """Mean squared (l2) or absolute (l1) difference over every entry; `true` broadcasts."""
    diff = pred - true
    if kind == "l2":
        return (diff * diff).mean()
    if kind == "l1":
        return diff.abs().mean()
    raise MeshrecError(f"loss.type must be 'l1' or 'l2'; got {kind!r}")


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


def compute_loss(pred, batch: dict, body: BodyModel, cfg: Config) -> tuple[Tensor, dict[str, Tensor]]:
    """(total loss, {term: detached unweighted value}) for a `meshrec.model.Prediction`."""
    w = cfg.loss
    steps = pred.params if w.supervise == "all" else pred.params[-1:]
    rots = None
    if pred.rotmat is not None:
        rots = pred.rotmat if w.supervise == "all" else pred.rotmat[-1:]
    n, size = len(steps), steps[0].shape[-1]
    camera = layout.has_transl(steps[0])
    device = steps[0].device
    true = _true_params(batch, size, device)
    batch_size = true.shape[0]
    # All supervised iterations go through SMPL in one call: [n, B, ...] flattened to [n·B, ...].
    p = torch.stack(steps).float()
    r = None if rots is None else torch.stack(rots).float()

    weighted: list[Tensor] = []
    terms: dict[str, Tensor] = {}

    def add(name: str, weight: float, value: Tensor) -> None:
        terms[name] = value.detach()
        weighted.append(weight * value)

    if w.w_vert > 0 or w.w_joint > 0:
        with torch.no_grad():
            true_v, true_j = _mesh(body, true, None, camera)
        flat_r = None if r is None else r.flatten(0, 1)
        pred_v, pred_j = _mesh(body, p.flatten(0, 1), flat_r, camera)
        pred_v = pred_v.unflatten(0, (n, batch_size))
        pred_j = pred_j.unflatten(0, (n, batch_size))
        if w.w_vert > 0:
            add("vert", w.w_vert, distance(pred_v, true_v, w.type))
        if w.w_joint > 0:
            add("joint", w.w_joint, distance(pred_j, true_j, w.type))

    true_r = None
    for name in GROUP_TERMS:
        weight = getattr(cfg.loss, f"w_{name}")
        if weight <= 0:
            continue
        if r is not None and true_r is None:
            true_r = axis_angle_to_matrix(true[:, layout.POSE].reshape(batch_size, -1, 3))
        add(name, weight, distance(_group_values(name, p, r, camera),
                                   _group_values(name, true, true_r, camera), w.type))

    if not weighted:
        raise MeshrecError("every loss weight is 0; nothing would be trained")
    total = torch.stack(weighted).sum()
    return total, terms
