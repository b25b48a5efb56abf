"""Augmentation: geometric warps move pixels and keypoints together; photometric ones; the LR schedule."""

import math

import numpy as np
import tensorflow as tf

from pipeline import augment
from pipeline.augment import AugmentConfig, random_affine, warp_affine
from pipeline.callbacks import cosine_lr
from pipeline.heatmaps import render


def _blob_images(xy, size=96, sigma=2.5):
    """One image channel per keypoint: a Gaussian blob centred on it (the heatmap codec's renderer)."""
    vis = np.ones(xy.shape[:2], bool)
    return render(xy, vis, size, sigma)


def test_warp_moves_image_content_and_keypoints_together():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0.3, 0.7, (4, 3, 2))
    images = _blob_images(xy)
    ang = tf.constant([0.0, 0.7, -2.5, 3.1])
    scale = tf.constant([1.0, 1.15, 0.85, 1.0])
    sx = tf.constant([0.0, 0.05, -0.08, 0.0])
    sy = tf.constant([0.0, -0.03, 0.06, 0.1])
    warped, moved, vis = warp_affine(tf.constant(images), tf.constant(xy, tf.float32),
                                     tf.ones((4, 3), tf.bool), ang, scale, sx, sy)
    assert vis.numpy().all()
    # the identity warp is exact
    np.testing.assert_allclose(warped.numpy()[0], images[0], atol=1e-5)
    np.testing.assert_allclose(moved.numpy()[0], xy[0], atol=1e-6)
    # each blob's intensity centroid lands where its keypoint was moved (in image pixels)
    w = warped.numpy() / warped.numpy().sum(axis=(1, 2), keepdims=True)
    centres = (np.arange(96) + 0.5) / 96
    found = np.stack([np.einsum("bhwk,w->bk", w, centres), np.einsum("bhwk,h->bk", w, centres)], axis=-1)
    err_px = np.abs(found - moved.numpy()) * 96
    assert err_px.max() < 0.01, err_px
    # a half-pixel slip of the index convention would show here
    assert not np.allclose(moved.numpy()[1], xy[1], atol=0.01)
    # the known forward map: a 90-degree turn about the centre sends (0.6, 0.5) to (0.5, 0.6)
    _, m90, _ = warp_affine(tf.zeros((1, 8, 8, 1)), tf.constant([[[0.6, 0.5]]]), tf.ones((1, 1), tf.bool),
                            tf.constant([math.pi / 2]), tf.constant([1.0]), tf.constant([0.0]), tf.constant([0.0]))
    np.testing.assert_allclose(m90.numpy()[0, 0], [0.5, 0.6], atol=1e-6)


def test_keypoints_leaving_the_frame_become_invisible_with_minus_one_coords():
    xy = tf.constant([[[0.9, 0.5], [0.5, 0.5], [-1.0, -1.0]]])
    vis = tf.constant([[True, True, False]])
    _, moved, new_vis = warp_affine(tf.zeros((1, 16, 16, 3)), xy, vis, tf.constant([0.0]), tf.constant([1.0]),
                                    tf.constant([0.2]), tf.constant([0.0]))
    assert new_vis.numpy().tolist() == [[False, True, False]]
    np.testing.assert_allclose(moved.numpy()[0, 1], [0.7, 0.5], atol=1e-6)
    np.testing.assert_allclose(moved.numpy()[0, [0, 2]], -1.0)  # -1 wherever not visible


def test_random_affine_prob_zero_is_identity_and_prob_one_changes_images():
    rng = np.random.default_rng(1)
    xy = rng.uniform(0.4, 0.6, (8, 2, 2))
    images = tf.constant(_blob_images(xy, 32))
    vis = tf.ones((8, 2), tf.bool)
    same, c0, _ = random_affine(images, tf.constant(xy, tf.float32), vis, AugmentConfig(affine_prob=0.0))
    np.testing.assert_allclose(same.numpy(), images.numpy(), atol=1e-5)
    np.testing.assert_allclose(c0.numpy(), xy, atol=1e-6)
    tf.random.set_seed(3)
    moved, c1, _ = random_affine(images, tf.constant(xy, tf.float32), vis, AugmentConfig(affine_prob=1.0))
    assert np.abs(c1.numpy() - xy).max() > 0.01
    assert np.abs(moved.numpy() - images.numpy()).max() > 0.1


def test_cosine_lr_shape():
    assert cosine_lr(0.0, 1e-3, 1.0, 10) == 0.0
    assert math.isclose(cosine_lr(0.5, 1e-3, 1.0, 10), 5e-4)
    assert math.isclose(cosine_lr(1.0, 1e-3, 1.0, 10), 1e-3)
    assert math.isclose(cosine_lr(5.5, 1e-3, 1.0, 10), 5e-4)
    assert cosine_lr(10.0, 1e-3, 1.0, 10) < 1e-12
    assert cosine_lr(12.0, 1e-3, 1.0, 10) < 1e-12


def test_gaussian_blur_matches_a_numpy_separable_blur():
    rng = np.random.default_rng(4)
    images = rng.uniform(0, 255, (3, 20, 24, 3)).astype(np.float32)
    tf.random.set_seed(7)
    out = augment.gaussian_blur(tf.constant(images), 1.0, 1.5).numpy()
    tf.random.set_seed(7)  # the same draws: sigma per image first
    sigma = tf.random.uniform([3], 0.3, 1.5).numpy()
    for i in range(3):
        t = np.arange(-3, 4)
        k = np.exp(-t**2 / (2 * sigma[i] ** 2))
        k /= k.sum()
        pad = np.pad(images[i], ((3, 3), (3, 3), (0, 0)), mode="reflect")
        rows = sum(k[j] * pad[:, j:j + 24] for j in range(7))
        ref = sum(k[j] * rows[j:j + 20] for j in range(7))
        np.testing.assert_allclose(out[i], ref, rtol=1e-5, atol=1e-3)
    assert np.abs(out - images).max() > 1.0  # it did blur


def test_gaussian_blur_prob_zero_is_identity_and_blur_keeps_a_flat_image():
    images = np.random.default_rng(5).uniform(0, 255, (4, 16, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(augment.gaussian_blur(tf.constant(images), 0.0, 1.5).numpy(), images, atol=1e-4)
    flat = np.full((2, 16, 16, 3), 77.0, np.float32)
    np.testing.assert_allclose(augment.gaussian_blur(tf.constant(flat), 1.0, 1.5).numpy(), flat, rtol=1e-5)


def test_augment_batch_shapes_ranges_and_brightness():
    images = tf.constant(np.full((8, 16, 16, 3), 200.0, np.float32))
    cfg = augment.AugmentConfig(blur_prob=1.0, darken_prob=1.0, darken_min=0.5, contrast_prob=1.0, noise_prob=0.0)
    out = augment.augment_batch(images, cfg).numpy()
    assert out.shape == (8, 16, 16, 3)
    means = out.mean(axis=(1, 2, 3))
    assert (means >= 100.0 - 1e-3).all() and (means <= 200.0 + 1e-3).all() and means.std() > 1.0  # per-image factors


def test_random_affine_warps_only_the_drawn_images():
    rng = np.random.default_rng(2)
    xy = rng.uniform(0.3, 0.7, (16, 3, 2)).astype(np.float32)
    images = tf.constant(_blob_images(xy, 32))
    vis = tf.ones((16, 3), tf.bool)
    cfg = AugmentConfig(affine_prob=0.5)
    tf.random.set_seed(11)
    out, moved, new_vis = random_affine(images, tf.constant(xy), vis, cfg)
    tf.random.set_seed(11)  # the same draws, warping every image with them
    ang, scale, sx, sy, drawn = augment.affine_params(16, 0.5, cfg.rotate_max_deg, cfg.scale_range, cfg.shift_max)
    ref, ref_xy, ref_vis = warp_affine(images, tf.constant(xy), vis, ang, scale, sx, sy)
    drawn = drawn.numpy()
    assert 0 < drawn.sum() < 16
    np.testing.assert_array_equal(out.numpy()[~drawn], images.numpy()[~drawn])  # untouched, bit for bit
    np.testing.assert_array_equal(moved.numpy()[~drawn], xy[~drawn])
    np.testing.assert_allclose(out.numpy()[drawn], ref.numpy()[drawn], atol=1e-5)
    np.testing.assert_allclose(moved.numpy()[drawn], ref_xy.numpy()[drawn], atol=1e-6)
    np.testing.assert_array_equal(new_vis.numpy(), ref_vis.numpy())


def test_quarter_turns_match_numpy_rot90_and_geometry():
    """Per-image turns equal np.rot90 on the image and Geometry.rot90 on its keypoints; -1 stays -1."""
    from pipeline.augment import quarter_turns
    from pipeline.geometry import Geometry

    rng = np.random.default_rng(0)
    b, s, k = 8, 16, 3
    images = rng.uniform(0, 255, (b, s, s, 3)).astype(np.float32)
    xy = rng.uniform(0, 1, (b, k, 2))
    xy[::2, 1] = -1.0  # not visible
    turns = np.arange(b) % 4
    out, moved = quarter_turns(tf.constant(images), tf.constant(xy, tf.float32), tf.constant(turns, tf.int32))
    for i, t in enumerate(turns):
        np.testing.assert_array_equal(out.numpy()[i], np.rot90(images[i], t, axes=(0, 1)))
        want = np.where(xy[i] >= 0, Geometry.rot90(xy[i], t), -1.0)
        np.testing.assert_allclose(moved.numpy()[i], want, atol=1e-6)


def test_turn_prob_draws_turns_in_the_training_pipeline(tmp_path):
    """--turn-prob 1 turns every training image (a bright corner moves) and keeps its targets on it."""
    from pipeline.augment import random_quarter_turns

    images = np.zeros((64, 8, 8, 1), np.float32)
    images[:, 0, 0] = 1.0  # pixel (row 0, col 0): keypoint at normalised (1/16, 1/16)
    xy = np.full((64, 1, 2), 1 / 16, np.float32)
    out, moved = random_quarter_turns(tf.constant(images), tf.constant(xy), 1.0)
    out, moved = out.numpy(), moved.numpy()
    assert not (out[:, 0, 0, 0] == 1.0).any()  # every image turned at least once
    for img, p in zip(out, moved[:, 0]):
        r, c = np.argwhere(img[..., 0] == 1.0)[0]
        np.testing.assert_allclose(p, [(c + 0.5) / 8, (r + 0.5) / 8], atol=1e-6)
    assert len({tuple(p) for p in moved[:, 0].round(4)}) == 3  # the three other corners all drawn
