"""SMPL through smplx, fed with arrays meshrec loaded itself, behind the project's parameter layout.

`BodyModel` always computes in float32 with autocast disabled: smplx's Rodrigues adds 1e-8
before a norm, which underflows in float16 and turns a zero rotation into NaN, and skinning
6,890 vertices through 24 chained transforms loses millimetres in half precision.
"""

from __future__ import annotations

import contextlib
import io
import sys
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from meshrec.body import params as layout
from meshrec.errors import MeshrecError

KINDS = ("smpl", "standin")
# smplx prints this for every model with fewer than 300 shape directions; meshrec uses 10 by design.
_SMPLX_BETAS_NOTICE = "with only 10 shape coefficients"


class BodyOutput(NamedTuple):
    vertices: Tensor  # [B, V, 3] metres, float32
    joints: Tensor    # [B, 24, 3] SMPL joints, float32


class _NoLandmarks(nn.Module):
    """Replaces smplx's extra-landmark selector for meshes whose vertex ids are not SMPL's."""

    def forward(self, vertices: Tensor, joints: Tensor) -> Tensor:
        return joints


def build_smpl(arrays: dict[str, np.ndarray], num_betas: int = layout.NUM_BETAS):
    """A stock `smplx.SMPL` built from in-memory arrays (no file is unpickled by smplx).

    It creates no parameters of its own (betas, pose, transl are always passed in).
    """
    import smplx
    from smplx.vertex_ids import vertex_ids as smplx_vertex_ids

    struct = smplx.utils.Struct(**arrays)
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        model = smplx.SMPL(model_path=None, data_struct=struct, num_betas=num_betas,
                           create_betas=False, create_global_orient=False, create_body_pose=False,
                           create_transl=False, dtype=torch.float32, batch_size=1)
    for line in captured.getvalue().splitlines():  # pass on anything but the known notice
        if _SMPLX_BETAS_NOTICE not in line:
            print(line, file=sys.stdout)
    num_vertices = arrays["v_template"].shape[0]
    if max(smplx_vertex_ids["smplh"].values()) >= num_vertices:
        # Its face/hand/foot landmarks index SMPL's vertices; a smaller mesh has none of them.
        model.vertex_joint_selector = _NoLandmarks()
    return model


def _kind(arrays: dict[str, np.ndarray]) -> str:
    if "model_kind" not in arrays:
        return "smpl"
    kind = str(np.asarray(arrays["model_kind"]).reshape(()))
    if kind not in KINDS:
        raise MeshrecError(f"body model kind '{kind}' is unknown (expected one of {', '.join(KINDS)})")
    return kind


class BodyModel(nn.Module):
    """SMPL layer over the project's parameter vector: params [B, 82 | 85] → vertices, joints.

    The model's arrays are non-persistent buffers: they follow `.to(device)` but stay out of
    `state_dict()`, so checkpoints hold learned weights only (and never the licensed SMPL data).
    """

    def __init__(self, arrays: dict[str, np.ndarray], num_betas: int = layout.NUM_BETAS) -> None:
        super().__init__()
        if num_betas != layout.NUM_BETAS:
            raise MeshrecError(f"the parameter layout has {layout.NUM_BETAS} betas, not {num_betas}")
        self.kind = _kind(arrays)
        if arrays["shapedirs"].shape[-1] < num_betas:
            raise MeshrecError(f"body model has {arrays['shapedirs'].shape[-1]} shape directions; "
                               f"meshrec needs {num_betas}")
        self.smpl = build_smpl(arrays, num_betas=num_betas)
        self.faces = np.asarray(arrays["f"], dtype=np.int64)
        for module in self.smpl.modules():
            for name, buf in list(module.named_buffers(recurse=False)):
                delattr(module, name)
                module.register_buffer(name, buf, persistent=False)

    @property
    def num_vertices(self) -> int:
        return int(self.smpl.v_template.shape[0])

    def forward(self, params: Tensor) -> BodyOutput:
        """params [B, 82] (orient | body pose | betas) or [B, 85] (+ transl), axis-angle."""
        if params.dim() != 2:
            raise MeshrecError(f"BodyModel expects params [B, P]; got shape {tuple(params.shape)}")
        with torch.autocast(device_type=params.device.type, enabled=False):
            parts = layout.split(params.float())
            out = self.smpl(global_orient=parts["global_orient"], body_pose=parts["body_pose"],
                            betas=parts["betas"], transl=parts.get("transl"), pose2rot=True)
        return BodyOutput(out.vertices, out.joints[:, : layout.NUM_JOINTS])

    def forward_rotmat(self, global_rotmat: Tensor, body_rotmat: Tensor, betas: Tensor,
                       transl: Tensor | None = None) -> BodyOutput:
        """Rotation matrices instead of axis-angle (for 6D heads): [B,1,3,3], [B,23,3,3], [B,10]."""
        batch = betas.shape[0]
        with torch.autocast(device_type=betas.device.type, enabled=False):
            go = global_rotmat.float().reshape(batch, 1, 3, 3)
            bp = body_rotmat.float().reshape(batch, layout.NUM_JOINTS - 1, 3, 3)
            out = self.smpl(global_orient=go, body_pose=bp, betas=betas.float(),
                            transl=None if transl is None else transl.float(), pose2rot=False)
        return BodyOutput(out.vertices, out.joints[:, : layout.NUM_JOINTS])
