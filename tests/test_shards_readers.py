"""The packed shards read back through DALI's webdataset reader (CPU, with the .idx files) and
through the webdataset package, sample for sample equal to the source."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from meshrec.shards import manifest as manifest_mod
from meshrec.shards.pack import PackConfig, pack
from shard_fixture import expected_j3d, expected_vector, make_spin_source

SIZE = 64


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    src = make_spin_source(tmp_path_factory.mktemp("src"), splits={"h36m_train.npz": ("S1", "S5")}, frames=3)
    out = tmp_path_factory.mktemp("shards")
    pack(src.files, src.root, out, PackConfig("spin", size=SIZE, shard_size_mb=0.05), workers=1, progress=False)
    m = manifest_mod.load(out)
    assert len(m["shards"]) >= 3
    return src, out, m


def test_dali_reads_the_shards_with_their_index_files_on_cpu(shards):
    dali = pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn, types

    src, out, m = shards
    batch = 8

    @dali.pipeline_def(batch_size=batch, num_threads=1, device_id=None, seed=0)
    def pipeline():
        jpg, smpl, meta = fn.readers.webdataset(
            paths=[str(out / s["path"]) for s in m["shards"]],
            index_paths=[str(out / s["index"]) for s in m["shards"]],
            ext=["jpg", "smpl.npy", "json"], missing_component_behavior="error", name="reader")
        return fn.decoders.image(jpg, device="cpu", output_type=types.RGB), fn.decoders.numpy(smpl), meta

    pipe = pipeline()
    pipe.build()
    total = m["totals"]["samples"]
    assert pipe.reader_meta("reader")["epoch_size"] == total
    got: dict[str, np.ndarray] = {}
    for _ in range(math.ceil(total / batch)):
        images, vectors, metas = pipe.run()
        for i in range(batch):
            if len(got) == total:
                break
            meta = json.loads(np.asarray(metas[i]).tobytes())
            image = np.asarray(images[i])
            assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8 and image.max() > 200
            got[meta["key"]] = np.asarray(vectors[i])
            np.testing.assert_array_equal(got[meta["key"]], expected_vector(src.rows[meta["image"]]))
    assert len(got) == total == len(src.rows)


def test_webdataset_package_reads_the_shards(shards):
    wds = pytest.importorskip("webdataset")
    src, out, m = shards
    dataset = wds.WebDataset([str(out / s["path"]) for s in m["shards"]], shardshuffle=False).decode("rgb8")
    keys = []
    for sample in dataset:
        assert sample["jpg"].shape == (SIZE, SIZE, 3)
        row = src.rows[sample["json"]["image"]]
        np.testing.assert_array_equal(sample["smpl.npy"], expected_vector(row))
        np.testing.assert_array_equal(sample["j3d.npy"], expected_j3d(row))
        assert sample["__key__"] == sample["json"]["key"]
        keys.append(sample["__key__"])
    assert len(keys) == len(set(keys)) == m["totals"]["samples"] == len(src.rows)
