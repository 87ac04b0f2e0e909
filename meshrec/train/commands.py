"""`meshrec train | eval | predict | prefetch`: thin command wrappers over meshrec.train."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from meshrec.errors import MeshrecError


# ------------------------------------------------------------------ a trained model from a checkpoint

@dataclass
class Trained:
    cfg: Any
    model: Any
    body: Any
    mean_params: Any
    device: Any
    amp: Any
    step: int


def load_trained(path: str, overrides: Sequence[str] = (), device: str = "auto") -> Trained:
    """Model, body and config of a checkpoint (weights from it; a frozen encoder it does not
    store is built from its config, as its run built it, and checked by sha256)."""
    import numpy as np
    import torch

    from meshrec.body.load import load_body_model
    from meshrec.config import from_dict, with_overrides
    from meshrec.model import build_model
    from meshrec.precision import amp_dtype
    from meshrec.train.checkpoint import load_checkpoint, load_model_state
    from meshrec.train.dist import pick_device

    ckpt = Path(path).expanduser()
    if not ckpt.is_file():
        raise MeshrecError(f"--checkpoint: no such file {ckpt}")
    state = load_checkpoint(ckpt)
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise MeshrecError(f"{ckpt} is not a meshrec training checkpoint")
    cfg = from_dict(state["config"], f"{ckpt} config")
    if overrides:
        cfg = with_overrides(cfg, overrides, f"{ckpt} config")
    if not state.get("encoder_sha256"):
        cfg = replace(cfg, model=replace(cfg.model, weights="none"))  # the checkpoint has them
    dev = pick_device(device if device != "auto" else cfg.train.device, 0)
    mean = np.asarray(state["mean_params"], dtype=np.float64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)  # a frozen encoder it lacks: built as its run built it
        model = build_model(cfg, mean)
    load_model_state(model, state, str(ckpt))
    model = model.to(dev)
    model.eval()
    body = load_body_model(cfg.body).to(dev)
    return Trained(cfg, model, body, mean, dev, amp_dtype(cfg.train.amp, dev),
                   int(state.get("step", 0)))


# ------------------------------------------------------------------ train

def _train(args: argparse.Namespace) -> int:
    from meshrec.config import load_config
    from meshrec.train.loop import train

    cfg = load_config(args.config, args.overrides)
    if args.out:
        cfg = replace(cfg, train=replace(cfg.train, output_dir=args.out))
    metrics = train(cfg)
    if metrics:
        print(" ".join(f"{k}={v:.6g}" for k, v in sorted(metrics.items())))
    print(f"checkpoint: {Path(cfg.train.output_dir) / 'checkpoints' / 'last.pt'}")
    return 0


# ------------------------------------------------------------------ eval

def _eval(args: argparse.Namespace) -> int:
    from meshrec.data import build_loader
    from meshrec.data.demo import with_shards
    from meshrec.train import evaluate, preflight

    overrides = list(args.overrides)
    if args.subjects:
        subjects = [s.strip() for s in args.subjects.split(",") if s.strip()]
        overrides.append(f"eval.subjects=[{','.join(subjects)}]")
    if args.shards:
        overrides.append(f"data.shards={args.shards}")
    if args.protocol:
        overrides.append(f"eval.protocol={args.protocol}")
    t = load_trained(args.checkpoint, overrides, args.device)
    cfg = with_shards(t.cfg)
    protocol = cfg.eval.protocol
    joints = evaluate.body_joints(cfg.body, t.body.num_vertices)
    preflight.check_test(cfg)
    loader = build_loader(cfg, "test", 0, 1, t.device)
    rec = evaluate.evaluate(t.model, loader, t.body, joints, t.mean_params, t.amp, t.device,
                            protocol=protocol)
    if not rec.keys:
        raise MeshrecError(f"no sample of {', '.join(cfg.eval.subjects)} in {cfg.data.shards} "
                           f"can be scored under protocol {protocol} ({rec.skipped} lack its "
                           f"labels or camera)")
    print(f"checkpoint {args.checkpoint} (step {t.step}); protocol {protocol}; subjects "
          f"{', '.join(cfg.eval.subjects)}; {len(rec.keys)} samples"
          + (f" ({rec.skipped} not scored by the protocol)" if rec.skipped else "")
          + f"; joints: {'H36M-14 of the regressed mesh vs mocap' if protocol != 'smpl' else joints.label}"
          f"; body: {t.body.kind}")
    print()
    print(evaluate.table(rec, "subject"))
    print()
    print(evaluate.table(rec, "action"))
    print()
    b = evaluate.means(rec.baseline)
    print("mean-params baseline: " + " ".join(
        f"{n}={b[n]:.6f}" if n == "mse" else f"{n}={b[n]:.2f}" for n in rec.names))
    print(evaluate.final_line(rec))
    return 0


# ------------------------------------------------------------------ predict

def read_crop(path: str, size: int):
    """An image file → a normalised (3, size, size) tensor: centre square, resized."""
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    from meshrec.data.augment import IMAGENET_MEAN, IMAGENET_STD

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            side = min(w, h)
            box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
            im = im.crop(box).resize((size, size), Image.BILINEAR)
            pix = np.asarray(im, dtype=np.float32) / 255.0
    except FileNotFoundError:
        raise MeshrecError("no such file") from None
    except IsADirectoryError:
        raise MeshrecError("is a directory") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise MeshrecError(f"cannot read the image ({type(exc).__name__}: {exc})") from None
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)
    std = np.asarray(IMAGENET_STD, dtype=np.float32)
    return torch.from_numpy(((pix - mean) / std).transpose(2, 0, 1).copy())


def write_obj(path: Path, vertices, faces) -> None:
    from meshrec.fileio import atomic_open

    lines = [f"v {x:.6f} {y:.6f} {z:.6f}\n" for x, y, z in vertices]
    lines += [f"f {a + 1} {b + 1} {c + 1}\n" for a, b, c in faces]
    with atomic_open(path, "w") as fh:
        fh.write("# meshrec prediction\n")
        fh.writelines(lines)


def _predict(args: argparse.Namespace) -> int:
    import torch

    from meshrec.precision import autocast
    from meshrec.render import save_png
    from meshrec.train import evaluate, visual

    t = load_trained(args.checkpoint, (), args.device)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MeshrecError(f"--out {out}: {exc.strerror or exc}") from None
    failed = 0
    size = t.cfg.data.image_size
    for path in args.images:
        try:
            image = read_crop(path, size)
        except MeshrecError as exc:
            print(f"meshrec predict: error: {path}: {exc}", file=sys.stderr)
            failed += 1
            continue
        with torch.no_grad(), autocast(t.device, t.amp):
            pred = t.model(image[None].to(t.device))
        with torch.no_grad():
            body = t.body(evaluate.last_params(pred))
        vertices = body.vertices[0].cpu().numpy()
        stem = Path(path).stem
        write_obj(out / f"{stem}.obj", vertices, t.body.faces)
        # No truth: the mesh is drawn with the predicted camera, as the model framed it.
        view = visual.choose_view(vertices, body.joints[0, 0].cpu().numpy(),
                                  pred.camera[-1][0].float().cpu().numpy(), size)
        save_png(out / f"{stem}_overlay.png",
                 visual.picture(image, t.body.faces, view, truth=False).image)
        print(f"{path} -> {out / (stem + '.obj')} ({len(vertices)} vertices)")
    return 1 if failed else 0


# ------------------------------------------------------------------ prefetch

def _prefetch(args: argparse.Namespace) -> int:
    from meshrec.model.encoder import prefetch_weights

    names = [n.strip() for n in args.encoders.split(",") if n.strip()] if args.encoders else None
    for path in prefetch_weights(names):
        print(f"cached {path}")
    return 0


# ------------------------------------------------------------------ registration

def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model (one process, or train.processes=N local ones)",
                       description="Train from a config; writes OUT/checkpoints/last.pt and resumes "
                                   "from it when run again with the same config.")
    p.add_argument("--config", metavar="FILE", help="YAML config (default: built-in defaults)")
    p.add_argument("--out", metavar="DIR", help="run directory (default: train.output_dir)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    p.set_defaults(func=_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint per subject and per action",
                       description="Errors of a checkpoint beside the mean-parameters baseline, per "
                                   "subject and per action, under a protocol: smpl (vertex MSE, "
                                   "PVE, MPJPE, PA-MPJPE against SMPL labels) or h36m-p1 / h36m-p2 "
                                   "(SPIN's: MPJPE and PA-MPJPE in mm on 14 joints regressed from "
                                   "the mesh against the mocap joints; p2 = camera 60457274; "
                                   "h36m-moon = Moon's camera-60457274 every-64th-frame set). The "
                                   "last line is 'protocol=P samples=N mpjpe_mm=… pa_mpjpe_mm=…'.")
    p.add_argument("--checkpoint", required=True, metavar="FILE")
    p.add_argument("--protocol", choices=("smpl", "h36m-p1", "h36m-p2", "h36m-moon"),
                   help="evaluation protocol (default: the checkpoint's eval.protocol)")
    p.add_argument("--shards", metavar="DIR", help="shard directory to evaluate on (default: the "
                                                  "checkpoint's data.shards)")
    p.add_argument("--subjects", metavar="S9,S11", help="test subjects (default: eval.subjects)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="overrides of the checkpoint's config, e.g. data.shards=DIR")
    p.set_defaults(func=_eval)

    p = sub.add_parser("predict", help="meshes (OBJ) and overlay pictures for person crops",
                       description="One OBJ and one overlay PNG per image (a square person crop "
                                   "works best; others are centre-cropped).")
    p.add_argument("images", nargs="+", metavar="IMG")
    p.add_argument("--checkpoint", required=True, metavar="FILE")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.set_defaults(func=_predict)

    p = sub.add_parser("prefetch", help="cache torchvision encoder weights in TORCH_HOME",
                       description="Download ImageNet weights (run on a machine with internet; "
                                   "compute nodes sharing TORCH_HOME then load them offline).")
    p.add_argument("--encoders", metavar="NAMES", help="comma-separated, e.g. resnet50,resnet152 "
                                                       "(default: all)")
    p.set_defaults(func=_prefetch)
