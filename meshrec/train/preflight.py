"""What a run's config asks of its data, checked before anything is trained or queued.

A loss weight needs its label in the training shards (SMPL parameters for the vertex, SMPL-joint
and parameter-group terms; 3D joints for loss.w_joint3d; 2D keypoints for loss.w_kp2d); the
validation protocol needs its label in the validation shards; the joint terms and the h36m
protocols need the body's Human3.6M regressor. `problems` is pure (label counts in, messages
out); `check` reads the shard manifests and raises the first problem as one line.
"""

from __future__ import annotations

from typing import Mapping

from meshrec import protocols
from meshrec.config import Config
from meshrec.errors import MeshrecError

SMPL_WEIGHTS = ("w_vert", "w_joint", "w_shape", "w_body", "w_hand", "w_loc")
WHAT = {"smpl": "SMPL labels", "j3d": "3D joints", "kp2d": "2D keypoints"}


def problems(cfg: Config, train: Mapping[str, int], val: Mapping[str, int] | None,
             has_regressor: bool | None) -> list[str]:
    """Why `cfg` cannot run on shards whose training (and validation) subjects carry `train`
    (`val`) label counts {smpl, j3d, kp2d}; `has_regressor` None = not known yet."""
    out = []
    loss = cfg.loss
    subjects = ", ".join(cfg.data.train_subjects)
    needs = [(w, "smpl") for w in SMPL_WEIGHTS] + [("w_joint3d", "j3d"), ("w_kp2d", "kp2d")]
    for weight, label in needs:
        if getattr(loss, weight) > 0 and not train.get(label, 0):
            out.append(f"loss.{weight} is {getattr(loss, weight):g} but the training shards "
                       f"({subjects}) hold no {WHAT[label]}; set it to 0 or pack data that has them")
    protocol = cfg.eval.protocol
    label = protocols.label_of(protocol)
    if val is not None and cfg.data.val_subjects and not val.get(label, 0):
        out.append(f"eval.protocol {protocol} needs {WHAT[label]} in the validation shards "
                   f"({', '.join(cfg.data.val_subjects)}), which hold none; "
                   f"choose another eval.protocol")
    joint_terms = loss.w_joint3d > 0 or loss.w_kp2d > 0
    if has_regressor is False and (joint_terms or protocols.is_h36m(protocol)):
        what = "loss.w_joint3d / loss.w_kp2d" if joint_terms else f"eval.protocol {protocol}"
        out.append(f"{what} needs Human3.6M's joint regressor: set body.h36m_regressor to "
                   f"J_regressor_h36m.npy (17 × the body's vertices)")
    return out


def check_test(cfg: Config) -> None:
    """The test shards (eval.subjects) hold what eval.protocol scores, else one MeshrecError line."""
    from meshrec.data.shardset import split_labels

    label = protocols.label_of(cfg.eval.protocol)
    if not split_labels(cfg, "test").get(label, 0):
        raise MeshrecError(f"protocol {cfg.eval.protocol} needs {WHAT[label]}; the shards of "
                           f"{', '.join(cfg.eval.subjects)} in {cfg.data.shards} hold none")


def check(cfg: Config, has_regressor: bool | None = None) -> None:
    """Raise the first problem of `cfg` with its (existing) shards as one MeshrecError line."""
    from meshrec.data.shardset import split_labels

    val = split_labels(cfg, "val") if cfg.data.val_subjects else None
    found = problems(cfg, split_labels(cfg, "train"), val, has_regressor)
    if found:
        raise MeshrecError(found[0])
