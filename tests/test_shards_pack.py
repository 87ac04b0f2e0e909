"""shards/pack.py and shards/verify.py on a tiny SPIN-layout source set (tests/shard_fixture.py)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from meshrec.body import params as layout
from meshrec.errors import MeshrecError
from meshrec.fileio import sha256_file
from meshrec.shards import manifest as manifest_mod
from meshrec.shards import naming
from meshrec.shards.pack import PackConfig, pack
from meshrec.shards.verify import verify
from shard_fixture import (RunsCode, expected_j3d, expected_kp2d, expected_vector, frame_image,
                           make_spin_source)

REPO = Path(__file__).resolve().parents[1]
SIZE = 64
SHARD_MB = 0.05  # a few samples per shard, so every subject has several shards


def _cfg(**kw) -> PackConfig:
    return PackConfig(**{"source": "spin", "size": SIZE, "shard_size_mb": SHARD_MB, **kw})


def _cli(script: str, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "shards" / script), *args], capture_output=True,
                          text=True, timeout=120, **kw)


def _pack_args(src, out: Path, workers: int = 1) -> list[str]:
    return ["--source", "spin", "--npz", *map(str, src.files), "--images", str(src.root), "--out", str(out),
            "--size", str(SIZE), "--shard-size-mb", str(SHARD_MB), "--workers", str(workers), "--no-progress"]


def _read_tar(path: Path) -> list[tuple[str, dict[str, bytes]]]:
    samples: list[tuple[str, dict[str, bytes]]] = []
    with tarfile.open(path) as tf:
        for info in tf:
            key, ext = info.name.split(".", 1)
            if not samples or samples[-1][0] != key:
                samples.append((key, {}))
            samples[-1][1][ext] = tf.extractfile(info).read()
    return samples


def _files(out: Path) -> dict[str, bytes]:
    """Every output file a user sees (not the .pack bookkeeping), by relative path."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and ".pack" not in p.parts}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return make_spin_source(tmp_path_factory.mktemp("spin"))


@pytest.fixture(scope="module")
def packed(source, tmp_path_factory):
    out = tmp_path_factory.mktemp("packed") / "shards"
    result = pack(source.files, source.root, out, _cfg(), workers=1, progress=False)
    return out, result


def test_round_trip_counts_params_means_and_hashes(source, packed):
    out, result = packed
    m = manifest_mod.load(out)
    assert result.packed == len(source.rows) and result.rejected == 0
    assert result.summary() == f"packed {len(source.rows):,}, rejected 0"
    assert m["layout"] == {"size": layout.SIZE_WITH_TRANSL, "with_transl": True,
                           "parts": {"global_orient": [0, 3], "body_pose": [3, 72], "betas": [72, 82],
                                     "transl": [82, 85]}}

    want_subject = Counter(name.split("/")[0] for name in source.rows)
    want_action = Counter(name.split("/")[1].split(".")[0] for name in source.rows)
    assert {s: info["samples"] for s, info in m["subjects"].items()} == want_subject
    assert m["actions"] == want_action
    assert sum(s["samples"] for s in m["shards"]) == len(source.rows)
    assert min(info["shards"] for info in m["subjects"].values()) >= 2  # several shards per subject

    seen: dict[str, np.ndarray] = {}
    got_action: Counter = Counter()
    for entry in m["shards"]:
        tar_path = out / entry["path"]
        assert sha256_file(tar_path) == entry["sha256"] and tar_path.stat().st_size == entry["bytes"]
        assert sha256_file(out / entry["index"]) == entry["index_sha256"]
        samples = _read_tar(tar_path)
        # within a shard: the fixed pseudo-random order (sha256 of the key), not frame order
        assert [k for k, _ in samples] == sorted((k for k, _ in samples), key=naming.shard_order)
        assert len(samples) == entry["samples"]
        for key, members in samples:
            assert set(members) == {"jpg", "json", "smpl.npy", "has_smpl.npy", "j3d.npy", "kp2d.npy"}
            meta = json.loads(members["json"])
            row = source.rows[meta["image"]]
            assert meta["key"] == key and meta["subject"] == entry["subject"] == key.split("-")[0]
            assert meta["source"] == {"file": row["file"], "row": row["row"]}
            vec = np.load(io.BytesIO(members["smpl.npy"]), allow_pickle=False)
            assert vec.dtype == np.float32 and np.array_equal(vec, expected_vector(row))
            assert np.load(io.BytesIO(members["has_smpl.npy"])).tolist() == [1.0]
            assert np.array_equal(np.load(io.BytesIO(members["j3d.npy"])), expected_j3d(row))
            np.testing.assert_allclose(np.load(io.BytesIO(members["kp2d.npy"])),
                                       expected_kp2d(row, SIZE), rtol=0, atol=1e-4)
            np.testing.assert_array_equal(meta["cam_K"], row["cam_K"])
            assert meta["center"] == list(row["center"]) and meta["scale"] == row["scale"]
            assert members["jpg"][:2] == b"\xff\xd8"
            seen[key] = vec
            got_action[meta["action"]] += 1
    assert len(seen) == len(source.rows) and got_action == want_action

    train = ["S1", "S5", "S6"]
    rows = [expected_vector(r) for name, r in source.rows.items() if name.split("/")[0] in train]
    np.testing.assert_allclose(manifest_mod.mean_params(m, train),
                               np.mean(np.stack(rows).astype(np.float64), axis=0), rtol=1e-12, atol=1e-15)
    assert m["manifest_sha256"] == manifest_mod.canonical_hash(m)
    assert [s["sha256"] for s in m["sources"]] == [sha256_file(p) for p in source.files]
    problems, summary = verify(out)
    assert problems == [] and summary.startswith(f"ok: {len(m['shards'])} shards")


def test_index_files_equal_what_dalis_wds2idx_writes(packed, tmp_path):
    wds2idx = pytest.importorskip("wds2idx")
    out, _ = packed
    for entry in manifest_mod.load(out)["shards"]:
        with wds2idx.IndexCreator(str(out / entry["path"]), str(tmp_path / "x.idx"), verbose=False) as ic:
            ic.create_index()
        assert (tmp_path / "x.idx").read_bytes() == (out / entry["index"]).read_bytes()


def test_bytes_do_not_depend_on_workers_and_rerun_keeps_or_redoes_shards(source, packed, tmp_path):
    out, _ = packed
    other = tmp_path / "two-workers"
    proc = _cli("pack.py", *_pack_args(source, other, workers=2))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"packed {len(source.rows):,}, rejected 0"
    assert _files(other) == _files(out)

    # Damage one shard, leave a stale temp file and a shard no plan names: a re-run keeps the
    # intact shards, rewrites the damaged one and removes the leftovers.
    m = manifest_mod.load(other)
    damaged = other / m["shards"][1]["path"]
    damaged.write_bytes(damaged.read_bytes()[:3000])
    (damaged.parent / f".{damaged.name}.tmp").write_bytes(b"partial")
    shutil.copy(damaged, damaged.parent / "S1-000099.tar")
    result = pack(source.files, source.root, other, _cfg(), workers=1, progress=False)
    assert result.resumed_shards == len(m["shards"]) - 1
    assert _files(other) == _files(out)


def _pack_until_killed(source, out: Path) -> None:
    """Start the CLI on 2 workers and SIGKILL its whole process group once the first shard is done."""
    for _ in range(5):
        shutil.rmtree(out, ignore_errors=True)
        proc = subprocess.Popen([sys.executable, str(REPO / "shards" / "pack.py"),
                                 *_pack_args(source, out, workers=2)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        records = out / ".pack" / "records"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if records.is_dir() and any(p.suffix == ".json" for p in records.iterdir()):
                break
            time.sleep(0.002)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if not (out / "manifest.json").exists():
            return  # interrupted mid-run
    pytest.fail("the pack always finished before it could be killed")


def test_killed_pack_then_rerun_gives_identical_bytes(source, packed, tmp_path):
    out, _ = packed
    killed = tmp_path / "killed"
    _pack_until_killed(source, killed)
    assert not (killed / "manifest.json").exists()
    tars = list(killed.glob("*/*.tar"))
    assert len(tars) < len(manifest_mod.load(out)["shards"])  # it really stopped part-way
    proc = _cli("pack.py", *_pack_args(source, killed, workers=2))
    assert proc.returncode == 0, proc.stderr
    assert _files(killed) == _files(out)
    assert not [p for p in killed.rglob(".*.tmp")]
    check = _cli("verify.py", str(killed))
    assert check.returncode == 0 and check.stdout.startswith("ok:"), check.stdout + check.stderr


def test_verify_finds_a_flipped_byte_and_a_missing_shard(packed, tmp_path):
    out, _ = packed
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    m = manifest_mod.load(copy)
    flipped, missing = m["shards"][0]["path"], m["shards"][-1]["path"]
    data = bytearray((copy / flipped).read_bytes())
    data[len(data) // 3] ^= 0x01
    (copy / flipped).write_bytes(bytes(data))
    (copy / missing).unlink()
    proc = _cli("verify.py", str(copy))
    assert proc.returncode == 1
    lines = proc.stdout.strip().splitlines()
    assert any(line.startswith(f"{flipped}: sha256") for line in lines), lines
    assert f"{missing}: missing" in lines
    assert "Traceback" not in proc.stderr

    fine = _cli("verify.py", str(out))
    assert fine.returncode == 0 and fine.stdout.startswith("ok:")


def test_verify_finds_an_edited_manifest_and_an_unlisted_shard(packed, tmp_path):
    out, _ = packed
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    m = json.loads((copy / "manifest.json").read_text())
    m["subjects"]["S1"]["param_sum"][0] += 1.0
    (copy / "manifest.json").write_text(json.dumps(m))
    shutil.copy(copy / m["shards"][0]["path"], copy / "S1" / "S1-000777.tar")
    problems, _ = verify(copy)
    assert "manifest.json: manifest_sha256 does not match its contents" in problems
    assert "subject S1: parameter sum differs from the manifest's" in problems
    assert "S1/S1-000777.tar: not listed in the manifest" in problems


# ---------------------------------------------------------------------------------------
# Bad input


@pytest.fixture
def small_source(tmp_path):
    return make_spin_source(tmp_path / "src", splits={"h36m_train.npz": ("S1", "S5")}, frames=2, seed=7)


def _rewrite_npz(path: Path, **changes) -> None:
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    for key, value in changes.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    np.savez(path, **arrays)


def test_bad_samples_are_skipped_and_listed(small_source, tmp_path):
    src = small_source
    names = sorted(src.rows)
    corrupt, truncated, missing, nan_row, outside = names[0], names[3], names[5], names[8], names[12]
    (src.root / corrupt).write_bytes(b"this is not a jpeg" * 50)
    good = (src.root / truncated).read_bytes()
    (src.root / truncated).write_bytes(good[: len(good) // 2])
    (src.root / missing).unlink()
    with np.load(src.files[0]) as data:
        pose, center = data["pose"].copy(), data["center"].copy()
    pose[src.rows[nan_row]["row"], 7] = np.nan
    center[src.rows[outside]["row"]] = [-5000.0, 200.0]
    _rewrite_npz(src.files[0], pose=pose, center=center)

    out = tmp_path / "out"
    proc = _cli("pack.py", *_pack_args(src, out))
    assert proc.returncode == 0, proc.stderr
    n = len(src.rows)
    assert proc.stdout.strip() == f"packed {n - 5:,}, rejected 5 — see {out / 'rejects.jsonl'}"
    rejects = {r["image"]: r for r in map(json.loads, (out / "rejects.jsonl").read_text().splitlines())}
    assert set(rejects) == {corrupt, truncated, missing, nan_row, outside}
    assert "cannot be decoded" in rejects[corrupt]["reason"]
    assert "cannot be decoded" in rejects[truncated]["reason"]
    assert rejects[missing]["reason"] == "image file is missing"
    assert rejects[nan_row]["reason"] == "SMPL parameters contain NaN or Inf"
    assert "entirely outside" in rejects[outside]["reason"]
    assert rejects[missing]["source"] == "h36m_train.npz" and rejects[missing]["row"] == src.rows[missing]["row"]

    m = manifest_mod.load(out)
    assert m["totals"]["samples"] == n - 5 and m["totals"]["rejected"] == 5
    kept = [expected_vector(r) for name, r in src.rows.items() if name not in rejects and name.startswith("S1/")]
    np.testing.assert_allclose(manifest_mod.mean_params(m, ["S1"]), np.mean(np.stack(kept), axis=0, dtype=np.float64),
                               rtol=1e-12, atol=1e-15)
    assert verify(out)[0] == []


@pytest.mark.parametrize("change, message", [
    ({"pose": None}, r"h36m_train\.npz has 'shape' but no 'pose'"),
    ({"S": np.zeros((16, 17, 4))}, r"'S' has shape \(16, 17, 4\), expected \(16, 24, 4\)"),
    ({"pose": np.zeros((16, 69))}, r"'pose' has shape \(16, 69\), expected \(16, 72\)"),
    ({"scale": np.zeros((15,))}, r"'scale' has shape \(15,\), expected \(16,\)"),
    ({"imgname": np.array([f"frames/{i:06d}.jpg" for i in range(16)])},
     r"unknown subject naming in image path 'frames/000000\.jpg'"),
    ({"imgname": np.array([object()] * 16, dtype=object)}, r"'imgname' holds pickled Python objects"),
])
def test_dataset_level_problems_raise_naming_the_key(small_source, tmp_path, change, message):
    _rewrite_npz(small_source.files[0], **change)
    out = tmp_path / "out"
    with pytest.raises(MeshrecError, match=message):
        pack(small_source.files, small_source.root, out, _cfg(), workers=1, progress=False)
    assert not out.exists()


def test_duplicate_frames_empty_root_and_wrong_root_raise(small_source, tmp_path):
    src = small_source
    with np.load(src.files[0]) as data:
        names = data["imgname"].copy()
    names[3] = names[2]
    dup = tmp_path / "dup.npz"
    shutil.copy(src.files[0], dup)
    _rewrite_npz(dup, imgname=names)
    with pytest.raises(MeshrecError, match="two rows name the same frame"):
        pack([dup], src.root, tmp_path / "o1", _cfg(), workers=1, progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MeshrecError, match=f"image root {empty} is empty"):
        pack(src.files, empty, tmp_path / "o2", _cfg(), workers=1, progress=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "unrelated.txt").write_text("x")
    with pytest.raises(MeshrecError, match="none of 16 probed images exist"):
        pack(src.files, elsewhere, tmp_path / "o3", _cfg(), workers=1, progress=False)
    with pytest.raises(MeshrecError, match="source file .*nope.npz does not exist"):
        pack([tmp_path / "nope.npz"], src.root, tmp_path / "o4", _cfg(), workers=1, progress=False)
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 5))


def test_cli_dataset_error_is_one_line_and_leaves_a_finished_pack_intact(small_source, tmp_path):
    out = tmp_path / "out"
    assert _cli("pack.py", *_pack_args(small_source, out)).returncode == 0
    before = _files(out)
    _rewrite_npz(small_source.files[0], shape=None)
    proc = _cli("pack.py", *_pack_args(small_source, out))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"pack: error: {small_source.files[0]} has 'pose' but no "
                                                f"'shape' (SMPL parameters need both, or neither for a "
                                                f"file of joints only)"]
    assert _files(out) == before and verify(out)[0] == []
    bad = _cli("pack.py", *_pack_args(small_source, tmp_path / "x"), "--size", "3")
    assert bad.returncode == 2 and "--size 3 is out of range" in bad.stderr


def test_help_exits_zero():
    for script in ("pack.py", "verify.py"):
        proc = _cli(script, "--help")
        assert proc.returncode == 0 and "usage:" in proc.stdout


# ---------------------------------------------------------------------------------------
# mmhuman3d HumanData


def _humandata(root: Path, smpl, n: int = 6, meta=None) -> tuple[Path, dict]:
    rng = np.random.default_rng(11)
    images = root / "images"
    paths, boxes = [], []
    for i in range(n):
        stem = f"S{1 + 4 * (i % 2)}_Posing_{1 + i // 4}.54138969"
        rel = f"{stem.split('_')[0]}/images/{stem}/{stem}_{i:06d}.jpg"
        side = rng.uniform(100, 160)
        center = rng.uniform(side / 2, 300 - side / 2, 2)
        (images / rel).parent.mkdir(parents=True, exist_ok=True)
        frame_image(300, tuple(center), 0.3 * side, rng).save(images / rel, quality=95)
        paths.append(rel)
        boxes.append([center[0] - side / 2, center[1] - side * 0.4, side, side * 0.8, 1.0])
    boxes = np.array(boxes)
    boxes[2, 4] = 0.0  # an invalid box
    path = root / "h36m_humandata.npz"
    extra = {} if meta is None else {"meta": meta}
    np.savez_compressed(path, image_path=np.array(paths), bbox_xywh=boxes, smpl=smpl, **extra)
    return path, {"paths": paths, "boxes": boxes}


def test_humandata_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    n = 6
    smpl = {"global_orient": rng.normal(0, 1, (n, 3)), "body_pose": rng.normal(0, 0.3, (n, 23, 3)),
            "betas": rng.normal(0, 1, (n, 10)), "transl": rng.normal(0, 1, (n, 3))}
    marker = tmp_path / "MARKER"
    npz, info = _humandata(tmp_path, smpl, n, meta={"note": RunsCode(f"touch {marker}")})
    out = tmp_path / "out"
    result = pack([npz], tmp_path / "images", out, PackConfig("humandata", size=SIZE, shard_size_mb=SHARD_MB),
                  workers=1, progress=False)
    assert not marker.exists()  # the unused pickled 'meta' entry was never unpickled
    assert (result.packed, result.rejected) == (n - 1, 1)
    (reject,) = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert reject["row"] == 2 and "confidence" in reject["reason"]
    want = np.concatenate([smpl["global_orient"], smpl["body_pose"].reshape(n, 69), smpl["betas"],
                           smpl["transl"]], axis=1).astype(np.float32)
    m = manifest_mod.load(out)
    for entry in m["shards"]:
        for key, members in _read_tar(out / entry["path"]):
            meta = json.loads(members["json"])
            row = meta["source"]["row"]
            assert np.array_equal(np.load(io.BytesIO(members["smpl.npy"])), want[row])
            x, y, w, h, _ = info["boxes"][row]
            assert meta["center"] == [x + w / 2, y + h / 2] and meta["scale"] == max(w, h) / 200
            assert set(members) == {"jpg", "json", "smpl.npy", "has_smpl.npy"}
    assert set(m["subjects"]) == {"S1", "S5"} and verify(out)[0] == []


def test_humandata_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "MARKER"
    npz, _ = _humandata(tmp_path, RunsCode(f"touch {marker}"))
    with pytest.raises(MeshrecError, match=r"refusing to load .*\('smpl'\): it references os\.system"):
        pack([npz], tmp_path / "images", tmp_path / "out", PackConfig("humandata"), workers=1, progress=False)
    assert not marker.exists()


def test_humandata_wrong_body_pose_shape(tmp_path):
    n = 6
    smpl = {"global_orient": np.zeros((n, 3)), "body_pose": np.zeros((n, 21, 3)), "betas": np.zeros((n, 10))}
    npz, _ = _humandata(tmp_path, smpl, n)
    with pytest.raises(MeshrecError, match=r"'smpl\.body_pose' has shape \(6, 21, 3\)"):
        pack([npz], tmp_path / "images", tmp_path / "out", PackConfig("humandata"), workers=1, progress=False)


def test_sources_without_translation_pack_82_long_vectors(tmp_path):
    src = make_spin_source(tmp_path / "src", splits={"h36m_train.npz": ("S6",)}, frames=1, with_transl=False,
                           with_k=False)
    out = tmp_path / "out"
    pack(src.files, src.root, out, _cfg(), workers=1, progress=False)
    m = manifest_mod.load(out)
    assert m["layout"]["size"] == layout.SIZE and m["layout"]["with_transl"] is False
    for key, members in _read_tar(out / m["shards"][0]["path"]):
        meta = json.loads(members["json"])
        assert "cam_K" not in meta
        assert np.array_equal(np.load(io.BytesIO(members["smpl.npy"])), expected_vector(src.rows[meta["image"]]))
    digest = hashlib.sha256((out / "rejects.jsonl").read_bytes()).hexdigest()
    assert digest == m["rejects"]["sha256"]


# ---------------------------------------------------------------------------------------
# SPIN's own files: joints without SMPL, labels optional per sample


def _members(out: Path) -> dict[str, dict[str, bytes]]:
    """Every packed sample's members, by source image name."""
    m = manifest_mod.load(out)
    return {json.loads(members["json"])["image"]: members
            for entry in m["shards"] for _, members in _read_tar(out / entry["path"])}


def _npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def test_spin_training_layout_without_smpl_packs_joints_and_rejects_unlabelled_rows(tmp_path):
    src = make_spin_source(tmp_path / "src", splits={"h36m_train.npz": ("S1", "S5")}, frames=2,
                           seed=3, with_smpl=False, with_k=False)
    with np.load(src.files[0]) as data:
        S, part, n = data["S"].copy(), data["part"].copy(), len(data["imgname"])
    blank = sorted(src.rows)[5]
    S[src.rows[blank]["row"], :, 3] = 0.0
    part[src.rows[blank]["row"], :, 2] = 0.0
    _rewrite_npz(src.files[0], S=S, part=part, openpose=np.zeros((n, 25, 3)))
    out = tmp_path / "out"
    result = pack(src.files, src.root, out, _cfg(), workers=1, progress=False)
    assert (result.packed, result.rejected) == (n - 1, 1)
    (reject,) = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert reject["image"] == blank and "no SMPL parameters and every joint's confidence is 0" in reject["reason"]

    m = manifest_mod.load(out)
    assert m["members"] == ["j3d.npy", "jpg", "json", "kp2d.npy"]
    assert m["labels"] == {"smpl": 0, "j3d": n - 1, "kp2d": n - 1} == manifest_mod.labels(m)
    assert m["layout"]["size"] == layout.SIZE
    assert all(s["param_count"] == 0 and not any(s["param_sum"]) for s in m["subjects"].values())
    assert sum(s["labels"]["j3d"] for s in m["shards"]) == n - 1
    packed = _members(out)
    for name, members in packed.items():
        row = {**src.rows[name], "S": S[src.rows[name]["row"]], "part": part[src.rows[name]["row"]]}
        assert set(members) == {"jpg", "json", "j3d.npy", "kp2d.npy"}
        # S holds distinct numbers in every filled J24 row: a wrong mapping would show
        j3d = _npy(members["j3d.npy"])
        assert j3d.dtype == np.float32 and np.array_equal(j3d, expected_j3d(row))
        assert np.array_equal(j3d[1], row["S"][3].astype(np.float32))  # left hip ← J24 row 3
        np.testing.assert_allclose(_npy(members["kp2d.npy"]), expected_kp2d(row, SIZE), rtol=0, atol=1e-4)
    assert verify(out)[0] == []
    with pytest.raises(MeshrecError, match="no samples with SMPL parameters"):
        manifest_mod.mean_params(m, ["S1"])


def test_spin_evaluation_layout_and_the_training_file_pack_together(tmp_path):
    src = make_spin_source(tmp_path / "src", frames=1, seed=4, with_smpl=False, with_k=False,
                           splits={"h36m_train.npz": ("S1",), "h36m_valid_protocol1.npz": ("S9",)})
    _rewrite_npz(src.files[1], part=None)  # imgname center scale S
    out = tmp_path / "out"
    pack(src.files, src.root, out, _cfg(), workers=1, progress=False)
    m = manifest_mod.load(out)
    assert m["members"] == ["j3d.npy", "jpg", "json", "kp2d.npy"]
    assert m["subjects"]["S9"]["labels"] == {"smpl": 0, "j3d": 4, "kp2d": 0}
    assert manifest_mod.labels(m, ["S1"]) == {"smpl": 0, "j3d": 4, "kp2d": 4}
    for name, members in _members(out).items():
        if name.startswith("S9/"):
            assert not _npy(members["kp2d.npy"])[:, 2].any()  # the file has no 'part'
            assert np.array_equal(_npy(members["j3d.npy"]), expected_j3d(src.rows[name]))
    assert verify(out)[0] == []


def test_a_file_with_neither_smpl_nor_joints_is_one_line_on_the_cli(small_source, tmp_path):
    _rewrite_npz(small_source.files[0], pose=None, shape=None, transl=None, S=None, part=None)
    proc = _cli("pack.py", *_pack_args(small_source, tmp_path / "out"))
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        f"pack: error: {small_source.files[0]} has neither SMPL parameters (pose, shape) nor joints "
        "(S, part): nothing to train or evaluate on"]


def test_has_smpl_marks_which_rows_are_smpl_labels(small_source, tmp_path):
    src = small_source
    with np.load(src.files[0]) as data:
        n = len(data["imgname"])
    flags = np.arange(n) % 3 != 0
    _rewrite_npz(src.files[0], has_smpl=flags.astype(np.float64))
    out = tmp_path / "out"
    pack(src.files, src.root, out, _cfg(), workers=1, progress=False)
    m = manifest_mod.load(out)
    assert m["labels"] == {"smpl": int(flags.sum()), "j3d": n, "kp2d": n}
    for name, members in _members(out).items():
        labelled = bool(flags[src.rows[name]["row"]])
        assert _npy(members["has_smpl.npy"]).tolist() == [float(labelled)]
        want = expected_vector(src.rows[name]) if labelled else np.zeros(layout.SIZE_WITH_TRANSL, np.float32)
        assert np.array_equal(_npy(members["smpl.npy"]), want)
    for subject in ("S1", "S5"):
        rows = [r for name, r in src.rows.items() if name.startswith(subject + "/") and flags[r["row"]]]
        assert m["subjects"][subject]["param_count"] == len(rows)
        np.testing.assert_allclose(manifest_mod.mean_params(m, [subject]),
                                   np.mean([expected_vector(r) for r in rows], axis=0, dtype=np.float64),
                                   rtol=1e-12, atol=1e-15)
    assert verify(out)[0] == []
    edited = json.loads((out / "manifest.json").read_text())
    edited["shards"][0]["labels"]["smpl"] += 1
    manifest_mod.write(out, edited)
    assert any(p.startswith(f"{edited['shards'][0]['path']}: label counts") for p in verify(out)[0])
