"""Frozen-encoder feature cache: what a cache is, where it lives, and whether it fits a config.

With `model.freeze_encoder: true` every epoch and every sweep cell pushes the same crops through
the same encoder; `meshrec features` does that once and training reads the features instead
(`features.enabled: true`). A cache is a directory:

    features.json             the manifest: the identity below, the parts, how it was built
    parts/<view>-r<rank>.npz  feature shards, one per view and building rank: `key` (sample key),
                              `features` float16 [N, D] and the batch's labels as the image
                              loaders give them (meshrec.data.batch): `params` float32
                              [N, 82|85], `has_smpl` bool [N], `j3d` float32 [N, 17, 4],
                              `kp2d` float32 [N, 17, 3], `aug` float32 [N, 8]

Views: `centre` holds the evaluation crop of every subject the config names (train, val and
test); with training augmentation on, `train-0` … `train-{K-1}` hold K augmented passes over the
training subjects (`features.views`), their labels already rotated/flipped with the pixels.

Identity (what must match for a cache to be used): encoder name and the sha256 of its weights as
the run builds them (seeded init or loaded file), image size, crop policy (augmentation settings,
seed and view count when augmenting), the `train.amp` setting, the source shards' manifest hash, and the
subjects (the cache may hold more). The directory is found again from the config alone:
`features.dir`, or `<shards>/../features/<encoder>-<size>px-<key>` where `key` hashes the
config-side settings; the manifest then proves the rest (weights, shards) or names what is stale.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Optional

import torch

from meshrec.config import Config, to_dict
from meshrec.errors import MeshrecError
from meshrec.model.hashing import encoder_sha256
from meshrec.precision import amp_dtype, dtype_name

FORMAT = "meshrec-features-2"  # 2: has_smpl, j3d, kp2d labels (1 had SMPL-order joints)
FORMAT_FAMILY = "meshrec-features-"
MANIFEST = "features.json"
PARTS = "parts"
CENTRE = "centre"
LABELS = ("params", "has_smpl", "j3d", "kp2d", "aug")  # stored per crop, as the batch has them


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def augmenting(cfg: Config) -> bool:
    return cfg.data.augment.enabled


def train_views(cfg: Config) -> list[str]:
    """Views training reads, one per epoch in turn."""
    return [f"train-{k}" for k in range(cfg.features.views)] if augmenting(cfg) else [CENTRE]


def subjects(cfg: Config) -> list[str]:
    return sorted(set(cfg.data.train_subjects) | set(cfg.data.val_subjects) | set(cfg.eval.subjects))


def amp_name(cfg: Config, device: torch.device) -> str:
    """The autocast dtype `train.amp` gives on `device` (recorded with a build)."""
    return dtype_name(amp_dtype(cfg.train.amp, device))


def _config_side(cfg: Config) -> dict[str, Any]:
    """The settings that name a cache directory (everything a config alone decides)."""
    aug = augmenting(cfg)
    return {"format": FORMAT, "encoder": cfg.model.encoder, "weights": cfg.model.weights,
            "init_seed": cfg.train.seed if cfg.model.weights == "none" else None,
            "image_size": cfg.data.image_size, "amp": cfg.train.amp,
            "train_views": cfg.features.views if aug else 0,
            "augment": to_dict(cfg.data.augment) if aug else None,
            "augment_seed": cfg.data.seed if aug else None}


def _shards_sha256(cfg: Config) -> str:
    from meshrec.shards import manifest as shard_manifest

    return str(shard_manifest.load(cfg.data.shards).get(shard_manifest.HASH_KEY, ""))


def identity(cfg: Config) -> dict[str, Any]:
    """Everything a cache must match to stand in for `cfg`'s encoder pass (data.shards resolved)."""
    if not cfg.data.shards:
        raise MeshrecError("features: data.shards must be resolved first (meshrec.data.demo.with_shards)")
    out = _config_side(cfg)
    out.update(encoder_sha256=encoder_sha256(cfg), shards_manifest_sha256=_shards_sha256(cfg),
               subjects=subjects(cfg),
               train_subjects=sorted(cfg.data.train_subjects))
    return out


def share_key(cfg: Config) -> str:
    """Equal for configs that can use one cache (ignores what the cache does not depend on)."""
    return _sha(identity(cfg))[:16]


def cache_dir(cfg: Config) -> Path:
    if cfg.features.dir:
        return Path(os.path.expanduser(cfg.features.dir))
    if not cfg.data.shards:
        raise MeshrecError("features: data.shards must be resolved first (meshrec.data.demo.with_shards)")
    shards = Path(os.path.expanduser(cfg.data.shards)).resolve()
    key = _sha(_config_side(cfg))[:12]
    return shards.parent / "features" / f"{cfg.model.encoder}-{cfg.data.image_size}px-{key}"


def read_manifest(root: Path) -> Optional[dict[str, Any]]:
    try:
        with open(root / MANIFEST, encoding="utf-8") as fh:
            manifest = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise MeshrecError(f"cannot read {root / MANIFEST}: {exc}") from None
    # An older format is still a cache: check() then reports it stale (format differs), to rebuild.
    form = manifest.get("identity", {}).get("format") if isinstance(manifest, dict) else None
    if not (isinstance(form, str) and form.startswith(FORMAT_FAMILY)):
        raise MeshrecError(f"{root / MANIFEST} is not a meshrec feature cache manifest ({FORMAT})")
    return manifest


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text[:12] if isinstance(value, str) and len(value) == 64 else text


def differences(have: dict[str, Any], want: dict[str, Any]) -> list[str]:
    """What keeps a cache of identity `have` from serving identity `want` (empty: it serves)."""
    out = []
    for key in sorted(set(want) | set(have)):
        if key in ("subjects", "train_subjects"):
            missing = sorted(set(want.get(key, [])) - set(have.get(key, [])))
            if missing:
                out.append(f"{key} lacks {','.join(missing)}")
        elif have.get(key) != want.get(key):
            out.append(f"{key} {_short(have.get(key))} (cache) != {_short(want.get(key))} (config)")
    return out


@dataclasses.dataclass(frozen=True)
class Unusable:
    """Why no cache at cache_dir(cfg) serves a config: `missing`, `stale` or `incomplete`, and
    what was found (one line). str() adds the advice a user gets on its own."""

    kind: str
    what: str

    def __str__(self) -> str:
        verb = "build" if self.kind == "missing" else "rebuild"
        return f"{self.what}; {verb} it with `meshrec features --config …`"


def check(cfg: Config) -> Optional[Unusable]:
    """None when a complete cache for `cfg` is at cache_dir(cfg); else why not."""
    root = cache_dir(cfg)
    manifest = read_manifest(root)
    if manifest is None:
        return Unusable("missing", f"no feature cache at {root}")
    diff = differences(manifest["identity"], identity(cfg))
    if diff:
        return Unusable("stale", f"feature cache {root} is stale: {'; '.join(diff)}")
    for part in manifest.get("parts", []):
        path = root / PARTS / part["file"]
        if not path.is_file() or path.stat().st_size != part["bytes"]:
            return Unusable("incomplete", f"feature cache {root} is incomplete: {path} is "
                                          "missing or truncated")
    return None
