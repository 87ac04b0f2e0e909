"""Generated stand-in shards for runs with `data.shards: ''` (the demo, the tests).

On first use the configured body renders Human3.6M-like frames (meshrec.synth) for every subject
a run can touch (train, val and eval subjects), which are packed into shards (meshrec.shards)
and verified. The result is cached under `body.cache_dir` in `demo-<hash>/shards`, the hash
naming everything that shapes the bytes (generator settings, frame size, pack settings, subjects
and the body model's digest), so a later run with the same settings reuses it at once.

Sizes: frames are rendered at FRAME_FACTOR × `data.synth.size` (at least MIN_FRAME px), where the
person's box covers roughly a quarter to a half of the frame, so the packed crops of side
`data.synth.size` are cut at about native resolution; the loader then resamples them to
`data.image_size`.

Several processes (DDP ranks) may call `ensure_shards` at once: they serialise on a lock file
beside the cache directory; the first builds, the others find the finished directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from meshrec.config import Config
from meshrec.errors import MeshrecError
from meshrec.fileio import locked

log = logging.getLogger(__name__)

FORMAT = 2          # bump when the recipe below changes what is generated (2: optional labels)
FRAME_FACTOR = 2
MIN_FRAME = 256
CONTEXT = 1.2       # box side = person box × CONTEXT (the packer's default)
QUALITY = 95
DONE = "demo_done.json"


def frame_size(cfg: Config) -> int:
    return max(MIN_FRAME, FRAME_FACTOR * cfg.data.synth.size)


def demo_subjects(cfg: Config) -> list[str]:
    """Every subject a run reads, in the generator's canonical order."""
    from meshrec.synth.subjects import SUBJECTS

    wanted = set(cfg.data.train_subjects) | set(cfg.data.val_subjects) | set(cfg.eval.subjects)
    unknown = sorted(wanted - set(SUBJECTS))
    if unknown:
        raise MeshrecError(f"generated data has subjects {','.join(SUBJECTS)}; the config asks for "
                           f"{','.join(unknown)} (set data.shards to real shards)")
    return [s for s in SUBJECTS if s in wanted]


def recipe(cfg: Config, body_sha256: str) -> dict:
    """Everything that shapes the generated shards' bytes."""
    syn = cfg.data.synth
    return {"format": FORMAT, "seed": syn.seed, "frame_size": frame_size(cfg),
            "frames_per_subject": syn.frames_per_subject, "subjects": demo_subjects(cfg),
            "pack": {"source": "spin", "size": syn.size, "context": CONTEXT, "quality": QUALITY},
            "body_sha256": body_sha256}


def recipe_hash(rec: dict) -> str:
    text = json.dumps(rec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _finished(root: Path, rec: dict) -> bool:
    try:
        done = json.loads((root / DONE).read_text())
    except (OSError, ValueError):
        return False
    return done.get("recipe") == rec and (root / "shards" / "manifest.json").is_file()


def _build(root: Path, rec: dict, arrays: dict, progress: bool) -> None:
    from meshrec.fileio import atomic_open
    from meshrec.shards.pack import PackConfig, pack
    from meshrec.shards.verify import verify
    from meshrec.synth.settings import Settings
    from meshrec.synth.writer import synthesize

    frames, shards = root / "frames", root / "shards"
    log.info("generating stand-in data (%d subjects × %d frames × 4 cameras) in %s",
             len(rec["subjects"]), rec["frames_per_subject"], root)
    # Both steps resume: an interrupted build continues where it stopped.
    summary = synthesize(frames, rec["subjects"],
                         Settings(rec["seed"], rec["frame_size"], rec["frames_per_subject"]),
                         arrays, progress=progress)
    p = rec["pack"]
    pack([str(f) for f in summary.files], frames, shards,
         PackConfig(p["source"], size=p["size"], context=p["context"], quality=p["quality"]),
         progress=progress, log=log.info)
    problems, _ = verify(shards)
    if problems:
        raise MeshrecError(f"generated shards in {shards} fail verification: {problems[0]}")
    shutil.rmtree(frames, ignore_errors=True)  # the crops are all a run reads
    with atomic_open(root / DONE, "w") as fh:
        json.dump({"recipe": rec}, fh, indent=1, sort_keys=True)


def ensure_shards(cfg: Config, progress: bool = False, say: Callable[[str], Any] | None = None
                  ) -> Path:
    """The shard directory of this config: `data.shards`, or the generated stand-in data (built
    and verified on first use, then reused). `say` gets a line before and after a build: minutes
    on a CPU, and a log file gets no progress bar."""
    if cfg.data.shards:
        path = Path(os.path.expanduser(cfg.data.shards))
        if not (path / "manifest.json").is_file():
            raise MeshrecError(f"data.shards: {path} is not a packed shard directory "
                               "(no manifest.json)")
        return path
    from meshrec.body.load import resolve_model_path
    from meshrec.body.model_file import load_arrays
    from meshrec.synth.writer import body_digest

    arrays = load_arrays(resolve_model_path(cfg.body))
    rec = recipe(cfg, body_digest(arrays))
    root = Path(cfg.body.cache_dir).expanduser() / f"demo-{recipe_hash(rec)}"
    if not _finished(root, rec):
        with locked(root.with_name(root.name + ".lock")):
            if not _finished(root, rec):
                started = time.monotonic()
                if say:
                    say(f"making generated data first: {len(rec['subjects'])} subjects × "
                        f"{rec['frames_per_subject']} frames × 4 cameras at {cfg.data.synth.size} "
                        f"px under {cfg.body.cache_dir} (once; later runs reuse it)")
                try:
                    _build(root, rec, arrays, progress)
                except OSError as exc:
                    raise MeshrecError(f"cannot build generated data in {root}: {exc}") from None
                if say:
                    say(f"generated data ready in {time.monotonic() - started:.0f} s: "
                        f"{root / 'shards'}")
    return root / "shards"


def existing_shards(cfg: Config) -> Path | None:
    """The shard directory of this config if it is there already (generated data finished);
    None otherwise. Builds nothing, not even the stand-in body."""
    if cfg.data.shards:
        path = Path(os.path.expanduser(cfg.data.shards))
        return path if (path / "manifest.json").is_file() else None
    from meshrec.body.load import standin_path
    from meshrec.body.model_file import load_arrays
    from meshrec.synth.writer import body_digest

    body = Path(cfg.body.model_path).expanduser() if cfg.body.model_path else standin_path(cfg.body)
    if not body.is_file():
        return None
    rec = recipe(cfg, body_digest(load_arrays(body)))
    root = Path(cfg.body.cache_dir).expanduser() / f"demo-{recipe_hash(rec)}"
    return root / "shards" if _finished(root, rec) else None


def with_shards(cfg: Config, progress: bool = False) -> Config:
    """`cfg` with `data.shards` set to a real directory (generating stand-in data if needed)."""
    path = ensure_shards(cfg, progress)
    return cfg if cfg.data.shards else replace(cfg, data=replace(cfg.data, shards=str(path)))
