"""Test-time augmentation: the turn conventions, the merge, the auto rule, and files end to end."""

import numpy as np
import pytest
from PIL import Image

from pipeline.geometry import Geometry
from pipeline.heatmaps import decode_peak, render
from pipeline.infer import decode, predict_files
from pipeline.tta import check_tta, merge_outputs, resolve_tta, tta_angles, turned_inputs


@pytest.mark.parametrize("k", [-1, 0, 1, 2, 3, 5])
def test_rot90_follows_numpy_pixel_permutation(k):
    s = 6
    for r in range(s):
        for c in range(s):
            img = np.zeros((1, s, s, 1))
            img[0, r, c, 0] = 1.0
            rr, cc = np.argwhere(np.rot90(img, k, axes=(1, 2))[0, ..., 0])[0]
            moved = Geometry.rot90([(c + 0.5) / s, (r + 0.5) / s], k)
            np.testing.assert_allclose(moved, [(cc + 0.5) / s, (rr + 0.5) / s], atol=1e-12)


def test_merge_turns_back_and_averages():
    rng = np.random.default_rng(0)
    b, s, k = 3, 8, 2
    maps = rng.uniform(size=(b, s, s, k)).astype(np.float32)
    xy = rng.uniform(size=(b, k, 2))
    out = {"heatmaps": np.concatenate([np.rot90(maps, t, axes=(1, 2)) for t in range(4)]),
           "coords": np.concatenate([Geometry.rot90(xy, t).reshape(b, -1) for t in range(4)])}
    merged = merge_outputs(out, "rot4")
    np.testing.assert_allclose(merged["heatmaps"], maps, atol=1e-6)
    np.testing.assert_allclose(merged["coords"], xy.reshape(b, -1), atol=1e-6)
    # A prediction that ignores the input averages over the four turns of its point: the centre.
    still = {"heatmaps": np.repeat(maps[:1], 4, 0), "coords": np.tile([[0.3, 0.2]], (4, 1))}
    np.testing.assert_allclose(merge_outputs(still, "rot4")["coords"], [[0.5, 0.5]], atol=1e-6)
    x = rng.integers(0, 255, (b, s, s, 3), dtype=np.uint8)
    assert turned_inputs(x, "rot4").shape == (4 * b, s, s, 3)
    np.testing.assert_array_equal(turned_inputs(x, "rot4")[2 * b:3 * b], x[:, ::-1, ::-1])
    np.testing.assert_array_equal(turned_inputs(x, "none"), x)
    np.testing.assert_allclose(merge_outputs({"heatmaps": maps, "coords": xy.reshape(b, -1)}, "none")["coords"],
                               xy.reshape(b, -1), atol=1e-6)


def test_auto_needs_full_circle_rotations():
    full = {"augment": True, "affine_prob": 0.5, "rotate_max_deg": 180.0}
    assert resolve_tta("auto", full) == "rot8"
    assert resolve_tta("auto", {**full, "rotate_max_deg": 30.0}) == "none"
    assert resolve_tta("auto", {**full, "affine_prob": 0.0}) == "none"
    assert resolve_tta("auto", {**full, "augment": False}) == "none"
    assert resolve_tta("auto", None) == "none"
    assert resolve_tta("rot4", None) == "rot4" and resolve_tta("none", full) == "none"
    assert resolve_tta("rot12", full) == "rot12"
    for bad in ("flip", "rot6", "rot0", "rot68", "rot", "rot8x"):
        with pytest.raises(ValueError, match="tta must be auto, none or rotN"):
            resolve_tta(bad, full)
        with pytest.raises(ValueError, match=bad):
            check_tta(bad)


class _SpotFinder:
    """An exactly rotation-equivariant stand-in model: the keypoint is the brightness centroid."""

    def predict_on_batch(self, x):
        w = np.asarray(x, np.float64).sum(-1)
        s = w.shape[1]
        centres = (np.arange(s) + 0.5) / s
        tot = np.maximum(w.sum((1, 2)), 1e-12)  # a padded, all-black batch row has no centroid
        xy = np.stack([(w.sum(1) * centres).sum(1) / tot, (w.sum(2) * centres).sum(1) / tot], -1)[:, None]
        return {"heatmaps": render(xy, np.ones(xy.shape[:2], bool), s // 2, 1.0), "coords": xy.reshape(-1, 2)}


def test_predict_files_rot4_gives_the_equivariant_answer(tmp_path):
    g = Geometry(canvas=(64, 64), crop=(64, 64), input_size=32, heatmap_size=16)
    rng = np.random.default_rng(1)
    files, want = [], []
    for i in range(5):
        img = np.zeros((64, 64, 3), np.uint8)
        r, c = rng.integers(8, 54, 2)
        img[r:r + 4, c:c + 4] = 255  # a 4x4 spot: 2x2 input pixels after the 2x reduction
        Image.fromarray(img).save(tmp_path / f"{i}.png")
        files.append(tmp_path / f"{i}.png")
        want.append([(c + 2) / 64, (r + 2) / 64])
    plain = predict_files(_SpotFinder(), files, g, batch_size=2, progress=False, decoder="softargmax")
    turned = predict_files(_SpotFinder(), files, g, batch_size=2, progress=False, decoder="softargmax", tta="rot4")
    np.testing.assert_allclose(plain.xy[:, 0], want, atol=1e-6)
    np.testing.assert_allclose(turned.xy, plain.xy, atol=1e-6)
    peak = predict_files(_SpotFinder(), files, g, batch_size=2, progress=False, tta="rot4")
    np.testing.assert_allclose(peak.xy[:, 0], want, atol=2e-3)
    # Resampled turns too: the bilinear centroid of a turned spot moves by the rotation.
    eight = predict_files(_SpotFinder(), files, g, batch_size=2, progress=False, decoder="softargmax", tta="rot8")
    np.testing.assert_allclose(eight.xy[:, 0], want, atol=1e-3)


def test_auto_tta_follows_quarter_turn_training():
    from pipeline.tta import resolve_tta

    assert resolve_tta("auto", {"turn_prob": 0.75, "affine_prob": 0.0}) == "rot4"
    assert resolve_tta("auto", {"turn_prob": 0.75, "augment": False}) == "none"
    assert resolve_tta("auto", {"turn_prob": 0.0, "affine_prob": 0.0}) == "none"


def test_angles_hold_the_quarter_turns_identity_first():
    assert tta_angles("none") == (0.0,)
    assert tta_angles("rot4") == (0.0, -90.0, -180.0, -270.0)
    a = tta_angles("rot8")
    assert len(a) == 8 and a[0] == 0.0 and set(tta_angles("rot4")) <= set(a)
    np.testing.assert_allclose(np.diff(a), -45.0)


@pytest.mark.parametrize("k", [-1, 0, 1, 2, 3, 5])
def test_rotate_by_quarter_angles_is_rot90(k):
    xy = np.random.default_rng(k % 4).uniform(size=(5, 2))
    np.testing.assert_array_equal(Geometry.rotate(xy, -90.0 * k), Geometry.rot90(xy, k))
    # the general formula agrees with the exact one
    np.testing.assert_allclose(Geometry.rotate(xy, -90.0 * k + 1e-9), Geometry.rot90(xy, k), atol=1e-9)


def test_rotate_matches_the_training_warp():
    import tensorflow as tf

    from pipeline.augment import warp_affine

    rng = np.random.default_rng(3)
    xy = rng.uniform(0.3, 0.7, size=(2, 4, 2)).astype(np.float32)
    deg = np.array([37.0, -123.0], np.float32)
    one, zero = tf.ones([2]), tf.zeros([2])
    _, moved, vis = warp_affine(tf.zeros([2, 16, 16, 1]), xy, tf.ones([2, 4], bool), np.radians(deg), one, zero,
                                zero)
    assert bool(tf.reduce_all(vis))
    want = np.stack([Geometry.rotate(xy[i], deg[i]) for i in range(2)])
    np.testing.assert_allclose(moved.numpy(), want, atol=1e-6)


def test_resampled_turns_move_a_spot_with_the_convention():
    s = 33
    img = np.zeros((1, s, s, 1), np.uint8)
    img[0, 8:11, 20:23] = 200  # a 3x3 spot centred at pixel (21, 9): normalised (21.5, 9.5) / 33
    at = np.array([21.5, 9.5]) / s
    x = turned_inputs(img, "rot8")
    assert x.shape == (8, s, s, 1) and x.dtype == np.float32
    np.testing.assert_array_equal(x[2], np.rot90(img, 1, axes=(1, 2))[0])  # -90 degrees: one exact quarter turn
    centres = (np.arange(s) + 0.5) / s
    for i, deg in enumerate(tta_angles("rot8")):
        w = x[i, ..., 0].astype(np.float64)
        got = [(w.sum(0) * centres).sum() / w.sum(), (w.sum(1) * centres).sum() / w.sum()]
        np.testing.assert_allclose(got, Geometry.rotate(at, deg), atol=0.05 / s)


def test_resampled_merge_recovers_the_peak_and_weights_by_coverage():
    b, sh, k = 2, 32, 3
    rng = np.random.default_rng(5)
    xy = rng.uniform(0.3, 0.7, size=(b, k, 2))
    vis = np.ones((b, k), bool)
    angles = tta_angles("rot8")
    out = {"heatmaps": np.concatenate([render(Geometry.rotate(xy, a), vis, sh, 1.5) for a in angles]),
           "coords": np.concatenate([Geometry.rotate(xy, a).reshape(b, -1) for a in angles])}
    merged = merge_outputs(out, "rot8")
    assert merged["heatmaps"].shape == (b, sh, sh, k)
    np.testing.assert_allclose(merged["coords"], xy.reshape(b, -1), atol=1e-6)
    # The averaged maps hold the mode, moved a little by the resampling; the merged peaks are exact.
    peak, conf = decode_peak(merged["heatmaps"])
    np.testing.assert_allclose(peak, xy, atol=0.15 / sh)
    assert np.abs(peak - xy).max() > 0.01 / sh
    assert np.all(conf > 0.85)  # resampling flattens the peak a little
    np.testing.assert_allclose(merged["peak_xy"], xy, atol=1e-6)
    xy_dec, conf_dec = decode(merged, "peak")
    np.testing.assert_array_equal(xy_dec, merged["peak_xy"])
    np.testing.assert_array_equal(conf_dec, conf)
    assert "peak_xy" not in merge_outputs({key: v[::2] for key, v in out.items()}, "rot4")
    # One turn with its peak on another keypoint's place is left out of the mean.
    wrong = {key: v.copy() for key, v in out.items()}
    swapped = Geometry.rotate(xy[:, [1, 0, 2]], angles[3])
    wrong["heatmaps"][3 * b:4 * b] = render(swapped, vis, sh, 1.5)
    np.testing.assert_allclose(merge_outputs(wrong, "rot8")["peak_xy"], xy, atol=1e-6)
    # Each turn's own peaks, turned back, are kept for the pose fit: the swapped turn shows the swap.
    turns = merge_outputs(wrong, "rot8")
    assert turns["turn_xy"].shape == (b, 8, k, 2) and turns["turn_conf"].shape == (b, 8, k)
    np.testing.assert_allclose(np.delete(turns["turn_xy"], 3, axis=1), np.repeat(xy[:, None], 7, 1), atol=1e-6)
    np.testing.assert_allclose(turns["turn_xy"][:, 3], xy[:, [1, 0, 2]], atol=1e-6)
    assert np.all(turns["turn_conf"] > 0.85)  # the heights at the pixels nearest the off-grid peaks
    assert "turn_xy" not in merge_outputs({key: v[:b] for key, v in out.items()}, "none")
    # Maps that are 1 everywhere stay 1 everywhere, corners included: the average divides by coverage.
    flat = {"heatmaps": np.ones((8 * b, sh, sh, k), np.float32), "coords": out["coords"]}
    np.testing.assert_allclose(merge_outputs(flat, "rot8")["heatmaps"], 1.0, atol=1e-5)
