"""Training losses and the pixel-error metric (seed-001 objective), all computed in float32.

Legend: B batch, S heatmap side, K keypoints. Heatmaps (B, S, S, K); coords (B, 2K) normalised
``x0, y0, x1, y1, ...`` with -1 where a keypoint is not visible.

Total loss = focal(heatmaps) + lambda * masked_L1(coords), lambda = 5 in seed 001 (set through
``loss_weights`` at compile time).
"""

from __future__ import annotations

import keras
from keras import ops

_EPS = 1e-7


def visible_from_coords(coords_true):
    """(B, 2K) coords -> (B, K) float32 mask, 1 where the keypoint is visible (coords >= 0)."""
    c = ops.reshape(ops.cast(coords_true, "float32"), (ops.shape(coords_true)[0], -1, 2))
    return ops.cast(ops.all(c >= 0.0, axis=-1), "float32")


def focal_heatmap_loss(y_true, y_pred, alpha: float = 0.25, gamma: float = 2.0):
    """Focal binary cross-entropy with soft Gaussian targets, averaged over visible channels.

    Per pixel, with target t in [0, 1] and prediction p (sigmoid output):
        l = -[ alpha * t * (1 - p)^gamma * log(p) + (1 - alpha) * (1 - t) * p^gamma * log(1 - p) ]
    The pixel losses of one (image, keypoint) channel are SUMMED over its S x S pixels (normalising
    by the number of keypoints, not of pixels, as CornerNet does: a mean over the pixels would make
    the few peak pixels of a 64 x 64 map weigh ~4000x less, and the coordinate L1 would then drown
    the heatmap supervision); a channel counts only when its target map is not all zero (the
    keypoint is visible). The result is the mean over the counted channels of the batch, or 0 when
    there are none (never NaN).

    Args:
        y_true, y_pred: (B, S, S, K).
    Returns:
        scalar float32.
    """
    t = ops.cast(y_true, "float32")
    p = ops.clip(ops.cast(y_pred, "float32"), _EPS, 1.0 - _EPS)
    pos = alpha * t * ops.power(1.0 - p, gamma) * ops.log(p)
    neg = (1.0 - alpha) * (1.0 - t) * ops.power(p, gamma) * ops.log(1.0 - p)
    per_channel = -ops.sum(pos + neg, axis=(1, 2))  # (B, K)
    present = ops.cast(ops.max(t, axis=(1, 2)) > 0.0, "float32")
    count = ops.sum(present)
    return ops.sum(per_channel * present) / ops.maximum(count, 1.0)


def masked_l1_loss(y_true, y_pred):
    """Mean absolute error of normalised (x, y) over visible keypoints only (0 when none).

    Args:
        y_true: (B, 2K) targets, -1 where not visible; y_pred: (B, 2K).
    Returns:
        scalar float32: sum |dx| + |dy| over visible keypoints / (2 * number of visible keypoints).
    """
    t = ops.cast(y_true, "float32")
    p = ops.cast(y_pred, "float32")
    vis = visible_from_coords(t)
    mask = ops.reshape(ops.repeat(vis[..., None], 2, axis=-1), ops.shape(t))
    err = ops.abs(p - t) * mask
    return ops.sum(err) / ops.maximum(ops.sum(mask), 1.0)


def pixel_errors(y_true, y_pred, img_size: int):
    """Euclidean errors in model-input pixels: (B, K) float32 errors and (B, K) visibility mask."""
    t = ops.cast(y_true, "float32")
    p = ops.cast(y_pred, "float32")
    return _euclidean(ops.reshape(p - t, (ops.shape(t)[0], -1, 2)), visible_from_coords(t), img_size)


def _euclidean(diff, vis, img_size: int):
    """(B, K, 2) normalised differences -> (B, K) input-pixel distances (0 where not visible), and ``vis``."""
    d = diff * float(img_size)
    return ops.sqrt(ops.sum(d * d, axis=-1) + 1e-12) * vis, vis


@keras.saving.register_keras_serializable(package="keypoints")
class FocalHeatmapLoss(keras.losses.Loss):
    """Keras wrapper of :func:`focal_heatmap_loss` (batch-level mean over visible channels)."""

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, name: str = "focal_heatmap_loss", **kwargs):
        kwargs.pop("dtype", None)
        super().__init__(name=name, dtype="float32", **kwargs)
        self.alpha = float(alpha)
        self.gamma = float(gamma)

    def call(self, y_true, y_pred):
        return focal_heatmap_loss(y_true, y_pred, self.alpha, self.gamma)

    def get_config(self):
        config = super().get_config()
        config.update({"alpha": self.alpha, "gamma": self.gamma})
        return config


@keras.saving.register_keras_serializable(package="keypoints")
class MaskedL1Loss(keras.losses.Loss):
    """Keras wrapper of :func:`masked_l1_loss`."""

    def __init__(self, name: str = "masked_l1_loss", **kwargs):
        kwargs.pop("dtype", None)
        super().__init__(name=name, dtype="float32", **kwargs)

    def call(self, y_true, y_pred):
        return masked_l1_loss(y_true, y_pred)


def peak_pixel_errors(heat_true, heat_pred, img_size: int):
    """Errors of the arg-max + log-quadratic peak decoder (the default at inference), in input pixels.

    Attached to the ``heatmaps`` output, a metric sees only heatmap targets, so the true position is
    decoded from the rendered Gaussian target the same way (exact for a Gaussian whose peak pixel is
    not on the map's border); a keypoint counts as visible where its target peaks above 0.5.
    Returns (B, K) float32 errors (0 where not visible) and (B, K) visibility mask.
    """
    from pipeline.heatmaps import decode_peak_tf

    xy_true, peak = decode_peak_tf(heat_true)
    xy_pred, _ = decode_peak_tf(heat_pred)
    return _euclidean(xy_pred - xy_true, ops.cast(peak > 0.5, "float32"), img_size)


class _VisibleKeypointMean(keras.metrics.Metric):
    """Epoch mean of a per-keypoint value over visible keypoints; subclasses give the value.

    ``decoder``: ``coords`` (attach to the coords output: its SoftArgMax coordinates) or ``peak``
    (attach to the heatmaps output: :func:`peak_pixel_errors`).
    """

    def __init__(self, img_size: int = 128, name: str = "visible_mean", decoder: str = "coords", **kwargs):
        kwargs.pop("dtype", None)
        super().__init__(name=name, dtype="float32", **kwargs)
        if decoder not in ("coords", "peak"):
            raise ValueError(f"decoder must be 'coords' or 'peak'. Received: decoder={decoder!r}")
        self.img_size = int(img_size)
        self.decoder = decoder
        self.total = self.add_variable(shape=(), initializer="zeros", name="total", dtype="float32")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count", dtype="float32")

    def value(self, err):
        """(B, K) pixel errors -> (B, K) values to average."""
        raise NotImplementedError

    def update_state(self, y_true, y_pred, sample_weight=None):
        errors = peak_pixel_errors if self.decoder == "peak" else pixel_errors
        err, vis = errors(y_true, y_pred, self.img_size)
        self.total.assign_add(ops.sum(self.value(err) * vis))
        self.count.assign_add(ops.sum(vis))

    def result(self):
        return self.total / ops.maximum(self.count, 1.0)

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)

    def get_config(self):
        return {"img_size": self.img_size, "name": self.name, "decoder": self.decoder}


@keras.saving.register_keras_serializable(package="keypoints")
class PixelError(_VisibleKeypointMean):
    """Mean Euclidean error of visible keypoints in model-input pixels, accumulated over an epoch.

    Attached to the ``coords`` output it is logged as ``coords_px_error`` (``val_coords_px_error``); with
    ``decoder="peak"`` on the ``heatmaps`` output as ``heatmaps_peak_px_error``.
    """

    def __init__(self, img_size: int = 128, name: str | None = None, decoder: str = "coords", **kwargs):
        super().__init__(img_size=img_size, name=name or ("peak_px_error" if decoder == "peak" else "px_error"),
                         decoder=decoder, **kwargs)

    def value(self, err):
        return err


@keras.saving.register_keras_serializable(package="keypoints")
class PCK(_VisibleKeypointMean):
    """Fraction of visible keypoints within ``threshold_px`` model-input pixels, over an epoch.

    Attached to ``coords`` as ``PCK(2.0)`` it is logged as ``coords_pck_2px`` (``val_coords_pck_2px``).
    """

    def __init__(self, threshold_px: float = 2.0, img_size: int = 128, name: str | None = None,
                 decoder: str = "coords", **kwargs):
        self.threshold_px = float(threshold_px)
        prefix = "peak_pck" if decoder == "peak" else "pck"
        super().__init__(img_size=img_size, name=name or f"{prefix}_{threshold_px:g}px", decoder=decoder, **kwargs)

    def value(self, err):
        return ops.cast(err <= self.threshold_px, "float32")

    def get_config(self):
        return super().get_config() | {"threshold_px": self.threshold_px}
