"""Labels follow the image: in-plane rotation and left/right flip of SMPL parameters and joints.

Camera frame as OpenCV (x right, y down, z forward). Rotating the image content by `angle`
degrees counter-clockwise on screen rotates the scene about the camera's z axis by
Rz = [[c, s, 0], [-s, c, 0], [0, 0, 1]] (c, s of the angle): the global orientation becomes
Rz·R, the posed pelvis and camera-frame joints Rz·J (about the optical axis; exact when the
crop centre is the principal point — for packed crops it is not, so translation and absolute
joints are approximate under rotation, orientation and root-relative joints exact). A flip then
mirrors x with meshrec.body.mirror (same caveat for translation). Order as the image: rotate,
then flip.
"""

from __future__ import annotations

import numpy as np
import torch

from meshrec.body import mirror
from meshrec.body import params as layout
from meshrec.body.rotations import axis_angle_to_matrix, matrix_to_axis_angle
from meshrec.errors import MeshrecError


def rotation_z(angle_deg: torch.Tensor) -> torch.Tensor:
    """(B,) degrees → (B, 3, 3) rotation of camera-frame points matching the image rotation."""
    a = torch.deg2rad(angle_deg.to(torch.float64))
    c, s = torch.cos(a), torch.sin(a)
    zero, one = torch.zeros_like(a), torch.ones_like(a)
    return torch.stack([c, s, zero, -s, c, zero, zero, zero, one], dim=-1).view(-1, 3, 3)


def rotate(params: torch.Tensor, joints: torch.Tensor | None, angle_deg: torch.Tensor,
           pelvis: Pelvis | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rotate global orientation (and translation) of `params` (B, P) and `joints` (B, 24, 4).

    The posed pelvis sits at J0(β) + t, so t' = Rz·(t + J0) − J0 (needs `pelvis` when P = 85).
    """
    if not bool((angle_deg != 0).any()):
        return params, joints
    rz = rotation_z(angle_deg)
    out = params.clone()
    go = params[:, layout.GLOBAL_ORIENT].to(torch.float64)
    out[:, layout.GLOBAL_ORIENT] = matrix_to_axis_angle(rz @ axis_angle_to_matrix(go)).to(params.dtype)
    if layout.has_transl(params):
        if pelvis is None:
            raise MeshrecError("rotating a parameter vector with translation needs the body's "
                               "rest pelvis (labels.Pelvis)")
        j0 = pelvis(params[:, layout.BETAS])
        t = params[:, layout.TRANSL].to(torch.float64) + j0
        out[:, layout.TRANSL] = ((rz @ t.unsqueeze(-1)).squeeze(-1) - j0).to(params.dtype)
    if joints is not None:
        joints = joints.clone()
        xyz = joints[..., :3].to(torch.float64)
        joints[..., :3] = (xyz @ rz.transpose(1, 2)).to(joints.dtype)
    return out, joints


class Pelvis:
    """The body's rest pelvis J0(β) = offset + basis·β (mirror.pelvis_affine): translation turns
    the body about it, so flipping or rotating a vector with translation needs it."""

    def __init__(self, offset: np.ndarray, basis: np.ndarray) -> None:
        self.offset, self.basis = np.asarray(offset, np.float64), np.asarray(basis, np.float64)

    def __call__(self, betas: torch.Tensor) -> torch.Tensor:
        b = betas.to(torch.float64)
        return torch.from_numpy(self.offset).to(b.device) + b @ torch.from_numpy(self.basis.T).to(b.device)


def flip_params(vec: torch.Tensor, pelvis: Pelvis | None) -> torch.Tensor:
    """Mirror parameters left/right (x → −x): the one place the loaders call the flip."""
    rest = pelvis(vec[..., layout.BETAS]).to(vec.dtype) if pelvis is not None and \
        layout.has_transl(vec) else None
    return mirror.flip_params(vec, rest)


def flip_joints(joints: torch.Tensor) -> torch.Tensor:
    """Mirror (…, 24, 4) camera-frame joints: swap left/right, negate x."""
    return mirror.flip_joints(joints)


def follow_image(params: torch.Tensor, joints: torch.Tensor | None, angle_deg: torch.Tensor,
                 flipped: torch.Tensor, pelvis: Pelvis | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Labels of augmented images: rotate by `angle_deg` (B,), then mirror where `flipped` (B,)."""
    params, joints = rotate(params, joints, angle_deg, pelvis)
    if bool(flipped.any()):
        params = torch.where(flipped[:, None], flip_params(params, pelvis), params)
        if joints is not None:
            joints = torch.where(flipped[:, None, None], flip_joints(joints), joints)
    return params, joints
