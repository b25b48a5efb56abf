"""The second look: the model again, on a crop re-centred on the first estimate and magnified.

The first pass sees the object wherever it sits in the fixed crop, at the scale of that crop. Once
the first pass has placed it (the vertices projected under the fitted pose, else the confident
detections), a second window centred on it and ``zoom`` times smaller puts ``zoom`` times more
input pixels on every edge of it, and a model that is off by a fraction of one of its pixels is off
by ``1 / zoom`` as much in the image. The zoom stays within what training showed the model: the
largest scale of its geometric augmentation (``1 + scale_range``; no zoom, only re-centring, for a
model trained without it), and no more than keeps the object's extent within ``FILL`` of the
window. The pose (``pipeline.pose``) is then fitted again. With test-time turns, each vertex has
several detections per look, and the second look's alone vote: with rot8 on the benchmark model
that beat letting the first look's vote as well (0.53 against 0.59 px mean on its 300 held-out
renders, 0.47 against 0.49 px on 1,000 others). With one detection per vertex and look, both looks
vote (alone, the second look's 11 gave 0.97 against 0.89 px). The first look places the window, and
an image keeps its result where the second fit fails.
"""

from __future__ import annotations

import numpy as np

from pipeline.geometry import Geometry

FILL = 0.9  # the object's extent (per axis) stays within this share of the second window
LOOKS = ("auto", "off")


def max_zoom(train: dict | None) -> float:
    """The largest magnification the model was trained on: ``1 + scale_range`` of its geometric
    augmentation, 1 (re-centring only) when it drew none."""
    t = train or {}
    if float(t.get("affine_prob") or 0.0) <= 0.0:
        return 1.0
    return 1.0 + max(0.0, float(t.get("scale_range") or 0.0))


def look_boxes(geometry: Geometry, sizes: np.ndarray, points: np.ndarray, mask: np.ndarray,
               zoom: float) -> tuple[np.ndarray, np.ndarray]:
    """Second-look windows: (boxes (N, 4) original px, zooms (N,)).

    Each image's window is the geometry's crop window, centred on the bounding box of its ``points``
    (N, K, 2) original px where ``mask`` (N, K), and magnified by up to ``zoom`` while that bounding box
    fits ``FILL`` of it (never below 1). Images without such points keep the crop window, zoom 1.
    """
    sizes = np.where(np.asarray(sizes) > 0, sizes, 1)
    base = geometry.crop_box(sizes)
    side = base[:, 2:] - base[:, :2]
    m = np.asarray(mask, bool) & np.isfinite(points).all(-1)
    lo = np.where(m[..., None], points, np.inf).min(1)
    hi = np.where(m[..., None], points, -np.inf).max(1)
    has = m.any(1)
    lo, hi = np.where(has[:, None], lo, base[:, :2]), np.where(has[:, None], hi, base[:, 2:])
    centre, extent = 0.5 * (lo + hi), hi - lo
    fit = FILL * np.min(side / np.maximum(extent, 1e-9), axis=1)
    zooms = np.where(has, np.clip(fit, 1.0, max(1.0, zoom)), 1.0)
    return geometry.look_box(sizes, centre, zooms), zooms


def final_votes(first, second, first_to_orig, second_to_orig, use_turns: bool):
    """The votes for the pose refitted after the second look (see the module docstring): the second
    look's own when test-time turns give several per vertex, else both looks' (second look first).
    Same layout as :func:`votes_of`."""
    turns = use_turns and second.turn_xy is not None
    looks = [(second, second_to_orig)] + ([] if turns else [(first, first_to_orig)])
    v = [votes_of(p, to_orig, turns) for p, to_orig in looks]
    return tuple(np.concatenate([a[j] for a in v], axis=1 if j < 2 else 0) for j in range(3))


def votes_of(preds, to_orig, use_turns: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One look's pose votes: every test-time turn's own peaks when there are turns (and ``use_turns``),
    else the merged detections; (xy (N, M, 2) original px, confidence (N, M), vertex (M,))."""
    if use_turns and preds.turn_xy is not None:
        n, t, k = preds.turn_conf.shape
        return to_orig(preds.turn_xy.reshape(n, t * k, 2)), preds.turn_conf.reshape(n, t * k), np.tile(np.arange(k), t)
    n, k = preds.confidence.shape
    return to_orig(preds.xy), preds.confidence, np.arange(k)
