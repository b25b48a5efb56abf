"""Tests for pipeline.synthetic (small frames, few images: fast)."""
import json

import numpy as np
import pytest

from pipeline.synthetic import MeshError, builtin_mesh, generate_dataset, load_mesh
from pipeline.synthetic.camera import (Camera, euler_xyz_to_matrix, matrix_to_euler_xyz,
                                       quat_to_matrix, random_quaternion)
from pipeline.synthetic.generate import main as cli_main
from pipeline.synthetic.meshes import Mesh
from pipeline.synthetic.raster import rasterize
from pipeline.synthetic.render import Scene, render_object, render_sample, render_scene

W, H = 320, 240


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds") / "data"
    generate_dataset(root, 6, seed=3, width=W, height=H, workers=1, progress=False)
    return root


def test_layout_and_no_tmp_files(small_ds):
    names = set(_files(small_ds))
    for i in range(6):
        assert f"Rendered_Images/img_{i:06d}.png" in names
        assert f"JSON_Data_REF/img_{i:06d}.json" in names
    assert "Object_Information/mesh_information.json" in names
    assert not [n for n in names if n.endswith(".tmp")]
    (small_ds / "Rendered_Images" / "img_000009.png.tmp").write_bytes(b"half")
    generate_dataset(small_ds, 6, seed=3, width=W, height=H, workers=1, progress=False)
    assert not list(small_ds.rglob("*.tmp"))
    info = json.loads((small_ds / "Object_Information/mesh_information.json").read_text())
    assert info["total_vertices"] == 11 == len(info["vertices"]) == len(info["vertex_connectivity"])
    assert info["total_faces"] == len(info["face_composition"])
    assert info["total_edges"] == len(info["edge_composition"])
    assert info["total_vertices"] - info["total_edges"] + info["total_faces"] == 2
    assert all(isinstance(k, str) for k in info["vertex_connectivity"])


def test_deterministic_and_worker_independent(small_ds, tmp_path):
    other = generate_dataset(tmp_path / "b", 6, seed=3, width=W, height=H, workers=2, progress=False)
    assert _files(other) == _files(small_ds)
    diff = generate_dataset(tmp_path / "c", 2, seed=4, width=W, height=H, workers=1, progress=False)
    a, b = _files(diff), _files(small_ds)
    assert a["Rendered_Images/img_000000.png"] != b["Rendered_Images/img_000000.png"]


def _check_annotation(ann, mesh, w, h):
    recs = ann["visible_vertices"] + ann["non_visible_vertices"]
    assert sorted(r["index"] for r in recs) == list(range(mesh.num_vertices))
    R = quat_to_matrix([ann["rotation_quaternion"][k] for k in "wxyz"])
    assert np.allclose(euler_xyz_to_matrix(*(ann["rotation"][k] for k in "xyz")), R, atol=1e-9)
    cam = Camera(**ann["camera"])
    t = np.array(ann["translation"])
    for r in ann["visible_vertices"]:
        assert "status" not in r
        u, v = r["pixel_coordinates"]
        assert 0 <= u < w and 0 <= v < h
    for r in recs:
        assert np.allclose(r["coordinates"], R @ mesh.vertices[r["index"]], atol=1e-9)
        p = np.array(r["coordinates"]) + t
        if r.get("status") == "Behind camera":
            assert "pixel_coordinates" not in r and p[2] <= 1e-3
            continue
        assert np.allclose(r["pixel_coordinates"], cam.project(p[None])[0], atol=1e-6)
        inside = 0 <= r["pixel_coordinates"][0] < w and 0 <= r["pixel_coordinates"][1] < h
        if r.get("status") == "Outside view":
            assert not inside
        elif r in ann["non_visible_vertices"]:
            assert "status" not in r and inside


def test_json_schema(small_ds):
    mesh = builtin_mesh("spacecraft")
    for jp in sorted((small_ds / "JSON_Data_REF").glob("*.json")):
        ann = json.loads(jp.read_text())
        _check_annotation(ann, mesh, W, H)
        assert set(ann["camera"]) >= {"fx", "fy", "cx", "cy", "width", "height"}
        assert len(ann["sun_direction"]) == 3


def test_visible_vertices_lie_on_object_pixels():
    for name in ("spacecraft", "cuboid"):
        mesh = builtin_mesh(name)
        n_vis = 0
        for i in range(25):
            img, ann, mask = render_sample(mesh, i, seed=11, width=W, height=H)
            assert img.shape == (H, W, 3) and img.dtype == np.uint8
            _check_annotation(ann, mesh, W, H)
            for r in ann["visible_vertices"]:
                c, rr = (int(np.floor(x)) for x in r["pixel_coordinates"])
                # within 2 px: the tip of a thin spike can cover less than half of its own pixel
                assert mask[max(rr - 2, 0):rr + 3, max(c - 2, 0):c + 3].any(), (name, i, r)
                n_vis += 1
        assert n_vis > 25 * 3


def _two_boxes(offset_x):
    """A big box in front (z in [-1, -0.5]) and a small box behind it (z in [1, 1.4])."""
    cube = builtin_mesh("cuboid")
    big = cube.vertices / np.abs(cube.vertices).max(axis=0) * [1.0, 1.0, 0.25] + [0, 0, -0.75]
    small = cube.vertices / np.abs(cube.vertices).max(axis=0) * 0.2 + [offset_x, 0, 1.2]
    faces = [list(f) for f in cube.faces] + [[i + 8 for i in f] for f in cube.faces]
    return Mesh(np.vstack([big, small]), faces, "two_boxes")


def test_vertex_hidden_behind_face_is_not_visible():
    cam = Camera.from_fov(W, H)
    for offset, expect_hidden in ((0.0, True), (3.0, False)):
        mesh = load_mesh(_two_boxes(offset))
        scene = Scene(np.eye(3), np.array([0.0, 0.0, 12.0]), np.array([0.0, 0.0, -1.0]))
        _, ann, _ = render_scene(mesh, cam, scene, np.random.default_rng(0))
        vis = {r["index"] for r in ann["visible_vertices"]}
        # the small box's front face (model z = 1.0) faces the camera
        front_small = {8 + i for i in range(8) if mesh.vertices[8 + i, 2] < 1.1}
        assert len(front_small) == 4
        assert {i for i in range(8) if mesh.vertices[i, 2] < -0.7} <= vis  # big box front face
        if expect_hidden:
            assert not (front_small & vis)
        else:
            assert front_small <= vis
        assert not {i for i in range(8) if mesh.vertices[i, 2] > -0.7} & vis  # big box back


def test_statuses_outside_and_behind():
    mesh = builtin_mesh("cuboid")
    cam = Camera.from_fov(W, H)
    # pushed over the right edge
    scene = Scene(np.eye(3), np.array([1.05 * 5 * cam.cx / cam.fx, 0, 5.0]), np.array([0, 0, -1.0]))
    _, ann, _ = render_scene(mesh, cam, scene, np.random.default_rng(0))
    _check_annotation(ann, mesh, W, H)
    assert any(r.get("status") == "Outside view" for r in ann["non_visible_vertices"])
    # straddling the camera plane: half the box behind the camera
    scene = Scene(np.eye(3), np.array([0.0, 0.0, 0.1]), np.array([0, 0, -1.0]))
    _, ann, _ = render_scene(mesh, cam, scene, np.random.default_rng(0))
    _check_annotation(ann, mesh, W, H)
    assert sum(r.get("status") == "Behind camera" for r in ann["non_visible_vertices"]) == 4


def test_projection_convention_optical_axis():
    cam = Camera.from_fov(W, H)
    assert tuple(cam.project(np.array([[0.0, 0.0, 7.3]]))[0]) == (W / 2, H / 2)
    mesh = builtin_mesh("spacecraft")
    t = np.array([0.0, 0.0, 9.0]) - mesh.vertices[8]  # nose apex on the optical axis
    scene = Scene(np.eye(3), t, np.array([0.0, 0.0, -1.0]))
    _, ann, _ = render_scene(mesh, cam, scene, np.random.default_rng(0))
    rec = [r for r in ann["visible_vertices"] + ann["non_visible_vertices"] if r["index"] == 8][0]
    assert rec["pixel_coordinates"] == [W / 2, H / 2]


def test_rasterizer_samples_pixel_centres():
    # right triangle (0,0),(4,0),(0,4): pixel (r, c) centre (c+.5, r+.5) is inside iff c + r <= 3
    depth, ids = rasterize(np.array([[[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]]]),
                           np.array([[2.0, 2.0, 2.0]]), [0], (6, 6))
    rr, cc = np.mgrid[:6, :6]
    assert np.array_equal(ids >= 0, rr + cc <= 3)
    assert np.allclose(depth[ids >= 0], 2.0)


def test_render_object_depth_matches_plane():
    mesh = builtin_mesh("cuboid")
    cam = Camera.from_fov(W, H)
    buf, front, _ = render_object(mesh, cam, np.eye(3), np.array([0.0, 0.0, 4.0]), ss=1)
    assert front.sum() == 2  # only the -z face (two triangles) faces the camera
    assert np.allclose(buf.depth[buf.mask], 4.0 - 0.3, atol=1e-4)


def test_rotation_uniformity_and_euler_roundtrip():
    rng = np.random.default_rng(0)
    mats = np.stack([quat_to_matrix(random_quaternion(rng)) for _ in range(2000)])
    assert np.abs(mats.mean(axis=0)).max() < 0.05
    for R in mats[:200]:
        assert np.allclose(euler_xyz_to_matrix(*matrix_to_euler_xyz(R)), R, atol=1e-9)
        assert np.allclose(R @ R.T, np.eye(3), atol=1e-12)


def test_builtin_meshes():
    sc, cube = builtin_mesh("spacecraft"), builtin_mesh("cuboid")
    assert sc.num_vertices == 11 and cube.num_vertices == 8
    assert sc.faces[0] == [0, 3, 2, 1]  # not flipped: already outward
    with pytest.raises(MeshError):
        builtin_mesh("nope")


def _write_obj(path, mesh):
    lines = ["o box"] + [f"v {x} {y} {z}" for x, y, z in mesh.vertices]
    lines += ["f " + " ".join(f"{i + 1}/1/1" for i in f) for f in mesh.faces]
    path.write_text("\n".join(lines) + "\n")


def test_load_json_and_obj(tmp_path):
    cube = builtin_mesh("cuboid")
    jp = tmp_path / "m.json"
    jp.write_text(json.dumps(cube.info()))
    m = load_mesh(jp)
    assert np.allclose(m.vertices, cube.vertices) and m.faces == cube.faces and m.name == "cuboid"
    op = tmp_path / "m.obj"
    _write_obj(op, cube)
    m = load_mesh(str(op))
    assert np.allclose(m.vertices, cube.vertices) and m.faces == cube.faces and m.name == "box"
    inv = Mesh(cube.vertices, [f[::-1] for f in cube.faces])
    _write_obj(op, inv)
    m = load_mesh(op)  # inside-out mesh gets flipped to outward winding
    from pipeline.synthetic.meshes import signed_volume
    assert signed_volume(m.vertices, m.faces) > 0
    out = generate_dataset(tmp_path / "d", 1, width=64, height=48, mesh=jp, workers=1, progress=False)
    assert json.loads((out / "Object_Information/mesh_information.json").read_text())["total_vertices"] == 8


@pytest.mark.parametrize("content,msg", [
    ("{not json", "cannot read"),
    ('{"vertices": [[0,0,0]]}', "face_composition"),
    (None, "not closed"),
    ("bad_index", "vertex index"),
])
def test_bad_mesh_files(tmp_path, content, msg):
    cube = builtin_mesh("cuboid").info()
    path = tmp_path / "bad.json"
    if content is None:
        cube["face_composition"] = cube["face_composition"][:-1]
        content = json.dumps(cube)
    elif content == "bad_index":
        cube["face_composition"][0] = [0, 3, 2, 99]
        content = json.dumps(cube)
    path.write_text(content)
    with pytest.raises(MeshError) as e:
        load_mesh(path)
    assert str(path) in str(e.value) and msg in str(e.value)


def test_bad_obj_and_missing_file(tmp_path):
    p = tmp_path / "x.obj"
    p.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n")
    with pytest.raises(MeshError, match="x.obj"):
        load_mesh(p)
    with pytest.raises(MeshError, match="does not exist"):
        load_mesh(tmp_path / "missing.obj")
    with pytest.raises(MeshError, match="not a built-in"):
        load_mesh("sphere")


def test_bad_arguments(tmp_path, capsys):
    for count in (0, -3, 1.5):
        with pytest.raises(ValueError, match="count"):
            generate_dataset(tmp_path / "e", count)
    with pytest.raises(ValueError, match="background"):
        generate_dataset(tmp_path / "e", 1, background="moon")
    with pytest.raises(ValueError, match="seed"):
        generate_dataset(tmp_path / "e", 1, seed=-1)
    with pytest.raises(ValueError, match="workers"):
        generate_dataset(tmp_path / "e", 1, workers=0)
    assert cli_main(["--out", str(tmp_path / "f"), "--count", "1", "--mesh", "nope.obj"]) == 2
    assert "nope.obj" in capsys.readouterr().err
    assert cli_main(["--out", str(tmp_path / "g"), "--count", "1", "--width", "64", "--height",
                     "48", "--workers", "1", "--no-progress", "--background", "stars"]) == 0


def _ray_visible(p_cam, tris, front, k):
    """Exact reference: vertex k is visible iff an incident triangle faces the camera and
    the segment camera -> vertex hits no other triangle (Moller-Trumbore)."""
    if not any(front[i] for i, t in enumerate(tris) if k in t):
        return False
    d = p_cam[k]
    for t in tris:
        if k in t:
            continue
        a, b, c = p_cam[t]
        e1, e2 = b - a, c - a
        h = np.cross(d, e2)
        det = e1 @ h
        if abs(det) < 1e-12:
            continue
        u = (-a @ h) / det
        q = np.cross(-a, e1)
        v = (d @ q) / det
        s = (e2 @ q) / det
        if u >= 0 and v >= 0 and u + v <= 1 and 1e-9 < s < 1 - 1e-6:
            return False
    return True


def test_visibility_matches_ray_casting():
    mesh = builtin_mesh("spacecraft")
    tris, _ = mesh.triangles()
    agree = total = 0
    for i in range(30):
        _, ann, _ = render_sample(mesh, i, seed=5, width=W, height=H)
        R = quat_to_matrix([ann["rotation_quaternion"][k] for k in "wxyz"])
        p = mesh.vertices @ R.T + np.array(ann["translation"])
        tc = p[tris]
        front = np.einsum("ij,ij->i", np.cross(tc[:, 1] - tc[:, 0], tc[:, 2] - tc[:, 0]), tc[:, 0]) < 0
        vis = {r["index"] for r in ann["visible_vertices"]}
        out = {r["index"] for r in ann["non_visible_vertices"] if "status" in r}
        for k in set(range(mesh.num_vertices)) - out:
            total += 1
            agree += (k in vis) == _ray_visible(p, tris, front, k)
    assert agree >= total - 2  # at most a couple of sub-pixel edge cases may differ


def test_png_encoder_roundtrip():
    import io

    from PIL import Image

    from pipeline.synthetic.png import encode_png
    img = np.random.default_rng(0).integers(0, 256, (17, 23, 3), dtype=np.uint8)
    back = np.asarray(Image.open(io.BytesIO(encode_png(img))).convert("RGB"))
    assert np.array_equal(back, img)


def test_full_size_default_and_contact_sheet(small_ds, tmp_path):
    from PIL import Image

    from pipeline.synthetic.contact_sheet import contact_sheet
    img, ann, mask = render_sample(builtin_mesh(), 0, seed=1)
    assert img.shape == (1080, 1920, 3) and mask.shape == (1080, 1920) and mask.any()
    assert ann["camera"]["cx"] == 960.0 and ann["camera"]["cy"] == 540.0
    assert img[mask].mean() != img[~mask].mean()
    out = contact_sheet(small_ds, tmp_path / "sheet.png", n=4, cols=2, tile=160)
    assert Image.open(out).size[0] == 2 * 160 + 4


def test_resume_finishes_and_grows_a_dataset(small_ds, tmp_path):
    root = tmp_path / "r"
    generate_dataset(root, 3, seed=3, width=W, height=H, workers=1, progress=False)
    (root / "JSON_Data_REF" / "img_000001.json").unlink()          # as if killed between the two writes
    png0 = root / "Rendered_Images" / "img_000000.png"
    png0.write_bytes(b"kept")                                      # resume must not re-render a complete pair
    generate_dataset(root, 6, seed=3, width=W, height=H, workers=1, progress=False, resume=True)
    got, want = _files(root), _files(small_ds)
    assert got.pop("Rendered_Images/img_000000.png") == b"kept"
    want.pop("Rendered_Images/img_000000.png")
    assert got == want                                             # the rest is what one full run writes
    manifest = json.loads((root / "generation.json").read_text())
    assert (manifest["seed"], manifest["width"], manifest["height"]) == (3, W, H)


def test_resume_refuses_other_settings(tmp_path):
    root = tmp_path / "r"
    generate_dataset(root, 2, seed=3, width=W, height=H, workers=1, progress=False)
    with pytest.raises(ValueError, match=r"generation\.json.*other seed"):
        generate_dataset(root, 4, seed=4, width=W, height=H, workers=1, progress=False, resume=True)
    with pytest.raises(ValueError, match=r"other mesh"):
        generate_dataset(root, 4, seed=3, mesh="cuboid", width=W, height=H, workers=1, progress=False, resume=True)
    with pytest.raises(ValueError, match=r"holds 1 images that a run of --count 1 does not write"):
        generate_dataset(root, 1, seed=3, width=W, height=H, workers=1, progress=False, resume=True)
    (root / "generation.json").unlink()
    with pytest.raises(ValueError, match=r"generation\.json.*cannot resume"):
        generate_dataset(root, 4, seed=3, width=W, height=H, workers=1, progress=False, resume=True)
    generate_dataset(tmp_path / "fresh", 1, seed=3, width=W, height=H, workers=1, progress=False, resume=True)
    assert (tmp_path / "fresh" / "Rendered_Images" / "img_000000.png").is_file()
