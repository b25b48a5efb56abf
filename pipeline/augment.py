"""Augmentation of training batches (pure TensorFlow functions).

Photometric functions take and return (B, H, W, 3) float32 RGB in 0..255 and draw independent
random parameters per image; they leave keypoints where they are. :func:`random_affine` moves the
image and its keypoints together (in-plane rotation, scale, shift: what a camera roll or a change of
range or pointing does), in the continuous corner-origin convention of ``pipeline.geometry``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import tensorflow as tf


@dataclass
class AugmentConfig:
    """Probabilities and ranges of the photometric augmentations."""

    blur_prob: float = 0.3
    blur_sigma_max: float = 1.5  # input pixels
    darken_prob: float = 0.5
    darken_min: float = 0.5  # brightness factor drawn in [darken_min, 1]
    contrast_prob: float = 0.0
    contrast_range: float = 0.3  # factor in [1 - r, 1 + r]
    noise_prob: float = 0.0
    noise_std_max: float = 8.0  # in 0..255 units
    affine_prob: float = 0.0
    rotate_max_deg: float = 180.0  # in-plane rotation drawn in [-max, max]
    scale_range: float = 0.2  # zoom factor drawn log-uniformly in [1/(1 + r), 1 + r]
    shift_max: float = 0.1  # shift drawn in [-max, max] of the image side, per axis
    turn_prob: float = 0.0  # probability of 1, 2 or 3 exact quarter turns (drawn uniformly)


def _drawn(prob, batch):
    """(B,) bool: the images of the batch that an augmentation applied with probability ``prob`` changes."""
    return tf.random.uniform([batch]) < prob


def _per_image(prob, batch):
    return tf.cast(_drawn(prob, batch), tf.float32)[:, None, None, None]


def gaussian_blur(images, prob: float, sigma_max: float, radius: int = 3):
    """Separable Gaussian blur with sigma ~ U(0.3, sigma_max) for a random ``prob`` share of images.

    Each image channel gets its own kernel (a unit impulse where the image is not blurred), so the
    batch is blurred by two depthwise convolutions over the channels of all images side by side:
    measured 2.7x less CPU time than shifted multiply-adds (16 x 128 x 128 x 3: 4.5 vs 12.2 ms).
    """
    b = tf.shape(images)[0]
    h, w, c = images.shape[1], images.shape[2], images.shape[3]
    sigma = tf.random.uniform([b], 0.3, max(sigma_max, 0.31))
    offs = tf.range(-radius, radius + 1, dtype=tf.float32)
    k = tf.exp(-tf.square(offs)[None, :] / (2.0 * tf.square(sigma)[:, None]))
    k = k / tf.reduce_sum(k, axis=1, keepdims=True)  # (B, 2r+1)
    k = tf.where(_drawn(prob, b)[:, None], k, tf.one_hot(tf.fill([b], radius), 2 * radius + 1))
    taps = tf.transpose(tf.repeat(k, c, axis=0))  # (2r+1, B*C): channel j of image i is column i*C + j
    x = tf.pad(images, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    x = tf.reshape(tf.transpose(x, [1, 2, 0, 3]), [1, h + 2 * radius, w + 2 * radius, -1])
    x = tf.nn.depthwise_conv2d(x, taps[None, :, :, None], [1, 1, 1, 1], "VALID")  # along x
    x = tf.nn.depthwise_conv2d(x, taps[:, None, :, None], [1, 1, 1, 1], "VALID")  # along y
    return tf.transpose(tf.reshape(x, [h, w, b, c]), [2, 0, 1, 3])


def darken(images, prob: float, factor_min: float):
    """Multiply brightness by a factor in [factor_min, 1] for a random ``prob`` share of images."""
    b = tf.shape(images)[0]
    f = tf.random.uniform([b, 1, 1, 1], factor_min, 1.0)
    m = _per_image(prob, b)
    return images * (m * f + (1.0 - m))


def contrast(images, prob: float, spread: float):
    """Scale deviations from each image's mean by a factor in [1 - spread, 1 + spread]."""
    b = tf.shape(images)[0]
    f = tf.random.uniform([b, 1, 1, 1], 1.0 - spread, 1.0 + spread)
    mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
    m = _per_image(prob, b)
    return tf.clip_by_value(images + m * (f - 1.0) * (images - mean), 0.0, 255.0)


def noise(images, prob: float, std_max: float):
    """Additive Gaussian noise with std ~ U(0, std_max)."""
    b = tf.shape(images)[0]
    std = tf.random.uniform([b, 1, 1, 1], 0.0, std_max) * _per_image(prob, b)
    return tf.clip_by_value(images + std * tf.random.normal(tf.shape(images)), 0.0, 255.0)


def augment_batch(images, cfg: AugmentConfig):
    """Apply the enabled augmentations in a fixed order: blur, darken, contrast, noise."""
    x = tf.cast(images, tf.float32)
    if cfg.blur_prob > 0:
        x = gaussian_blur(x, cfg.blur_prob, cfg.blur_sigma_max)
    if cfg.darken_prob > 0:
        x = darken(x, cfg.darken_prob, cfg.darken_min)
    if cfg.contrast_prob > 0:
        x = contrast(x, cfg.contrast_prob, cfg.contrast_range)
    if cfg.noise_prob > 0:
        x = noise(x, cfg.noise_prob, cfg.noise_std_max)
    return x


def affine_params(batch, prob: float, rotate_max_deg: float, scale_range: float, shift_max: float):
    """Random per-image (angle rad, scale, shift_x, shift_y (fractions of the side), drawn); identity
    where not drawn (``drawn`` False)."""
    drawn = _drawn(prob, batch)
    on = tf.cast(drawn, tf.float32)
    ang = tf.random.uniform([batch], -1.0, 1.0) * (rotate_max_deg * math.pi / 180.0) * on
    log_s = tf.math.log(1.0 + scale_range)
    scale = tf.exp(tf.random.uniform([batch], -log_s, log_s) * on)
    shift = tf.random.uniform([batch, 2], -shift_max, shift_max) * on[:, None]
    return ang, scale, shift[:, 0], shift[:, 1], drawn


def warp_affine(images, coords, visible, ang, scale, sx, sy):
    """Rotate by ``ang`` and scale by ``scale`` about the image centre, then shift by (sx, sy) * side.

    images (B, S, S, C) float32; coords (B, K, 2) normalised, visible (B, K) bool. Returns the warped
    images (zero outside the source), the moved coordinates, and the visibility, cleared for
    keypoints that leave ``[0, 1)``; coordinates are -1 where not visible (the dataset convention).
    """
    cos, sin = tf.cos(ang), tf.sin(ang)
    # forward, normalised: p' = 0.5 + scale * R (p - 0.5) + shift (Geometry.rotate is its NumPy twin)
    d = coords - 0.5
    fx = 0.5 + scale[:, None] * (cos[:, None] * d[..., 0] - sin[:, None] * d[..., 1]) + sx[:, None]
    fy = 0.5 + scale[:, None] * (sin[:, None] * d[..., 0] + cos[:, None] * d[..., 1]) + sy[:, None]
    moved = tf.stack([fx, fy], axis=-1)
    inside = tf.reduce_all((moved >= 0.0) & (moved < 1.0), axis=-1)
    new_vis = tf.logical_and(visible, inside)
    new_coords = tf.where(new_vis[..., None], moved, -1.0)
    return warp_images(images, ang, scale, sx, sy), new_coords, new_vis


def warp_images(images, ang, scale, sx, sy):
    """The image part of :func:`warp_affine`: (B, S, S, C) float32, bilinear, zero outside the source.

    Works on any square grid whose pixels tile ``[0, 1)`` (model input, heatmaps) with the same
    normalised parameters.
    """
    s = tf.cast(tf.shape(images)[1], tf.float32)
    cos, sin = tf.cos(ang), tf.sin(ang)
    # inverse, in pixel-centre index coordinates (p = idx + 0.5), as ImageProjectiveTransformV3 wants:
    # idx_in = A idx_out + b with A = R(-ang) / scale and b = (c - 0.5) - A (c + shift * S - 0.5), c = S / 2
    inv = 1.0 / scale
    a00, a01, a10, a11 = cos * inv, sin * inv, -sin * inv, cos * inv
    c = s / 2.0
    ox, oy = c + sx * s - 0.5, c + sy * s - 0.5
    b0 = (c - 0.5) - (a00 * ox + a01 * oy)
    b1 = (c - 0.5) - (a10 * ox + a11 * oy)
    zeros = tf.zeros_like(ang)
    transforms = tf.stack([a00, a01, b0, a10, a11, b1, zeros, zeros], axis=1)
    warped = tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=tf.shape(images)[1:3], fill_value=0.0,
        interpolation="BILINEAR", fill_mode="CONSTANT")
    warped.set_shape(images.shape)
    return warped


def rotate_images(images, deg: float):
    """Every image of a (B, S, S, C) batch rotated by ``deg`` degrees about its centre (see
    :meth:`pipeline.geometry.Geometry.rotate`), resampled bilinearly, zero outside the source."""
    images = tf.convert_to_tensor(images, tf.float32)
    b = tf.shape(images)[0]
    zero = tf.zeros([b])
    return warp_images(images, tf.fill([b], math.radians(deg)), tf.ones([b]), zero, zero)


def random_affine(images, coords, visible, cfg: AugmentConfig):
    """:func:`warp_affine` with parameters drawn per image from ``cfg`` (``affine_prob`` of the batch).

    Only the drawn images are resampled (the others are returned as they are, bit for bit), which
    halves the cost at ``affine_prob`` 0.5.
    """
    ang, scale, sx, sy, drawn = affine_params(tf.shape(images)[0], cfg.affine_prob, cfg.rotate_max_deg,
                                              cfg.scale_range, cfg.shift_max)
    idx = tf.where(drawn)[:, 0]
    pick = lambda t: tf.gather(t, idx)  # noqa: E731
    w_img, w_xy, w_vis = warp_affine(pick(images), pick(coords), pick(visible), pick(ang), pick(scale),
                                     pick(sx), pick(sy))
    at = idx[:, None]
    return (tf.tensor_scatter_nd_update(images, at, w_img), tf.tensor_scatter_nd_update(coords, at, w_xy),
            tf.tensor_scatter_nd_update(visible, at, w_vis))


def quarter_turns(images, coords, k):
    """Turn each image ``k`` quarter turns (per image, 0..3) the way ``np.rot90(image, k)`` does.

    images (B, S, S, C); coords (B, K, 2) normalised, -1 where not visible; k (B,) int32. Exact pixel
    permutations, no resampling; the coordinates follow :meth:`pipeline.geometry.Geometry.rot90`
    (``x, y -> y, 1 - x`` per turn) and keypoints stay visible (a turn keeps the square crop).
    """
    turned = [images]
    xy = [coords]
    for _ in range(3):
        turned.append(tf.reverse(tf.transpose(turned[-1], [0, 2, 1, 3]), axis=[1]))
        xy.append(tf.stack([xy[-1][..., 1], 1.0 - xy[-1][..., 0]], axis=-1))
    out = tf.gather(tf.stack(turned, axis=1), k, batch_dims=1)
    moved = tf.gather(tf.stack(xy, axis=1), k, batch_dims=1)
    return out, tf.where(coords >= 0.0, moved, -1.0)


def random_quarter_turns(images, coords, prob: float):
    """:func:`quarter_turns` by 1-3 turns for a ``prob`` share of the batch (drawn per image)."""
    b = tf.shape(images)[0]
    k = tf.random.uniform([b], 1, 4, dtype=tf.int32) * tf.cast(_drawn(prob, b), tf.int32)
    return quarter_turns(images, coords, k)
