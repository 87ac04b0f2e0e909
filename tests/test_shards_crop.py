"""Crop geometry: the box centre lands on the crop centre (with and without JPEG draft decoding),
the scale maps as documented, overhangs are padded, crop intrinsics agree with the point mapping."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from meshrec.shards import crop, naming
from shard_fixture import frame_image


def _disc_stats(image: Image.Image) -> tuple[np.ndarray, float]:
    """Centroid (x, y) in OpenCV pixel coordinates and radius of the bright disc."""
    rgb = np.asarray(image, dtype=np.float64)
    luma = rgb @ np.array([0.299, 0.587, 0.114])
    weight = np.clip((luma - 110.0) / 90.0, 0.0, 1.0)  # background ≲ 75, disc ≈ 215
    yy, xx = np.mgrid[0:luma.shape[0], 0:luma.shape[1]]
    total = weight.sum()
    return np.array([(weight * xx).sum() / total, (weight * yy).sum() / total]), float(np.sqrt(total / np.pi))


@pytest.mark.parametrize("side, size, expect_k", [(100.0, 64, 1), (300.0, 64, 4), (560.0, 64, 8)])
def test_box_centre_lands_on_crop_centre(tmp_path, side, size, expect_k):
    rng = np.random.default_rng(int(side))
    center = (313.37, 241.61)
    path = tmp_path / "frame.jpg"
    frame_image(640, center, 0.3 * side, rng).save(path, quality=95)
    assert crop.draft_factor(side, size) == expect_k
    box = crop.crop_box(center, scale=side / 200 / 1.2, context=1.2)
    assert box.side == pytest.approx(side)
    out = crop.crop_image(str(path), box, size)
    assert out.size == (size, size) and out.mode == "RGB"
    centroid, radius = _disc_stats(out)
    np.testing.assert_allclose(centroid, [(size - 1) / 2] * 2, atol=0.1)
    assert radius == pytest.approx(0.3 * size, rel=0.03)  # s = size / side
    again = crop.crop_image(str(path), box, size)
    assert crop.encode_jpeg(again, 95) == crop.encode_jpeg(out, 95)  # deterministic


def test_overhanging_crop_is_padded_and_keeps_the_person_centred(tmp_path):
    center = (30.0, 25.0)
    path = tmp_path / "corner.jpg"
    frame_image(400, center, 18.0, np.random.default_rng(1)).save(path, quality=95)
    box = crop.crop_box(center, scale=1.0, context=1.0)  # 200 px box reaching 70 px past the frame edges
    size = 100
    out = np.asarray(crop.crop_image(str(path), box, size), dtype=np.float64)
    centroid, _ = _disc_stats(Image.fromarray(out.astype(np.uint8)))
    np.testing.assert_allclose(centroid, [(size - 1) / 2] * 2, atol=0.1)
    # Crop pixels left of / above the frame edge (u = −0.5 maps to s·(−0.5 − x0) − 0.5) are pad.
    edge_x, edge_y = crop.to_crop(np.array([-0.5, -0.5]), box, size)
    inside_pad = out[: int(edge_y) - 1, :, :], out[:, : int(edge_x) - 1, :]
    for region in inside_pad:
        assert region.size and np.abs(region - np.array(crop.PAD_RGB)).max() <= 3
    # …and the frame itself (background ≥ 30) starts right after the edge.
    assert out[int(edge_y) + 2:, int(edge_x) + 2:, :].min() >= 15


def test_crop_entirely_outside_is_an_error(tmp_path):
    path = tmp_path / "f.jpg"
    frame_image(200, (100, 100), 20, np.random.default_rng(2)).save(path)
    with pytest.raises(crop.CropError, match="entirely outside"):
        crop.crop_image(str(path), crop.crop_box((-500.0, 100.0), 1.0, 1.2), 64)
    with pytest.raises(crop.CropError, match="implausible"):
        crop.crop_image(str(path), crop.crop_box((100.0, 100.0), 1e4, 1.2), 64)


def test_crop_intrinsics_match_the_point_mapping():
    rng = np.random.default_rng(3)
    K = np.array([[1145.0, 0.3, 512.5], [0.0, 1143.5, 515.4], [0.0, 0.0, 1.0]])
    points = rng.normal([0, 0, 5], [0.6, 0.9, 0.3], (50, 3))
    full = (points @ K.T)[:, :2] / points[:, 2:]
    box = crop.crop_box((480.2, 530.7), 2.7, 1.2)
    Kc = crop.crop_intrinsics(K, box, 256)
    in_crop = (points @ Kc.T)[:, :2] / points[:, 2:]
    np.testing.assert_allclose(in_crop, crop.to_crop(full, box, 256), atol=1e-9)
    # The box centre maps to the crop centre.
    np.testing.assert_allclose(crop.to_crop(np.array([480.2, 530.7]), box, 256), [127.5, 127.5])


@pytest.mark.parametrize("path, fields", [
    ("S1/Directions_1.54138969/frame_000123.jpg", ("S1", "Directions_1", "54138969", 123)),
    ("images/S11_WalkDog_2.60457274_001234.jpg", ("S11", "WalkDog_2", "60457274", 1234)),
    ("S9/images/S9_Sitting 1.55011271/S9_Sitting 1.55011271_000007.jpg", ("S9", "Sitting 1", "55011271", 7)),
])
def test_h36m_names_parse(path, fields):
    name = naming.parse(path)
    assert tuple(name) == fields
    key = naming.sample_key(name)
    assert "." not in key and "/" not in key and " " not in key and key.startswith(fields[0] + "-")


@pytest.mark.parametrize("path", ["frames/000001.jpg", "S1/Directions_1/frame_000001.jpg",
                                  "images/S1_Directions_1.5413_000001.jpg"])
def test_non_h36m_names_are_not_parsed(path):
    assert naming.parse(path) is None
