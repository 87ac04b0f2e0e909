"""Generated data → packed shards → verify: labels survive, and the crop geometry is right."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import binary_dilation

from meshrec.body import h36m
from meshrec.body.smpl import BodyModel
from meshrec.render import Camera, rasterize
from meshrec.shards import manifest as shard_manifest
from meshrec.shards.crop import Box, crop_image, crop_intrinsics
from meshrec.shards.pack import PackConfig, pack
from meshrec.synth import cameras, generate, motion, writer
from meshrec.synth.settings import Settings

# Its module fixtures are built once: every test here runs on one xdist worker.
pytestmark = pytest.mark.xdist_group("synth_pack")

REPO = Path(__file__).resolve().parents[1]
SETTINGS = Settings(seed=5, size=256, frames_per_subject=8)
SUBJECTS = ["S1", "S5", "S9"]
CROP = 96
IMGNAME = re.compile(r"^(S\d+)/([A-Za-z]+)_1\.(\d{8})/frame_(\d{6})\.jpg$")


@pytest.fixture(scope="module")
def packed(tmp_path_factory, standin_model) -> dict:
    root = tmp_path_factory.mktemp("synth_pack")
    src, out = root / "frames", root / "shards"
    writer.synthesize(src, SUBJECTS, SETTINGS, standin_model, workers=1, progress=False)
    npz = [src / "h36m_train.npz", src / "h36m_valid.npz"]
    result = pack(npz, src, out, PackConfig(source="spin", size=CROP, shard_size_mb=0.1),
                  workers=1, progress=False)
    sources = {}
    for path in npz:
        with np.load(path, allow_pickle=False) as z:
            for i, name in enumerate(z["imgname"]):
                sources[str(name)] = {k: z[k][i] for k in z.files}
    samples = {}
    for tar in sorted(out.glob("S*/*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                key, ext = m.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tf.extractfile(m).read()
    return {"src": src, "out": out, "result": result, "sources": sources, "samples": samples}


def _meta(sample: dict) -> dict:
    return json.loads(sample["json"])


def test_round_trip_counts_labels_and_means(packed):
    sources, samples = packed["sources"], packed["samples"]
    man = shard_manifest.load(packed["out"])
    assert len(samples) == len(sources) == 3 * 8 * 4  # nothing rejected, nothing duplicated
    by_image = {_meta(s)["image"]: s for s in samples.values()}
    assert set(by_image) == set(sources)
    for name, row in sources.items():
        vec = np.load(io.BytesIO(by_image[name]["smpl.npy"]))
        expected = np.concatenate([row["pose"], row["shape"], row["transl"]]).astype(np.float32)
        assert vec.dtype == np.float32 and np.array_equal(vec, expected), name
        j3d = np.load(io.BytesIO(by_image[name]["j3d.npy"]))  # S is SPIN's J24: its 17 H36M rows
        assert np.array_equal(j3d, h36m.j24_to_h36m(row["S"]).astype(np.float32)), name
    for subject in SUBJECTS:
        names = [n for n in sources if n.startswith(subject + "/")]
        assert man["subjects"][subject]["param_count"] == len(names)
        actions = {}
        for n in names:
            action = IMGNAME.match(n).group(2) + "_1"
            actions[action] = actions.get(action, 0) + 1
        assert man["subjects"][subject]["actions"] == actions
    train = [np.concatenate([r["pose"], r["shape"], r["transl"]]).astype(np.float32)
             for n, r in sources.items() if n.split("/")[0] in ("S1", "S5")]
    mean = shard_manifest.mean_params(man, ["S1", "S5"])
    np.testing.assert_allclose(mean, np.mean(np.asarray(train, dtype=np.float64), axis=0), atol=1e-12)
    verify = subprocess.run([sys.executable, str(REPO / "shards/verify.py"), str(packed["out"])],
                            capture_output=True, text=True, cwd=REPO)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_projected_mesh_lands_on_the_person_in_the_crop(packed, standin_model, tmp_path):
    """Mesh from a packed sample's parameters, projected with its crop camera, covers the person.

    The person's pixels are found independently of the labels: the same frame rendered without
    the body, JPEG-encoded and cropped exactly as the packer does, differs from the packed crop
    only where the body is.
    """
    body = generate.Body(standin_model)
    model = BodyModel(standin_model)
    rig = cameras.camera_rig(SETTINGS.seed, SETTINGS.size)
    counts = motion.frames_per_action(SETTINGS.frames_per_subject)
    checked = 0
    for key, sample in sorted(packed["samples"].items()):
        meta = _meta(sample)
        subject, action, cam_id, frame = IMGNAME.match(meta["image"]).groups()
        a = motion.ACTION_NAMES.index(action)
        posed = generate.pose_world(body, subject, a, counts[a], SETTINGS.seed)
        sc = generate.sequence_scene(posed, subject, a, cam_id, rig[cam_id], SETTINGS.seed)
        if sc.boxes:  # an occluder or a seat hides part of the body
            continue
        empty_path = tmp_path / "empty.jpg"
        empty_path.write_bytes(generate.encode_jpeg(generate.render_frame(body, None, rig[cam_id], sc)))
        box = Box(*meta["box"][:3])
        empty = np.asarray(crop_image(str(empty_path), box, CROP), dtype=np.int32)
        crop = np.asarray(Image.open(io.BytesIO(sample["jpg"])).convert("RGB"), dtype=np.int32)
        person = np.abs(crop - empty).sum(-1) > 40

        params = torch.from_numpy(np.load(io.BytesIO(sample["smpl.npy"]))[None])
        with torch.no_grad():
            verts = model(params).vertices[0].double().numpy()
        K = crop_intrinsics(np.asarray(meta["cam_K"]), meta["box"], CROP)
        proj = rasterize(verts, model.faces, Camera(K[0, 0], K[1, 1], K[0, 2], K[1, 2], CROP, CROP)
                         ).face_index >= 0
        assert proj.sum() > 200, key
        recall = (proj & binary_dilation(person, iterations=1)).sum() / proj.sum()
        precision = (person & binary_dilation(proj, iterations=2)).sum() / person.sum()
        assert recall >= 0.8 and precision >= 0.8, (key, recall, precision)
        checked += 1
    assert checked >= 24
