import json
import shutil

import numpy as np
import pytest

import preprocess_vis
from pipeline import images
from pipeline.arrays import load_dataset
from pipeline.config import geometry_from_dict
from tests.make4sp import write_dataset

SIZES = ((320, 180), (180, 320), (256, 256))


def run(data, out, *extra):
    return preprocess_vis.main(
        ["--data-dir", str(data), "--out-dir", str(out), "--workers", "1", "--quiet", "--sanity-grid", "", *extra]
    )


@pytest.fixture
def dataset(tmp_path):
    return write_dataset(tmp_path / "data", sizes=SIZES, k=5, per_size=2)


def test_cli_end_to_end_shapes_dtypes_ranges(dataset, tmp_path):
    out = tmp_path / "out"
    report = run(dataset, out, "--sanity-grid", str(tmp_path / "grid.png"))
    assert report.samples == 6 and report.num_keypoints == 5
    d = load_dataset(out)
    assert d.x.shape == (6, 128, 128, 3) and d.x.dtype == np.uint8
    assert d.heatmaps.shape == (6, 64, 64, 5) and d.heatmaps.dtype == np.float16
    assert d.coords.shape == (6, 10) and d.coords.dtype == np.float32
    assert d.visible.shape == (6, 5) and d.visible.dtype == bool
    xy = d.xy
    assert np.all((xy[d.visible] >= 0) & (xy[d.visible] <= 1))
    assert np.all(xy[~d.visible] == -1)
    assert float(np.max(d.heatmaps)) <= 1.0 and float(np.min(d.heatmaps)) >= 0.0
    assert np.all(np.asarray(d.heatmaps)[~d.visible[:, None, None, :].repeat(64, 1).repeat(64, 2)] == 0)
    assert d.orig_sizes[::2].tolist() == [list(s) for s in SIZES]
    assert d.config["num_keypoints"] == 5 and d.edges.shape == (5, 2)
    assert (tmp_path / "grid.png").stat().st_size > 1000
    assert not list(out.glob("*.tmp*")) and not list(out.glob(".*"))


def test_labels_match_json_through_inverse_and_image_content(dataset, tmp_path):
    out = tmp_path / "out"
    run(dataset, out)
    d = load_dataset(out)
    g = geometry_from_dict(d.config)
    for i, stem in enumerate(d.stems):
        ann = json.loads((dataset / "JSON_Data_REF" / f"{stem}.json").read_text())
        for e in ann["visible_vertices"]:
            back = g.from_normalised(d.xy[i, e["index"]][None], d.orig_sizes[i])[0]
            assert np.abs(back - e["pixel_coordinates"]).max() < 1e-3
    # the brightest input pixel near keypoint 0 lies within a pixel of its label
    s = 128
    for i in range(len(d)):
        u, v = d.xy[i, 0] * s
        r0, c0 = int(v), int(u)
        patch = d.x[i, max(r0 - 3, 0) : r0 + 4, max(c0 - 3, 0) : c0 + 4, 0].astype(float)
        rr, cc = np.unravel_index(patch.argmax(), patch.shape)
        assert abs(max(r0 - 3, 0) + rr + 0.5 - v) <= 1.0 and abs(max(c0 - 3, 0) + cc + 0.5 - u) <= 1.0


def test_every_json_variant_parses(dataset):
    from pipeline.annotations import parse_annotation

    p = dataset / "JSON_Data_REF" / "img_0000.json"
    ann = json.loads(p.read_text())
    ann["non_visible_vertices"] = [
        {"index": 1, "coordinates": [0, 0, 0], "status": "Behind camera"},
        {"index": 2, "coordinates": [0, 0, 0], "pixel_coordinates": [-50.5, 2000.25], "status": "Outside view"},
        {"index": 3, "coordinates": [0, 0, 0], "pixel_coordinates": [12.5, 13.5]},
    ]
    ann["visible_vertices"] = [e for e in ann["visible_vertices"] if e["index"] in (0, 4)]
    ann["visible_vertices"].append({"index": 4, "coordinates": [0, 0, 0], "pixel_coordinates": [10, 11]}) \
        if not any(e["index"] == 4 for e in ann["visible_vertices"]) else None
    p.write_text(json.dumps(ann))
    a = parse_annotation(p, 5)
    assert a.visible.tolist() == [True, False, False, False, True]
    assert np.isnan(a.pixels[1]).all()
    assert a.pixels[2].tolist() == [-50.5, 2000.25] and a.pixels[3].tolist() == [12.5, 13.5]


def test_keypoint_outside_crop_becomes_not_visible(dataset, tmp_path):
    p = dataset / "JSON_Data_REF" / "img_0000.json"
    ann = json.loads(p.read_text())
    ann["visible_vertices"][0]["pixel_coordinates"] = [1.0, 1.0]  # corner of 320x180: outside the crop
    p.write_text(json.dumps(ann))
    out = tmp_path / "out"
    run(dataset, out)
    d = load_dataset(out)
    k = ann["visible_vertices"][0]["index"]
    assert not d.visible[0, k] and np.all(d.xy[0, k] == -1)


def _corrupt(dataset, what):
    img = dataset / "Rendered_Images" / "img_0001.png"
    js = dataset / "JSON_Data_REF" / "img_0001.json"
    if what == "image":
        img.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
        return "img_0001.png", "not a readable image"
    if what == "truncated":
        img.write_bytes(img.read_bytes()[:200])
        return "img_0001.png", "not a readable image"
    ann = json.loads(js.read_text())
    if what == "json":
        js.write_text('{"visible_vertices": [')
        return "img_0001.json", "malformed JSON"
    if what == "missing_key":
        del ann["visible_vertices"]
        js.write_text(json.dumps(ann))
        return "img_0001.json", "missing key 'visible_vertices'"
    if what == "index":
        ann["visible_vertices"][0]["index"] = 5
        js.write_text(json.dumps(ann))
        return "img_0001.json", "index 5, outside"
    if what == "nan":
        js.write_text(json.dumps(ann).replace(str(ann["visible_vertices"][0]["pixel_coordinates"][0]), "NaN", 1))
        return "img_0001.json", "not finite"
    raise AssertionError(what)


@pytest.mark.parametrize("what", ["image", "truncated", "json", "missing_key", "index", "nan"])
def test_bad_input_stops_with_named_error_and_writes_nothing(dataset, tmp_path, capsys, what):
    name, message = _corrupt(dataset, what)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        run(dataset, out)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert name in err and message in err and "--skip-invalid" in err
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("what", ["image", "json"])
def test_skip_invalid_skips_and_lists(dataset, tmp_path, capsys, what):
    name, _ = _corrupt(dataset, what)
    out = tmp_path / "out"
    report = run(dataset, out, "--skip-invalid")
    assert report.samples == 5 and name in capsys.readouterr().out
    d = load_dataset(out)
    assert len(d) == 5 and "img_0001" not in set(d.stems)
    assert d.x.shape[0] == d.coords.shape[0] == d.heatmaps.shape[0] == 5


def test_failed_run_keeps_previous_outputs(dataset, tmp_path):
    out = tmp_path / "out"
    run(dataset, out)
    before = (out / "X_data.npy").read_bytes()
    _corrupt(dataset, "image")
    with pytest.raises(SystemExit):
        run(dataset, out)
    assert (out / "X_data.npy").read_bytes() == before
    assert len(load_dataset(out)) == 6


def test_empty_folder_and_missing_mesh(tmp_path, capsys):
    empty = tmp_path / "empty"
    (empty / "Rendered_Images").mkdir(parents=True)
    (empty / "Object_Information").mkdir()
    (empty / "Object_Information" / "mesh_information.json").write_text('{"total_vertices": 3}')
    with pytest.raises(SystemExit):
        run(empty, tmp_path / "o1")
    assert "holds no images" in capsys.readouterr().err
    nomesh = write_dataset(tmp_path / "nomesh")
    (nomesh / "Object_Information" / "mesh_information.json").unlink()
    with pytest.raises(SystemExit):
        run(nomesh, tmp_path / "o2")
    err = capsys.readouterr().err
    assert "No mesh information file" in err and "--mesh" in err
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_unpaired_files_reported(dataset, tmp_path, capsys):
    (dataset / "JSON_Data_REF" / "img_0002.json").unlink()
    report = run(dataset, tmp_path / "out")
    assert report.samples == 5 and len(report.images_without_json) == 1
    assert "without annotation" in capsys.readouterr().out


def test_parallel_workers_give_identical_arrays(dataset, tmp_path):
    run(dataset, tmp_path / "a")
    preprocess_vis.main(["--data-dir", str(dataset), "--out-dir", str(tmp_path / "b"), "--workers", "2",
                         "--quiet", "--sanity-grid", ""])
    a, b = load_dataset(tmp_path / "a"), load_dataset(tmp_path / "b")
    assert np.array_equal(a.x, b.x) and np.array_equal(a.coords, b.coords)


@pytest.mark.skipif(images.ImageDecoder is None, reason="pywuffs is not installed (requirements-fast.txt)")
def test_both_png_decoders_give_identical_arrays(dataset, tmp_path, monkeypatch):
    """The stage with Wuffs (two worker processes, freed buffers kept) writes Pillow's arrays, and
    records which decoder it used."""
    monkeypatch.delenv(images.PNG_DECODER_ENV, raising=False)
    a = run(dataset, tmp_path / "wuffs", "--workers", "2")
    monkeypatch.setenv(images.PNG_DECODER_ENV, "pillow")
    b = run(dataset, tmp_path / "pillow", "--workers", "2")
    assert (a.png_decoder, b.png_decoder) == ("wuffs", "pillow")
    da, db = load_dataset(tmp_path / "wuffs"), load_dataset(tmp_path / "pillow")
    assert da.config["png_decoder"] == "wuffs" and db.config["png_decoder"] == "pillow"
    assert np.array_equal(da.x, db.x) and np.array_equal(da.coords, db.coords) and da.x.std() > 5


def test_shards_concatenated_equal_unsharded(dataset, tmp_path):
    run(dataset, tmp_path / "one")
    run(dataset, tmp_path / "sh", "--shards", "3")
    out = tmp_path / "sh"
    assert (out / "data_index.json").is_file() and not (out / "X_data.npy").exists()
    assert len(list(out.glob("X_data-*-of-00003.npy"))) == 3
    a, b = load_dataset(tmp_path / "one"), load_dataset(out)
    assert len(b) == 6 and b.x.shape == a.x.shape
    np.testing.assert_array_equal(np.asarray(b.x), a.x)
    np.testing.assert_array_equal(b.x[np.array([5, 0, 3])], a.x[[5, 0, 3]])
    np.testing.assert_array_equal(np.asarray(b.heatmaps), a.heatmaps)
    for name in ("coords", "visible", "stems", "orig_sizes", "affine"):
        np.testing.assert_array_equal(getattr(b, name), getattr(a, name))
    # a worker reads only its own shards
    part = load_dataset(out, shards=[1])
    np.testing.assert_array_equal(np.asarray(part.x), a.x[2:4])
    # rewriting unsharded into the same folder removes the shards
    run(dataset, out)
    assert not list(out.glob("*-of-*")) and not (out / "data_index.json").exists()
    assert len(load_dataset(out)) == 6


def test_jpeg_renders_decoded_smaller_give_the_png_arrays(tmp_path):
    """1080p JPEGs are decoded 2x smaller in the DCT for the 1000-px crop (and at what their zoomed
    views allow): inputs within a grey level of the PNGs', identical labels."""
    from PIL import Image

    png = write_dataset(tmp_path / "png", sizes=((1920, 1080),), k=5, per_size=2)
    jpg = tmp_path / "jpg"
    shutil.copytree(png, jpg, ignore=shutil.ignore_patterns("*.png"))
    for p in (png / "Rendered_Images").glob("*.png"):
        Image.open(p).save(jpg / "Rendered_Images" / f"{p.stem}.jpg", quality=100)
    from pipeline.geometry import Geometry
    from pipeline.images import decode

    g = Geometry()
    assert all(decode(p, g.crop_box, g.input_size).scale == 2 for p in (jpg / "Rendered_Images").iterdir())
    run(png, tmp_path / "out_png", "--zoom-views", "1")
    run(jpg, tmp_path / "out_jpg", "--zoom-views", "1")
    a, b = load_dataset(tmp_path / "out_png"), load_dataset(tmp_path / "out_jpg")
    np.testing.assert_array_equal(a.coords, b.coords)
    np.testing.assert_array_equal(a.affine, b.affine)
    diff = np.abs(a.x.astype(int) - b.x)
    assert diff.mean() < 0.5 and np.percentile(diff, 99.9) <= 3, (diff.mean(), diff.max())
