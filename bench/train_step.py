"""Training-step throughput on CPU, and the SMPL vertex loss: meshrec's fast route vs stock smplx.

Usage: python bench/train_step.py [--batch 16] [--steps 4] [--smpl-batch 64] [--smpl-reps 10]
                                  [--threads N] [--quick]

1. Training step (img/s): forward, vertex loss through the SMPL layer, backward, Adam step, for
   ResNet-18 @ 128 px and ResNet-50 @ 224 px, frozen and fine-tuned encoder, iterative head
   (3 iterations, last supervised), random-init weights (speed does not depend on them), the
   stand-in body. Median over --steps timed steps after one warm-up step.
2. SMPL vertex loss (ms): the loss as meshrec.loss computes it — true mesh without gradients,
   predicted mesh, root-relative mean squared vertex error, backward to the parameters — once
   through `BodyModel` (fast route) and once through stock `smplx.SMPL` (`fast=False`), on the
   same inputs; outputs are checked equal (max vertex difference printed) before timing.
   Interleaved repetitions, median; ratio = fast / stock (goal ≤ 0.6).

Wall-clock times, and for the SMPL part also the process's CPU time (steadier on a shared
machine). --threads sets torch's intra-op threads; the default 1 is deliberate on the shared
2-core box, where two OpenMP threads competing with other work ran several times slower than one
(pass --threads 0 for torch's default on a dedicated node).
Last line: `step_img_s=… smpl_ratio=… smpl_ratio_cpu=… <config>=… …`, where step_img_s is
ResNet-50 @ 224 px with the frozen encoder (the reference study's setup) and smpl_ratio the
wall-clock fast / stock ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from meshrec.body.model_file import load_arrays  # noqa: E402
from meshrec.body.load import resolve_model_path  # noqa: E402
from meshrec.body.smpl import BodyModel  # noqa: E402
from meshrec.config import load_config  # noqa: E402
from meshrec.loss import compute_loss  # noqa: E402
from meshrec.model import build_model  # noqa: E402
import headline as headline_line

SETUPS = (("resnet18", 128), ("resnet50", 224))


def _params(rng: np.random.Generator, batch: int) -> torch.Tensor:
    vec = np.concatenate([rng.normal(0, 0.3, (batch, 72)), rng.normal(0, 1, (batch, 10))], axis=1)
    return torch.as_tensor(vec, dtype=torch.float32)


def train_step_img_s(arrays: dict, encoder: str, size: int, frozen: bool, batch: int,
                     steps: int) -> float:
    cfg = load_config(None, [f"model.encoder={encoder}", "model.weights=none",
                             f"model.freeze_encoder={str(frozen).lower()}",
                             f"data.image_size={size}"])
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    body = BodyModel(arrays)
    model = build_model(cfg, np.zeros(82)).train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    data = {"image": torch.randn(batch, 3, size, size), "params": _params(rng, batch)}
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        total, _ = compute_loss(model(data["image"]), data, body, cfg)
        total.backward()
        opt.step()
        if i:  # the first step allocates and warms caches
            times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def _vertex_loss(body: BodyModel, pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        t = body(true)
        true_v = t.vertices - t.joints[:, :1]
    p = body(pred)
    diff = p.vertices - p.joints[:, :1] - true_v
    return (diff * diff).mean()


def smpl_times(arrays: dict, batch: int, reps: int) -> tuple[dict, dict, float]:
    """({route: wall ms}, {route: CPU ms}, max vertex difference m) of one vertex-loss
    forward + backward, medians over `reps` interleaved repetitions."""
    fast, stock = BodyModel(arrays), BodyModel(arrays, fast=False)
    rng = np.random.default_rng(1)
    true = _params(rng, batch)
    pred = (true + 0.05 * torch.as_tensor(rng.normal(size=true.shape), dtype=torch.float32))
    diff = (fast(pred).vertices - stock(pred).vertices).abs().max().item()
    losses = {}
    wall: dict[str, list[float]] = {"fast": [], "stock": []}
    cpu: dict[str, list[float]] = {"fast": [], "stock": []}
    for rep in range(reps + 1):
        for name, body in (("fast", fast), ("stock", stock)):
            p = pred.clone().requires_grad_()
            start, start_cpu = time.perf_counter(), time.process_time()
            loss = _vertex_loss(body, p, true)
            loss.backward()
            if rep:
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
            losses[name] = loss.item()
    if abs(losses["fast"] - losses["stock"]) > 1e-5 * abs(losses["stock"]):
        raise SystemExit(f"fast and stock losses differ: {losses}")
    med = lambda d: {k: statistics.median(v) * 1e3 for k, v in d.items()}  # noqa: E731
    return med(wall), med(cpu), diff


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--smpl-batch", type=int, default=64)
    ap.add_argument("--smpl-reps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads; 0 = torch default")
    ap.add_argument("--quick", action="store_true", help="ResNet-18 only, 2 steps (smoke test)")
    headline_line.add_flag(ap)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(None)
    arrays = load_arrays(resolve_model_path(cfg.body))
    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {load:.2f}, body {arrays['v_template'].shape[0]} vertices")

    wall, cpu, diff = smpl_times(arrays, args.smpl_batch, args.smpl_reps)
    ratio, ratio_cpu = wall["fast"] / wall["stock"], cpu["fast"] / cpu["stock"]
    print(f"SMPL vertex loss fwd+bwd, batch {args.smpl_batch} (max vertex difference {diff:.1e} m):"
          f" meshrec {wall['fast']:.1f} ms, stock smplx {wall['stock']:.1f} ms, ratio {ratio:.2f}; "
          f"CPU time {cpu['fast']:.1f} / {cpu['stock']:.1f} ms, ratio {ratio_cpu:.2f}")

    results = {}
    setups = SETUPS[:1] if args.quick else SETUPS
    steps = 2 if args.quick else args.steps
    for encoder, size in setups:
        for frozen in (True, False):
            key = f"{encoder}_{size}_{'frozen' if frozen else 'finetune'}"
            results[key] = train_step_img_s(arrays, encoder, size, frozen, args.batch, steps)
            print(f"train step {encoder} @ {size} px, batch {args.batch}, "
                  f"{'frozen' if frozen else 'fine-tuned'} encoder: {results[key]:.1f} img/s")
    headline = results.get("resnet50_224_frozen", next(iter(results.values())))
    extra = " ".join(f"{k}={v:.1f}" for k, v in results.items())
    headline_line.emit(f"step_img_s={headline:.1f} smpl_ratio={ratio:.2f} "
                       f"smpl_ratio_cpu={ratio_cpu:.2f} {extra}", args.json)


if __name__ == "__main__":
    main()
