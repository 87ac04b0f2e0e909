"""`DIR/manifest.json`: what a shard directory holds, written last and atomically by the packer.

Top-level keys:
  format          "meshrec-shards/1"
  config          pack settings that shape the bytes (source kind, size, context, quality,
                  shard size, samples per shard, pad colour)
  sources         [{file, path, sha256, bytes}] of the source npz files; images: the image root
  layout          {size, with_transl, parts}: meshrec's parameter vector (meshrec.body.params);
                  size 82 when no sample has SMPL parameters
  members         the tar members every sample has (encode.py)
  labels          {smpl, j3d, kp2d}: samples carrying each label (smpl: has_smpl; j3d, kp2d: any
                  joint with confidence > 0); absent in directories packed before labels were
                  optional — `labels()` answers for those too
  shards          [{path, index, subject, samples, bytes, sha256, index_bytes, index_sha256,
                  labels}]
  subjects        {S1: {samples, shards, rejected, actions: {action: n}, labels, param_sum,
                  param_count}}; param_sum is the float64 sum of the stored float32 smpl vectors
                  of the SMPL-labelled samples, param_count their number, so the mean label over
                  any set of subjects is Σ param_sum / Σ param_count (`mean_params`)
  actions         {action: n} over all subjects
  totals          {samples, rejected, shards, bytes}
  rejects         {path, count, sha256} of rejects.jsonl
  manifest_sha256 sha256 of the canonical JSON (sorted keys, no spaces) of all the above
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from meshrec.errors import MeshrecError
from meshrec.fileio import atomic_open

FORMAT = "meshrec-shards/1"
NAME = "manifest.json"
HASH_KEY = "manifest_sha256"
LABELS = ("smpl", "j3d", "kp2d")


def canonical_hash(manifest: dict[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != HASH_KEY}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write(out: str | os.PathLike, manifest: dict[str, Any]) -> str:
    """Add the hash and write DIR/manifest.json atomically; returns the hash."""
    manifest = dict(manifest)
    manifest[HASH_KEY] = canonical_hash(manifest)
    text = json.dumps(manifest, sort_keys=True, indent=1, allow_nan=False) + "\n"
    with atomic_open(Path(out) / NAME, "w", perms=0o644) as fh:
        fh.write(text)
    return manifest[HASH_KEY]


def load(out: str | os.PathLike) -> dict[str, Any]:
    path = Path(out) / NAME
    try:
        with open(path, encoding="utf-8") as fh:
            manifest = json.load(fh)
    except FileNotFoundError:
        raise MeshrecError(f"{path} does not exist (was the pack finished?)") from None
    except (OSError, ValueError) as exc:
        raise MeshrecError(f"cannot read {path}: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise MeshrecError(f"{path} is not a meshrec shard manifest ({FORMAT})")
    return manifest


def sum_vectors(vectors: Iterable[np.ndarray], size: int) -> np.ndarray:
    """Sequential float64 sum: the packer and the verifier use this one routine so they agree bit for bit."""
    total = np.zeros(size, dtype=np.float64)
    for vec in vectors:
        total += np.asarray(vec, dtype=np.float64)
    return total


def entry_labels(entry: dict[str, Any]) -> dict[str, int]:
    """Label counts of a shard or subject entry; one written before labels were optional holds
    SMPL for every sample and no H36M joints (its `joints.npy` are SMPL's 24, not H36M's)."""
    if "labels" in entry:
        return {name: int(entry["labels"].get(name, 0)) for name in LABELS}
    return {"smpl": int(entry["samples"]), "j3d": 0, "kp2d": 0}


def labels(manifest: dict[str, Any], subjects: Sequence[str] | None = None) -> dict[str, int]:
    """Samples carrying each label (smpl, j3d, kp2d), over all shards or those of `subjects`."""
    wanted = None if subjects is None else set(subjects)
    total = dict.fromkeys(LABELS, 0)
    for entry in manifest["shards"]:
        if wanted is None or entry["subject"] in wanted:
            for name, n in entry_labels(entry).items():
                total[name] += n
    return total


def mean_params(manifest: dict[str, Any], subjects: Sequence[str]) -> np.ndarray:
    """Mean SMPL parameter vector (float64) over every packed sample of `subjects`."""
    known = manifest["subjects"]
    missing = [s for s in subjects if s not in known]
    if missing:
        raise MeshrecError(f"subjects {', '.join(missing)} are not in the shards "
                           f"(they hold {', '.join(known)})")
    count = sum(int(known[s]["param_count"]) for s in subjects)
    if count == 0:
        raise MeshrecError(f"subjects {', '.join(subjects)} hold no samples with SMPL parameters "
                           "(no mean to start from)")
    total = sum_vectors((np.asarray(known[s]["param_sum"], dtype=np.float64) for s in subjects),
                        int(manifest["layout"]["size"]))
    return total / count
