"""A tiny SPIN-layout source set for the shard tests (CONTRACT_SPIN.md), independent of synth.py.

Each frame is a dark textured background with one bright disc (the "person") centred exactly
on the row's `center`, so a correct crop puts the disc at the crop centre. `S` and `part` are
SPIN's J24 arrays: the 17 rows h36m.J24_OF_H36M filled (distinct random numbers, confidence 1),
the others 0, as SPIN's preprocessing writes them. With `spot=True` there is no disc but one
small bright spot exactly on the keypoint `SPOT_JOINT` (H36M order) of `part`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from meshrec.body import h36m
from meshrec.shards import crop

CAMERAS = ("54138969", "55011271")
ACTIONS = ("Directions_1", "Walking_2")
DISC_RGB = (240, 220, 90)
SPOT_JOINT = h36m.NAMES.index("left_wrist")
SPOT_SIGMA = 1.2  # px in the frame


@dataclass
class Source:
    root: Path                       # image root
    files: list[Path]                # npz files
    rows: dict[str, dict] = field(default_factory=dict)  # imgname → arrays of its row + file


def frame_image(size: int, center: tuple[float, float], radius: float, rng: np.random.Generator,
                spot: tuple[float, float] | None = None) -> Image.Image:
    """Background: a dark smooth gradient + mild noise; a bright disc at `center` (OpenCV pixel
    coords), or (`spot`) a small white Gaussian spot at that point instead."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    base = 30 + 25 * (xx / size) + 15 * (yy / size)
    img = np.repeat(base[..., None], 3, axis=2) + rng.normal(0, 3, (size, size, 3))
    if spot is not None:
        blob = np.exp(-((xx - spot[0]) ** 2 + (yy - spot[1]) ** 2) / (2 * SPOT_SIGMA ** 2))
        return Image.fromarray(np.clip(img + 200 * blob[..., None], 0, 255).round().astype(np.uint8))
    # Anti-aliased disc by 4×4 supersampling of each pixel's area.
    offsets = (np.arange(4) + 0.5) / 4 - 0.5
    cover = np.zeros((size, size))
    for dy in offsets:
        for dx in offsets:
            cover += ((xx + dx - center[0]) ** 2 + (yy + dy - center[1]) ** 2 <= radius ** 2)
    cover /= 16
    img = img * (1 - cover[..., None]) + np.array(DISC_RGB) * cover[..., None]
    return Image.fromarray(np.clip(img, 0, 255).round().astype(np.uint8))


def make_spin_source(root: Path, splits: dict[str, tuple[str, ...]] | None = None, frames: int = 3,
                     frame_size: int = 400, seed: int = 0, with_transl: bool = True,
                     with_k: bool = True, with_smpl: bool = True, with_part: bool = True,
                     spot: bool = False) -> Source:
    """Write images under root/images and one npz per split; returns what was written."""
    splits = splits or {"h36m_train.npz": ("S1", "S5", "S6"), "h36m_valid.npz": ("S9",)}
    rng = np.random.default_rng(seed)
    image_root = root / "images"
    src = Source(image_root, [])
    for file_name, subjects in splits.items():
        cols: dict[str, list] = {k: [] for k in ("imgname", "center", "scale", "pose", "shape",
                                                 "transl", "S", "part", "cam_K")}
        for subject in subjects:
            betas = rng.normal(0, 1, 10)
            for action in ACTIONS:
                for camera in CAMERAS:
                    for f in range(frames):
                        frame = 1 + 5 * f
                        name = f"{subject}/{action}.{camera}/frame_{frame:06d}.jpg"
                        side = rng.uniform(120, 200)  # person box side, px
                        center = rng.uniform(side / 2, frame_size - side / 2, 2)
                        part = h36m.h36m_to_j24(np.concatenate(
                            [center + rng.uniform(-0.15, 0.15, (17, 2)) * side, np.ones((17, 1))], 1))
                        path = image_root / name
                        path.parent.mkdir(parents=True, exist_ok=True)
                        at = part[h36m.J24_OF_H36M[SPOT_JOINT], :2] if spot else None
                        frame_image(frame_size, tuple(center), 0.3 * side, rng, at).save(path, quality=95)
                        fx = rng.uniform(900, 1200)
                        cols["imgname"].append(name)
                        cols["center"].append(center)
                        cols["scale"].append(side / 200)
                        cols["pose"].append(rng.normal(0, 0.3, 72))
                        cols["shape"].append(betas)
                        cols["transl"].append(rng.normal([0, 0, 5], 0.3))
                        cols["S"].append(h36m.h36m_to_j24(
                            np.concatenate([rng.normal(0, 0.5, (17, 3)), np.ones((17, 1))], 1)))
                        cols["part"].append(part)
                        cols["cam_K"].append(np.array([[fx, 0, frame_size / 2], [0, fx, frame_size / 2],
                                                       [0, 0, 1]]))
        arrays = {k: np.asarray(v) for k, v in cols.items()}
        if not with_transl:
            del arrays["transl"]
        if not with_k:
            del arrays["cam_K"]
        if not with_smpl:
            for key in ("pose", "shape", "transl"):
                arrays.pop(key, None)
        if not with_part:
            del arrays["part"]
        path = root / file_name
        np.savez(path, **arrays)
        src.files.append(path)
        for i, name in enumerate(arrays["imgname"]):
            src.rows[str(name)] = {k: v[i] for k, v in arrays.items()} | {"file": file_name, "row": i}
    return src


def expected_vector(row: dict) -> np.ndarray:
    parts = [row["pose"], row["shape"]] + ([row["transl"]] if "transl" in row else [])
    return np.concatenate(parts).astype(np.float32)


def expected_j3d(row: dict) -> np.ndarray:
    """j3d.npy of a row: its J24 `S` rows in Human3.6M's order, float32."""
    return row["S"][list(h36m.J24_OF_H36M)].astype(np.float32)


def expected_kp2d(row: dict, size: int, context: float = 1.2) -> np.ndarray:
    """kp2d.npy of a row: its `part` rows in H36M order, mapped into the size² packed crop."""
    kp = row["part"][list(h36m.J24_OF_H36M)].astype(np.float64)
    box = crop.crop_box(tuple(row["center"]), float(row["scale"]), context)
    kp[:, :2] = crop.to_crop(kp[:, :2], box, size)
    return kp.astype(np.float32)


class RunsCode:
    """Pickles as a call to os.system: a loader that runs it would create the marker file."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        import os

        return (os.system, (self.command,))


def to_old_format(out: Path, seed: int = 0) -> None:
    """Rewrite a packed directory in place as packers before optional labels wrote it: members
    jpg, json, smpl.npy, joints.npy ((24, 4) SMPL-order joints), no `labels` in the manifest."""
    import hashlib
    import io
    import json
    import tarfile

    from meshrec.shards import manifest as manifest_mod
    from meshrec.shards.encode import npy_bytes
    from meshrec.shards.tarshard import TarShard

    rng = np.random.default_rng(seed)
    m = manifest_mod.load(out)
    for entry in m["shards"]:
        samples: dict[str, dict[str, bytes]] = {}
        with tarfile.open(out / entry["path"]) as tf:
            for info in tf:
                key, ext = info.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tf.extractfile(info).read()
        with open(out / entry["path"], "wb") as fh:
            shard = TarShard(fh)
            for key, members in samples.items():
                joints = np.concatenate([rng.normal(0, 0.5, (24, 3)), np.ones((24, 1))], 1)
                shard.add(key, {"jpg": members["jpg"], "smpl.npy": members["smpl.npy"],
                                "joints.npy": npy_bytes(joints.astype(np.float32)),
                                "json": members["json"]})
            digest, size, index = shard.close()
        (out / entry["index"]).write_text(index)
        entry.update(sha256=digest, bytes=size, index_sha256=hashlib.sha256(index.encode()).hexdigest(),
                     index_bytes=len(index.encode()))
        del entry["labels"]
    for subject in m["subjects"].values():
        del subject["labels"]
    del m["labels"]
    m["members"] = ["jpg", "joints.npy", "json", "smpl.npy"]
    m["totals"]["bytes"] = sum(e["bytes"] for e in m["shards"])
    manifest_mod.write(out, {k: v for k, v in m.items() if k != manifest_mod.HASH_KEY})
