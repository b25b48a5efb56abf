import numpy as np
import pytest

from pipeline import heatmaps as hm


def _points(rng, n, margin):
    return rng.uniform(margin, 1 - margin, (n, 2))


def test_render_peak_and_zero_maps():
    xy = np.array([[0.5, 0.25], [0.1, 0.9], [0.3, 0.3]])
    vis = np.array([True, True, False])
    h = hm.render(xy, vis, 64, 2.0)
    assert h.shape == (64, 64, 3) and h.dtype == np.float32
    assert h[..., 2].max() == 0.0
    # keypoint 0 sits exactly between pixels 31 and 32 in x (x = 32.0 heatmap px), on row 15/16 in y
    g = np.exp(-(0.5**2 + 0.5**2) / 8)
    assert h[15, 31, 0] == pytest.approx(g, rel=1e-6) and h[16, 32, 0] == pytest.approx(g, rel=1e-6)


@pytest.mark.parametrize("sigma", [1.0, 2.0, 3.0])
def test_peak_decoding_recovers_encoded_point(sigma):
    rng = np.random.default_rng(0)
    xy = _points(rng, 200, 0.1)
    h = hm.render(xy[:, None], np.ones((200, 1), bool), 64, sigma)
    dec, conf = hm.decode_peak(h)
    err_px = np.abs(dec[:, 0] - xy) * 64
    assert err_px.max() < 0.05
    assert conf.min() > 0.75  # worst case: half a pixel off in x and y


def test_soft_argmax_beta15_recovers_encoded_point():
    rng = np.random.default_rng(1)
    xy = _points(rng, 200, 0.15)
    h = hm.render(xy[:, None], np.ones((200, 1), bool), 64, 2.0)
    dec = hm.soft_argmax(h, beta=15.0)
    assert (np.abs(dec[:, 0] - xy) * 64).max() < 0.05


def test_render_tf_matches_numpy():
    rng = np.random.default_rng(2)
    xy = rng.uniform(0, 1, (4, 6, 2))
    vis = rng.uniform(size=(4, 6)) > 0.3
    a = hm.render(xy, vis, 32, 1.5)
    b = hm.render_tf(xy, vis, 32, 1.5).numpy()
    assert b.shape == a.shape
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_peak_refinement_beats_plain_argmax():
    rng = np.random.default_rng(3)
    xy = _points(rng, 100, 0.1)
    h = hm.render(xy[:, None], np.ones((100, 1), bool), 64, 2.0)
    plain, _ = hm.decode_peak(h, refine=False)
    refined, _ = hm.decode_peak(h)
    assert np.abs(refined - xy[:, None]).mean() < 0.05 * np.abs(plain - xy[:, None]).mean()


def test_invalid_sigma():
    with pytest.raises(ValueError, match="sigma"):
        hm.render(np.zeros((1, 2)), np.ones(1, bool), 8, 0.0)


def test_tf_peak_decoder_matches_numpy_decoder():
    from pipeline.heatmaps import decode_peak_tf

    rng = np.random.default_rng(7)
    xy = rng.uniform(0.05, 0.95, (3, 5, 2))
    vis = np.ones((3, 5), bool)
    maps = hm.render(xy, vis, 32, 1.7) * rng.uniform(0.5, 1.0, (3, 1, 1, 5)) + rng.uniform(0, 0.02, (3, 32, 32, 5))
    ref, ref_conf = hm.decode_peak(maps)
    got, conf = decode_peak_tf(maps.astype(np.float32))
    np.testing.assert_allclose(got.numpy(), ref, atol=2e-5)
    np.testing.assert_allclose(conf.numpy(), ref_conf, rtol=1e-6)
    # clean Gaussians away from the border decode to their centres
    clean, _ = decode_peak_tf(hm.render(xy, vis, 32, 1.7))
    inner = np.all((xy > 2 / 32) & (xy < 30 / 32), axis=-1)
    assert np.abs(clean.numpy() - xy)[inner].max() * 32 < 1e-3


def _decode_one(m: np.ndarray) -> tuple[float, float, float]:
    """Reference for one (S, S) map, written out pixel by pixel: arg-max, then one Newton step on the
    log-map where the peak is inside and the log-map is concave there, the step clipped to 1 px."""
    s = m.shape[0]
    r, c = divmod(int(np.argmax(m)), s)
    dx = dy = 0.0
    if 0 < r < s - 1 and 0 < c < s - 1:
        lg = np.log(np.maximum(m[r - 1:r + 2, c - 1:c + 2].astype(np.float64), 1e-10))
        gx, gy = (lg[1, 2] - lg[1, 0]) / 2, (lg[2, 1] - lg[0, 1]) / 2
        hxx, hyy = lg[1, 2] - 2 * lg[1, 1] + lg[1, 0], lg[2, 1] - 2 * lg[1, 1] + lg[0, 1]
        hxy = (lg[2, 2] - lg[2, 0] - lg[0, 2] + lg[0, 0]) / 4
        det = hxx * hyy - hxy ** 2
        if hxx < 0 and det > 0:
            dx = float(np.clip(-(hyy * gx - hxy * gy) / det, -1, 1))
            dy = float(np.clip(-(hxx * gy - hxy * gx) / det, -1, 1))
    return (c + 0.5 + dx) / s, (r + 0.5 + dy) / s, float(m[r, c])


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_peak_decoder_matches_a_per_map_reference(dtype):
    rng = np.random.default_rng(11)
    maps = rng.random((2, 3, 12, 12, 4)).astype(dtype)
    maps[0, 0, 0, 5, 0] = maps[1, 2, 11, 11, 3] = maps[0, 1, 6, 0, 2] = 2.0  # peaks on the border: no step
    maps[1, 1, 4:7, 4:7, 1] = np.array([[1, 2, 1], [2, 3, 2], [1, 2, 1]], dtype)  # a clean concave peak
    xy, conf = hm.decode_peak(maps)
    assert xy.shape == (2, 3, 4, 2) and conf.shape == (2, 3, 4)
    for i, j, k in np.ndindex(2, 3, 4):
        x, y, peak = _decode_one(maps[i, j, ..., k])
        assert xy[i, j, k] == pytest.approx((x, y), abs=1e-12) and conf[i, j, k] == peak
    assert xy[0, 0, 0, 0] == 5.5 / 12 and xy[1, 2, 3, 1] == 11.5 / 12  # border peaks stay on their pixel centres
    assert xy[1, 1, 1] == pytest.approx((5.5 / 12, 5.5 / 12), abs=1e-12)  # symmetric peak: no step


def test_render_matches_the_gaussian_formula_in_both_dtypes():
    """float32 targets are the separable Gaussian to float32 precision; float16 targets are exactly
    those rounded to float16 (the values zeroed before the cast round to 0 anyway)."""
    rng = np.random.default_rng(3)
    xy = rng.uniform(-0.1, 1.1, (6, 5, 2))
    vis = rng.uniform(size=(6, 5)) > 0.3
    s, sigma = 64, 2.0
    y_centre = (np.arange(s) + 0.5)[None, :, None, None]  # pixel-centre y of each row (axis 1)
    x_centre = (np.arange(s) + 0.5)[None, None, :, None]  # pixel-centre x of each column (axis 2)
    px, py = xy[..., 0][:, None, None, :] * s, xy[..., 1][:, None, None, :] * s
    want = np.exp(-((x_centre - px) ** 2 + (y_centre - py) ** 2) / (2 * sigma**2)) * vis[:, None, None, :]
    h32 = hm.render(xy, vis, s, sigma)
    h16 = hm.render(xy, vis, s, sigma, dtype=np.float16)
    assert h32.shape == h16.shape == (6, s, s, 5) and h16.dtype == np.float16
    np.testing.assert_allclose(h32, want, rtol=1e-6, atol=1e-30)
    np.testing.assert_array_equal(h16, h32.astype(np.float16))
    assert np.all(h16[~np.broadcast_to(vis[:, None, None, :], h16.shape)] == 0)
