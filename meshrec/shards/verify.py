"""Check a shard directory against its manifest: every byte, every count, every index, every sum.

One sequential read per shard hashes it, parses it as a tar, rebuilds its DALI index and reads
each sample's smpl.npy and json, so that re-counted samples, per-subject and per-action counts
and the per-subject parameter sums are compared with the manifest (the sums bit for bit: they
are recomputed with the packer's own routine in the same order).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from meshrec.errors import MeshrecError
from meshrec.shards import manifest, naming
from meshrec.shards.tarshard import index_text, split_name

REQUIRED_MEMBERS = ("jpg", "json", "smpl.npy")


class _HashingReader(io.RawIOBase):
    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self.sha256 = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:  # type: ignore[override]
        n = self._fh.readinto(buf)
        if n:
            self.sha256.update(memoryview(buf)[:n])
            self.size += n
        return n or 0


@dataclass
class _Shard:
    sha256: str = ""
    size: int = 0
    index: str = ""
    keys: list[str] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)
    actions: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)


def _read_shard(path: Path, name: str, subject: str, size: int) -> _Shard:
    shard = _Shard()
    groups: list[tuple[str, dict[str, bytes], list[str]]] = []
    with open(path, "rb") as raw:
        reader = _HashingReader(raw)
        try:
            with tarfile.open(fileobj=reader, mode="r|") as tf:
                for info in tf:
                    if not info.isreg():
                        continue
                    key, ext = split_name(info.name)
                    member = tf.extractfile(info)
                    data = member.read() if member is not None else b""
                    if not groups or groups[-1][0] != key:
                        groups.append((key, {}, []))
                    groups[-1][1][ext] = data
                    groups[-1][2].append(f"{ext} {info.offset_data} {info.size} {info.name}")
        except (tarfile.TarError, EOFError, OSError) as exc:
            shard.problems.append(f"{name}: not a readable tar ({type(exc).__name__}: {exc})")
        while reader.read(1 << 20):  # hash the end-of-archive padding too
            pass
    shard.sha256, shard.size = reader.sha256.hexdigest(), reader.size
    shard.index = index_text([" ".join(entries) for _, _, entries in groups])
    for key, members, _ in groups:
        shard.keys.append(key)
        missing = [ext for ext in REQUIRED_MEMBERS if ext not in members]
        if missing:
            shard.problems.append(f"{name}: sample {key} lacks {', '.join(missing)}")
            continue
        jpg = members["jpg"]
        if not (jpg[:2] == b"\xff\xd8" and jpg[-2:] == b"\xff\xd9"):
            shard.problems.append(f"{name}: sample {key}: jpg is not a complete JPEG")
        try:
            vec = np.lib.format.read_array(io.BytesIO(members["smpl.npy"]), allow_pickle=False)
            meta = json.loads(members["json"])
        except (ValueError, UnicodeDecodeError) as exc:
            shard.problems.append(f"{name}: sample {key}: unreadable smpl.npy or json ({exc})")
            continue
        if vec.dtype != np.float32 or vec.shape != (size,) or not np.isfinite(vec).all():
            shard.problems.append(f"{name}: sample {key}: smpl.npy is {vec.dtype} {vec.shape}, "
                                  f"expected finite float32 ({size},)")
            continue
        if meta.get("key") != key or meta.get("subject") != subject:
            shard.problems.append(f"{name}: sample {key}: json names key {meta.get('key')!r}, "
                                  f"subject {meta.get('subject')!r}")
        shard.vectors.append(vec)
        shard.actions[str(meta.get("action"))] += 1
    if shard.keys != sorted(shard.keys, key=naming.shard_order) or len(set(shard.keys)) != len(shard.keys):
        shard.problems.append(f"{name}: sample keys are not unique and in shard order")
    return shard


def verify(out: str | Path) -> tuple[list[str], str]:
    """(problems, summary) for the shard directory `out`; no problems means it is intact."""
    out = Path(out)
    if not out.is_dir():
        raise MeshrecError(f"{out} is not a directory")
    try:
        m = manifest.load(out)
    except MeshrecError as exc:
        return [str(exc)], ""
    problems: list[str] = []
    try:
        return _verify(out, m, problems)
    except (KeyError, TypeError, ValueError) as exc:
        problems.append(f"manifest.json: malformed ({type(exc).__name__}: {exc})")
        return problems, ""


def _verify(out: Path, m: dict[str, Any], problems: list[str]) -> tuple[list[str], str]:
    if m.get(manifest.HASH_KEY) != manifest.canonical_hash(m):
        problems.append("manifest.json: manifest_sha256 does not match its contents")
    size = int(m["layout"]["size"])
    listed: set[str] = set()
    sums: dict[str, list[np.ndarray]] = {s: [] for s in m["subjects"]}
    counts: Counter = Counter()
    actions: Counter = Counter()
    damaged: set[str] = set()
    for entry in m["shards"]:
        name, subject = entry["path"], entry["subject"]
        listed.update((entry["path"], entry["index"]))
        tar_path, idx_path = out / entry["path"], out / entry["index"]
        if subject not in sums:
            problems.append(f"{name}: subject {subject} is not among the manifest's subjects")
            continue
        if not tar_path.is_file():
            problems.append(f"{name}: missing")
            damaged.add(subject)
            continue
        shard = _read_shard(tar_path, name, subject, size)
        problems.extend(shard.problems)
        if shard.size != entry["bytes"] or shard.sha256 != entry["sha256"]:
            problems.append(f"{name}: sha256 {shard.sha256[:12]}… ({shard.size:,} bytes) differs from "
                            f"the manifest's {entry['sha256'][:12]}… ({entry['bytes']:,} bytes)")
        if len(shard.keys) != entry["samples"]:
            problems.append(f"{name}: holds {len(shard.keys):,} samples, the manifest says {entry['samples']:,}")
        if not idx_path.is_file():
            problems.append(f"{entry['index']}: missing")
        else:
            idx = idx_path.read_bytes()
            if hashlib.sha256(idx).hexdigest() != entry["index_sha256"]:
                problems.append(f"{entry['index']}: sha256 differs from the manifest")
            if idx != shard.index.encode():
                problems.append(f"{entry['index']}: does not index {name} (offsets, sizes or names differ)")
        if shard.problems or len(shard.vectors) != entry["samples"]:
            damaged.add(subject)
        counts[subject] += len(shard.keys)
        actions.update(shard.actions)
        sums[subject].append(manifest.sum_vectors(shard.vectors, size))

    for subject, info in m["subjects"].items():
        if counts[subject] != info["samples"]:
            problems.append(f"subject {subject}: {counts[subject]:,} samples in its shards, "
                            f"the manifest says {info['samples']:,}")
        if subject not in damaged:
            total = manifest.sum_vectors(sums[subject], size)
            if not np.array_equal(total, np.asarray(info["param_sum"], dtype=np.float64)):
                problems.append(f"subject {subject}: parameter sum differs from the manifest's")
    if dict(actions) != {a: n for a, n in m["actions"].items() if n}:
        problems.append("per-action counts in the shards differ from the manifest's")

    on_disk = {str(p.relative_to(out)) for pattern in ("*/*.tar", "*/*.idx") for p in out.glob(pattern)}
    for extra in sorted(on_disk - listed):
        problems.append(f"{extra}: not listed in the manifest")

    rejects = out / m["rejects"]["path"]
    if not rejects.is_file():
        problems.append(f"{m['rejects']['path']}: missing")
    elif hashlib.sha256(rejects.read_bytes()).hexdigest() != m["rejects"]["sha256"]:
        problems.append(f"{m['rejects']['path']}: sha256 differs from the manifest")

    totals = m["totals"]
    summary = (f"ok: {totals['shards']} shards, {totals['samples']:,} samples, "
               f"{len(m['subjects'])} subjects ({', '.join(m['subjects'])}), {totals['bytes'] / 1e6:,.1f} MB, "
               f"{totals['rejected']:,} rejected; manifest {m[manifest.HASH_KEY][:12]}")
    return problems, summary
