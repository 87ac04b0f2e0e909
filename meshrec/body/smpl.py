"""SMPL through smplx, fed with arrays meshrec loaded itself, behind the project's parameter layout.

`BodyModel` always computes in float32 with autocast disabled: smplx's Rodrigues adds 1e-8
before a norm, which underflows in float16 and turns a zero rotation into NaN, and skinning
6,890 vertices through 24 chained transforms loses millimetres in half precision.

Two routes compute the same SMPL function (equal to float32 rounding; tests hold them to 1e-6 m):
- stock: `smplx.SMPL` itself (`BodyModel(arrays, fast=False)`), the reference;
- fast (the default, `SkinningLayer`): the same equations with less work, for the training loss:
  rest joints from precomputed J_regressor·v_template and J_regressor·shapedirs (no regression
  over all vertices); shape and pose blend shapes in one matrix product; forward kinematics
  one tree level at a time (9 batched steps instead of 23); skinning with 3×4 instead of 4×4
  transforms; no extra landmark joints.
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
from meshrec.body.rotations import axis_angle_to_matrix
from meshrec.errors import MeshrecError
from meshrec.precision import autocast

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


def _tree_levels(parents: list[int]) -> list[tuple[list[int], list[int]]]:
    """Joints grouped by depth below the root: [(joints, positions of their parents within the
    previous level)], so each level's transforms come from the previous level's in one step."""
    depth = [0] * len(parents)
    for j, p in enumerate(parents):
        if p >= 0:
            if p >= j:
                raise MeshrecError("body model kinematic tree: a parent must come before its child")
            depth[j] = depth[p] + 1
    levels = [[j for j in range(len(parents)) if depth[j] == d] for d in range(max(depth) + 1)]
    out = []
    for prev, cur in zip(levels, levels[1:]):
        out.append((cur, [prev.index(parents[j]) for j in cur]))
    return out


class SkinningLayer(nn.Module):
    """SMPL's equations (shape/pose blend shapes, kinematic chain, linear blend skinning) in
    float32, from the arrays of a built stock `smplx.SMPL`; non-persistent buffers only."""

    def __init__(self, smpl: nn.Module) -> None:
        super().__init__()
        v_template = smpl.v_template.double()                          # [V, 3]
        shapedirs = smpl.shapedirs.double()                            # [V, 3, L]
        regressor = smpl.J_regressor.double()                          # [J, V]
        num_betas = shapedirs.shape[-1]
        # [L + 207, 3V]: betas then (R − I) of joints 1.. multiply one matrix
        dirs = torch.cat([shapedirs.permute(2, 0, 1).reshape(num_betas, -1),
                          smpl.posedirs.double()], dim=0)
        joint_dirs = torch.einsum("jv,vkl->ljk", regressor, shapedirs).reshape(num_betas, -1)
        num_vertices = v_template.shape[0]
        # Vertices are computed one coordinate at a time ([B, V] rows): skinning then works on
        # long contiguous rows instead of one tiny matrix product per vertex, and no [B, V, 3, 3]
        # temporary is formed. dirs[k] maps (betas, R − I) to coordinate k of every vertex.
        buffers = {
            "v_template": v_template.t(),                                          # [3, V]
            "dirs": dirs.reshape(dirs.shape[0], num_vertices, 3).permute(2, 0, 1),  # [3, L+207, V]
            "j_template": (regressor @ v_template).reshape(-1),
            "joint_dirs": joint_dirs,
            "weights_t": smpl.lbs_weights.double().t(),                # [J, V]
        }
        for name, value in buffers.items():
            self.register_buffer(name, value.float().contiguous(), persistent=False)
        parents = [int(p) for p in smpl.parents.tolist()]
        parents[0] = -1
        levels = _tree_levels(parents)
        order = [0] + [j for joints, _ in levels for j in joints]
        # Index tensors live on the model's device (no host → device copy per call on GPUs).
        self.num_levels = len(levels)
        for i, (joints, parent_pos) in enumerate(levels):
            for name, idx in (("joints", joints), ("parents", [parents[j] for j in joints]),
                              ("parent_pos", parent_pos)):
                self.register_buffer(f"level{i}_{name}", torch.as_tensor(idx, dtype=torch.long),
                                     persistent=False)
        self.register_buffer("inverse_order", torch.as_tensor(
            np.argsort(order), dtype=torch.long), persistent=False)

    def forward(self, rotmat: Tensor, betas: Tensor, transl: Tensor | None = None
                ) -> tuple[Tensor, Tensor]:
        """rotmat [B, J, 3, 3], betas [B, L], transl [B, 3] | None → (vertices [B,V,3], joints [B,J,3])."""
        batch, num_joints = rotmat.shape[:2]
        eye = torch.eye(3, dtype=rotmat.dtype, device=rotmat.device)
        pose_feature = (rotmat[:, 1:] - eye).reshape(batch, -1)
        coeffs = torch.cat([betas, pose_feature], dim=1)
        v_posed = [torch.addmm(self.v_template[k], coeffs, self.dirs[k]).unsqueeze(1)
                   for k in range(3)]                                      # 3 × [B, 1, V]
        rest = torch.addmm(self.j_template, betas, self.joint_dirs).reshape(batch, num_joints, 3)

        # Forward kinematics, one tree level per step: G_j = G_parent · [R_j | J_j − J_parent].
        rot_levels, pos_levels = [rotmat[:, :1]], [rest[:, :1]]
        for i in range(self.num_levels):
            joints, parents, parent_pos = (getattr(self, f"level{i}_{name}")
                                           for name in ("joints", "parents", "parent_pos"))
            prev_rot, prev_pos = rot_levels[-1][:, parent_pos], pos_levels[-1][:, parent_pos]
            offset = (rest[:, joints] - rest[:, parents]).unsqueeze(-1)
            rot_levels.append(prev_rot @ rotmat[:, joints])
            pos_levels.append((prev_rot @ offset).squeeze(-1) + prev_pos)
        glob_rot = torch.cat(rot_levels, dim=1)[:, self.inverse_order]   # [B, J, 3, 3]
        posed_joints = torch.cat(pos_levels, dim=1)[:, self.inverse_order]  # [B, J, 3]

        # Skinning transforms map rest-pose points: x ↦ G_rot x + (posed joint − G_rot · rest joint).
        shift = posed_joints - (glob_rot @ rest.unsqueeze(-1)).squeeze(-1)
        # Blended per-vertex transforms Σ_j w_vj [G_rot | shift]_j as rows [B, 3, V]: the three
        # rotation columns and the shift in one product; then x'_i = t_i + Σ_k R_ik x_k.
        per_joint = torch.cat([glob_rot, shift.unsqueeze(-1)], dim=-1)     # [B, J, 3, 4]
        rows = per_joint.permute(0, 3, 2, 1).reshape(-1, num_joints)       # [B·4·3, J]
        blended = (rows @ self.weights_t).reshape(batch, 4, 3, -1).unbind(1)
        vertices = blended[3]
        for k in range(3):
            vertices = vertices + blended[k] * v_posed[k]
        vertices = vertices.transpose(1, 2).contiguous()                   # [B, V, 3]
        if transl is not None:
            vertices = vertices + transl.unsqueeze(1)
            posed_joints = posed_joints + transl.unsqueeze(1)
        return vertices, posed_joints


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
    `fast=False` computes through stock smplx instead of `SkinningLayer` (same outputs, slower).
    """

    def __init__(self, arrays: dict[str, np.ndarray], num_betas: int = layout.NUM_BETAS,
                 fast: bool = True) -> None:
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
        self.fast = SkinningLayer(self.smpl) if fast else None

    @property
    def num_vertices(self) -> int:
        return int(self.smpl.v_template.shape[0])

    def forward(self, params: Tensor) -> BodyOutput:
        """params [B, 82] (orient | body pose | betas) or [B, 85] (+ transl), axis-angle."""
        if params.dim() != 2:
            raise MeshrecError(f"BodyModel expects params [B, P]; got shape {tuple(params.shape)}")
        with autocast(params.device):  # float32
            parts = layout.split(params.float())
            if self.fast is not None:
                pose = torch.cat([parts["global_orient"], parts["body_pose"]], dim=-1)
                rotmat = axis_angle_to_matrix(pose.reshape(pose.shape[0], -1, 3))
                return BodyOutput(*self.fast(rotmat, parts["betas"], parts.get("transl")))
            out = self.smpl(global_orient=parts["global_orient"], body_pose=parts["body_pose"],
                            betas=parts["betas"], transl=parts.get("transl"), pose2rot=True)
        return BodyOutput(out.vertices, out.joints[:, : layout.NUM_JOINTS])

    def forward_rotmat(self, global_rotmat: Tensor, body_rotmat: Tensor, betas: Tensor,
                       transl: Tensor | None = None) -> BodyOutput:
        """Rotation matrices instead of axis-angle (for 6D heads): [B,1,3,3], [B,23,3,3], [B,10]."""
        batch = betas.shape[0]
        with autocast(betas.device):  # float32
            go = global_rotmat.float().reshape(batch, 1, 3, 3)
            bp = body_rotmat.float().reshape(batch, layout.NUM_JOINTS - 1, 3, 3)
            if self.fast is not None:
                return BodyOutput(*self.fast(torch.cat([go, bp], dim=1), betas.float(),
                                             None if transl is None else transl.float()))
            out = self.smpl(global_orient=go, body_pose=bp, betas=betas.float(),
                            transl=None if transl is None else transl.float(), pose2rot=False)
        return BodyOutput(out.vertices, out.joints[:, : layout.NUM_JOINTS])
