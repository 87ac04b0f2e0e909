"""Skipping non-finite steps without waiting for the device.

A step whose loss is NaN/Inf (on any rank) must change nothing: no parameter or optimizer-state
update, BatchNorm statistics put back, the LR schedule not advanced. Deciding that on the host
would wait for the GPU every step, so it is decided on the device:

- the optimizer is torch's fused Adam/SGD, whose `step()` takes a `found_inf` flag and skips the
  update in the kernel (how GradScaler drives fused optimizers without a sync);
- BatchNorm buffers are put back with `torch.where` on the same flag;
- the LR is a device tensor looked up in a per-update table by a device count of updates made,
  so the schedule follows updates, not steps;
- the bad-step counters live on the device. `settle` reads them (one `.tolist()`) at log
  windows, checkpoints and the end of a run; `train.max_bad_steps` in a row therefore aborts at
  the next read, at most `train.log_every` steps after the run of bad steps reached it.

fp16 (GPUs without bfloat16) keeps one host read per step: GradScaler sets the fused optimizer's
`found_inf` itself, so the loss check cannot be folded into it.
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch

from meshrec.errors import MeshrecError
from meshrec.train.run import Run

log = logging.getLogger("meshrec.train")


def lr_dtype(device: torch.device) -> torch.dtype:
    # CUDA's fused kernels read a float32 LR tensor; on the CPU float64 keeps the exact values
    # a float LR had (the CPU kernels read it as a double).
    return torch.float32 if device.type == "cuda" else torch.float64


def build_optimizer(params: Sequence[torch.nn.Parameter], name: str, lr: float, momentum: float,
                    weight_decay: float) -> torch.optim.Optimizer:
    """Fused Adam or SGD (the kinds whose step takes `found_inf`)."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                                fused=True)
    if momentum:
        # Fused SGD makes its momentum buffers with empty_like on its first step and fills them
        # only if that step is applied: a skipped first step would leave garbage. Zeros give the
        # same first update (0·m + g = g).
        for p in params:
            optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p)
    return optimizer


class StepGuard:
    """Device-side flags and counters of one run (see the module doc)."""

    def __init__(self, optimizer: torch.optim.Optimizer, lr_table: Sequence[float],
                 device: torch.device) -> None:
        if len(optimizer.param_groups) != 1:
            raise ValueError("StepGuard drives an optimizer with one parameter group")
        zero = lambda: torch.zeros((), dtype=torch.int64, device=device)  # noqa: E731
        self.good = zero()      # updates made = LR schedule steps
        self.in_row = zero()    # current run of skipped steps
        self.worst = zero()     # longest run since the last settle
        self.total = zero()     # skipped steps of the whole run
        self.table = torch.tensor(list(lr_table), dtype=lr_dtype(device), device=device)
        self.lr = self.table[0].clone()
        self.attach(optimizer)

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Make the optimizer read this guard's LR tensor, fused (again after load_state_dict,
        which puts back a checkpoint's float LR and, from before fused optimizers, fused=None)."""
        for group in optimizer.param_groups:
            group["lr"] = self.lr
            group["fused"], group["foreach"] = True, None
        optimizer._step_supports_amp_scaling = True  # what fused=True sets at construction

    def load(self, good: int, in_row: int, total: int) -> None:
        self.good.fill_(good)
        self.in_row.fill_(in_row)
        self.worst.fill_(in_row)
        self.total.fill_(total)

    def set_lr(self) -> None:
        """The LR of the next update: the table at the number of updates made so far."""
        self.lr.copy_(self.table[self.good.clamp(max=len(self.table) - 1)])

    def step(self, optimizer: torch.optim.Optimizer, bad: torch.Tensor) -> None:
        """optimizer.step(), skipped on the device where `bad` (a 0-d bool) is true."""
        self.set_lr()
        optimizer.found_inf, optimizer.grad_scale = bad.float(), None
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf, optimizer.grad_scale

    def count(self, ok: torch.Tensor) -> None:
        """Count one step: an update made, or one more skipped step in a row."""
        bad = (~ok).long()
        self.good.add_(ok.long())
        self.in_row.add_(1).mul_(bad)
        torch.maximum(self.worst, self.in_row, out=self.worst)
        self.total.add_(bad)

    def read(self) -> tuple[int, int, int, int]:
        """(updates made, bad in a row, longest bad run since the last read, bad in total):
        the one host read, which waits for the device."""
        good, in_row, worst, total = torch.stack([self.good, self.in_row, self.worst,
                                                  self.total]).tolist()
        self.worst.copy_(self.in_row)
        return good, in_row, worst, total


def restore_buffers(module: torch.nn.Module, saved: list[torch.Tensor], ok: torch.Tensor) -> None:
    """Put back BatchNorm statistics (buffers) a skipped step changed; `ok` a 0-d bool."""
    with torch.no_grad():
        for buf, old in zip(module.buffers(), saved):
            buf.copy_(torch.where(ok, buf, old))


def settle(run: Run) -> None:
    """Read the device counters into `run` (bad_in_row, bad_total; the LR scheduler caught up
    with the updates made); MeshrecError once train.max_bad_steps skipped steps came in a row."""
    good, in_row, worst, total = run.guard.read()
    skipped = total - run.bad_total
    run.bad_in_row, run.bad_total = in_row, total
    while run.scheduler.last_epoch < good:  # the same values the device table gave the steps
        run.scheduler.step()
    limit = run.cfg.train.max_bad_steps
    if worst >= limit:
        raise MeshrecError(f"loss was NaN/Inf in {worst} steps in a row (up to step {run.step}); "
                           f"stopping. Lower optim.lr, set optim.grad_clip, or try train.amp=off")
    if skipped:
        log.warning("up to step %d: %d step(s) with a non-finite loss skipped (%d in a row now)",
                    run.step, skipped, in_row)


def optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """optimizer.state_dict() with float LRs, as checkpoints always stored them."""
    state = optimizer.state_dict()
    state["param_groups"] = [{**g, "lr": float(g["lr"])} for g in state["param_groups"]]
    return state
