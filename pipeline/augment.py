"""Photometric augmentation of image batches (pure TensorFlow functions, no geometric changes).

All functions take and return (B, H, W, 3) float32 RGB in 0..255 and draw independent random
parameters per image, so keypoint targets stay valid. They are mapped over training batches only.
"""

from __future__ import annotations

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


def _per_image(prob, batch):
    return tf.cast(tf.random.uniform([batch]) < prob, tf.float32)[:, None, None, None]


def gaussian_blur(images, prob: float, sigma_max: float, radius: int = 3):
    """Separable Gaussian blur with sigma ~ U(0.3, sigma_max) for a random ``prob`` share of images."""
    b = tf.shape(images)[0]
    sigma = tf.random.uniform([b], 0.3, max(sigma_max, 0.31))
    offs = tf.range(-radius, radius + 1, dtype=tf.float32)
    w = tf.exp(-tf.square(offs)[None, :] / (2.0 * tf.square(sigma)[:, None]))
    w = w / tf.reduce_sum(w, axis=1, keepdims=True)  # (B, 2r+1)
    pad = tf.pad(images, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    h, wd = tf.shape(images)[1], tf.shape(images)[2]
    rows = tf.add_n([w[:, i, None, None, None] * pad[:, :, i:i + wd] for i in range(2 * radius + 1)])
    out = tf.add_n([w[:, i, None, None, None] * rows[:, i:i + h] for i in range(2 * radius + 1)])
    m = _per_image(prob, b)
    return m * out + (1.0 - m) * images


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
