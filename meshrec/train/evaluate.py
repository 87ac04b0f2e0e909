"""Evaluation shared by training (validation) and `meshrec eval`: per-sample errors of a model and
of the mean-parameters baseline over a loader, gathered from every rank, summarised per subject
and per action.

Vertices and joints come from the body model on the 82 pose+shape parameters (no translation),
so prediction and truth live in the same body-centred frame. Errors per sample:
  mse        mean squared vertex error over vertices and xyz, m² (the study's score, no alignment)
  pve_mm     mean vertex distance after aligning the roots, mm
  mpjpe_mm   mean joint distance after aligning the roots, mm
  pa_mpjpe_mm  the same after a Procrustes (similarity) alignment, mm
Joints are Human3.6M's 17 (`body.h36m_regressor`, root = pelvis) when given, else the body model's
24 (root = joint 0).
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from meshrec import metrics
from meshrec.body import params as layout
from meshrec.errors import MeshrecError
from meshrec.data.batch import model_input

NAMES = ("mse", "pve_mm", "mpjpe_mm", "pa_mpjpe_mm")


@dataclass
class Joints:
    """How joints are read off a body: a (J, V) regressor, or the body model's own 24."""
    regressor: Tensor | None = None

    @property
    def label(self) -> str:
        return "H36M-17 (body.h36m_regressor)" if self.regressor is not None else "SMPL-24"

    def __call__(self, vertices: Tensor, joints24: Tensor) -> Tensor:
        if self.regressor is None:
            return joints24
        return torch.einsum("jv,bvc->bjc", self.regressor.to(vertices), vertices)


def load_joints(path: str, num_vertices: int) -> Joints:
    if not path:
        return Joints()
    try:
        reg = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise MeshrecError(f"body.h36m_regressor: cannot read {path}: {exc}") from None
    if reg.ndim != 2 or reg.shape[1] != num_vertices:
        raise MeshrecError(f"body.h36m_regressor: {path} has shape {reg.shape}; expected "
                           f"(17, {num_vertices})")
    return Joints(torch.as_tensor(reg, dtype=torch.float32))


@dataclass
class Records:
    """Per-sample errors, in loader order, of the model and of the baseline."""
    keys: list[str] = field(default_factory=list)
    model: dict[str, list[float]] = field(default_factory=lambda: {n: [] for n in NAMES})
    baseline: dict[str, list[float]] = field(default_factory=lambda: {n: [] for n in NAMES})

    def extend(self, other: "Records") -> None:
        self.keys += other.keys
        for n in NAMES:
            self.model[n] += other.model[n]
            self.baseline[n] += other.baseline[n]


def sample_errors(pred_v: Tensor, true_v: Tensor, pred_j: Tensor, true_j: Tensor) -> dict[str, list[float]]:
    """Per-sample errors (see the module docstring), computed in float64."""
    pv, tv, pj, tj = (t.detach().double().cpu() for t in (pred_v, true_v, pred_j, true_j))
    return {"mse": metrics.vertex_mse_per_sample(pv, tv).tolist(),
            "pve_mm": metrics.pve_mm_per_sample(pv, tv, pj[:, 0], tj[:, 0]).tolist(),
            "mpjpe_mm": metrics.mpjpe_mm_per_sample(pj, tj).tolist(),
            "pa_mpjpe_mm": metrics.pa_mpjpe_mm_per_sample(pj, tj).tolist()}


def last_params(prediction) -> Tensor:
    """The final regressor iteration's parameters, float32, pose+shape only."""
    return prediction.params[-1].float()[:, : layout.SIZE]


def body_points(body, params: Tensor, joints: Joints) -> tuple[Tensor, Tensor]:
    out = body(params[:, : layout.SIZE])
    return out.vertices, joints(out.vertices, out.joints)


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: Iterable[dict], body, joints: Joints,
             mean_params: np.ndarray, amp_dtype: torch.dtype | None, device: torch.device,
             limit: int | None = None, first: list | None = None) -> Records:
    """Errors of `model` and of the mean parameters over this rank's `batches` (model left in
    eval mode; the caller restores train mode). `first`, a list, receives a copy of the first
    non-empty batch (for pictures: a second pass over a DALI loader cannot start mid-epoch)."""
    model.eval()
    rec = Records()
    mean = torch.as_tensor(mean_params[: layout.SIZE], dtype=torch.float32, device=device)
    for batch in batches:
        if not batch["key"]:
            continue
        if first is not None and not first:
            first.append({k: v.clone() if torch.is_tensor(v) else list(v) for k, v in batch.items()})
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                            enabled=amp_dtype is not None):
            pred = last_params(model(model_input(batch)))
        true_v, true_j = body_points(body, batch["params"].float(), joints)
        pred_v, pred_j = body_points(body, pred, joints)
        base_v, base_j = body_points(body, mean.expand(len(batch["key"]), -1), joints)
        for name, values in sample_errors(pred_v, true_v, pred_j, true_j).items():
            rec.model[name] += values
        for name, values in sample_errors(base_v, true_v, base_j, true_j).items():
            rec.baseline[name] += values
        rec.keys += list(batch["key"])
        if limit is not None and len(rec.keys) >= limit:
            break
    return rec


def gather(rec: Records) -> Records:
    """Every rank's records on every rank (rank order); the records themselves in one process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return rec
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, rec)
    out = Records()
    for part in parts:
        out.extend(part)
    return out


def means(values: dict[str, list[float]], idx: Sequence[int] | None = None) -> dict[str, float]:
    out = {}
    for name in NAMES:
        arr = np.asarray(values[name], dtype=np.float64)
        arr = arr if idx is None else arr[list(idx)]
        out[name] = float(arr.mean()) if arr.size else float("nan")
    return out


_SUB_ACTION = re.compile(r"_\d+$")


def key_parts(key: str) -> tuple[str, str]:
    """(subject, action without its sub-action number) of a sample key S1-Directions_1-cam-frame."""
    parts = key.split("-")
    if len(parts) < 4:
        return parts[0], "?"
    return parts[0], _SUB_ACTION.sub("", "-".join(parts[1:-2]))


def summary(rec: Records, prefix: str = "") -> dict[str, float]:
    """Flat metrics: model means, then baseline means under `baseline_`."""
    out = {f"{prefix}{k}": v for k, v in means(rec.model).items()}
    out.update({f"{prefix}baseline_{k}": v for k, v in means(rec.baseline).items()})
    out[f"{prefix}samples"] = float(len(rec.keys))
    return out


def table(rec: Records, by: str) -> str:
    """A text table of mean errors per subject or per action, model and baseline, plus 'all'."""
    col = 0 if by == "subject" else 1
    groups: dict[str, list[int]] = defaultdict(list)
    for i, key in enumerate(rec.keys):
        groups[key_parts(key)[col]].append(i)
    head = f"{by:<14}{'n':>6}" + "".join(f"{n:>13}" for n in NAMES)
    lines = [head, "-" * len(head)]

    def row(name: str, idx: Sequence[int] | None, values: dict[str, list[float]]) -> str:
        m = means(values, idx)
        n = len(rec.keys) if idx is None else len(idx)
        return (f"{name:<14}{n:>6}{m['mse']:>13.6f}{m['pve_mm']:>13.1f}{m['mpjpe_mm']:>13.1f}"
                f"{m['pa_mpjpe_mm']:>13.1f}")

    for name in sorted(groups, key=lambda s: (len(s), s) if by == "subject" else s):
        lines.append(row(name, groups[name], rec.model))
    lines.append(row("all", None, rec.model))
    lines.append(row("mean-params", None, rec.baseline))
    return "\n".join(lines)
