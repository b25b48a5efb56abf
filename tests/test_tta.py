"""Test-time augmentation: the quarter-turn convention, the merge, the auto rule, and files end to end."""

import numpy as np
import pytest
from PIL import Image

from pipeline.geometry import Geometry
from pipeline.heatmaps import render
from pipeline.infer import predict_files
from pipeline.tta import merge_outputs, resolve_tta, turned_inputs


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
    assert resolve_tta("auto", full) == "rot4"
    assert resolve_tta("auto", {**full, "rotate_max_deg": 30.0}) == "none"
    assert resolve_tta("auto", {**full, "affine_prob": 0.0}) == "none"
    assert resolve_tta("auto", {**full, "augment": False}) == "none"
    assert resolve_tta("auto", None) == "none"
    assert resolve_tta("rot4", None) == "rot4" and resolve_tta("none", full) == "none"
    with pytest.raises(ValueError, match="tta must be one of"):
        resolve_tta("flip", full)


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


def test_auto_tta_follows_quarter_turn_training():
    from pipeline.tta import resolve_tta

    assert resolve_tta("auto", {"turn_prob": 0.75, "affine_prob": 0.0}) == "rot4"
    assert resolve_tta("auto", {"turn_prob": 0.75, "augment": False}) == "none"
    assert resolve_tta("auto", {"turn_prob": 0.0, "affine_prob": 0.0}) == "none"
