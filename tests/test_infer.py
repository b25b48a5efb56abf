"""Inference stage: geometry round trip, end-to-end CLI on tiny data, bad inputs."""

import csv
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

import use_vis
from pipeline import predict
from pipeline.config import PreprocessConfig
from pipeline.geometry import Geometry
from pipeline.heatmaps import render
from pipeline.infer import collect_inputs, ground_truth
from tests.make4sp import write_dataset

FORMAT_KEYS = ["img_size_px", "processed_samples", "samples_with_gt", "visible_keypoints_count", "mae_dx", "mae_dy",
               "rmse_dx", "rmse_dy", "euclidean_mean", "euclidean_median", "euclidean_p95", "euclidean_rmse",
               "pck_thresholds_px", "pck_percent"]
SIZES = ((1920, 1080), (1080, 1920), (640, 480))
K = 5


def _json_pixels(path: Path, k: int):
    data = json.loads(path.read_text())
    px = np.full((k, 2), np.nan)
    for e in data["visible_vertices"]:
        px[e["index"]] = e["pixel_coordinates"]
    return px


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("4sp") / "data", sizes=SIZES, k=K, per_size=1, seed=3)


@pytest.fixture(scope="module")
def small_geometry():
    return Geometry(input_size=32, heatmap_size=16)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, dataset):
    """An untrained tiny network saved like train_vis.py saves one (input 32, K = 5)."""
    from pipeline.model import ModelConfig, build_model
    from pipeline.model_io import save_model

    mcfg = ModelConfig(input_size=32, num_keypoints=K, backbone="resnet18ish", backbone_width=4,
                       decoder_widths=(8, 8, 8, 8, 8))
    model = build_model(mcfg, weights=None)
    pre = asdict(PreprocessConfig(data_dir=str(dataset), img_size=32, heat_size=16))
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    save_model(model, path, {"preprocess": pre, "train": {}, "model": asdict(mcfg), "num_keypoints": K,
                             "val_stems": ["img_0001", "img_0002"]})
    return path


@pytest.mark.parametrize("size", SIZES)
def test_gt_round_trip_reproduces_json_pixels(dataset, size):
    found = collect_inputs([dataset], K)
    geometry = Geometry()
    sizes = np.array([[1920, 1080], [1080, 1920], [640, 480]])  # img_0000.. in write order
    has, px, input_px, vis = ground_truth(found.samples, sizes, geometry)
    i = SIZES.index(size)
    assert has[i] and vis[i].any()
    norm = geometry.from_input(input_px[i])
    back = geometry.from_normalised(norm, sizes[i])
    want = _json_pixels(found.samples[i].annotation, K)
    ok = found.samples[i].visible
    np.testing.assert_allclose(back[ok], want[ok], atol=1e-3)


class _Oracle:
    """Stands in for a model: returns the ground truth of the samples in order (coords and heatmaps)."""

    def __init__(self, xy, visible, heat, pad=64):
        # Extra rows answer the zero padding of a short last batch.
        self.xy = np.concatenate([xy, np.full((pad,) + xy.shape[1:], 0.5)])
        self.visible = np.concatenate([visible, np.zeros((pad,) + visible.shape[1:], bool)])
        self.heat, self.i = heat, 0

    def predict_on_batch(self, x):
        b = x.shape[0]
        xy, vis = self.xy[self.i:self.i + b], self.visible[self.i:self.i + b]
        self.i += b
        return {"heatmaps": render(xy, vis, self.heat, 1.0), "coords": xy.reshape(b, -1)}


def test_oracle_predictions_map_back_to_json_pixels(dataset, tmp_path, monkeypatch):
    """GT normalised coords fed through the whole CLI come back as the JSON pixels (1e-3 px) and zero error."""
    geometry = Geometry(input_size=32, heatmap_size=16)
    found = collect_inputs([dataset], K)
    sizes = np.array([[1920, 1080], [1080, 1920], [640, 480]])
    _, _, input_px, vis = ground_truth(found.samples, sizes, geometry)
    xy = np.nan_to_num(geometry.from_input(input_px), nan=0.5)
    oracle = _Oracle(xy, vis, 16)
    monkeypatch.setattr(predict, "load_model_and_geometry", lambda p: (oracle, {}, geometry, K))
    out = tmp_path / "pred"
    rc = use_vis.main(["--input", str(dataset), "--decoder", "softargmax", "--out-dir", str(out), "--no-progress",
                       "--batch-size", "2"])
    assert rc == 0
    pred = json.loads((out / "predictions.json").read_text())
    for rec, s in zip(pred["images"], found.samples):
        want = _json_pixels(s.annotation, K)
        got = np.array([[kp["x_orig"], kp["y_orig"]] for kp in rec["keypoints"]])
        np.testing.assert_allclose(got[s.visible], want[s.visible], atol=1e-3)
        gt = np.array([[kp["gt_x_orig"] or np.nan, kp["gt_y_orig"] or np.nan] for kp in rec["keypoints"]])
        np.testing.assert_allclose(gt[s.visible], want[s.visible], atol=1e-9)
    summary = json.loads((out / "evaluation_summary.json").read_text())
    assert summary["euclidean_mean"] < 1e-6 and summary["original_px"]["euclidean_p95"] < 1e-3
    assert summary["pck_percent"]["2"] == 100.0 and summary["visibility"]["f1"] == 1.0


def test_cli_writes_every_output(dataset, tiny_model, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    (data / "Rendered_Images" / "img_9999.png").write_bytes(b"not a png")  # corrupt, no JSON
    out = tmp_path / "pred"
    rc = use_vis.main(["--input", str(data), "--model", str(tiny_model), "--out-dir", str(out), "--split", "all",
                       "--no-progress"])
    assert rc == 0
    for name in ("predictions.json", "predictions.csv", "evaluation_summary.json", "evaluation_summary.txt",
                 "pck_curve.png", "error_histogram.png"):
        assert (out / name).is_file(), name
    for sub in ("overlays", "heatmaps", "original_overlays"):
        assert sorted(p.name for p in (out / sub).iterdir()) == ["img_0000.png", "img_0001.png", "img_0002.png"]
    s = json.loads((out / "evaluation_summary.json").read_text())
    for key in FORMAT_KEYS:
        assert key in s, key
    assert s["img_size_px"] == 32 and s["samples_with_gt"] == 3 and s["processed_samples"] == 3
    assert s["split"] == "all" and s["decoder"] == "peak" and s["model"] == str(tiny_model)
    assert s["tta"] == "none"  # the sidecar records no full-circle rotation training
    assert [f["file"] for f in s["skipped_files"]] == [str(data / "Rendered_Images" / "img_9999.png")]
    lines = (out / "predictions.csv").read_text().splitlines()
    assert len(lines) == 1 + 3 * K and lines[0].startswith("stem,image,index,x_orig")
    assert "PCK @ 2 px" in capsys.readouterr().out

    # A second run on two single files with one figure leaves nothing of the first behind.
    rc = use_vis.main(["--input", str(data / "Rendered_Images" / "img_0001.png"),
                       str(data / "Rendered_Images" / "img_0000.png"), "--model", str(tiny_model),
                       "--out-dir", str(out), "--visualize", "1", "--no-progress", "--split", "all"])
    assert rc == 0
    assert [p.name for p in (out / "overlays").iterdir()] == ["img_0001.png"]
    assert not any(p.name.startswith(".run-") for p in out.iterdir())


def test_default_split_is_the_training_val_stems(dataset, tiny_model, tmp_path, capsys):
    out = tmp_path / "pred"
    assert use_vis.main(["--model", str(tiny_model), "--out-dir", str(out), "--no-progress", "--visualize", "0"]) == 0
    s = json.loads((out / "evaluation_summary.json").read_text())
    assert s["split"] == "val" and s["samples_with_gt"] == 2
    assert "held-out validation split" in capsys.readouterr().out
    with pytest.warns(UserWarning, match="training images"):
        assert use_vis.main(["--model", str(tiny_model), "--out-dir", str(out), "--no-progress", "--split", "all",
                             "--visualize", "0"]) == 0


def test_other_dataset_with_the_same_stems_is_evaluated_whole(dataset, tiny_model, tmp_path):
    """A held-out set generated separately reuses stem names; it is not the training data."""
    import shutil

    other = tmp_path / "heldout"
    shutil.copytree(dataset, other)
    out = tmp_path / "pred"
    assert use_vis.main(["--input", str(other), "--model", str(tiny_model), "--out-dir", str(out), "--no-progress",
                         "--visualize", "0"]) == 0
    s = json.loads((out / "evaluation_summary.json").read_text())
    assert s["split"] == "all" and s["samples_with_gt"] == 3


def test_images_only_folder_has_no_summary(dataset, tiny_model, tmp_path):
    out = tmp_path / "pred"
    assert use_vis.main(["--input", str(dataset / "Rendered_Images"), "--model", str(tiny_model), "--out-dir",
                         str(out), "--no-progress", "--visualize", "1"]) == 0
    assert (out / "predictions.json").is_file() and not (out / "evaluation_summary.json").exists()
    rec = json.loads((out / "predictions.json").read_text())["images"][0]["keypoints"][0]
    assert "gt_x_orig" not in rec and 0.0 <= rec["confidence"] <= 1.0


def test_k_mismatch_stops_with_the_file_named(tiny_model, tmp_path, capsys):
    data = write_dataset(tmp_path / "k7", sizes=((64, 48),), k=7, per_size=1)
    assert use_vis.main(["--input", str(data), "--model", str(tiny_model), "--out-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "mesh_information.json" in err and "K=7" in err and "K=5" in err and "--model" in err
    (data / "Object_Information" / "mesh_information.json").unlink()
    with pytest.warns(UserWarning):
        assert use_vis.main(["--input", str(data), "--model", str(tiny_model), "--out-dir", str(tmp_path / "o")]) == 2
    assert "img_0000.json" in capsys.readouterr().err


def test_missing_model_and_empty_folder(tiny_model, tmp_path, capsys):
    missing = tmp_path / "nope.keras"
    assert use_vis.main(["--input", str(tmp_path), "--model", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "train_vis.py" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert use_vis.main(["--input", str(empty), "--model", str(tiny_model)]) == 2
    assert "holds no images" in capsys.readouterr().err


def test_decoders_read_the_right_output():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0.2, 0.8, (3, 4, 2))
    vis = np.ones((3, 4), bool)
    maps = render(xy, vis, 32, 2.0)
    coords = xy.reshape(3, -1) + 0.01  # a different answer, to tell the outputs apart
    from pipeline.infer import decode

    peak, conf = decode({"heatmaps": maps, "coords": coords}, "peak")
    np.testing.assert_allclose(peak, xy, atol=0.02 / 32)  # log-quadratic refinement: ~exact on a Gaussian
    np.testing.assert_allclose(conf, 1.0, atol=0.1)
    soft, conf2 = decode({"heatmaps": maps, "coords": coords}, "softargmax")
    np.testing.assert_allclose(soft, xy + 0.01)
    np.testing.assert_array_equal(conf, conf2)


def test_batching_changes_no_prediction_and_unreadable_files_are_named(dataset, tiny_model, tmp_path):
    """One batch of 3, batches of 2 (the last one padded) and of 1 decode the same inputs and predict the
    same; the unreadable file in the middle is reported at its index and leaves its neighbours alone."""
    from pipeline.infer import predict_files
    from pipeline.model_io import load_model

    model, _ = load_model(tiny_model)
    g = Geometry(input_size=32, heatmap_size=16)
    files = sorted((Path(dataset) / "Rendered_Images").iterdir())[:2]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    files = [files[0], bad, files[1]]
    few = predict_files(model, files, g, batch_size=32, progress=False, keep=3)  # one batch of 3
    many = predict_files(model, files, g, batch_size=2, progress=False, keep=3)  # 2, then 1 padded to 2
    ones = predict_files(model, files, g, batch_size=1, progress=False, keep=3)
    for other in (many, ones):
        assert few.ok.tolist() == other.ok.tolist() == [True, False, True]
        assert set(few.errors) == set(other.errors) == {1} and "broken.png" in few.errors[1]
        np.testing.assert_array_equal(few.sizes, other.sizes)
        np.testing.assert_array_equal(few.inputs, other.inputs)
        np.testing.assert_allclose(few.xy[few.ok], other.xy[other.ok], atol=1e-6)
    assert few.sizes[1].tolist() == [0, 0] and not few.inputs[1].any()
    assert np.isnan(few.xy[1]).all()


def test_pose_refinement_from_preprocessing_to_the_summary(tmp_path, monkeypatch, capsys):
    """Synthetic renders; preprocessing calibrates the object and camera from their annotations; the ground
    truth fed through the CLI as the network's output, with one keypoint on another vertex, comes back to within
    0.01 model-input px (the robust fit still gives the far outlier a tiny weight)."""
    from pipeline.preprocess import preprocess
    from pipeline.synthetic import generate_dataset

    k, geometry = 11, Geometry()
    data = generate_dataset(tmp_path / "data", count=6, seed=11, progress=False)
    preprocess(PreprocessConfig(data_dir=str(data), out_dir=str(tmp_path / "arrays"), workers=1), progress=False)
    pre = json.loads(str(np.load(tmp_path / "arrays" / "Y_data.npz")["config"]))
    assert pre["object_camera"]["image_size"] == [1920, 1080]
    np.testing.assert_allclose(np.array(pre["object_camera"]["intrinsics"])[0, 0], 540 / np.tan(np.radians(15)))

    found = collect_inputs([data], k)
    _, _, input_px, vis = ground_truth(found.samples, np.array([[1920, 1080]] * 6), geometry)
    xy = np.nan_to_num(geometry.from_input(input_px), nan=0.5)
    i = int(np.flatnonzero(vis.sum(1) >= 6)[0])
    a, b = np.flatnonzero(vis[i])[:2]
    moved = xy.copy()
    moved[i, a] = xy[i, b]  # keypoint a detected on vertex b
    oracle = _Oracle(moved, vis, geometry.heatmap_size)
    monkeypatch.setattr(predict, "load_model_and_geometry", lambda p: (oracle, {"preprocess": pre}, geometry, k))
    out = tmp_path / "pred"
    assert use_vis.main(["--input", str(data), "--decoder", "softargmax", "--out-dir", str(out), "--no-progress",
                         "--visualize", "0", "--split", "all", "--second-look", "off"]) == 0
    assert "refinement: pose (fitted on 6 1920x1080 annotations" in capsys.readouterr().out
    s = json.loads((out / "evaluation_summary.json").read_text())
    assert s["refine"] == "pose" and s["pose_refined_images"] >= 1
    assert s["euclidean_mean"] < 0.01 and s["detections_before_refinement"]["euclidean_mean"] > 0.1
    rec = json.loads((out / "predictions.json").read_text())["images"][i]
    assert rec["pose"]["refined"] and int(a) not in rec["pose"]["inliers"]
    kp = rec["keypoints"][a]
    assert abs(kp["x_orig"] - kp["gt_x_orig"]) < 0.1 and abs(kp["x_orig_detected"] - kp["gt_x_orig"]) > 1.0

    monkeypatch.setattr(predict, "load_model_and_geometry", lambda p: (_Oracle(moved, vis, 64), {"preprocess": pre},
                                                                       geometry, k))
    assert use_vis.main(["--input", str(data), "--decoder", "softargmax", "--out-dir", str(out), "--no-progress",
                         "--visualize", "0", "--refine", "none", "--split", "all"]) == 0
    s = json.loads((out / "evaluation_summary.json").read_text())
    assert s["refine"] == "none" and "detections_before_refinement" not in s and s["euclidean_mean"] > 0.01


def _renders_and_truth(tmp_path, n: int):
    """``n`` synthetic renders, preprocessed (which calibrates the object and camera), and their truth:
    (data dir, preprocessing config, collected inputs, sizes, GT original px, GT normalised (0.5 where
    unknown), GT plus 0.4 model-px noise, visible)."""
    from pipeline.preprocess import preprocess
    from pipeline.synthetic import generate_dataset

    geometry = Geometry()
    data = generate_dataset(tmp_path / "data", count=n, seed=11, progress=False)
    preprocess(PreprocessConfig(data_dir=str(data), out_dir=str(tmp_path / "arrays"), workers=1), progress=False)
    pre = json.loads(str(np.load(tmp_path / "arrays" / "Y_data.npz")["config"]))
    found = collect_inputs([data], 11)
    sizes = np.array([[1920, 1080]] * n)
    _, gt_orig, input_px, vis = ground_truth(found.samples, sizes, geometry)
    xy = np.nan_to_num(geometry.from_input(input_px), nan=0.5)
    noisy = xy + np.random.default_rng(0).normal(0, 0.4 / 128, xy.shape)
    return data, pre, found, sizes, gt_orig, xy, noisy, vis


def test_second_look_recentres_magnifies_and_sharpens(tmp_path, monkeypatch):
    """First look: the ground truth plus 0.4 model-px noise. Second look: an oracle that answers exactly
    in the window it is shown. The windows are centred on the object, magnified until it fills the
    share the training objects allow (their extent 0.5 x the 1.2 augmentation scale), and the pose
    fitted to both looks' detections (one per vertex and look, no turns) is much closer to the truth
    than the first look's."""
    from pipeline import second_look

    k, geometry, n = 11, Geometry(), 6
    data, pre, found, sizes, gt_orig, xy, noisy, vis = _renders_and_truth(tmp_path, n)
    boxes = []
    real = second_look.look_boxes
    monkeypatch.setattr(second_look, "look_boxes", lambda *a: boxes.append(real(*a)) or boxes[-1])

    class LookOracle:
        def predict_on_batch(self, x):
            out = noisy if not boxes else Geometry.to_box(geometry.from_normalised(xy, sizes), boxes[-1][0])
            return {"heatmaps": render(out, vis, 64, 1.0), "coords": out.reshape(len(x), -1)}

    train = {"affine_prob": 0.5, "scale_range": 0.2}
    sidecar = {"preprocess": pre, "train": train, "objects": {"extent": 0.5}}
    monkeypatch.setattr(predict, "load_model_and_geometry", lambda p: (LookOracle(), sidecar, geometry, k))
    out = tmp_path / "pred"
    args = ["--input", str(data), "--decoder", "softargmax", "--out-dir", str(out), "--no-progress",
            "--visualize", "0", "--split", "all", "--tta", "none"]
    assert use_vis.main(args + ["--second-look", "off"]) == 0
    one = json.loads((out / "evaluation_summary.json").read_text())
    assert one["second_look"] is None and not boxes
    assert use_vis.main(args) == 0
    s = json.loads((out / "evaluation_summary.json").read_text())
    assert s["second_look"]["images"] == n and s["second_look"]["fill"] == pytest.approx(0.6)
    assert s["second_look"]["fill_unposed"] == pytest.approx(0.6)  # UNPOSED_FILL, not above the share
    assert s["second_look"]["pose_refined_images"] >= 4
    assert s["detections_before_refinement"]["euclidean_mean"] > 0.3  # the first look's noise
    assert s["euclidean_mean"] < 0.6 * one["euclidean_mean"], (s["euclidean_mean"], one["euclidean_mean"])
    checked, zooms = 0, []
    for rec, px in zip(json.loads((out / "predictions.json").read_text())["images"], gt_orig):
        box = np.array(rec["second_look_box_orig"])
        obj = px[np.isfinite(px).all(1)]
        if not Geometry.inside(geometry.to_normalised(obj, (1920, 1080))).all():
            continue  # partly outside the crop: the first look may not place it
        checked += 1
        np.testing.assert_allclose(0.5 * (box[:2] + box[2:]), 0.5 * (obj.min(0) + obj.max(0)), atol=3.0)
        # the window is sized on all vertices under the fitted pose, hidden ones too: the visible ones
        # fill most of the share and no more (unless the object is too large to magnify at all)
        side = np.ptp(box.reshape(2, 2), axis=0)
        np.testing.assert_allclose(side, 1000 / rec["second_look_zoom"], rtol=1e-6)
        filled = np.ptp(obj, axis=0).max() / side[0]
        assert filled >= 0.45 and (filled <= 0.61 or rec["second_look_zoom"] == 1.0), filled
        zooms.append(rec["second_look_zoom"])
    assert checked >= 3 and max(zooms) > 1.5  # beyond the largest scale of the training augmentation (1.2)


def test_two_looks_in_chunks_decode_each_file_once_and_change_nothing(tmp_path, monkeypatch):
    """The two looks run chunk by chunk on decoded images held between them: each file is decoded once,
    and chunks of one batch (three chunks, the last one short) give the same predictions, poses and
    second-look windows as one chunk of all images. The oracle answers from the pixels it is shown:
    each input is traced back to its image and window, the first look gets the truth plus noise,
    the second the exact truth in its window."""
    import hashlib

    from pipeline import images, infer
    from pipeline.images import crop_resize, open_image

    k, geometry, n = 11, Geometry(), 5
    data, pre, found, sizes, _, truth, noisy, vis = _renders_and_truth(tmp_path, n)
    digest = lambda a: hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()  # noqa: E731
    image_of = {digest(np.asarray(open_image(s.image))): i for i, s in enumerate(found.samples)}
    shown, decoded = {}, []

    def traced_crop(img, geo, box=None):
        x = crop_resize(img, geo, box)
        shown[digest(x)] = (image_of[digest(np.asarray(getattr(img, "image", img)))], box)  # held: Decoded
        return x

    def counted_decode(path):
        decoded.append(Path(path).name)
        return images.decode(path)

    class WindowOracle:
        def predict_on_batch(self, x):
            xy, seen = np.full((len(x), k, 2), 0.5), np.zeros((len(x), k), bool)
            for j, img in enumerate(np.asarray(x, np.uint8)):
                if digest(img) in shown:  # not a padding input
                    i, box = shown[digest(img)]  # box None: the first look's crop
                    seen[j] = vis[i]
                    if box is None:
                        xy[j] = noisy[i]
                    else:
                        xy[j] = Geometry.to_box(geometry.from_normalised(truth[i], sizes[i]), box)
            return {"heatmaps": render(xy, seen, 64, 1.0), "coords": xy.reshape(len(x), -1)}

    from pipeline import second_look

    windows = []
    real_boxes = second_look.look_boxes
    monkeypatch.setattr(second_look, "look_boxes", lambda *a: windows.append(len(a[1])) or real_boxes(*a))
    monkeypatch.setattr(images, "crop_resize", traced_crop)
    monkeypatch.setattr(infer, "decode_image", counted_decode)
    sidecar = {"preprocess": pre, "train": {"affine_prob": 0.5, "scale_range": 0.2}, "objects": {"extent": 0.5}}
    monkeypatch.setattr(predict, "load_model_and_geometry", lambda p: (WindowOracle(), sidecar, geometry, k))
    args = ["--input", str(data), "--decoder", "softargmax", "--no-progress", "--visualize", "2", "--split", "all",
            "--tta", "none", "--batch-size", "2"]
    runs = {}
    one_batch = 2 * 4 * 1920 * 1080  # bytes of two decoded renders
    for name, budget, chunks in (("one chunk", 1 << 40, [5]), ("chunks of one batch", one_batch, [2, 2, 1])):
        monkeypatch.setattr(predict, "HOLD_BYTES", budget)
        decoded.clear()
        windows.clear()
        assert use_vis.main(args + ["--out-dir", str(tmp_path / name)]) == 0
        assert windows == chunks, name  # the images of each chunk's second look
        assert sorted(decoded) == sorted(s.image.name for s in found.samples), name  # each file once
        runs[name] = json.loads((tmp_path / name / "predictions.json").read_text())
        assert len(list((tmp_path / name / "overlays").glob("*.png"))) == 2
    one, chunked = runs["one chunk"], runs["chunks of one batch"]
    assert chunked["images"] == one["images"]
    assert chunked["second_look"] == one["second_look"] and one["second_look"]["images"] == n
    assert one["second_look"]["pose_refined_images"] >= 3
    s = json.loads((tmp_path / "one chunk" / "evaluation_summary.json").read_text())
    assert s["euclidean_mean"] < 0.5 * s["detections_before_refinement"]["euclidean_mean"]  # the second look helped


def test_held_images_decode_each_file_once_within_the_budget(dataset, monkeypatch):
    """A budget of two 1920x1080 images over three of them: the first two are kept by the first pass and
    handed out by the second; the third does not fit and is decoded again; nothing stays held."""
    from pipeline import infer
    from pipeline.images import decode, open_image

    files = sorted((Path(dataset) / "Rendered_Images").iterdir())
    big = [f for f in files if open_image(f).size == (1920, 1080)][:1] * 3  # one file under three indices
    opened = []
    monkeypatch.setattr(infer, "decode_image", lambda p: opened.append(p) or decode(p))
    held = infer.HeldImages(2 * 4 * 1920 * 1080)
    first = [held.take(f, i) for i, f in enumerate(big)]
    assert len(opened) == 3 and held.used == 2 * 4 * 1920 * 1080
    second = [held.take(f, i) for i, f in enumerate(big)]
    assert len(opened) == 4 and held.used == 0  # only the third decoded again
    assert second[0] is first[0] and second[1] is first[1] and second[2] is not first[2]
    np.testing.assert_array_equal(np.asarray(second[2].pil()), np.asarray(first[2].pil()))
    held.take(big[2], 2)
    assert len(opened) == 5 and held.used == 0  # a third request is decoded and not kept


def test_a_chunk_of_unreadable_files_is_skipped_and_named(tmp_path, monkeypatch):
    """Two looks in chunks of one batch, the middle chunk two unreadable files: the readable images are
    predicted by both looks, the two files are reported by name, and nothing else is lost."""
    k, geometry = 11, Geometry()
    data, pre, found, *_ = _renders_and_truth(tmp_path, 3)
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name, sample in zip(("a1", "a2", "c1"), found.samples):
        shutil.copy(sample.image, folder / f"{name}.png")
    (folder / "b1.png").write_bytes(b"not an image")
    (folder / "b2.png").write_bytes((folder / "a1.png").read_bytes()[:5000])  # truncated

    class Centre:
        def predict_on_batch(self, x):
            xy = np.full((len(x), k, 2), 0.5)
            return {"heatmaps": render(xy, np.ones((len(x), k), bool), 64, 1.0), "coords": xy.reshape(len(x), -1)}

    sidecar = {"preprocess": pre, "train": {}, "objects": {"extent": 0.5}}
    monkeypatch.setattr(predict, "load_model_and_geometry", lambda p: (Centre(), sidecar, geometry, k))
    monkeypatch.setattr(predict, "HOLD_BYTES", 2 * 4 * 1920 * 1080)  # chunks of one batch of 2
    out = tmp_path / "pred"
    with pytest.warns(UserWarning, match="Skipping unreadable image"):
        assert use_vis.main(["--input", str(folder), "--out-dir", str(out), "--no-progress", "--visualize", "0",
                             "--tta", "none", "--batch-size", "2"]) == 0
    d = json.loads((out / "predictions.json").read_text())
    assert [im["stem"] for im in d["images"]] == ["a1", "a2", "c1"]
    assert sorted(Path(s["file"]).name for s in d["skipped_files"]) == ["b1.png", "b2.png"]
    assert d["second_look"]["images"] == 3
    assert all(im["orig_size"] == [1920, 1080] and "second_look_box_orig" in im for im in d["images"])


def test_an_image_without_a_pose_is_looked_at_less_magnified_then_at_the_posed_share(tmp_path, monkeypatch):
    """Image 0's first two looks are scrambled (15 model px of noise: no rigid pose fits them), so its
    first look fits no pose, its second window is magnified to ``UNPOSED_FILL`` instead of the posed
    share, and a third look at the posed share, where the oracle answers exactly, fits the pose. The
    other images are posed by their first look and looked at twice, unless fewer than five of their
    vertices are visible (no pose at all: three looks too)."""
    import hashlib

    from pipeline import images, second_look
    from pipeline.images import crop_resize, open_image

    k, geometry, n = 11, Geometry(), 4
    data, pre, found, sizes, _, truth, noisy, vis = _renders_and_truth(tmp_path, n)
    assert vis[0].sum() >= 6
    digest = lambda a: hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()  # noqa: E731
    image_of = {digest(np.asarray(open_image(s.image))): i for i, s in enumerate(found.samples)}
    shown, seen_by = {}, {i: [] for i in range(n)}
    rng = np.random.default_rng(3)

    def traced_crop(img, geo, box=None):
        x = crop_resize(img, geo, box)
        shown[digest(x)] = (image_of[digest(np.asarray(getattr(img, "image", img)))], box)  # third look: Decoded
        return x

    class WindowOracle:
        def predict_on_batch(self, x):
            xy, seen = np.full((len(x), k, 2), 0.5), np.zeros((len(x), k), bool)
            for j, img in enumerate(np.asarray(x, np.uint8)):
                if digest(img) not in shown:
                    continue  # padding
                i, box = shown[digest(img)]
                seen_by[i].append(box)
                seen[j] = vis[i]
                exact = truth[i] if box is None else Geometry.to_box(geometry.from_normalised(truth[i], sizes[i]), box)
                if i == 0 and len(seen_by[0]) <= 2:
                    xy[j] = exact + rng.normal(0, 15 / 128, exact.shape)
                else:
                    xy[j] = noisy[i] if box is None else exact
            return {"heatmaps": render(xy, seen, 64, 1.0), "coords": xy.reshape(len(x), -1)}

    fills = []
    real_boxes = second_look.look_boxes
    monkeypatch.setattr(second_look, "look_boxes", lambda *a: fills.append(np.broadcast_to(a[4], len(a[1])).copy())
                        or real_boxes(*a))
    monkeypatch.setattr(images, "crop_resize", traced_crop)
    sidecar = {"preprocess": pre, "train": {"affine_prob": 0.5, "scale_range": 0.2}}  # no extent: FILL
    monkeypatch.setattr(predict, "load_model_and_geometry", lambda p: (WindowOracle(), sidecar, geometry, k))
    out = tmp_path / "pred"
    assert use_vis.main(["--input", str(data), "--decoder", "softargmax", "--out-dir", str(out), "--no-progress",
                         "--visualize", "0", "--split", "all", "--tta", "none"]) == 0
    unposed = (vis.sum(1) < 5) | (np.arange(n) == 0)
    np.testing.assert_allclose(fills[0], np.where(unposed, second_look.UNPOSED_FILL, second_look.FILL))
    np.testing.assert_allclose(fills[1], second_look.FILL)  # the third look's windows
    assert [len(seen_by[i]) for i in range(n)] == list(np.where(unposed, 3, 2))
    second_box, third_box = np.array(seen_by[0][1]), np.array(seen_by[0][2])
    np.testing.assert_allclose(0.5 * (second_box[:2] + second_box[2:]), 0.5 * (third_box[:2] + third_box[2:]))
    zoom = lambda b: 1000 / (b[2] - b[0])  # noqa: E731
    assert zoom(third_box) == pytest.approx(zoom(second_box) * second_look.FILL / second_look.UNPOSED_FILL)
    s = json.loads((out / "evaluation_summary.json").read_text())
    assert s["second_look"]["unposed_looked_again_images"] == unposed.sum() < n
    assert s["second_look"]["fill_unposed"] == pytest.approx(second_look.UNPOSED_FILL)
    rec = json.loads((out / "predictions.json").read_text())["images"][0]
    assert rec["pose"]["looks"] == 2 and rec["second_look_zoom"] == pytest.approx(zoom(third_box))
    errors = [float(r["error_input_px"]) for r in csv.DictReader(open(out / "predictions.csv"))
              if r["stem"] == rec["stem"] and r["error_input_px"]]
    assert len(errors) >= 6 and max(errors) < 0.1, errors  # the third look's exact answer, fitted
