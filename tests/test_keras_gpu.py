"""The GPU benchmark's own data path and scoring (benchmarks.keras_gpu), on the test backend."""

from __future__ import annotations

import json
import lzma

import numpy as np
import pytest

from benchmarks import keras_gpu as kg
from benchmarks.arrays_bench import make_arrays
from pipeline.heatmaps import decode_peak, render


def _arrays(tmp_path, n=12, k=3, img_size=32, compress=False):
    d = make_arrays(tmp_path / "arr", n=n, k=k, img_size=img_size)
    if compress:
        raw = (d / "X_data.npy").read_bytes()
        (d / "X_data.npy.xz").write_bytes(lzma.compress(raw))
        (d / "X_data.npy").unlink()
    return d


def test_load_arrays_reads_xz_like_npy(tmp_path):
    plain = kg.load_arrays(_arrays(tmp_path / "a"))
    packed = kg.load_arrays(_arrays(tmp_path / "b", compress=True))
    np.testing.assert_array_equal(plain["x"], packed["x"])
    np.testing.assert_array_equal(plain["visible"], packed["visible"])
    assert plain["x"].shape == (12, 32, 32, 3) and plain["xy"].shape == (12, 3, 2)
    assert plain["config"]["heat_size"] == 16
    with pytest.raises(FileNotFoundError, match="preprocess_vis.py"):
        kg.load_arrays(tmp_path)


def test_quarter_turns_move_image_and_targets_together(tmp_path):
    """Each image holds one bright pixel at keypoint 0; after the random turns it must still sit under
    keypoint 0's target peak and coordinates, and invisible keypoints stay -1 with empty maps."""
    n, size, heat = 32, 32, 16
    rng = np.random.default_rng(3)
    cells = rng.integers(2, size - 2, (n, 2))
    xy = np.stack([(cells + 0.5) / size, rng.uniform(0.2, 0.8, (n, 2))], axis=1)  # (n, 2, 2)
    vis = np.ones((n, 2), bool)
    vis[::3, 1] = False
    x = np.zeros((n, size, size, 3), np.uint8)
    x[np.arange(n), cells[:, 1], cells[:, 0]] = 255
    data = {"x": x, "xy": xy, "visible": vis}
    batches = kg.Batches(data, np.arange(n), n, heat, 1.0, turns=True, seed=0)
    xb, yb = batches.batch(0)
    order = np.sort(batches.rows[:n])
    coords = yb["coords"].reshape(n, 2, 2)
    turned = 0
    for j, i in enumerate(order):
        r, c = np.argwhere(xb[j, :, :, 0] == 255)[0]
        np.testing.assert_allclose(coords[j, 0], [(c + 0.5) / size, (r + 0.5) / size], atol=1e-6)
        turned += not np.array_equal(xb[j], x[i])
        if not vis[i, 1]:
            assert (coords[j, 1] == -1).all() and yb["heatmaps"][j, ..., 1].max() == 0
    peak, _ = decode_peak(yb["heatmaps"][:, :, :, :1])
    np.testing.assert_allclose(peak[:, 0], coords[:, 0], atol=2e-3)
    assert turned >= n // 2  # three turns in four move the pixel


class _Oracle:
    """A stand-in model whose heatmaps are the ground truth of the sample whose index fills the image."""

    def __init__(self, xy, vis, heat):
        self.xy, self.vis, self.heat = xy, vis, heat

    def predict_on_batch(self, x):
        idx = x[:, 0, 0, 0].astype(int)
        maps = render(self.xy[idx], self.vis[idx], self.heat, 1.5)
        return {"heatmaps": maps, "coords": self.xy[idx].reshape(len(idx), -1)}


def test_score_of_exact_heatmaps_is_near_zero(tmp_path):
    d = kg.load_arrays(_arrays(tmp_path, n=70, k=4, img_size=64))
    d["x"] = np.broadcast_to(np.arange(70, dtype=np.uint8)[:, None, None, None], d["x"].shape).copy()
    s = kg.score(_Oracle(d["xy"], d["visible"], 32), d)
    assert s["visible_keypoints_count"] == int(d["visible"].sum())
    assert s["euclidean_mean"] < 0.02 and s["pck_percent"]["2"] == 100.0
    # a shift of one heatmap pixel (2 input px at 64 -> 32) is measured as such
    shifted = dict(d, xy=d["xy"] + np.array([1.0 / 32, 0.0]))
    s = kg.score(_Oracle(d["xy"], d["visible"], 32), shifted)
    assert s["euclidean_median"] == pytest.approx(2.0, abs=0.02)


def test_main_runs_every_section_on_tiny_data(tmp_path):
    train = make_arrays(tmp_path / "train", n=40, k=3, img_size=64)
    test = make_arrays(tmp_path / "test", n=10, k=3, img_size=64)
    out = tmp_path / "gpu.json"
    res = kg.main(["--preset", "tiny", "--train", str(train), "--test", str(test), "--out", str(out),
                   "--train-batches", "8", "--precisions", "float32", "--recipe-batch", "8", "--paper-epochs", "2",
                   "--long-epochs", "5", "--speed-images", "16", "--budget-s", "600", "--reserve-s", "0"])
    saved = json.loads(out.read_text())
    assert saved["sections"].keys() == res["sections"].keys() == {
        "train_speed_f32_b8", "accuracy_paper", "infer_speed_f32", "accuracy_long"}
    assert saved["sections"]["train_speed_f32_b8"]["images_per_s"] > 0
    assert saved["sections"]["infer_speed_f32"]["batch1_latency_ms_median"] > 0
    paper, long = saved["sections"]["accuracy_paper"], saved["sections"]["accuracy_long"]
    assert paper["epochs_run"] == 2 and long["epochs_run"] == 5 and not long["stopped_at_deadline"]
    assert paper["train_samples"] + paper["val_samples"] == 40 and paper["val_samples"] == 6
    assert set(long["test"]) == {"none", "rot4"}
    assert long["test"]["none"]["visible_keypoints_count"] == int(np.load(test / "Y_data.npz")["visible"].sum())
    assert long["history"][-1]["lr"] == pytest.approx(0.0, abs=1e-9)  # the cosine decay ran to its end
