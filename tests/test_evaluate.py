"""Metric functions against hand-computed values."""

import numpy as np
import pytest

from pipeline import evaluate as ev

FORMAT_KEYS = ["img_size_px", "processed_samples", "samples_with_gt", "visible_keypoints_count", "mae_dx", "mae_dy",
               "rmse_dx", "rmse_dy", "euclidean_mean", "euclidean_median", "euclidean_p95", "euclidean_rmse",
               "pck_thresholds_px", "pck_percent"]


def _one_image(offsets, gt=None):
    """pred = gt + offsets for one image: (1, K, 2) arrays and an all-true mask."""
    off = np.asarray(offsets, np.float64)[None]
    gt = np.zeros_like(off) if gt is None else np.asarray(gt, np.float64)[None]
    return gt + off, gt, np.ones(off.shape[:2], bool)


def test_error_stats_hand_values():
    pred, gt, mask = _one_image([[3, 4], [-4, 3], [0, 0], [0, 10]])  # d = 5, 5, 0, 10
    mask[0, 2] = True
    dx, dy, d = ev.errors(pred, gt, mask)
    np.testing.assert_allclose(d, [5, 5, 0, 10])
    s = ev.error_stats(dx, dy)
    assert s["mae_dx"] == pytest.approx(7 / 4)
    assert s["mae_dy"] == pytest.approx(17 / 4)
    assert s["rmse_dx"] == pytest.approx(np.sqrt(25 / 4))
    assert s["rmse_dy"] == pytest.approx(np.sqrt(125 / 4))
    assert s["euclidean_mean"] == pytest.approx(5.0)
    assert s["euclidean_median"] == pytest.approx(5.0)
    # sorted 0, 5, 5, 10: position 0.95 * 3 = 2.85 -> 5 + 0.85 * 5
    assert s["euclidean_p95"] == pytest.approx(9.25)
    assert s["euclidean_rmse"] == pytest.approx(np.sqrt(150 / 4))


def test_mask_excludes_keypoints():
    pred, gt, mask = _one_image([[1, 0], [100, 100]])
    mask[0, 1] = False
    dx, dy, d = ev.errors(pred, gt, mask)
    np.testing.assert_allclose(d, [1.0])
    assert ev.error_stats([], [])["euclidean_mean"] != ev.error_stats([], [])["euclidean_mean"]  # NaN when empty


def test_pck_is_inclusive_and_in_percent():
    d = [0.0, 1.0, 2.0, 10.0]
    assert ev.pck(d, [2, 5, 10, 0.5]) == {"2": 75.0, "5": 75.0, "10": 100.0, "0.5": 25.0}


def test_auc_closed_form_matches_the_curve_integral():
    d = np.array([0.0, 1.0, 2.0, 10.0, 30.0])
    # mean(max(0, 1 - d / 20)) = (1 + 0.95 + 0.9 + 0.5 + 0) / 5
    assert ev.pck_auc(d, 20.0) == pytest.approx(3.35 / 5)
    t, p = ev.pck_curve(d, 20.0, steps=20001)
    assert np.trapezoid(p / 100.0, t) / 20.0 == pytest.approx(3.35 / 5, abs=1e-4)
    assert ev.pck_auc([0, 0], 20.0) == 1.0


def test_bbox_pck_hand_values():
    gt = np.array([[[0, 0], [30, 40], [10, 10]],  # box diagonal 50
                   [[5, 5], [np.nan, np.nan], [0, 0]]])  # one counted keypoint: left out
    mask = np.array([[True, True, False], [True, False, False]])
    pred = gt.copy()
    pred[0, 0] += [2, 0]  # 0.04 of the diagonal
    pred[0, 1] += [0, 6]  # 0.12
    np.testing.assert_allclose(ev.bbox_diagonals(gt, mask), [50.0, 0.0])
    r = ev.bbox_pck(pred, gt, mask)
    assert r["percent"] == {"0.05": 50.0, "0.1": 50.0, "0.15": 100.0, "0.2": 100.0}
    assert r["keypoints"] == 2 and r["images_left_out"] == 1


def test_visibility_scores_hand_values():
    pred = np.array([[1, 1, 0, 0, 1]], bool)
    gt = np.array([[1, 0, 1, 0, 1]], bool)
    s = ev.visibility_scores(pred, gt)
    assert (s["tp"], s["fp"], s["fn"], s["tn"]) == (2, 1, 1, 1)
    assert s["precision"] == pytest.approx(2 / 3) and s["recall"] == pytest.approx(2 / 3)
    assert s["f1"] == pytest.approx(2 / 3) and s["accuracy"] == pytest.approx(3 / 5)
    rows = ev.visibility_scores(np.ones((2, 2), bool), np.array([[1, 1], [0, 0]], bool), rows=[True, False])
    assert rows["precision"] == 1.0 and rows["fp"] == 0


def test_threshold_sweep_picks_the_separating_threshold():
    conf = np.array([[0.9, 0.8, 0.2, 0.1]])
    gt = np.array([[1, 1, 0, 0]], bool)
    sweep = ev.threshold_sweep(conf, gt, thresholds=[0.1, 0.5, 0.85])
    assert sweep["best_threshold"] == 0.5 and sweep["f1"]["0.5"] == 1.0


def test_summary_has_format_keys_and_prints():
    rng = np.random.default_rng(0)
    gt = rng.uniform(10, 100, (3, 4, 2))
    pred = gt + rng.normal(0, 1, gt.shape)
    mask = np.ones((3, 4), bool)
    mask[2, :2] = False
    s = ev.build_summary(pred_in=pred, gt_in=gt, pred_orig=pred * 8, gt_orig=gt * 8, gt_mask=mask,
                         has_gt=[True, True, False], confidence=rng.uniform(size=(3, 4)), vis_threshold=0.5,
                         img_size=128, processed=3, extra={"decoder": "peak", "split": "all"})
    for key in FORMAT_KEYS:
        assert key in s
    assert s["pck_thresholds_px"] == [2, 5, 10, 15, 20]
    assert set(s["pck_percent"]) == {"2", "5", "10", "15", "20"}
    assert s["samples_with_gt"] == 2 and s["visible_keypoints_count"] == 8  # image 3 has no GT
    assert s["original_px"]["euclidean_mean"] == pytest.approx(8 * s["euclidean_mean"])
    assert len(s["per_keypoint_input_px"]) == 4
    text = ev.format_summary(s)
    assert "PCK @ 2 px" in text and "Euclidean median" in text
