"""The second look: the model again, on a crop re-centred on the first estimate and magnified.

The first pass sees the object wherever it sits in the fixed crop, at the scale of that crop. Once
the first pass has placed it (the vertices projected under the fitted pose, else the confident
detections), a second window centred on it and ``zoom`` times smaller puts ``zoom`` times more
input pixels on every edge of it, and a model that is off by a fraction of one of its pixels is off
by ``1 / zoom`` as much in the image. The window is magnified until the object fills a share of it
(:func:`fill_share`): ``FILL``, or less where the model was never trained on objects that large (the
95th percentile of the objects' extents in its training arrays, times the largest scale of its
geometric augmentation), so that the magnified object stays within the sizes the model has seen. It
is never magnified past one original pixel per input pixel. The pose (``pipeline.pose``) is then
fitted again. With test-time turns, each vertex has several detections per look, and the second
look's alone vote: with rot8 on the benchmark model that beat letting the first look's vote as well
(0.53 against 0.59 px mean on its 300 held-out renders, 0.47 against 0.49 px on 1,000 others), unless
the two looks' poses disagree (their vertices a median ``DISAGREEMENT`` model px or more apart): then
neither look is trusted alone, both vote, and the first look's pose is a candidate beside those drawn
from the votes (:func:`refit`). With one detection per vertex and look, both looks
always vote (alone, the second look's 11 gave 0.97 against 0.89 px). The first look places the
window, and an image keeps its result where the second fit fails. Where the first look fitted no
pose, the window is centred on its confident detections alone, which are often only part of the
object (most such objects straddle the edge of the fixed crop), so it is magnified less: that part
fills at most ``UNPOSED_FILL`` of it, leaving room for the vertices the first look did not see;
where no pose comes of that look either, the image is looked at once more at the posed share.
"""

from __future__ import annotations

import numpy as np

from pipeline.geometry import Geometry

FILL = 0.9  # the largest share of the second window (per axis) the object's extent may fill
UNPOSED_FILL = 0.6  # the same for an image without a first-look pose (its confident detections' extent)
EXTENT_PERCENTILE = 95.0  # of the training objects' extents: how large an object the model has seen
DISAGREEMENT = 3.0  # model-input px: the looks' poses disagree when their vertices lie this far apart (median)
LOOKS = ("auto", "off")


def object_extent(coords: np.ndarray, percentile: float = EXTENT_PERCENTILE) -> float | None:
    """The ``percentile`` of the objects' extents in ``coords`` (N, 2K) normalised, -1 where not visible:
    per sample, the larger side of the visible keypoints' bounding box, as a share of the crop side.
    None without a sample of two or more visible keypoints. Stored in the model sidecar by training."""
    xy = np.asarray(coords, np.float64).reshape(len(coords), -1, 2)
    vis = (xy >= 0.0).all(-1)
    keep = vis.sum(1) >= 2
    if not keep.any():
        return None
    lo, hi = bounds(xy[keep], vis[keep])
    return float(np.percentile((hi - lo).max(1), percentile))


def bounds(points: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image, the corners (lo, hi) (N, 2) of the bounding box of ``points`` (N, K, 2) where ``mask``
    (N, K); +inf / -inf for an image with no such point."""
    return (np.where(mask[..., None], points, np.inf).min(1), np.where(mask[..., None], points, -np.inf).max(1))


def fill_share(meta: dict | None) -> tuple[float, str]:
    """(the share of the second window the object may fill, why): ``FILL``, or the training objects'
    extent (sidecar ``objects.extent``) times the largest scale of the geometric augmentation
    (``1 + scale_range`` when it was on) where that is smaller."""
    meta = meta or {}
    extent = (meta.get("objects") or {}).get("extent")
    if extent is None:
        return FILL, f"{FILL:g} (the model's sidecar gives no training object extent)"
    t = meta.get("train") or {}
    scale = 1.0 + max(0.0, float(t.get("scale_range") or 0.0)) if float(t.get("affine_prob") or 0.0) > 0 else 1.0
    seen = float(extent) * scale
    why = f"training objects' extent {float(extent):.2f} x largest augmentation scale {scale:g} = {seen:.2f}"
    return (FILL, f"{FILL:g} ({why} reaches it)") if seen >= FILL else (seen, f"{seen:.2f} ({why})")


def look_fills(fill: float, posed: np.ndarray) -> np.ndarray:
    """(N,) shares of the second window the first estimate's extent may fill: ``fill`` for images whose
    first look fitted a pose (``posed`` (N,)), at most :data:`UNPOSED_FILL` for the others."""
    return np.where(np.asarray(posed, bool), float(fill), min(float(fill), UNPOSED_FILL))


def look_boxes(geometry: Geometry, sizes: np.ndarray, points: np.ndarray, mask: np.ndarray,
               fill) -> tuple[np.ndarray, np.ndarray]:
    """Second-look windows: (boxes (N, 4) original px, zooms (N,)).

    Each image's window is the geometry's crop window, centred on the bounding box of its ``points``
    (N, K, 2) original px where ``mask`` (N, K), and magnified until that bounding box fills ``fill``
    (one share, or (N,) shares) of it, but never below 1 nor past one original pixel per model-input
    pixel. Images without such points keep the crop window, zoom 1.
    """
    sizes = np.where(np.asarray(sizes) > 0, sizes, 1)
    base = geometry.crop_box(sizes)
    side = base[:, 2:] - base[:, :2]
    m = np.asarray(mask, bool) & np.isfinite(points).all(-1)
    lo, hi = bounds(points, m)
    has = m.any(1)
    lo, hi = np.where(has[:, None], lo, base[:, :2]), np.where(has[:, None], hi, base[:, 2:])
    centre, extent = 0.5 * (lo + hi), hi - lo
    fit = fill * np.min(side / np.maximum(extent, 1e-9), axis=1)
    sharpest = np.maximum(1.0, side.min(1) / geometry.input_size)
    zooms = np.where(has, np.clip(fit, 1.0, sharpest), 1.0)
    return geometry.look_box(sizes, centre, zooms), zooms


def final_votes(first, second, first_to_orig, second_to_orig, use_turns: bool, both: bool = False):
    """The votes for the pose refitted after the second look (see the module docstring): the second
    look's own when test-time turns give several per vertex (unless ``both``), else both looks'
    (second look first). Same layout as :func:`votes_of`."""
    turns = use_turns and second.turn_xy is not None
    looks = [(second, second_to_orig)] + ([] if turns and not both else [(first, first_to_orig)])
    v = [votes_of(p, to_orig, turns) for p, to_orig in looks]
    return tuple(np.concatenate([a[j] for a in v], axis=1 if j < 2 else 0) for j in range(3))


def refit(cam, first, second, xy: np.ndarray, pose_info: list, boxes: np.ndarray, geometry: Geometry,
          min_confidence: float, use_turns: bool) -> tuple[np.ndarray, list, np.ndarray]:
    """The pose fitted again once the second look (``second``, predicted on ``boxes``) has been taken.

    ``first``: the first look's predictions; ``xy`` (N, K, 2) normalised and ``pose_info`` its result
    (:func:`pipeline.pose.refine_keypoints` records). The votes are those of :func:`final_votes`; where
    the second look's own (with turns) put the vertices ``DISAGREEMENT`` model px or more from ``xy``
    (median), both looks' votes are fitted instead, the first look's pose among the candidates.
    Returns (xy, pose_info, looks disagreed (N,)): new arrays, the records of refitted images marked
    ``looks`` 2 (and ``looks_disagreed``); images whose fit fails keep their first-look result.
    """
    from pipeline.pose import refine_keypoints

    safe = np.where(first.sizes > 0, first.sizes, 1)
    both = np.flatnonzero(first.ok & second.ok)
    seeds = Geometry.from_box(second.xy, boxes)
    turns = use_turns and second.turn_xy is not None  # several votes per vertex and look, as in final_votes

    def fit(idx, both_looks=False):
        votes = final_votes(first, second, lambda a: geometry.from_normalised(a, safe),
                            lambda a: Geometry.from_box(a, boxes), use_turns, both_looks)
        earlier = [[(p["rvec"], p["tvec"])] if p and p.get("refined") else []
                   for p in (pose_info[i] for i in idx)] if both_looks else None
        return refine_keypoints(cam, seeds[idx], second.confidence[idx], first.sizes[idx], min_confidence,
                                geometry.input_px_scale, (votes[0][idx], votes[1][idx], votes[2]), earlier)

    out, info = fit(both)
    xy, pose_info, disagreed = np.array(xy, copy=True), list(pose_info), np.zeros(len(xy), bool)
    fitted = np.array([i["refined"] for i in info], bool)
    new = geometry.to_normalised(out, safe[both])
    far = fitted & (disagreement(geometry.to_input(xy[both]), geometry.to_input(new)) >= DISAGREEMENT)
    if far.any() and turns:  # the looks disagree: both looks' votes decide (without turns they already did)
        out_b, info_b = fit(both[far], both_looks=True)
        new[far] = geometry.to_normalised(out_b, safe[both[far]])
        for j, i in zip(np.flatnonzero(far), info_b):
            info[j] = {**i, "looks_disagreed": True}
        disagreed[both[far]] = True
    for j, i in enumerate(both):
        if info[j]["refined"]:
            xy[i] = new[j]
            pose_info[i] = {**info[j], "looks": 2}
    return xy, pose_info, disagreed


def disagreement(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """(N,) median distance between each image's keypoints ``first`` and ``second`` (N, K, 2), in
    their units: how far apart the two looks' poses put the object."""
    return np.median(np.linalg.norm(np.asarray(second, np.float64) - first, axis=-1), axis=1)


def votes_of(preds, to_orig, use_turns: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One look's pose votes: every test-time turn's own peaks when there are turns (and ``use_turns``),
    else the merged detections; (xy (N, M, 2) original px, confidence (N, M), vertex (M,))."""
    if use_turns and preds.turn_xy is not None:
        n, t, k = preds.turn_conf.shape
        return to_orig(preds.turn_xy.reshape(n, t * k, 2)), preds.turn_conf.reshape(n, t * k), np.tile(np.arange(k), t)
    n, k = preds.confidence.shape
    return to_orig(preds.xy), preds.confidence, np.arange(k)
