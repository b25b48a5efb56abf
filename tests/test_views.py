"""Zoomed training views: the windows, the labels they carry, and the split that keeps renders whole."""

import json

import numpy as np
import pytest

import preprocess_vis
import train_vis
from pipeline.arrays import load_dataset
from pipeline.geometry import Geometry
from pipeline.input_data import split_indices
from pipeline.views import ZoomViews
from tests.make4sp import write_dataset

G = Geometry()


def _run(data, out, *extra):
    return preprocess_vis.main(["--data-dir", str(data), "--out-dir", str(out), "--workers", "1", "--quiet",
                                "--sanity-grid", "", *extra])


@pytest.fixture(scope="module")
def views_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("views")
    data = write_dataset(root / "data", sizes=((640, 360), (360, 640)), k=5, per_size=3)
    _run(data, root / "plain")
    _run(data, root / "zoom", "--zoom-views", "2", "--zoom-fill", "0.6", "0.8")
    return data, load_dataset(root / "plain"), load_dataset(root / "zoom")


def test_boxes_magnify_the_object_to_the_drawn_share_around_its_centre():
    pts = np.array([[900.0, 500.0], [1010.0, 540.0], [950.0, 620.0], [np.nan, np.nan]])
    z = ZoomViews(count=400, fill=(0.5, 0.8), jitter=0.02, seed=3)
    boxes = z.boxes(G, (1920, 1080), pts, "img_7")
    side = boxes[:, 2:] - boxes[:, :2]
    np.testing.assert_allclose(side[:, 0], side[:, 1])  # square, like the geometry's 1000x1000 crop
    share = 120.0 / side[:, 0]  # the larger side of the vertices' box (110 x 120 px)
    assert share.min() >= 0.5 - 1e-9 and share.max() <= 0.8 + 1e-9 and share.max() - share.min() > 0.25
    offset = (0.5 * (boxes[:, :2] + boxes[:, 2:]) - [955.0, 560.0]) / side
    assert np.abs(offset.mean(0)).max() < 0.005 and 0.015 < offset.std(0).min() < 0.025
    np.testing.assert_array_equal(z.boxes(G, (1920, 1080), pts, "img_7"), boxes)  # seeded per stem
    assert not np.array_equal(z.boxes(G, (1920, 1080), pts, "img_8"), boxes)


def test_boxes_never_magnify_past_one_original_pixel_per_input_pixel_nor_below_the_crop():
    tiny = np.array([[960.0, 540.0], [962.0, 541.0]])  # 2 px: would need zoom ~300
    boxes = ZoomViews(count=5, jitter=0.0).boxes(G, (1920, 1080), tiny, "s")
    np.testing.assert_allclose(boxes[:, 2] - boxes[:, 0], G.input_size)
    huge = np.array([[-500.0, -400.0], [2400.0, 1500.0]])
    boxes = ZoomViews(count=5, jitter=0.0).boxes(G, (1920, 1080), huge, "s")
    np.testing.assert_allclose(boxes[:, 2] - boxes[:, 0], 1000.0)


@pytest.mark.parametrize("kw", [{"count": -1}, {"fill": (0.9, 0.5)}, {"fill": (0.0, 0.5)}, {"fill": (0.5, 1.2)},
                                {"fill": (0.5,)}, {"jitter": -0.1}])
def test_bad_settings_are_refused(kw):
    with pytest.raises(ValueError, match="zoom_"):
        ZoomViews(**kw)


def test_box_affine_is_the_coordinates_of_the_box():
    boxes = np.array([[10.0, -20.0, 138.0, 108.0], [300.5, 200.25, 1300.5, 1200.25]])
    uv = np.array([[[12.0, 30.5], [99.9, 0.0]], [[301.0, 700.0], [1299.0, 201.0]]])
    a = Geometry.box_affine(boxes)
    np.testing.assert_allclose(uv * a[:, None, :2] + a[:, None, 2:], Geometry.to_box(uv, boxes), atol=1e-12)
    size = np.array([1920, 1080])
    np.testing.assert_allclose(Geometry.box_affine(G.crop_box(size)), G.affine(size), atol=1e-15)


def test_views_follow_their_render_and_view_zero_is_the_plain_crop(views_data):
    _, plain, zoom = views_data
    n = len(plain)
    assert len(zoom) == 3 * n and zoom.x.shape == (3 * n, 128, 128, 3) and zoom.heatmaps.shape[0] == 3 * n
    assert zoom.views.tolist() == [0, 1, 2] * n and plain.views.tolist() == [0] * n
    assert zoom.stems.tolist() == np.repeat(plain.stems, 3).tolist()
    first = zoom.views == 0
    for name in ("x", "coords", "visible", "affine", "orig_sizes"):
        np.testing.assert_array_equal(np.asarray(getattr(zoom, name))[first], np.asarray(getattr(plain, name)))
    np.testing.assert_array_equal(np.asarray(zoom.heatmaps)[first], np.asarray(plain.heatmaps))
    # the zoomed views magnify: their affine scales are larger than the crop's
    assert np.all(zoom.affine[~first, 0] > np.repeat(plain.affine[:, 0], 2) * 1.01)


def test_zoomed_labels_map_back_to_the_json_and_sit_on_the_dots(views_data):
    data, _, zoom = views_data
    for i in np.flatnonzero(zoom.views > 0):
        ann = json.loads((data / "JSON_Data_REF" / f"{zoom.stems[i]}.json").read_text())
        a = zoom.affine[i]
        for e in ann["visible_vertices"]:
            j = e["index"]
            if zoom.visible[i, j]:
                np.testing.assert_allclose((zoom.xy[i, j] - a[2:]) / a[:2], e["pixel_coordinates"], atol=1e-3)
        u, v = zoom.xy[i, 0] * 128  # the brightest pixel near keypoint 0 lies within a pixel of its label
        r0, c0 = int(v), int(u)
        patch = zoom.x[i, max(r0 - 3, 0):r0 + 4, max(c0 - 3, 0):c0 + 4, 0].astype(float)
        rr, cc = np.unravel_index(patch.argmax(), patch.shape)
        assert abs(max(r0 - 3, 0) + rr + 0.5 - v) <= 1.0 and abs(max(c0 - 3, 0) + cc + 0.5 - u) <= 1.0


def test_workers_and_shards_do_not_change_the_views(views_data, tmp_path):
    data, _, zoom = views_data
    preprocess_vis.main(["--data-dir", str(data), "--out-dir", str(tmp_path / "w2"), "--workers", "2", "--quiet",
                         "--sanity-grid", "", "--zoom-views", "2", "--zoom-fill", "0.6", "0.8", "--shards", "2"])
    other = load_dataset(tmp_path / "w2")
    np.testing.assert_array_equal(np.asarray(other.x), np.asarray(zoom.x))
    np.testing.assert_array_equal(other.affine, zoom.affine)
    np.testing.assert_array_equal(other.views, zoom.views)


def test_split_keeps_each_render_on_one_side_and_validates_on_its_own_crop():
    stems = np.repeat([f"r{i}" for i in range(40)], 3)
    views = np.tile([0, 1, 2], 40)
    tr, va = split_indices(len(stems), 0.25, 7, stems, views)
    assert set(stems[tr]).isdisjoint(stems[va]) and len(set(stems[va])) == 10
    assert np.all(views[va] == 0) and len(tr) == 90  # the held-out renders' zoomed views are not trained on
    distinct = np.array([f"r{i}" for i in range(40)])
    for a, b in zip(split_indices(40, 0.25, 7, distinct), split_indices(40, 0.25, 7)):
        np.testing.assert_array_equal(a, b)


def test_training_on_views_validates_on_whole_held_out_renders(views_data, tmp_path):
    _, _, zoom = views_data
    root = tmp_path / "logs"
    train_vis.main(["--preset", "tiny", "--data-dir", str(zoom_dir(views_data)), "--log-dir", str(root),
                    "--run-name", "v", "--model-out", str(tmp_path / "m.keras"), "--epochs", "1",
                    "--val-split", "0.34", "--batch-size", "4", "--image-every", "0"])
    split = json.loads((root / "v" / "split.json").read_text())
    val = split["val_indices"]
    assert len(val) == 2 and np.all(zoom.views[val] == 0)
    assert sorted(split["val_stems"]) == sorted(set(split["val_stems"]))


def zoom_dir(views_data):
    data, _, _ = views_data
    return data.parent / "zoom"
