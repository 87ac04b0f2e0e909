"""Evaluation shared by training (validation) and `meshrec eval`: per-sample errors of a model and
of the mean-parameters baseline over a loader under one protocol (meshrec.protocols), gathered
from every rank, summarised per subject and per action.

Protocol `smpl` (samples with an SMPL label): vertices and joints from the body model on the 82
pose+shape parameters (no translation), so prediction and truth live in the same body-centred
frame:
  mse        mean squared vertex error over vertices and xyz, m² (the study's score, no alignment)
  pve_mm     mean vertex distance after aligning the roots, mm
  mpjpe_mm   mean joint distance after aligning the roots, mm
  pa_mpjpe_mm  the same after a Procrustes (similarity) alignment, mm
Joints are Human3.6M's 17 (the body's H36M regressor, root = pelvis) when there is one, else the
body model's 24 (root = joint 0).
Protocols `h36m-p1` / `h36m-p2` (samples with all 14 scored mocap joints, p2: camera 60457274):
  mpjpe_mm, pa_mpjpe_mm on 14 joints as SPIN's eval.py computes them (meshrec.protocols).
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from meshrec import metrics, protocols
from meshrec.body import h36m
from meshrec.body import params as layout
from meshrec.data.batch import model_input
from meshrec.errors import MeshrecError
from meshrec.precision import autocast


@dataclass
class Joints:
    """How joints are read off a body: a (17, V) H36M regressor, or the body model's own 24."""
    regressor: Tensor | None = None

    @property
    def label(self) -> str:
        return "H36M-17 (regressed from the mesh)" if self.regressor is not None else "SMPL-24"

    def __call__(self, vertices: Tensor, joints24: Tensor) -> Tensor:
        if self.regressor is None:
            return joints24
        return torch.einsum("jv,bvc->bjc", self.regressor.to(vertices), vertices)


def body_joints(body_cfg, num_vertices: int) -> Joints:
    """The configured body's H36M regressor (meshrec.body.load), if it has one."""
    from meshrec.body.load import load_h36m_regressor

    reg = load_h36m_regressor(body_cfg, num_vertices)
    return Joints(None if reg is None else torch.as_tensor(reg, dtype=torch.float32))


@dataclass
class Records:
    """Per-sample errors, in loader order, of the model and of the baseline, under `protocol`."""
    protocol: str = "smpl"
    keys: list[str] = field(default_factory=list)
    model: dict[str, list[float]] = field(default_factory=dict)
    baseline: dict[str, list[float]] = field(default_factory=dict)
    skipped: int = 0  # samples the protocol cannot score (no label of its kind, another camera)

    def __post_init__(self) -> None:
        for values in (self.model, self.baseline):
            for n in self.names:
                values.setdefault(n, [])

    @property
    def names(self) -> tuple[str, ...]:
        return protocols.metric_names(self.protocol)

    def add(self, keys: list[str], model: dict[str, Sequence[float]],
            baseline: dict[str, Sequence[float]]) -> None:
        self.keys += keys
        for n in self.names:
            self.model[n] += list(model[n])
            self.baseline[n] += list(baseline[n])

    def extend(self, other: "Records") -> None:
        self.add(other.keys, other.model, other.baseline)
        self.skipped += other.skipped


def sample_errors(pred_v: Tensor, true_v: Tensor, pred_j: Tensor, true_j: Tensor) -> dict[str, list[float]]:
    """Per-sample errors of the smpl protocol (see the module docstring), computed in float64."""
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


def _scored(batch: dict, protocol: str) -> list[int]:
    """Rows of `batch` the protocol scores."""
    keys = batch["key"]
    if not protocols.is_h36m(protocol):
        has = batch.get("has_smpl")
        return [i for i in range(len(keys)) if has is None or bool(has[i])]
    conf = batch["j3d"][:, list(h36m.H36M_TO_J14), 3].cpu()
    return [i for i, key in enumerate(keys)
            if protocols.counts(protocol, key_camera(key), key_frame(key))
            and bool((conf[i] > 0).all())]


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: Iterable[dict], body, joints: Joints,
             mean_params: np.ndarray, amp_dtype: torch.dtype | None, device: torch.device,
             limit: int | None = None, first: list | None = None,
             protocol: str = "smpl") -> Records:
    """Errors of `model` and of the mean parameters over this rank's `batches` under `protocol`
    (model left in eval mode; the caller restores train mode). `first`, a list, receives a copy
    of the first non-empty batch (for pictures: a second pass over a DALI loader cannot start
    mid-epoch)."""
    if protocols.is_h36m(protocol) and joints.regressor is None:
        raise MeshrecError(f"protocol {protocol} needs the Human3.6M joint regressor "
                           f"(body.h36m_regressor: J_regressor_h36m.npy)")
    model.eval()
    rec = Records(protocol)
    mean = torch.as_tensor(mean_params[: layout.SIZE], dtype=torch.float32, device=device)
    base_v, base_j = body_points(body, mean[None], joints)
    for batch in batches:
        if not batch["key"]:
            continue
        if first is not None and not first:
            first.append({k: v.clone() if torch.is_tensor(v) else list(v) for k, v in batch.items()})
        rows = _scored(batch, protocol)
        rec.skipped += len(batch["key"]) - len(rows)
        if not rows:
            continue
        idx = torch.as_tensor(rows, device=model_input(batch).device)
        with autocast(device, amp_dtype):
            pred = last_params(model(model_input(batch).index_select(0, idx)))
        pred_v, pred_j = body_points(body, pred, joints)
        n = len(rows)
        bv, bj = base_v.expand(n, -1, -1), base_j.expand(n, -1, -1)
        if protocols.is_h36m(protocol):
            true = batch["j3d"].index_select(0, idx.to(batch["j3d"].device))[..., :3]
            model_err, base_err = protocols.h36m_errors(pred_j, true), protocols.h36m_errors(bj, true)
        else:
            params = batch["params"].index_select(0, idx.to(batch["params"].device)).float()
            true_v, true_j = body_points(body, params, joints)
            model_err = sample_errors(pred_v, true_v, pred_j, true_j)
            base_err = sample_errors(bv, true_v, bj, true_j)
        rec.add([batch["key"][i] for i in rows], model_err, base_err)
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
    out = Records(rec.protocol)
    for part in parts:
        out.extend(part)
    return out


def means(values: dict[str, list[float]], idx: Sequence[int] | None = None) -> dict[str, float]:
    out = {}
    for name in values:
        arr = np.asarray(values[name], dtype=np.float64)
        arr = arr if idx is None else arr[list(idx)]
        out[name] = float(arr.mean()) if arr.size else float("nan")
    return out


_SUB_ACTION = re.compile(r"_\d+$")


def key_camera(key: str) -> str:
    """Camera id of a sample key S1-Directions_1-54138969-000001."""
    parts = key.split("-")
    return parts[-2] if len(parts) >= 4 else ""


def key_frame(key: str) -> int:
    """Frame number of a sample key S1-Directions_1-54138969-000001 (-1 if it has none)."""
    last = key.rsplit("-", 1)[-1]
    return int(last) if last.isdigit() else -1


def key_parts(key: str) -> tuple[str, str]:
    """(subject, action without its sub-action number) of a sample key S1-Directions_1-cam-frame."""
    parts = key.split("-")
    if len(parts) < 4:
        return parts[0], "?"
    return parts[0], _SUB_ACTION.sub("", "-".join(parts[1:-2]))


def summary(rec: Records, prefix: str = "") -> dict[str, float]:
    """Flat metrics named for the protocol (`val_pve_mm`, `val_p2_mpjpe_mm`): model means, then
    baseline means under `baseline_`."""
    key = lambda name: protocols.metric_key(rec.protocol, name)  # noqa: E731
    out = {f"{prefix}{key(k)}": v for k, v in means(rec.model).items()}
    out.update({f"{prefix}baseline_{key(k)}": v for k, v in means(rec.baseline).items()})
    out[f"{prefix}samples"] = float(len(rec.keys))
    return out


def final_line(rec: Records) -> str:
    """`protocol=h36m-p2 samples=N mpjpe_mm=… pa_mpjpe_mm=…`: what `meshrec eval` prints last."""
    m = means(rec.model)
    values = " ".join(f"{n}={m[n]:.6f}" if n == "mse" else f"{n}={m[n]:.2f}" for n in rec.names)
    return f"protocol={rec.protocol} samples={len(rec.keys)} {values}"


def table(rec: Records, by: str) -> str:
    """A text table of mean errors per subject or per action, model and baseline, plus 'all'."""
    col = 0 if by == "subject" else 1
    groups: dict[str, list[int]] = defaultdict(list)
    for i, key in enumerate(rec.keys):
        groups[key_parts(key)[col]].append(i)
    head = f"{by:<14}{'n':>6}" + "".join(f"{n:>13}" for n in rec.names)
    lines = [head, "-" * len(head)]

    def row(name: str, idx: Sequence[int] | None, values: dict[str, list[float]]) -> str:
        m = means(values, idx)
        n = len(rec.keys) if idx is None else len(idx)
        cells = "".join(f"{m[k]:>13.6f}" if k == "mse" else f"{m[k]:>13.1f}" for k in rec.names)
        return f"{name:<14}{n:>6}{cells}"

    for name in sorted(groups, key=lambda s: (len(s), s) if by == "subject" else s):
        lines.append(row(name, groups[name], rec.model))
    lines.append(row("all", None, rec.model))
    lines.append(row("mean-params", None, rec.baseline))
    return "\n".join(lines)
