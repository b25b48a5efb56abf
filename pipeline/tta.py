"""Test-time augmentation: predict on turned copies of each input and average back.

A model trained with in-plane rotations has seen each image at many angles. Its predictions of the
same keypoint on turned copies carry partly independent errors, and the mean of the heatmaps, turned
back, has a sharper, better-placed peak. ``rotN`` uses N evenly spaced angles (N a multiple of 4).
The quarter turns among them are exact pixel permutations (:meth:`Geometry.rot90`); the others are
resampled bilinearly (:func:`pipeline.augment.rotate_images`, :meth:`Geometry.rotate`) and lose the
corners of the square, so each heatmap is turned back together with the share of it that saw the
image, and the maps are averaged weighted by that coverage. Bilinear resampling moves a sub-pixel
peak (by 0.15 input px on average for one 45-degree turn of 64-px maps at sigma 1.5, 0.07 px after
the rot8 average), so with resampled turns the averaged maps only choose the mode: the peak of each
turn is decoded in its own frame, turned back exactly, and the peaks within ``PEAK_RADIUS`` of the
mode are averaged (``peak_xy``).

Legend: B batch, S input side, Sh heatmap side, K keypoints, T turns.
"""

from __future__ import annotations

import functools
import re

import numpy as np

from pipeline.geometry import Geometry

TTA_MODES = ("auto", "none", "rot4", "rot8", "rot12", "rot16")  # rotN: any multiple of 4 up to 64
MAX_TURNS = 64
PEAK_RADIUS = 1.0  # heatmap pixels: a turn's peak farther than this from the averaged maps' mode is left out


def tta_angles(mode: str) -> tuple[float, ...]:
    """The turns of ``mode`` in degrees (:meth:`Geometry.rotate` convention), the identity first."""
    if mode == "none":
        return (0.0,)
    m = re.fullmatch(r"rot(\d+)", mode)
    n = int(m.group(1)) if m else 0
    if not (m and 4 <= n <= MAX_TURNS and n % 4 == 0):
        raise ValueError(f"tta must be auto, none or rotN with N a multiple of 4 up to {MAX_TURNS} "
                         f"(e.g. {', '.join(TTA_MODES[2:])}). Received: tta={mode!r}")
    return tuple(-360.0 * j / n for j in range(n))


def check_tta(mode: str) -> str:
    """``mode`` if it names a test-time augmentation (``auto`` included), else ValueError."""
    if mode != "auto":
        tta_angles(mode)
    return mode


def resolve_tta(mode: str, train: dict | None) -> str:
    """``auto`` -> ``rot8`` when the training config drew full-circle rotations, ``rot4`` when it drew
    only quarter turns, else ``none``.

    ``train``: the ``train`` section of a model sidecar (a TrainConfig dict), or None when unknown.
    On the built-in accuracy benchmark rot8 cut the held-out mean error by a further 5-7 % over rot4
    at twice the model work; rot12 and rot16 gained less again (see the README).
    """
    if check_tta(mode) != "auto":
        return mode
    t = train or {}
    if not t.get("augment", True):
        return "none"
    if float(t.get("affine_prob", 0.0)) > 0.0 and float(t.get("rotate_max_deg", 0.0)) >= 180.0:
        return "rot8"
    return "rot4" if float(t.get("turn_prob", 0.0)) > 0.0 else "none"


def _quarter(deg: float) -> int | None:
    """np.rot90 turns equal to a rotation by ``deg`` (None unless a multiple of 90 degrees)."""
    return int(round(-deg / 90.0)) % 4 if deg % 90.0 == 0.0 else None


def _rotate(x: np.ndarray, deg: float) -> np.ndarray:
    k = _quarter(deg)
    if k is not None:
        return np.rot90(x, k, axes=(1, 2))
    from pipeline.augment import rotate_images

    return rotate_images(x, deg).numpy()


def turned_inputs(x: np.ndarray, mode: str) -> np.ndarray:
    """(B, S, S, C) -> (T*B, S, S, C): the batch once per turn of ``mode``, turn-major.

    Keeps the dtype when every turn is a quarter turn, else float32 (resampled pixels).
    """
    angles = tta_angles(mode)
    if any(_quarter(a) is None for a in angles):
        x = np.asarray(x, np.float32)
    return np.concatenate([_rotate(x, a) for a in angles])


def merge_outputs(out: dict, mode: str) -> dict:
    """Model outputs on :func:`turned_inputs` -> outputs for the original batch.

    heatmaps (T*B, Sh, Sh, K) are turned back and averaged, each pixel over the turns that covered
    it; coords (T*B, 2K) normalised are turned back and averaged. Returns float32 ``heatmaps``
    (B, Sh, Sh, K) and ``coords`` (B, 2K); with more than one turn, each turn's own sub-pixel peaks,
    turned back, as ``turn_xy`` (B, T, K, 2) normalised with their heights ``turn_conf`` (B, T, K);
    and where ``mode`` resamples, ``peak_xy`` (B, K, 2) normalised: the sub-pixel peaks, free of the
    resampling (see the module docstring).
    """
    angles = tta_angles(mode)
    t = len(angles)
    h = np.asarray(out["heatmaps"], np.float32)
    b = h.shape[0] // t
    h = h.reshape((t, b) + h.shape[1:])
    c = np.asarray(out["coords"], np.float64).reshape(t, b, -1, 2)
    total = np.zeros(h.shape[1:], np.float64)
    xy = np.zeros(c.shape[1:], np.float64)
    for i, a in enumerate(angles):
        total += _rotate(h[i], -a)
        xy += Geometry.rotate(c[i], -a)
    maps = (total / np.maximum(_coverage(mode, h.shape[2]), 1e-6)).astype(np.float32)
    merged = {"heatmaps": maps, "coords": (xy / t).reshape(b, -1).astype(np.float32)}
    if t > 1:
        from pipeline.heatmaps import decode_peak

        peaks = [decode_peak(h[i]) for i in range(t)]
        pts = np.stack([Geometry.rotate(p[0], -a) for p, a in zip(peaks, angles)])  # (T, B, K, 2)
        merged["turn_xy"] = pts.transpose(1, 0, 2, 3)
        merged["turn_conf"] = np.stack([p[1] for p in peaks], axis=1)
        if any(_quarter(a) is None for a in angles):
            merged["peak_xy"] = _agreeing_peaks(pts, maps)
    return merged


@functools.lru_cache(maxsize=8)
def _coverage(mode: str, side: int) -> np.ndarray:
    """(1, side, side, 1): how many turns of ``mode``, turned back, cover each heatmap pixel (the same
    for every batch, so computed once)."""
    ones = np.ones((1, side, side, 1), np.float32)
    return sum(_rotate(ones, -a).astype(np.float64) for a in tta_angles(mode))


def _agreeing_peaks(pts: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """Mean of the turns' own sub-pixel peaks ``pts`` (T, B, K, 2), turned back, that lie within
    PEAK_RADIUS of the peak of ``maps`` (that peak itself where none does); returns (B, K, 2) normalised."""
    from pipeline.heatmaps import decode_peak

    mode_xy, _ = decode_peak(maps)
    near = np.linalg.norm(pts - mode_xy, axis=-1) * maps.shape[1] <= PEAK_RADIUS
    n = near.sum(0)
    mean = (pts * near[..., None]).sum(0) / np.maximum(n, 1)[..., None]
    return np.where(n[..., None] > 0, mean, mode_xy)
