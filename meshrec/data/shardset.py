"""Which shards a split reads, and random access to their samples through the DALI index files.

The packer writes `DIR/manifest.json` listing every shard with its index file and sample count
(meshrec.shards). A split is a list of subjects; its shards are theirs in manifest order. The
index (`v1.2 N` then one line per sample: `ext offset size member …`) gives every member's data
offset in the tar, so a sample is read with two `pread`s and no scan of the tar.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from meshrec.config import Config
from meshrec.errors import MeshrecError

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Shard:
    tar: str
    index: str
    subject: str
    samples: int


@dataclass(frozen=True)
class SampleRef:
    shard: int                          # position in the split's shard list
    key: str
    members: dict[str, tuple[int, int]]  # ext → (offset, size)


SPLIT_KEYS = {"train": "data.train_subjects", "val": "data.val_subjects", "test": "eval.subjects"}


def split_subjects(cfg: Config, split: str) -> tuple[str, ...]:
    if split not in SPLIT_KEYS:
        raise MeshrecError(f"unknown data split {split!r}; expected train, val or test")
    subjects = {"train": cfg.data.train_subjects, "val": cfg.data.val_subjects,
                "test": cfg.eval.subjects}[split]
    if not subjects:
        raise MeshrecError(f"{SPLIT_KEYS[split]} is empty: there is no {split} data to load")
    return subjects


def shard_dir(cfg: Config) -> Path:
    if not cfg.data.shards:
        raise MeshrecError("data.shards is '' (generated stand-in data): make the shards with "
                           "shards/synth.py and shards/pack.py, then set data.shards=DIR")
    return Path(os.path.expanduser(cfg.data.shards))


def load_manifest(root: Path) -> dict:
    path = root / MANIFEST
    try:
        with open(path, encoding="utf-8") as fh:
            manifest = json.load(fh)
    except FileNotFoundError:
        raise MeshrecError(f"{path} does not exist (data.shards must be a packed shard "
                           "directory)") from None
    except (OSError, ValueError) as exc:
        raise MeshrecError(f"cannot read {path}: {exc}") from None
    if not isinstance(manifest, dict) or "shards" not in manifest:
        raise MeshrecError(f"{path} is not a meshrec shard manifest")
    return manifest


def select(root: Path, manifest: dict, subjects: Sequence[str]) -> list[Shard]:
    """Shards of `subjects` (manifest order); errors name subjects or files that are missing."""
    known = manifest.get("subjects", {})
    missing = [s for s in subjects if s not in known]
    if missing:
        raise MeshrecError(f"subjects {', '.join(missing)} are not in {root / MANIFEST} "
                           f"(it holds {', '.join(known) or 'none'})")
    wanted = set(subjects)
    shards = [Shard(str(root / s["path"]), str(root / s["index"]), s["subject"], int(s["samples"]))
              for s in manifest["shards"] if s["subject"] in wanted and int(s["samples"]) > 0]
    if not shards:
        raise MeshrecError(f"subjects {', '.join(subjects)} hold no packed samples in {root}")
    for shard in shards:
        for path in (shard.tar, shard.index):
            if not os.path.isfile(path):
                raise MeshrecError(f"shard file {path} listed in {root / MANIFEST} is missing")
    return shards


def split_labels(cfg: Config, split: str) -> dict[str, int]:
    """Samples of `split` carrying each label (smpl, j3d, kp2d), read from the manifest alone
    (no loader, no DALI): a sweep's preflight refuses a config weighting a label that is 0.
    Needs `data.shards` set (meshrec.data.demo.with_shards resolves generated data)."""
    from meshrec.shards import manifest as shard_manifest

    subjects = split_subjects(cfg, split)
    root = shard_dir(cfg)
    manifest = load_manifest(root)
    select(root, manifest, subjects)  # the same errors as the loader for unknown subjects
    return shard_manifest.labels(manifest, subjects)


def read_index(shard: Shard, position: int) -> list[SampleRef]:
    """Samples of one shard from its index file, checked against the manifest count."""
    try:
        with open(shard.index, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except OSError as exc:
        raise MeshrecError(f"cannot read index {shard.index}: {exc.strerror or exc}") from None
    head = lines[0].split() if lines else []
    if len(head) != 2 or not head[1].isdigit() or int(head[1]) != len(lines) - 1:
        raise MeshrecError(f"index {shard.index} is malformed (bad header line)")
    refs = []
    for n, line in enumerate(lines[1:], start=2):
        f = line.split()
        if not f or len(f) % 4:
            raise MeshrecError(f"index {shard.index} line {n} is malformed")
        members = {f[i]: (int(f[i + 1]), int(f[i + 2])) for i in range(0, len(f), 4)}
        key = f[3][: f[3].find(".", f[3].rfind("/") + 1)]
        refs.append(SampleRef(position, key, members))
    if len(refs) != shard.samples:
        raise MeshrecError(f"index {shard.index} lists {len(refs)} samples; the manifest says "
                           f"{shard.samples}")
    return refs


def all_samples(shards: Sequence[Shard]) -> list[SampleRef]:
    return [ref for i, shard in enumerate(shards) for ref in read_index(shard, i)]


def read_member(tar: str, offset: int, size: int) -> bytes:
    with open(tar, "rb") as fh:
        data = os.pread(fh.fileno(), size, offset)
    if len(data) != size:
        raise MeshrecError(f"shard {tar} is truncated (member at byte {offset} runs past its end)")
    return data


def undecodable(shards: Sequence[Shard], limit: int = 5) -> list[tuple[str, str, str]]:
    """(shard, key, reason) of JPEGs that do not decode — the slow scan behind a decode error."""
    from io import BytesIO

    from PIL import Image

    bad = []
    for ref in all_samples(shards):
        tar = shards[ref.shard].tar
        if "jpg" not in ref.members:
            bad.append((tar, ref.key, "no jpg member"))
        else:
            try:
                with Image.open(BytesIO(read_member(tar, *ref.members["jpg"]))) as im:
                    im.load()
            except Exception as exc:  # any decoder failure is what we are looking for
                bad.append((tar, ref.key, f"{type(exc).__name__}: {exc}"))
        if len(bad) >= limit:
            break
    return bad
