"""The heatmap codec: Gaussian targets from normalised keypoints, and coordinates back from heatmaps.

Legend: N images, K keypoints, S heatmap side (pixels). Heatmaps are (N, S, S, K), rows = y.
Keypoints are normalised (x, y) in [0, 1] over the crop (see ``pipeline.geometry``). Heatmap pixel
(row r, col c) has its centre at normalised ``((c + 0.5) / S, (r + 0.5) / S)``: the same
corner-origin convention as every other space, so encoding followed by decoding is unbiased.

The same functions build training targets (numpy here, TensorFlow in ``render_tf``) and decode
predictions, so the conventions cannot drift apart.
"""

from __future__ import annotations

import numpy as np


def pixel_centres(size: int) -> np.ndarray:
    """Normalised centres of ``size`` heatmap pixels, (S,) float64."""
    return (np.arange(size, dtype=np.float64) + 0.5) / size


def render(xy, visible, size: int, sigma: float, dtype=np.float32) -> np.ndarray:
    """Gaussian heatmaps with peak 1 at each visible keypoint; an all-zero map where not visible.

    Args:
        xy: (..., K, 2) normalised (x, y).
        visible: (..., K) bool.
        size: heatmap side S.
        sigma: Gaussian standard deviation in heatmap pixels.
    Returns:
        (..., S, S, K) heatmaps of ``dtype``.
    """
    if sigma <= 0:
        raise ValueError(f"sigma must be positive. Received: sigma={sigma}")
    xy = np.asarray(xy, dtype=np.float64)
    vis = np.asarray(visible, dtype=bool)
    c = pixel_centres(size) * size  # heatmap-pixel centres
    px = np.where(vis, xy[..., 0], 0.0) * size
    py = np.where(vis, xy[..., 1], 0.0) * size
    # 1-D factors in float32, laid out (..., S, K) so the outer product is written in the output's
    # own layout: converting a transposed float64 array to float16 cost 7x the arithmetic.
    gx = np.exp(-((c[:, None] - px[..., None, :]) ** 2) / (2 * sigma**2)).astype(np.float32)  # (..., S, K)
    gy = np.exp(-((c[:, None] - py[..., None, :]) ** 2) / (2 * sigma**2)).astype(np.float32)
    gx *= vis[..., None, :]
    maps = gy[..., :, None, :] * gx[..., None, :, :]  # (..., S_y, S_x, K)
    if np.dtype(dtype) == np.float16:
        # Values that round to 0 in float16 anyway are zeroed first: numpy converts them 10x slower.
        maps *= maps > 2.0**-25
    return maps.astype(dtype, copy=False)


def render_tf(xy, visible, size: int, sigma: float):
    """TensorFlow twin of :func:`render` for on-the-fly targets inside ``tf.data``.

    Args:
        xy: (..., K, 2) float normalised coordinates; visible: (..., K) bool or 0/1.
    Returns:
        (..., S, S, K) float32.
    """
    import tensorflow as tf

    xy = tf.cast(xy, tf.float32)
    vis = tf.cast(visible, tf.float32)
    c = (tf.range(size, dtype=tf.float32) + 0.5)
    px = xy[..., 0] * size * vis
    py = xy[..., 1] * size * vis
    inv = 1.0 / (2.0 * sigma * sigma)
    gx = tf.exp(-tf.square(c - px[..., None]) * inv) * vis[..., None]  # (..., K, S)
    gy = tf.exp(-tf.square(c - py[..., None]) * inv)
    maps = gy[..., :, None] * gx[..., None, :]  # (..., K, Sy, Sx)
    rank = len(maps.shape)
    perm = list(range(rank - 3)) + [rank - 2, rank - 1, rank - 3]
    return tf.transpose(maps, perm)


def soft_argmax(heatmaps, beta: float) -> np.ndarray:
    """Reference soft-argmax: (..., S, S, K) -> (..., K, 2) normalised (x, y).

    ``p = softmax(beta * h)`` over the S x S pixels, then the expected pixel centre.
    """
    h = np.asarray(heatmaps, dtype=np.float64)
    s = h.shape[-2]
    z = beta * h
    z = z - z.max(axis=(-3, -2), keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=(-3, -2), keepdims=True)
    c = pixel_centres(s)
    x = np.einsum("...yxk,x->...k", p, c)
    y = np.einsum("...yxk,y->...k", p, c)
    return np.stack([x, y], axis=-1)


def _newton_step(at, inner, where, clip):
    """Sub-pixel offsets (dx, dy) of one Newton step on the log-heatmap around the arg-max pixel.

    ``at(dr, dc)`` reads the log-heatmap at the arg-max shifted by (dr, dc); ``inner`` is where the
    arg-max is not on the border. Array-library neutral (``where``/``clip`` from numpy or TF), so the
    numpy and TF decoders share the maths. No step where the Hessian is not negative definite;
    steps are clipped to one pixel.
    """
    l0 = at(0, 0)
    gx = 0.5 * (at(0, 1) - at(0, -1))
    gy = 0.5 * (at(1, 0) - at(-1, 0))
    hxx = at(0, 1) - 2 * l0 + at(0, -1)
    hyy = at(1, 0) - 2 * l0 + at(-1, 0)
    hxy = 0.25 * (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1))
    det = hxx * hyy - hxy * hxy
    ok = (hxx < 0) & (det > 0) & inner
    safe = where(ok, det, 1.0)
    dx = clip(where(ok, -(hyy * gx - hxy * gy) / safe, 0.0), -1.0, 1.0)
    dy = clip(where(ok, -(hxx * gy - hxy * gx) / safe, 0.0), -1.0, 1.0)
    return dx, dy


def decode_peak(heatmaps, refine: bool = True, eps: float = 1e-10):
    """Arg-max decoding with sub-pixel refinement by a quadratic fit to the log-heatmap.

    A Gaussian is exactly a quadratic in log space, so one Newton step from the arg-max pixel
    (gradient and Hessian from central differences, as in DARK) recovers its centre. The step is
    skipped where the Hessian is not negative definite and clipped to one pixel.

    Args:
        heatmaps: (..., S, S, K).
    Returns:
        xy: (..., K, 2) normalised (x, y); confidence: (..., K) peak heatmap value.
    """
    h = np.asarray(heatmaps)
    if h.dtype.kind != "f":
        h = h.astype(np.float64)
    lead = h.shape[:-3]
    s, k = h.shape[-2], h.shape[-1]
    h = h.reshape((-1, s, s, k))
    idx = h.reshape(h.shape[0], s * s, k).argmax(axis=1)  # (M, K), row-major pixel index
    m_i, k_i = np.indices(idx.shape)
    r, c = np.divmod(idx, s)
    conf = h[m_i, r, c, k_i].astype(np.float64)
    dx = np.zeros(r.shape)
    dy = np.zeros(r.shape)
    if refine and s >= 3:  # the log is needed at the 3x3 pixels around each peak only
        rr, cc = np.clip(r, 1, s - 2), np.clip(c, 1, s - 2)

        def at(dr, dc):
            return np.log(np.maximum(h[m_i, rr + dr, cc + dc, k_i].astype(np.float64), eps))

        dx, dy = _newton_step(at, (r == rr) & (c == cc), np.where, np.clip)
    xy = np.stack([(c + 0.5 + dx) / s, (r + 0.5 + dy) / s], axis=-1)
    return xy.reshape(lead + (k, 2)), conf.reshape(lead + (k,))


def decode_peak_tf(heatmaps, eps: float = 1e-10):
    """TensorFlow twin of :func:`decode_peak` (same arg-max, Newton step, guards and clipping).

    Used inside the model's metrics, so training reports the error of the decoder used at inference.

    Args:
        heatmaps: (B, S, S, K).
    Returns:
        xy: (B, K, 2) float32 normalised (x, y); confidence: (B, K) peak heatmap value.
    """
    import tensorflow as tf

    h = tf.transpose(tf.cast(heatmaps, tf.float32), [0, 3, 1, 2])  # (B, K, S, S)
    s = int(h.shape[-1])
    flat = tf.reshape(h, tf.concat([tf.shape(h)[:2], [s * s]], 0))
    idx = tf.argmax(flat, axis=-1, output_type=tf.int32)
    conf = tf.reduce_max(flat, axis=-1)
    r, c = idx // s, idx % s
    dx = dy = tf.zeros_like(conf)
    if s >= 3:
        logm = tf.math.log(tf.maximum(h, eps))
        rr, cc = tf.clip_by_value(r, 1, s - 2), tf.clip_by_value(c, 1, s - 2)

        def at(dr, dc):
            return tf.gather_nd(logm, tf.stack([rr + dr, cc + dc], axis=-1), batch_dims=2)

        dx, dy = _newton_step(at, tf.equal(r, rr) & tf.equal(c, cc), tf.where, tf.clip_by_value)
    x = (tf.cast(c, tf.float32) + 0.5 + dx) / s
    y = (tf.cast(r, tf.float32) + 0.5 + dy) / s
    return tf.stack([x, y], axis=-1), conf
