"""Labels follow the image: in-plane rotation and left/right flip of SMPL parameters, 3D joints
and 2D keypoints. Pure functions on batch tensors.

Camera frame as OpenCV (x right, y down, z forward). Rotating the image content by `angle`
degrees counter-clockwise on screen rotates the scene about the camera's z axis by
Rz = [[c, s, 0], [-s, c, 0], [0, 0, 1]] (c, s of the angle): the global orientation becomes
Rz·R, the posed pelvis and camera-frame joints Rz·J (about the optical axis; exact when the
crop centre is the principal point — for packed crops it is not, so translation and absolute
joints are approximate under rotation, orientation and root-relative joints exact). A flip then
mirrors x with meshrec.body.mirror (same caveat for translation). Order as the image: rotate,
then flip. The H36M joints `j3d` (pelvis-centred) rotate with the same Rz and flip with
h36m.FLIP_PERM; the keypoints `kp2d` go from the packed crop to the network crop through the
inverse of the image warp (augment.affine_matrices), then mirror as the pixels do. A row
without a label (SMPL: has_smpl false; joints: confidence 0) stays all zeros.
"""

from __future__ import annotations

import numpy as np
import torch

from meshrec.body import h36m, mirror
from meshrec.body import params as layout
from meshrec.body.rotations import axis_angle_to_matrix, matrix_to_axis_angle
from meshrec.data.augment import Aug, affine_matrices
from meshrec.errors import MeshrecError


def rotation_z(angle_deg: torch.Tensor) -> torch.Tensor:
    """(B,) degrees → (B, 3, 3) rotation of camera-frame points matching the image rotation."""
    a = torch.deg2rad(angle_deg.to(torch.float64))
    c, s = torch.cos(a), torch.sin(a)
    zero, one = torch.zeros_like(a), torch.ones_like(a)
    return torch.stack([c, s, zero, -s, c, zero, zero, zero, one], dim=-1).view(-1, 3, 3)


def rotate(params: torch.Tensor, joints: torch.Tensor | None, angle_deg: torch.Tensor,
           pelvis: Pelvis | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rotate global orientation (and translation) of `params` (B, P) and `joints` (B, J, 3|4).

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


def flip_j3d(j3d: torch.Tensor) -> torch.Tensor:
    """Mirror (…, 17, 4) H36M joints: swap left/right, negate x."""
    return mirror.flip_joints(j3d, np.asarray(h36m.FLIP_PERM))


def kp2d_to_input(kp2d: torch.Tensor, aug: torch.Tensor, src_size: int,
                  image_size: int) -> torch.Tensor:
    """(B, 17, 3) keypoints in the packed crop's pixels (src_size², OpenCV: pixel i's centre at
    i) → the network input's (image_size², same convention), before any flip: the inverse of
    the warp augment.affine_matrices(aug), which maps output to source points at centres + 0.5."""
    m = affine_matrices(aug, src_size, src_size, image_size)
    q = kp2d[..., :2].to(torch.float64) + 0.5 - m[:, None, :, 2]
    uv = torch.linalg.solve(m[:, None, :, :2], q.unsqueeze(-1)).squeeze(-1) - 0.5
    return torch.cat([uv.to(kp2d.dtype), kp2d[..., 2:]], dim=-1)


def flip_kp2d(kp2d: torch.Tensor, image_size: int) -> torch.Tensor:
    """Mirror (…, 17, 3) keypoints of an image_size-wide image: x → size − 1 − x, left/right swapped."""
    return mirror.flip_keypoints_2d(kp2d, image_size - 1, np.asarray(h36m.FLIP_PERM))


def _where(flag: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    return torch.where(flag.view(-1, *[1] * (new.dim() - 1)), new, old)


def _unseen_zero(joints: torch.Tensor) -> torch.Tensor:
    """Joints without confidence carry nothing: all zeros (what 'absent' looks like)."""
    return joints * (joints[..., -1:] > 0)


def follow_image(params: torch.Tensor, has_smpl: torch.Tensor, j3d: torch.Tensor,
                 kp2d: torch.Tensor, aug: torch.Tensor, src_size: int | None, image_size: int,
                 pelvis: Pelvis | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Labels of the augmented images made with numbers `aug` (B, 8) from packed crops of side
    `src_size`: (params, j3d, kp2d). Rotate by aug's angle, then mirror where aug flips."""
    flipped = aug[:, Aug.FLIP] > 0.5
    new, j3d = rotate(params, j3d, aug[:, Aug.ANGLE], pelvis)
    if bool(flipped.any()):
        new = _where(flipped, flip_params(new, pelvis), new)
        j3d = _where(flipped, flip_j3d(j3d), j3d)
    params = _where(has_smpl, new, torch.zeros_like(params))
    if bool((kp2d[..., 2] > 0).any()):
        if src_size is None:
            raise MeshrecError("2D keypoints need the packed crop size (manifest config.size)")
        kp2d = kp2d_to_input(kp2d, aug, src_size, image_size)
        kp2d = _where(flipped, flip_kp2d(kp2d, image_size), kp2d)
    return params, _unseen_zero(j3d), _unseen_zero(kp2d)
