"""Pack a source set into per-subject WebDataset shards: plan, encode in parallel, resume, manifest.

Layout of DIR:
  S1/S1-000000.tar, S1/S1-000000.idx, …   shards of one subject, samples sorted by key
  manifest.json                          written last (see manifest.py); absent while packing
  rejects.jsonl                          one JSON line per skipped sample, with the reason
  .pack/records/S1-000000.json           per-shard record: plan hash, sha256s, counts, sums
  .pack/lock                             one packer per directory

The shard plan is fixed before any image is read: each subject's samples in key order, cut
every `samples_per_shard` samples, where samples_per_shard = shard size / mean bytes of a
deterministic probe of up to 16 samples. The plan depends only on the sources and the config,
never on the number of workers, so the same command always gives the same bytes. A shard whose
samples were all rejected is not written (its number is skipped; the manifest lists the
shards that exist).

Work is split into chunks of 32 samples that worker processes (every core by default) decode,
crop and encode; the parent receives the chunks in plan order and writes the shards — so the
cores stay busy to the end however few shards there are, and the bytes never depend on
scheduling. The parent's share (tar writing, sha256) is ~0.1 ms a sample, far below a worker's
decode cost. Each shard is written to `.S1-000000.tar.tmp`, renamed to its final name, then its
index and finally its record are written. On a re-run a shard whose record matches the plan
and whose files match the record's sha256 is kept (checked on the workers); everything else
is written again — so a run killed at any point and re-run gives the same bytes as an
uninterrupted run.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import fcntl
import hashlib
import itertools
import json
import os
import re
import signal
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Union

import numpy as np
from tqdm import tqdm

from meshrec import forkserver
from meshrec.body import params as layout
from meshrec.errors import MeshrecError
from meshrec.fileio import atomic_open, sha256_file
from meshrec.shards import crop, manifest, moon, naming
from meshrec.shards.adapters import ADAPTERS, load_sources, sorted_unique
from meshrec.shards.encode import EncodeConfig, Members, Reject, encode, label_counts, smpl_vector
from meshrec.shards.sample import SampleTable, concat
from meshrec.shards.tarshard import TarShard

REJECTS = "rejects.jsonl"
STATE = ".pack"
PROBE_SAMPLES = 16
CHUNK = 32  # samples per worker task: small enough to balance the cores, large enough to amortize IPC
_SHARD_FILE = re.compile(r"^(?P<name>S\d+-\d{6})\.(?:tar|idx)$")
_TEMP_FILE = re.compile(r"^\..+\.tmp$")
SOURCE_KINDS = (*ADAPTERS, moon.KIND)  # npz adapters, and Moon's per-subject JSON (moon.py)
_PARTS = {"global_orient": layout.GLOBAL_ORIENT, "body_pose": layout.BODY_POSE, "betas": layout.BETAS,
          "transl": layout.TRANSL}


@dataclass(frozen=True)
class PackConfig:
    source: str
    size: int = 256
    context: float = 1.2
    quality: int = 95
    shard_size_mb: float = 256.0

    @property
    def encoding(self) -> EncodeConfig:
        return EncodeConfig(self.size, self.context, self.quality)

    def validate(self) -> None:
        self.encoding.validate()
        if not self.shard_size_mb > 0:
            raise MeshrecError(f"--shard-size-mb {self.shard_size_mb} must be positive")


@dataclass
class ShardJob:
    name: str          # "S1-000000"
    subject: str
    table: SampleTable
    plan_hash: str
    members: Members


@dataclass
class PackResult:
    out: Path
    packed: int
    rejected: int
    shards: int
    resumed_shards: int
    manifest_sha256: str

    def summary(self) -> str:
        line = f"packed {self.packed:,}, rejected {self.rejected:,}"
        return line + (f" — see {self.out / REJECTS}" if self.rejected else "")


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _json_hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _tar_bytes(members: dict[str, bytes]) -> int:
    return sum(tarfile.BLOCKSIZE + -(-len(v) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
               for v in members.values())


def _check_images_root(images: str) -> None:
    if not os.path.isdir(images):
        raise MeshrecError(f"image root {images} is not a directory")
    with os.scandir(images) as it:
        if next(it, None) is None:
            raise MeshrecError(f"image root {images} is empty")


def probe_samples_per_shard(table: SampleTable, images: str, cfg: PackConfig) -> int:
    """Samples per shard from the mean tar bytes of up to 16 evenly spaced samples (deterministic)."""
    rows = np.unique(np.linspace(0, len(table) - 1, min(PROBE_SAMPLES, len(table))).round().astype(int))
    sizes, seen_any = [], False
    for i in rows:
        sample = table.sample(int(i))
        seen_any = seen_any or os.path.exists(os.path.join(images, sample.image))
        result = encode(sample, images, cfg.encoding, Members.of(table))
        if not isinstance(result, Reject):
            sizes.append(_tar_bytes(result))
    if not seen_any:
        example = os.path.join(images, str(table.image[int(rows[0])]))
        raise MeshrecError(f"none of {len(rows)} probed images exist under the image root "
                           f"{images} (e.g. {example}): is --images the folder the paths are relative to?")
    per_sample = float(np.mean(sizes)) if sizes else 0.75 * cfg.size * cfg.size  # all probed rejected: a guess
    return max(1, int(cfg.shard_size_mb * 1e6 // per_sample))


def plan(table: SampleTable, samples_per_shard: int, run_hash: str) -> list[ShardJob]:
    jobs: list[ShardJob] = []
    members = Members.of(table)  # of the whole set: every sample gets the same members
    subjects = sorted(set(table.subject.tolist()), key=naming.subject_order)
    for subject in subjects:
        rows = np.flatnonzero(table.subject == subject)
        rows = rows[np.argsort([naming.shard_order(k) for k in table.key[rows]], kind="stable")]
        for number, start in enumerate(range(0, rows.size, samples_per_shard)):
            part = table.take(rows[start:start + samples_per_shard])
            name = f"{subject}-{number:06d}"
            keys_hash = hashlib.sha256("\n".join(part.key.tolist()).encode()).hexdigest()
            jobs.append(ShardJob(name, subject, part,
                                 _json_hash({"run": run_hash, "name": name, "keys": keys_hash}),
                                 members))
    return jobs


# ---------------------------------------------------------------------------------------
# Work done in worker processes: encoding chunks of samples, checking finished shards


def encode_chunk(table: SampleTable, images: str, cfg: EncodeConfig,
                 members: Members) -> list[Union[dict[str, bytes], Reject]]:
    return [encode(sample, images, cfg, members) for sample in table]


def _paths(out: Path, subject: str, name: str) -> tuple[Path, Path, Path]:
    return (out / subject / f"{name}.tar", out / subject / f"{name}.idx",
            out / STATE / "records" / f"{name}.json")


def complete_record(out: Path, subject: str, name: str, plan_hash: str) -> Optional[dict[str, Any]]:
    """A shard's record if the shard is complete: same plan, files matching the recorded sha256."""
    tar_path, idx_path, rec_path = _paths(out, subject, name)
    try:
        with open(rec_path, encoding="utf-8") as fh:
            rec = json.load(fh)
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or rec.get("plan_hash") != plan_hash or "labels" not in rec:
        return None
    if rec["samples"] == 0:
        return None if tar_path.exists() else rec
    for path, size, digest in ((tar_path, rec["bytes"], rec["sha256"]),
                               (idx_path, rec["index_bytes"], rec["index_sha256"])):
        try:
            if path.stat().st_size != size or sha256_file(path) != digest:
                return None
        except OSError:
            return None
    return rec


# ---------------------------------------------------------------------------------------
# Writing one shard (in the parent, in plan order, so bytes never depend on scheduling)


class _ShardWriter:
    def __init__(self, out: Path, job: ShardJob) -> None:
        self.job = job
        self.tar_path, self.idx_path, self.rec_path = _paths(out, job.subject, job.name)
        with contextlib.suppress(FileNotFoundError):
            self.rec_path.unlink()
        self.tar_path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.tar_path.with_name(f".{self.tar_path.name}.tmp")
        self.fh = open(self.tmp, "wb")
        self.shard = TarShard(self.fh)
        self.rejects: list[dict[str, Any]] = []
        self.actions: dict[str, int] = {}
        self.vectors: list[np.ndarray] = []  # SMPL-labelled samples only: the means are of labels
        self.labels = {"smpl": 0, "j3d": 0, "kp2d": 0}
        self.samples = 0
        self.seen = 0

    def add(self, result: Union[dict[str, bytes], Reject]) -> None:
        sample = self.job.table.sample(self.seen)
        self.seen += 1
        if isinstance(result, Reject):
            self.rejects.append(result.as_dict())
            return
        self.shard.add(sample.key, result)
        self.samples += 1
        if sample.has_smpl:
            self.vectors.append(smpl_vector(sample))
        for name, n in label_counts(sample).items():
            self.labels[name] += n
        self.actions[sample.action] = self.actions.get(sample.action, 0) + 1

    @property
    def done(self) -> bool:
        return self.seen == len(self.job.table)

    def abandon(self) -> None:
        self.fh.close()
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()

    def finish(self) -> dict[str, Any]:
        """Close the tar, move it into place, write its index, then its record (the commit point)."""
        digest, size, index = self.shard.close()
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        count = self.samples
        if count:
            os.replace(self.tmp, self.tar_path)
            with atomic_open(self.idx_path, "w", perms=0o644) as fh:
                fh.write(index)
        else:  # every sample rejected: no shard
            for path in (self.tmp, self.tar_path, self.idx_path):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        job = self.job
        rec = {
            "name": job.name, "subject": job.subject, "plan_hash": job.plan_hash,
            "samples": count, "rejected": len(self.rejects), "rejects": self.rejects,
            "actions": self.actions, "labels": self.labels,
            "param_sum": manifest.sum_vectors(self.vectors, job.table.params.shape[1]).tolist(),
            "param_count": len(self.vectors),
            "bytes": size if count else 0, "sha256": digest if count else None,
            "index_bytes": len(index.encode()) if count else 0,
            "index_sha256": hashlib.sha256(index.encode()).hexdigest() if count else None,
        }
        with atomic_open(self.rec_path, "w") as fh:
            json.dump(rec, fh, sort_keys=True)
        return rec


# ---------------------------------------------------------------------------------------
# The run


class _Inline:
    """Executor stand-in that runs each call at once (--workers 1: no processes)."""

    def submit(self, fn: Callable, *args: Any) -> cf.Future:
        future: cf.Future = cf.Future()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # delivered through result(), as a pool would
            future.set_exception(exc)
        return future

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


def _ordered(pool: Any, fn: Callable, items: Iterable[tuple], window: int) -> Iterator[Any]:
    """fn(*item) for every item on the pool, yielded in item order, at most `window` in flight."""
    items = iter(items)
    pending: collections.deque = collections.deque(pool.submit(fn, *item) for item in itertools.islice(items, window))
    while pending:
        result = pending.popleft().result()
        for item in itertools.islice(items, 1):
            pending.append(pool.submit(fn, *item))
        yield result


def _worker_init() -> None:
    # Ctrl-C reaches the whole process group: only the parent handles it (and stops the pool).
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def _executor(workers: int) -> Iterator[Any]:
    if workers <= 1:
        yield _Inline()
        return
    pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=forkserver.context(),
                                  initializer=_worker_init)
    try:
        yield pool
    except cf.process.BrokenProcessPool:
        raise MeshrecError("a packing worker died (out of memory?); re-run the same command to resume") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def _lock(out: Path) -> Iterator[None]:
    (out / STATE).mkdir(parents=True, exist_ok=True)
    with open(out / STATE / "lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MeshrecError(f"another pack is writing {out} (lock {out / STATE / 'lock'})") from None
        yield


def _clean(out: Path, jobs: Sequence[ShardJob]) -> None:
    """Before packing: the directory stops looking complete, leftovers of killed or older runs go."""
    for name in (manifest.NAME, REJECTS):
        with contextlib.suppress(FileNotFoundError):
            (out / name).unlink()
    planned = {job.name for job in jobs}
    records = out / STATE / "records"
    subject_dirs = [d for d in out.iterdir() if d.is_dir() and re.fullmatch(r"S\d+", d.name)]
    for d in [out, records, *subject_dirs]:
        if not d.is_dir():
            continue
        for f in d.iterdir():
            shard = _SHARD_FILE.match(f.name) if d in subject_dirs else None
            stale_record = d == records and f.suffix == ".json" and f.stem not in planned
            if _TEMP_FILE.match(f.name) or stale_record or (shard and shard["name"] not in planned):
                f.unlink()


def _run_jobs(jobs: Sequence[ShardJob], images: str, out: Path, cfg: PackConfig, workers: int,
              progress: bool) -> list[dict[str, Any]]:
    """Keep complete shards; encode the rest in chunks on `workers` processes; write in plan order."""
    records: dict[str, dict[str, Any]] = {}
    total = sum(len(job.table) for job in jobs)
    with _executor(workers) as pool, tqdm(total=total, unit="img", desc="packing", disable=not progress,
                                          mininterval=0.5, dynamic_ncols=True) as bar:
        checks = _ordered(pool, complete_record, ((out, job.subject, job.name, job.plan_hash) for job in jobs),
                          4 * workers)
        for job, rec in zip(jobs, checks):
            if rec is not None:
                records[job.name] = {**rec, "resumed": True}
                bar.update(len(job.table))
        todo = [job for job in jobs if job.name not in records]
        chunks = ((job.table.take(slice(start, start + CHUNK)), images, cfg.encoding, job.members)
                  for job in todo for start in range(0, len(job.table), CHUNK))
        results = _ordered(pool, encode_chunk, chunks, 4 * workers)
        for job in todo:
            writer = _ShardWriter(out, job)
            try:
                while not writer.done:
                    batch = next(results)
                    for result in batch:
                        writer.add(result)
                    bar.update(len(batch))
                records[job.name] = {**writer.finish(), "resumed": False}
            except BaseException:
                writer.abandon()
                raise
    return [records[job.name] for job in jobs]


def pack(npz: Sequence[str | os.PathLike], images: str | os.PathLike, out: str | os.PathLike,
         cfg: PackConfig, workers: int | None = None, progress: bool = True,
         log: Callable[[str], None] = print, moon_source: moon.MoonSource | None = None) -> PackResult:
    """Pack the `cfg.source` files `npz` with images under `images` into `out` (see module doc);
    for source h36m-moon, `moon_source` names what to read instead and `npz` is empty.

    With workers > 1 it starts worker processes (forkserver): a script calling it needs the usual
    `if __name__ == "__main__":` guard. Every problem with the input raises MeshrecError before
    anything is written to `out`.
    """
    cfg.validate()
    images, out = os.fspath(images), Path(out)
    if out.exists() and not out.is_dir():
        raise MeshrecError(f"--out {out} exists and is not a directory")
    _check_images_root(images)
    npz_paths = [os.fspath(p) for p in npz]
    if cfg.source == moon.KIND and (moon_source is None or npz_paths):
        raise MeshrecError(f"source {cfg.source}: give the annotations folder, not npz files")
    if cfg.source != moon.KIND and not npz_paths:
        raise MeshrecError(f"source {cfg.source} needs npz files")
    paths = npz_paths + (moon_source.files() if moon_source is not None else [])
    for path in paths:
        if not os.path.isfile(path):
            raise MeshrecError(f"source file {path} does not exist")
    # Moon's JSON may join npz files of another kind (other subjects) in one directory.
    tables, names = [], []
    if npz_paths:
        tables.append(load_sources(cfg.source, npz_paths))
        names.append(", ".join(npz_paths))
    if moon_source is not None:
        tables.append(moon_source.load())
        names.append(moon_source.annotations)
    table = tables[0] if len(tables) == 1 else sorted_unique(concat(tables, names))
    sources = [{"file": os.path.basename(p), "path": p, "sha256": sha256_file(p),
                "bytes": os.path.getsize(p)} for p in paths]
    samples_per_shard = probe_samples_per_shard(table, images, cfg)
    config = {**cfg.__dict__, "samples_per_shard": samples_per_shard, "pad_rgb": list(crop.PAD_RGB),
              "box": "side = 200 * scale * context, centred on center (OpenCV pixel coordinates)"}
    if moon_source is not None:
        config["selection"] = moon_source.selection.as_dict()
    run_hash = _json_hash({"format": manifest.FORMAT, "config": config,
                           "members": Members.of(table).names(),
                           "sources": [s["sha256"] for s in sources],
                           "images": os.path.realpath(images)})
    jobs = plan(table, samples_per_shard, run_hash)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MeshrecError(f"cannot create {out}: {exc.strerror or exc}") from None
    workers = max(1, min(workers or available_cores(), -(-len(table) // CHUNK)))
    try:
        with _lock(out):
            _clean(out, jobs)
            records = _run_jobs(jobs, images, out, cfg, workers, progress)
            resumed = sum(1 for r in records if r["resumed"])
            if resumed:
                log(f"kept {resumed} of {len(jobs)} shards already complete")
            body = _manifest_body(config, sources, images, table, jobs, records)
            rejects = [rej for rec in records for rej in rec["rejects"]]
            text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rejects)
            with atomic_open(out / REJECTS, "w", perms=0o644) as fh:
                fh.write(text)
            body["rejects"] = {"path": REJECTS, "count": len(rejects),
                               "sha256": hashlib.sha256(text.encode()).hexdigest()}
            digest = manifest.write(out, body)
    except OSError as exc:
        raise MeshrecError(f"cannot write under {out}: {exc}") from None
    packed = sum(r["samples"] for r in records)
    return PackResult(out, packed, len(rejects), body["totals"]["shards"], resumed, digest)


def _add_labels(into: dict[str, int], counts: dict[str, int]) -> None:
    for name, n in counts.items():
        into[name] = into.get(name, 0) + n


def _manifest_body(config: dict[str, Any], sources: list[dict[str, Any]],
                   images: str, table: SampleTable, jobs: Sequence[ShardJob],
                   records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    p = table.params.shape[1]
    shards, subjects, actions = [], {}, {}
    labels = dict.fromkeys(manifest.LABELS, 0)
    for job, rec in zip(jobs, records):
        subj = subjects.setdefault(job.subject, {"samples": 0, "shards": 0, "rejected": 0,
                                                 "actions": {}, "sums": [], "param_count": 0,
                                                 "labels": dict.fromkeys(manifest.LABELS, 0)})
        subj["samples"] += rec["samples"]
        subj["rejected"] += rec["rejected"]
        subj["param_count"] += rec["param_count"]
        subj["sums"].append(np.asarray(rec["param_sum"], dtype=np.float64))
        _add_labels(subj["labels"], rec["labels"])
        _add_labels(labels, rec["labels"])
        for action, n in rec["actions"].items():
            subj["actions"][action] = subj["actions"].get(action, 0) + n
            actions[action] = actions.get(action, 0) + n
        if rec["samples"]:
            subj["shards"] += 1
            shards.append({"path": f"{job.subject}/{job.name}.tar", "index": f"{job.subject}/{job.name}.idx",
                           "subject": job.subject, "samples": rec["samples"], "bytes": rec["bytes"],
                           "sha256": rec["sha256"], "index_bytes": rec["index_bytes"],
                           "index_sha256": rec["index_sha256"], "labels": rec["labels"]})
    for subj in subjects.values():
        subj["param_sum"] = manifest.sum_vectors(subj.pop("sums"), p).tolist()
    return {
        "format": manifest.FORMAT,
        "config": config,
        "sources": sources,
        "images": images,
        "layout": {"size": p, "with_transl": p == layout.SIZE_WITH_TRANSL,
                   "parts": {name: [part.start, part.stop] for name, part in _PARTS.items()
                             if part.stop <= p}},
        "members": Members.of(table).names(),
        "labels": labels,
        "shards": shards,
        "subjects": subjects,
        "actions": actions,
        "totals": {"samples": sum(s["samples"] for s in shards), "shards": len(shards),
                   "rejected": sum(r["rejected"] for r in records),
                   "bytes": sum(s["bytes"] for s in shards)},
    }
