"""Focal heatmap loss, masked L1 and the pixel-error metric against hand-computed values."""

import numpy as np
import pytest

from pipeline.losses import FocalHeatmapLoss, MaskedL1Loss, PixelError, focal_heatmap_loss, masked_l1_loss


def _focal_ref(t, p, a=0.25, g=2.0):
    return -(a * t * (1 - p) ** g * np.log(p) + (1 - a) * (1 - t) * p ** g * np.log(1 - p))


def test_focal_matches_hand_computed_and_skips_empty_channels():
    # one image, 2x2 maps, K = 2; channel 1 has an all-zero target (not visible) and must not count.
    t = np.zeros((1, 2, 2, 2), np.float32)
    t[0, :, :, 0] = [[1.0, 0.5], [0.0, 0.2]]
    p = np.full((1, 2, 2, 2), 0.3, np.float32)
    p[0, :, :, 0] = [[0.9, 0.4], [0.1, 0.6]]
    expected = _focal_ref(t[0, :, :, 0].astype(np.float64), p[0, :, :, 0].astype(np.float64)).sum()
    got = float(focal_heatmap_loss(t, p))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    np.testing.assert_allclose(float(FocalHeatmapLoss()(t, p)), expected, rtol=1e-5)


def test_focal_averages_over_visible_channels_of_the_batch():
    rng = np.random.default_rng(0)
    t = rng.uniform(0, 1, (2, 3, 3, 2)).astype(np.float32)
    t[1, :, :, 1] = 0.0
    p = rng.uniform(0.05, 0.95, (2, 3, 3, 2)).astype(np.float32)
    per = _focal_ref(t.astype(np.float64), p.astype(np.float64)).sum(axis=(1, 2))
    expected = (per[0, 0] + per[0, 1] + per[1, 0]) / 3
    np.testing.assert_allclose(float(focal_heatmap_loss(t, p)), expected, rtol=1e-5)


def test_no_visible_keypoints_gives_zero_not_nan():
    t = np.zeros((2, 4, 4, 3), np.float32)
    p = np.full((2, 4, 4, 3), 0.5, np.float32)
    assert float(focal_heatmap_loss(t, p)) == 0.0
    c = -np.ones((2, 6), np.float32)
    assert float(masked_l1_loss(c, np.full((2, 6), 0.4, np.float32))) == 0.0
    m = PixelError(img_size=128)
    m.update_state(c, np.zeros((2, 6), np.float32))
    assert float(m.result()) == 0.0


def test_focal_extreme_predictions_are_finite():
    t = np.ones((1, 2, 2, 1), np.float32)
    p = np.zeros((1, 2, 2, 1), np.float32)
    assert np.isfinite(float(focal_heatmap_loss(t, p)))


def test_masked_l1_hand_computed():
    t = np.array([[0.2, 0.4, -1, -1, 0.5, 0.5]], np.float32)  # keypoint 1 not visible
    p = np.array([[0.3, 0.1, 0.9, 0.9, 0.5, 0.7]], np.float32)
    expected = (0.1 + 0.3 + 0.0 + 0.2) / 4
    np.testing.assert_allclose(float(masked_l1_loss(t, p)), expected, rtol=1e-5)
    np.testing.assert_allclose(float(MaskedL1Loss()(t, p)), expected, rtol=1e-5)


def test_pixel_error_metric_accumulates_visible_only():
    m = PixelError(img_size=100)
    m.update_state(np.array([[0.1, 0.1, -1, -1]], np.float32), np.array([[0.13, 0.14, 0.0, 0.0]], np.float32))
    m.update_state(np.array([[0.5, 0.5, 0.2, 0.2]], np.float32), np.array([[0.5, 0.5, 0.2, 0.2]], np.float32))
    np.testing.assert_allclose(float(m.result()), (5.0 + 0 + 0) / 3, rtol=1e-4)
    clone = PixelError.from_config(m.get_config())
    assert clone.img_size == 100 and clone.name == m.name


def test_pck_metric_counts_visible_within_threshold():
    from pipeline.losses import PCK

    t = np.array([[0.5, 0.5, 0.2, 0.2, -1, -1]], np.float32)  # keypoint 2 not visible
    p = np.array([[0.51, 0.5, 0.25, 0.2, 0.0, 0.0]], np.float32)  # errors 1.0 px and 5.0 px at S=100
    m = PCK(2.0, img_size=100)
    m.update_state(t, p)
    assert float(m.result()) == 0.5
    assert PCK.from_config(m.get_config()).threshold_px == 2.0


def test_peak_metrics_decode_heatmaps_like_inference():
    from pipeline.heatmaps import render
    from pipeline.losses import PCK

    rng = np.random.default_rng(3)
    xy = rng.uniform(0.2, 0.8, (2, 3, 2))
    vis = np.array([[True, True, False], [True, True, True]])
    shift = np.zeros_like(xy)
    shift[0, 0, 0] = 3.0 / 128  # 3 input px off
    shift[1, 2, 1] = 1.0 / 128  # 1 input px off
    truth = render(xy, vis, 64, 2.0)
    pred = render(xy + shift, np.ones_like(vis), 64, 2.0)  # the invisible keypoint's map must not count
    err = PixelError(img_size=128, decoder="peak")
    err.update_state(truth, pred)
    assert err.name == "peak_px_error"
    np.testing.assert_allclose(float(err.result()), 4.0 / 5, atol=1e-3)
    pck = PCK(2.0, img_size=128, decoder="peak")
    pck.update_state(truth, pred)
    np.testing.assert_allclose(float(pck.result()), 4 / 5, atol=1e-6)
    assert PCK.from_config(pck.get_config()).decoder == "peak"
    with pytest.raises(ValueError, match="decoder"):
        PixelError(decoder="softmax")
