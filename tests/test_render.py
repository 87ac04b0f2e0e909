"""meshrec.render against independent references: analytic spheres and planes, brute-force
point-in-triangle tests, hand-computed projections."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from PIL import Image

from meshrec import render
from meshrec.errors import MeshrecError

# Principal point on a pixel centre, so the optical axis goes through pixel (100, 100).
SIZE, F, C = 201, 240.0, 100.5


def axis_camera(size: int = SIZE, f: float = F, c: float = C) -> render.Camera:
    return render.Camera(f, f, c, c, size, size)


def sphere(radius: float, distance: float) -> tuple[np.ndarray, np.ndarray]:
    s = trimesh.creation.icosphere(subdivisions=4, radius=radius)
    return np.asarray(s.vertices) + [0.0, 0.0, distance], np.asarray(s.faces)


def pixel_rays(cam: render.Camera) -> np.ndarray:
    """(H,W,3) camera-frame directions through the pixel centres, z = 1."""
    j, i = np.meshgrid(np.arange(cam.width) + 0.5, np.arange(cam.height) + 0.5)
    return np.stack([(j - cam.cx) / cam.fx, (i - cam.cy) / cam.fy, np.ones_like(j)], axis=-1)


# --- camera -------------------------------------------------------------------------------


def test_project_matches_hand_computed_pinhole():
    # Camera turned 90 degrees about y: world +x is the camera's forward axis.
    R = np.array([[0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    t = np.array([0.1, -0.2, 0.5])
    cam = render.Camera(500.0, 400.0, 320.0, 240.0, 640, 480, R, t)
    X = np.array([[3.0, 1.0, 2.0], [1.5, -0.5, 0.0]])
    uv, z = render.project(X, cam)
    # By hand: camera point = (-Xz + 0.1, Xy - 0.2, Xx + 0.5).
    # P1 = (-1.9, 0.8, 3.5): u = 500 * -1.9 / 3.5 + 320, v = 400 * 0.8 / 3.5 + 240.
    # P2 = (0.1, -0.7, 2.0): u = 500 * 0.1 / 2 + 320 = 345, v = 400 * -0.7 / 2 + 240 = 100.
    np.testing.assert_allclose(z, [3.5, 2.0])
    np.testing.assert_allclose(uv, [[320 - 950 / 3.5, 240 + 320 / 3.5], [345.0, 100.0]])


def test_look_at_centres_target_and_keeps_up_up():
    R, t = render.look_at(eye=(2.0, 1.5, -3.0), target=(0.2, 0.9, 0.4))
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(R) == pytest.approx(1.0)
    cam = render.Camera(300.0, 300.0, 128.0, 96.0, 256, 192, R, t)
    uv, z = render.project(np.array([[0.2, 0.9, 0.4], [0.2, 1.4, 0.4], [2.0, 1.5, -3.0]]) , cam)
    np.testing.assert_allclose(uv[0], [128.0, 96.0], atol=1e-9)
    assert z[0] == pytest.approx(np.linalg.norm([1.8, 0.6, -3.4]))
    assert uv[1, 1] < uv[0, 1]  # a point above the target is drawn higher (smaller row)
    assert uv[1, 0] == pytest.approx(128.0, abs=1e-6)  # no roll: the image x axis is level
    assert z[2] == pytest.approx(0.0, abs=1e-12)  # the eye is at the camera centre


# --- coverage -----------------------------------------------------------------------------


def brute_force_inside(tri_xy: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres inside a screen triangle (sign of cross products), and those within 1e-3 px of an edge."""
    j, i = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    signs, near_edge = [], np.zeros(j.shape, bool)
    for a, b in ((0, 1), (1, 2), (2, 0)):
        (ax, ay), (bx, by) = tri_xy[a], tri_xy[b]
        cross = (bx - ax) * (i - ay) - (by - ay) * (j - ax)
        signs.append(np.sign(cross))
        near_edge |= np.abs(cross) / np.hypot(bx - ax, by - ay) < 1e-3
    s = np.stack(signs)
    return np.all(s >= 0, 0) | np.all(s <= 0, 0), near_edge


@pytest.mark.parametrize("spread", [1.5, 4.0, 20.0, 70.0, 400.0, 3000.0])
def test_triangle_pixels_equal_brute_force(spread):
    rng = np.random.default_rng(int(spread * 10))
    cam = render.Camera(150.0, 170.0, 151.3, 127.9, 300, 260)
    # Triangles around a point of the image, from a few pixels to far larger than the image
    # (clipped, cut into tiles); angular gaps under 180 degrees keep the point inside.
    for _ in range(5):
        centre = rng.uniform([0, 0], [300, 260])
        ang = rng.uniform(0, 2 * np.pi) + np.cumsum([0.0, *rng.uniform(1.8, 2.4, 2)])
        xy = centre + spread * rng.uniform(0.5, 1.0, (3, 1)) * np.column_stack([np.cos(ang), np.sin(ang)])
        z = rng.uniform(1.0, 4.0, 3)
        verts = np.column_stack([(xy[:, 0] - cam.cx) / cam.fx * z, (xy[:, 1] - cam.cy) / cam.fy * z, z])
        r = render.rasterize(verts, np.array([[0, 1, 2]]), cam)
        inside, ambiguous = brute_force_inside(xy, cam.width, cam.height)
        got = r.face_index == 0
        assert np.array_equal(got[~ambiguous], inside[~ambiguous])
        assert set(np.unique(r.face_index)) <= {-1, 0}
        if spread >= 4.0:
            assert inside.sum() > 0


def test_thin_long_triangles_equal_brute_force():
    rng = np.random.default_rng(7)
    cam = render.Camera(150.0, 170.0, 151.3, 127.9, 300, 260)
    for _ in range(30):  # slivers a few pixels wide crossing many tiles at odd angles
        a = rng.uniform([0, 0], [300, 260])
        ang = rng.uniform(0, 2 * np.pi)
        d = np.array([np.cos(ang), np.sin(ang)])
        b = a + rng.uniform(200, 500) * d
        xy = np.array([a, b, b + rng.uniform(1.0, 4.0) * np.array([-d[1], d[0]])])
        verts = np.column_stack([(xy[:, 0] - cam.cx) / cam.fx, (xy[:, 1] - cam.cy) / cam.fy, np.ones(3)])
        r = render.rasterize(verts * rng.uniform(1.0, 3.0, (3, 1)), np.array([[0, 1, 2]]), cam)
        inside, ambiguous = brute_force_inside(xy, cam.width, cam.height)
        assert np.array_equal((r.face_index == 0)[~ambiguous], inside[~ambiguous])


def test_barycentrics_are_perspective_correct():
    cam = render.Camera(200.0, 200.0, 50.0, 50.0, 100, 100)
    verts = np.array([[-1.0, -1.0, 2.0], [2.5, -0.5, 6.0], [-0.5, 3.0, 9.0]])
    r = render.rasterize(verts, np.array([[0, 1, 2]]), cam)
    hit = r.face_index == 0
    assert hit.sum() > 500
    b = r.barycentrics[hit].astype(np.float64)
    np.testing.assert_allclose(b.sum(1), 1.0, atol=1e-5)
    point = b @ verts  # the surface point the pixel sees, in the camera frame
    uv, _ = render.project(point, cam)
    rows, cols = np.nonzero(hit)
    # It lies on the ray through the pixel centre, at the reported depth.
    np.testing.assert_allclose(uv, np.column_stack([cols + 0.5, rows + 0.5]), atol=2e-3)
    np.testing.assert_allclose(r.depth[hit], point[:, 2], rtol=1e-5)


def test_large_tilted_plane_covers_image_with_exact_depth():
    cam = render.Camera(300.0, 300.0, 150.0, 150.0, 300, 300)
    # Plane z = 3 + 0.5 x, as a quad much larger than the view (tiles and clipping).
    corners = np.array([[-2.0, -2.0], [2.0, -2.0], [2.0, 2.0], [-2.0, 2.0]])
    verts = np.column_stack([corners, 3.0 + 0.5 * corners[:, 0]])
    r = render.rasterize(verts, np.array([[0, 1, 2], [0, 2, 3]]), cam)
    assert (r.face_index >= 0).all()
    d = pixel_rays(cam)
    expected = 3.0 / (1.0 - 0.5 * d[..., 0])  # ray t * d meets z = 3 + 0.5 x at t = 3 / (1 - 0.5 dx)
    np.testing.assert_allclose(r.depth, expected, rtol=1e-5)


# --- sphere -------------------------------------------------------------------------------


def test_sphere_silhouette_area_and_depth_match_analytic():
    radius, distance = 0.5, 3.0
    v, f = sphere(radius, distance)
    cam = axis_camera()
    r = render.rasterize(v, f, cam)
    # A sphere on the optical axis projects to a disc of radius f * r / sqrt(d^2 - r^2).
    disc = F * radius / np.sqrt(distance**2 - radius**2)
    area = (r.face_index >= 0).sum()
    assert area == pytest.approx(np.pi * disc**2, rel=0.01)
    assert r.depth[100, 100] == pytest.approx(distance - radius, rel=2e-3)
    # Every covered pixel: depth of the first hit of its ray with the true sphere.
    d = pixel_rays(cam)
    bq = d[..., 2] * distance
    aq = (d * d).sum(-1)
    disc_q = bq**2 - aq * (distance**2 - radius**2)
    centre_dist = np.hypot(*np.meshgrid(np.arange(SIZE) + 0.5 - C, np.arange(SIZE) + 0.5 - C))
    interior = centre_dist < 0.95 * disc
    t = (bq - np.sqrt(np.where(disc_q > 0, disc_q, 0))) / aq
    np.testing.assert_allclose(r.depth[interior], t[interior], rtol=3e-3)
    # Closed surface, no holes: everything well inside the disc is covered, nothing outside it.
    assert (r.face_index[interior] >= 0).all()
    assert (r.face_index[centre_dist > 1.02 * disc] == -1).all()
    assert np.isinf(r.depth[r.face_index == -1]).all()


def test_backface_culling_changes_nothing_on_a_closed_mesh():
    v, f = sphere(0.5, 3.0)
    cam = axis_camera()
    a = render.rasterize(v, f, cam)
    b = render.rasterize(v, f, cam, cull_backfaces=True)
    assert np.array_equal(a.face_index, b.face_index)
    assert np.array_equal(a.depth, b.depth)


# --- visibility ---------------------------------------------------------------------------


@pytest.mark.parametrize("near_first", [True, False])
def test_nearer_of_two_overlapping_triangles_wins(near_first):
    cam = render.Camera(100.0, 100.0, 32.0, 32.0, 64, 64)
    big = np.array([[-1.0, -1.0], [1.0, -1.0], [0.0, 1.0]])
    small = 0.5 * big + [0.1, 0.0]
    near_tri = np.column_stack([small * 2.0, [2.0] * 3])  # same screen size as `small` at z=1
    far_tri = np.column_stack([big * 3.0, [3.0] * 3])
    tris = [near_tri, far_tri] if near_first else [far_tri, near_tri]
    near_id = 0 if near_first else 1
    r = render.rasterize(np.concatenate(tris), np.array([[0, 1, 2], [3, 4, 5]]), cam)
    inside_near, amb = brute_force_inside(small * 100.0 + 32.0, 64, 64)
    assert inside_near.sum() > 100
    assert (r.face_index[inside_near & ~amb] == near_id).all()
    np.testing.assert_allclose(r.depth[inside_near & ~amb], 2.0, rtol=1e-6)
    far_only = (r.face_index >= 0) & ~inside_near & ~amb
    assert far_only.sum() > 100 and (r.face_index[far_only] == 1 - near_id).all()


def test_intersecting_triangles_split_along_their_intersection():
    cam = render.Camera(100.0, 100.0, 50.0, 50.0, 100, 100)
    # Plane A: z = 2 (flat); plane B: z = 2 + 0.5 x (nearer for x < 0). They cross at x = 0.
    xy = np.array([[-3.0, -3.0], [3.0, -3.0], [0.0, 3.0]])
    a = np.column_stack([xy, [2.0] * 3])
    b = np.column_stack([xy, 2.0 + 0.5 * xy[:, 0]])
    r = render.rasterize(np.concatenate([a, b]), np.array([[0, 1, 2], [3, 4, 5]]), cam)
    cols = np.arange(100) + 0.5 - 50.0
    both = (r.face_index >= 0)
    left = both & (cols < -1.0)[None, :]
    right = both & (cols > 1.0)[None, :]
    assert left.sum() > 500 and right.sum() > 500
    assert (r.face_index[left] == 1).all() and (r.face_index[right] == 0).all()


def test_cube_shows_exactly_the_faces_that_face_the_camera():
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    eye = np.array([2.0, 1.6, -2.7])
    R, t = render.look_at(eye, (0.0, 0.0, 0.0))
    cam = render.Camera(220.0, 220.0, 100.0, 100.0, 200, 200, R, t)
    centres = np.asarray(box.triangles_center)
    facing = np.einsum("fc,fc->f", np.asarray(box.face_normals), eye - centres) > 0
    assert facing.sum() == 6  # three sides of two triangles each
    for cull in (False, True):
        r = render.rasterize(cam.to_camera(box.vertices), box.faces, cam, cull_backfaces=cull)
        seen = set(np.unique(r.face_index)) - {-1}
        assert seen == set(np.nonzero(facing)[0])


def test_triangles_behind_or_crossing_the_camera_are_dropped():
    cam = render.Camera(100.0, 100.0, 32.0, 32.0, 64, 64)
    tris = np.array([[[-1, -1, 2], [1, -1, 2], [0, 1, 2]],        # in front: drawn
                     [[-1, -1, -2], [1, -1, -2], [0, 1, -2]],     # behind
                     [[-1, -1, 1], [1, -1, 1], [0, 1, -1]]], float)  # crosses the camera plane
    r = render.rasterize(tris.reshape(-1, 3), np.arange(9).reshape(3, 3), cam)
    assert set(np.unique(r.face_index)) == {-1, 0}


# --- shading ------------------------------------------------------------------------------


def test_headlight_makes_sphere_centre_brighter_than_rim():
    v, f = sphere(0.5, 3.0)
    cam = axis_camera()
    res = render.render_mesh(v, f, cam, light_dir=(0.0, 0.0, -1.0), ambient=0.2, background=(0, 0, 0))
    lum = res.image.astype(float).sum(-1)
    disc = F * 0.5 / np.sqrt(3.0**2 - 0.5**2)
    dist = np.hypot(*np.meshgrid(np.arange(SIZE) + 0.5 - C, np.arange(SIZE) + 0.5 - C))
    rim = res.mask & (dist > 0.93 * disc)
    assert rim.sum() > 50
    assert lum[100, 100] > lum[rim].max() + 100
    # Lambert: brightness falls with the normal's angle, cos = sqrt(1 - (r_img / disc)^2) roughly.
    ring = res.mask & (np.abs(dist - 0.6 * disc) < 1.0)
    assert lum[ring].mean() < lum[100, 100] * 0.95
    assert res.depth[100, 100] == pytest.approx(2.5, rel=2e-3)


def test_full_ambient_gives_flat_face_colours_and_background_shows_elsewhere():
    box = trimesh.creation.box()
    R, t = render.look_at((2.0, 1.6, -2.7), (0.0, 0.0, 0.0))
    cam = render.Camera(220.0, 220.0, 100.0, 100.0, 200, 200, R, t)
    colors = np.random.default_rng(0).integers(0, 256, (12, 3)).astype(np.uint8)
    bg = np.random.default_rng(1).integers(0, 256, (200, 200, 3)).astype(np.uint8)
    res = render.render_mesh(box.vertices, box.faces, cam, face_colors=colors, ambient=1.0, background=bg)
    r = render.rasterize(cam.to_camera(box.vertices), box.faces, cam)
    hit = r.face_index >= 0
    assert np.array_equal(res.mask, hit)
    assert np.array_equal(res.image[hit], colors[r.face_index[hit]])
    assert np.array_equal(res.image[~hit], bg[~hit])
    assert np.array_equal(res.rgba[..., 3] == 255, hit) and (res.rgba[~hit, 3] == 0).all()


def test_vertex_colours_are_interpolated():
    cam = render.Camera(100.0, 100.0, 32.0, 32.0, 64, 64)
    verts = np.array([[-1.0, -1.0, 2.0], [1.0, -1.0, 2.0], [0.0, 1.0, 2.0]])
    colors = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    res = render.render_mesh(verts, np.array([[0, 1, 2]]), cam, vertex_colors=colors, ambient=1.0)
    r = render.rasterize(verts, np.array([[0, 1, 2]]), cam)
    hit = r.face_index == 0
    expected = np.rint(r.barycentrics[hit] * 255)
    assert np.abs(res.image[hit].astype(float) - expected).max() <= 1


def test_supersampling_keeps_area_and_blends_edges():
    v, f = sphere(0.5, 3.0)
    cam = axis_camera()
    one = render.render_mesh(v, f, cam, background=(0, 0, 0))
    ss = render.render_mesh(v, f, cam, background=(0, 0, 0), supersample=3)
    disc = F * 0.5 / np.sqrt(3.0**2 - 0.5**2)
    assert ss.mask.sum() == pytest.approx(np.pi * disc**2, rel=0.01)
    partial = (ss.rgba[..., 3] > 0) & (ss.rgba[..., 3] < 255)
    assert partial.sum() > 100 and (one.rgba[..., 3] % 255 == 0).all()
    # Interior pixels shade alike (smooth normals vary little within a pixel).
    inner = one.mask & ss.mask & ~partial
    assert np.abs(ss.image[inner].astype(int) - one.image[inner]).max() <= 3
    assert ss.depth[100, 100] == pytest.approx(one.depth[100, 100], rel=1e-3)


def test_overlay_blends_only_where_the_mesh_is():
    v, f = sphere(0.5, 3.0)
    cam = axis_camera()
    photo = np.random.default_rng(2).integers(0, 256, (SIZE, SIZE, 3)).astype(np.uint8)
    res = render.render_mesh(v, f, cam)
    assert np.array_equal(render.overlay(photo, res, alpha=0.0), photo)
    full = render.overlay(photo, res, alpha=1.0)
    assert np.array_equal(full[res.mask], res.rgba[..., :3][res.mask])
    assert np.array_equal(full[~res.mask], photo[~res.mask])
    half = render.overlay(photo, res, alpha=0.5).astype(int)
    expect = (photo.astype(float) + res.rgba[..., :3]) / 2
    assert np.abs(half[res.mask] - expect[res.mask]).max() <= 1


def test_rendering_is_deterministic():
    v, f = sphere(0.5, 3.0)
    cam = axis_camera()
    colors = np.random.default_rng(3).integers(0, 256, (len(v), 3)).astype(np.uint8)
    a = render.render_mesh(v, f, cam, vertex_colors=colors, supersample=2)
    b = render.render_mesh(v, f, cam, vertex_colors=colors, supersample=2)
    assert a.image.tobytes() == b.image.tobytes() and a.depth.tobytes() == b.depth.tobytes()


# --- helpers ------------------------------------------------------------------------------


def test_vertex_normals_of_a_sphere_point_outwards():
    v, f = sphere(0.7, 0.0)
    n = render.vertex_normals(v, f)
    np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1.0, rtol=1e-12)
    assert np.einsum("vc,vc->v", n, v / 0.7).min() > 0.998


def test_part_colors_distinguish_parts_and_sides():
    pal = render.PART_PALETTE.astype(int)
    assert pal.shape == (24, 3)
    dist = np.linalg.norm(pal[:, None] - pal[None], axis=-1) + np.eye(24) * 1e9
    assert dist.min() > 40
    left = [1, 4, 7, 10, 13, 16, 18, 20, 22]
    right = [2, 5, 8, 11, 14, 17, 19, 21, 23]
    # Left parts are warm (more red than blue), right parts cool.
    assert (pal[left, 0] > pal[left, 2]).all() and (pal[right, 2] >= pal[right, 0]).all()
    w = np.random.default_rng(4).random((500, 24))
    np.testing.assert_array_equal(render.part_colors(w), render.PART_PALETTE[w.argmax(1)])
    with pytest.raises(MeshrecError):
        render.part_colors(w[:, :10])


def test_save_png_round_trips(tmp_path):
    img = np.random.default_rng(5).integers(0, 256, (17, 23, 3)).astype(np.uint8)
    render.save_png(tmp_path / "sub" / "a.png", img)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "sub" / "a.png")), img)
    rgba = np.random.default_rng(6).integers(0, 256, (5, 7, 4)).astype(np.uint8)
    render.save_png(tmp_path / "b.png", rgba)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "b.png")), rgba)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.png", "sub"]  # no temporary left
    with pytest.raises(MeshrecError):
        render.save_png(tmp_path / "c.png", img.astype(np.float32))


def test_bad_input_is_a_meshrec_error():
    cam = axis_camera()
    v, f = sphere(0.5, 3.0)
    with pytest.raises(MeshrecError):
        render.rasterize(v, f + len(v), cam)
    with pytest.raises(MeshrecError):
        render.rasterize(v[:, :2], f, cam)
    with pytest.raises(MeshrecError):
        render.render_mesh(v, f, cam, background=np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(MeshrecError):
        render.render_mesh(v, f, cam, vertex_colors=np.zeros((3, 3)))
    with pytest.raises(MeshrecError):
        render.Camera(100.0, 100.0, 0.0, 0.0, 0, 10)
    with pytest.raises(MeshrecError):
        render.look_at((0, 0, 0), (0, 5, 0))


def test_empty_and_offscreen_meshes_render_background():
    cam = axis_camera()
    r = render.rasterize(np.zeros((0, 3)), np.zeros((0, 3), np.int64), cam)
    assert (r.face_index == -1).all()
    v, f = sphere(0.5, 3.0)
    res = render.render_mesh(v + [10.0, 0.0, 0.0], f, cam, background=(9, 8, 7))
    assert not res.mask.any() and (res.image == [9, 8, 7]).all()
