"""Check a shard directory against its manifest: every byte, every count, every index, every sum.

One sequential read per shard hashes it, parses it as a tar, rebuilds its DALI index and reads
each sample's members (exactly the manifest's `members`) and labels, so that re-counted samples,
per-subject and per-action counts, label counts (per shard, subject and in all) and the
per-subject parameter sums over SMPL-labelled samples are compared with the manifest (the sums
bit for bit: they are recomputed with the packer's own routine in the same order).
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

LABEL_SHAPES = {"j3d.npy": (17, 4), "kp2d.npy": (17, 3), "has_smpl.npy": (1,)}


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
    vectors: list[np.ndarray] = field(default_factory=list)  # of SMPL-labelled samples
    samples: int = 0  # samples read whole
    actions: Counter = field(default_factory=Counter)
    labels: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)


def _array(data: bytes, ext: str, shape: tuple) -> tuple[np.ndarray | None, str]:
    """A member's finite float32 array of `shape`, or (None, what is wrong)."""
    try:
        arr = np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
    except ValueError as exc:
        return None, f"unreadable {ext} ({exc})"
    if arr.dtype != np.float32 or arr.shape != shape or not np.isfinite(arr).all():
        return None, f"{ext} is {arr.dtype} {arr.shape}, expected finite float32 {shape}"
    return arr, ""


def _read_shard(path: Path, name: str, subject: str, size: int, members: set[str]) -> _Shard:
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
    for key, got, _ in groups:
        shard.keys.append(key)
        if set(got) != members:
            shard.problems.append(f"{name}: sample {key} has members {', '.join(sorted(got))}; "
                                  f"the manifest lists {', '.join(sorted(members))}")
            continue
        jpg = got["jpg"]
        if not (jpg[:2] == b"\xff\xd8" and jpg[-2:] == b"\xff\xd9"):
            shard.problems.append(f"{name}: sample {key}: jpg is not a complete JPEG")
        try:
            meta = json.loads(got["json"])
        except (ValueError, UnicodeDecodeError) as exc:
            shard.problems.append(f"{name}: sample {key}: unreadable json ({exc})")
            continue
        arrays, wrong = {}, []
        for ext in sorted(members & ({"smpl.npy"} | set(LABEL_SHAPES))):
            arrays[ext], why = _array(got[ext], ext, (size,) if ext == "smpl.npy" else LABEL_SHAPES[ext])
            wrong += [why] if why else []
        if wrong:
            shard.problems.append(f"{name}: sample {key}: {'; '.join(wrong)}")
            continue
        if meta.get("key") != key or meta.get("subject") != subject:
            shard.problems.append(f"{name}: sample {key}: json names key {meta.get('key')!r}, "
                                  f"subject {meta.get('subject')!r}")
        # a directory from before has_smpl.npy: every smpl.npy is a label
        labelled = "smpl.npy" in arrays and float(arrays.get("has_smpl.npy", [1.0])[0]) > 0.5
        if labelled:
            shard.vectors.append(arrays["smpl.npy"])
        shard.labels["smpl"] += int(labelled)
        for label in ("j3d", "kp2d"):
            if f"{label}.npy" in arrays:
                shard.labels[label] += int((arrays[f"{label}.npy"][:, -1] > 0).any())
        shard.samples += 1
        shard.actions[str(meta.get("action"))] += 1
    if shard.keys != sorted(shard.keys, key=naming.shard_order) or len(set(shard.keys)) != len(shard.keys):
        shard.problems.append(f"{name}: sample keys are not unique and in shard order")
    return shard


def _full(labels: dict[str, int]) -> dict[str, int]:
    return {name: int(labels.get(name, 0)) for name in manifest.LABELS}


def _counts(labels: dict[str, int]) -> str:
    return ", ".join(f"{name} {labels.get(name, 0)}" for name in manifest.LABELS)


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
    members = set(m["members"])
    labels: dict[str, Counter] = {s: Counter() for s in m["subjects"]}
    vectors: Counter = Counter()
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
        shard = _read_shard(tar_path, name, subject, size, members)
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
        if shard.problems or shard.samples != entry["samples"]:
            damaged.add(subject)
        if _full(shard.labels) != manifest.entry_labels(entry):
            problems.append(f"{name}: label counts {_counts(shard.labels)} differ from the "
                            f"manifest's {_counts(manifest.entry_labels(entry))}")
        labels[subject].update(shard.labels)
        vectors[subject] += len(shard.vectors)
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
            if vectors[subject] != info["param_count"]:
                problems.append(f"subject {subject}: {vectors[subject]:,} SMPL-labelled samples, "
                                f"the manifest's param_count says {info['param_count']:,}")
            if "labels" in info and _full(labels[subject]) != _full(info["labels"]):
                problems.append(f"subject {subject}: label counts {_counts(labels[subject])} differ "
                                f"from the manifest's {_counts(info['labels'])}")
    if "labels" in m and not damaged:
        recount = sum(labels.values(), Counter())
        if _full(recount) != _full(m["labels"]):
            problems.append(f"label counts {_counts(recount)} in the shards differ from the "
                            f"manifest's {_counts(m['labels'])}")
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
