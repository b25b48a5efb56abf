"""Keypoint metrics (pure numpy) and the evaluation summary of ``use_vis.py``.

Legend: N images, K keypoints. ``pred`` and ``gt`` are (N, K, 2) (x, y) positions in ONE space
(model-input pixels for the 4SP keys, original pixels for ``original_px``); ``mask`` (N, K) bool
selects the keypoints that count: visible in the annotation AND inside the crop.

Definitions
-----------
- dx, dy: ``pred - gt`` per axis; MAE / RMSE per axis; Euclidean error ``d = |pred - gt|``.
- PCK(t): percent of counted keypoints with ``d <= t``.
- PCK AUC: the area under PCK(t) for t in [0, T], divided by T (so in [0, 1]). It has the closed
  form ``mean(max(0, 1 - d / T))`` (the integral of the empirical CDF), so no threshold grid is
  involved; T = 20 model-input pixels by default.
- bbox PCK(alpha): a keypoint is correct when ``d <= alpha * diag``, with ``diag`` the diagonal of
  the axis-aligned box around that image's counted GT keypoints (in the same space as ``d``).
  Images with fewer than 2 counted keypoints (diag 0) are left out of it and counted.
- visibility precision / recall / F1: predicted visibility (confidence >= threshold) against the
  GT visibility (same ``mask`` definition) over every keypoint of every annotated image.
"""

from __future__ import annotations

import numpy as np

PCK_THRESHOLDS_PX = (2, 5, 10, 15, 20)
BBOX_PCK_ALPHAS = (0.05, 0.1, 0.15, 0.2)
AUC_MAX_PX = 20.0


def _masked(pred, gt, mask):
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    mask = np.asarray(mask, bool)
    if pred.shape != gt.shape or pred.shape[:-1] != mask.shape:
        raise ValueError(f"Shapes disagree: pred {pred.shape}, gt {gt.shape}, mask {mask.shape}")
    return pred[mask], gt[mask]


def errors(pred, gt, mask) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dx, dy, d) of the counted keypoints, each (M,) float64, in the space of the inputs."""
    p, g = _masked(pred, gt, mask)
    dx, dy = p[:, 0] - g[:, 0], p[:, 1] - g[:, 1]
    return dx, dy, np.hypot(dx, dy)


def pck(dist, thresholds) -> dict:
    """{str(t): percent of ``dist <= t``}; NaN percentages when ``dist`` is empty."""
    d = np.asarray(dist, np.float64)
    return {_key(t): (float(np.mean(d <= t) * 100.0) if d.size else float("nan")) for t in thresholds}


def pck_auc(dist, max_threshold: float = AUC_MAX_PX) -> float:
    """Area under the PCK curve over [0, T], normalised to [0, 1]: ``mean(max(0, 1 - d / T))``."""
    d = np.asarray(dist, np.float64)
    if not d.size:
        return float("nan")
    return float(np.mean(np.clip(1.0 - d / max_threshold, 0.0, 1.0)))


def pck_curve(dist, max_threshold: float = AUC_MAX_PX, steps: int = 201) -> tuple[np.ndarray, np.ndarray]:
    """(thresholds (steps,), PCK percent (steps,)) for plotting."""
    t = np.linspace(0.0, max_threshold, steps)
    d = np.sort(np.asarray(dist, np.float64))
    frac = np.searchsorted(d, t, side="right") / max(d.size, 1)
    return t, frac * 100.0


def error_stats(dx, dy) -> dict:
    """MAE / RMSE per axis and Euclidean mean, median, P95, RMSE; NaN when empty."""
    dx, dy = np.asarray(dx, np.float64), np.asarray(dy, np.float64)
    d = np.hypot(dx, dy)
    if not d.size:
        nan = float("nan")
        return dict(mae_dx=nan, mae_dy=nan, rmse_dx=nan, rmse_dy=nan, euclidean_mean=nan,
                    euclidean_median=nan, euclidean_p95=nan, euclidean_rmse=nan)
    return dict(
        mae_dx=float(np.mean(np.abs(dx))),
        mae_dy=float(np.mean(np.abs(dy))),
        rmse_dx=float(np.sqrt(np.mean(dx**2))),
        rmse_dy=float(np.sqrt(np.mean(dy**2))),
        euclidean_mean=float(np.mean(d)),
        euclidean_median=float(np.median(d)),
        euclidean_p95=float(np.percentile(d, 95)),  # linear interpolation between order statistics
        euclidean_rmse=float(np.sqrt(np.mean(d**2))),
    )


def bbox_diagonals(gt, mask) -> np.ndarray:
    """(N,) diagonal of the box around each image's counted GT keypoints; 0 with < 2 keypoints."""
    gt, mask = np.asarray(gt, np.float64), np.asarray(mask, bool)
    big = np.where(mask[..., None], gt, np.nan)
    rows = mask.sum(1) >= 2
    big[~rows] = 0.0  # all-NaN rows would warn; their diagonal is 0 anyway
    diag = np.hypot(*(np.nanmax(big, axis=1) - np.nanmin(big, axis=1)).T)
    return np.where(rows, diag, 0.0)


def bbox_pck(pred, gt, mask, alphas=BBOX_PCK_ALPHAS) -> dict:
    """PCK normalised by the GT bounding-box diagonal: {"percent": {str(alpha): %}, "keypoints", "images_left_out"}."""
    pred, gt, mask = np.asarray(pred, np.float64), np.asarray(gt, np.float64), np.asarray(mask, bool)
    diag = bbox_diagonals(gt, mask)
    usable = mask & (diag > 0)[:, None]
    d = np.hypot(*(pred - gt).transpose(2, 0, 1))  # (N, K)
    ratio = (d / np.where(diag > 0, diag, 1.0)[:, None])[usable]
    return {
        "percent": {_key(a): (float(np.mean(ratio <= a) * 100.0) if ratio.size else float("nan")) for a in alphas},
        "keypoints": int(usable.sum()),
        "images_left_out": int(np.sum(mask.any(1) & (diag == 0))),
    }


def visibility_scores(pred_visible, gt_visible, rows=None) -> dict:
    """Precision, recall, F1 (and counts) of predicted vs GT visibility over (N, K) keypoints.

    ``rows`` (N,) bool selects the annotated images; precision/recall are NaN when undefined.
    """
    p, g = np.asarray(pred_visible, bool), np.asarray(gt_visible, bool)
    if rows is not None:
        p, g = p[np.asarray(rows, bool)], g[np.asarray(rows, bool)]
    tp, fp = int(np.sum(p & g)), int(np.sum(p & ~g))
    fn, tn = int(np.sum(~p & g)), int(np.sum(~p & ~g))
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
    acc = (tp + tn) / p.size if p.size else float("nan")
    return dict(precision=precision, recall=recall, f1=f1, accuracy=acc, tp=tp, fp=fp, fn=fn, tn=tn)


def threshold_sweep(confidence, gt_visible, rows=None, thresholds=None) -> dict:
    """Visibility F1 for a grid of confidence thresholds, and the best one: for choosing ``--vis-threshold``."""
    thresholds = np.round(np.arange(0.05, 0.96, 0.05), 2) if thresholds is None else thresholds
    conf = np.asarray(confidence, np.float64)
    f1 = {_key(t): visibility_scores(conf >= t, gt_visible, rows)["f1"] for t in thresholds}
    finite = {k: v for k, v in f1.items() if np.isfinite(v)}
    best = max(finite, key=finite.get) if finite else None
    return {"f1": f1, "best_threshold": float(best) if best is not None else None}


def per_keypoint(pred, gt, mask) -> list:
    """Per-keypoint count, mean, median and P95 Euclidean error (the space of the inputs)."""
    pred, gt, mask = np.asarray(pred, np.float64), np.asarray(gt, np.float64), np.asarray(mask, bool)
    d = np.hypot(*(pred - gt).transpose(2, 0, 1))
    out = []
    for k in range(mask.shape[1]):
        dk = d[mask[:, k], k]
        out.append({
            "keypoint": k,
            "count": int(dk.size),
            "mean": float(dk.mean()) if dk.size else None,
            "median": float(np.median(dk)) if dk.size else None,
            "p95": float(np.percentile(dk, 95)) if dk.size else None,
        })
    return out


def space_metrics(pred, gt, mask, thresholds=PCK_THRESHOLDS_PX, auc_max=AUC_MAX_PX) -> dict:
    """The error statistics, PCK and AUC of one coordinate space."""
    dx, dy, d = errors(pred, gt, mask)
    out = {"visible_keypoints_count": int(d.size), **error_stats(dx, dy)}
    out["pck_thresholds_px"] = [float(t) if not float(t).is_integer() else int(t) for t in thresholds]
    out["pck_percent"] = pck(d, thresholds)
    out["pck_auc"] = pck_auc(d, auc_max)
    out["pck_auc_max_px"] = float(auc_max)
    return out


def build_summary(*, pred_in, gt_in, pred_orig, gt_orig, gt_mask, has_gt, confidence, vis_threshold,
                  img_size, processed, extra=None) -> dict:
    """The evaluation summary: the 4SP keys (model-input pixels) first, then everything else.

    Args:
        pred_in, gt_in: (N, K, 2) model-input pixels; pred_orig, gt_orig: (N, K, 2) original pixels.
        gt_mask: (N, K) GT visible and inside the crop; has_gt: (N,) annotated images.
        confidence: (N, K) heatmap peak; vis_threshold: predicted visible when confidence >= it.
        img_size: model input side; processed: number of images predicted on.
        extra: further entries (decoder, model path, data dir, split, skipped files, ...).
    """
    has_gt = np.asarray(has_gt, bool)
    mask = np.asarray(gt_mask, bool) & has_gt[:, None]
    model = space_metrics(pred_in, gt_in, mask)
    summary = {
        "img_size_px": int(img_size),
        "processed_samples": int(processed),
        "samples_with_gt": int(has_gt.sum()),
        **{k: model[k] for k in ("visible_keypoints_count", "mae_dx", "mae_dy", "rmse_dx", "rmse_dy",
                                 "euclidean_mean", "euclidean_median", "euclidean_p95", "euclidean_rmse",
                                 "pck_thresholds_px", "pck_percent")},
        "pck_auc": model["pck_auc"],
        "pck_auc_max_px": model["pck_auc_max_px"],
        "bbox_pck": bbox_pck(pred_in, gt_in, mask),
        "original_px": space_metrics(pred_orig, gt_orig, mask),
        "per_keypoint_input_px": per_keypoint(pred_in, gt_in, mask),
        "vis_threshold": float(vis_threshold),
        "visibility": visibility_scores(np.asarray(confidence) >= vis_threshold, mask, has_gt),
        "visibility_threshold_sweep": threshold_sweep(confidence, mask, has_gt),
    }
    summary.update(extra or {})
    return summary


def format_summary(s: dict) -> str:
    """A compact, human-readable table of the summary."""
    o = s["original_px"]

    def f(v, nd=3):
        return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{nd}f}"

    lines = [
        f"Evaluation ({s.get('split', '?')} split, decoder {s.get('decoder', '?')}, refinement "
        f"{s.get('refine', 'none')}): "
        f"{s['samples_with_gt']} annotated of {s['processed_samples']} images, "
        f"{s['visible_keypoints_count']} GT-visible keypoints",
        f"{'metric':<22}{'model px (' + str(s['img_size_px']) + ')':>16}{'original px':>14}",
    ]
    for key, name in (("mae_dx", "MAE dx"), ("mae_dy", "MAE dy"), ("rmse_dx", "RMSE dx"), ("rmse_dy", "RMSE dy"),
                      ("euclidean_mean", "Euclidean mean"), ("euclidean_median", "Euclidean median"),
                      ("euclidean_p95", "Euclidean P95"), ("euclidean_rmse", "Euclidean RMSE")):
        lines.append(f"{name:<22}{f(s[key]):>16}{f(o[key]):>14}")
    for t in s["pck_thresholds_px"]:
        lines.append(f"{'PCK @ ' + str(t) + ' px (%)':<22}{f(s['pck_percent'][_key(t)], 2):>16}"
                     f"{f(o['pck_percent'][_key(t)], 2):>14}")
    lines.append(f"{'PCK AUC 0-' + _key(s['pck_auc_max_px']) + ' px':<22}{f(s['pck_auc']):>16}{f(o['pck_auc']):>14}")
    bp = s["bbox_pck"]["percent"]
    lines.append("bbox-diagonal PCK (%): " + ", ".join(f"{a}: {f(v, 2)}" for a, v in bp.items()))
    v = s["visibility"]
    sweep = s.get("visibility_threshold_sweep", {})
    lines.append(f"visibility @ conf >= {s['vis_threshold']}: precision {f(v['precision'])}, recall "
                 f"{f(v['recall'])}, F1 {f(v['f1'])} (best-F1 threshold: {sweep.get('best_threshold')})")
    d = s.get("detections_before_refinement")
    if d:
        lines.append(f"pose refinement on {s.get('pose_refined_images')} images; the detections before it: mean "
                     f"{f(d['euclidean_mean'])}, median {f(d['euclidean_median'])}, P95 {f(d['euclidean_p95'])} px, "
                     f"PCK @ 2 px {f(d['pck_percent'][_key(2)], 2)} %")
    look = s.get("second_look")
    if look:
        zr = look.get("zoom_range") or [None, None]
        lines.append(f"second look on {look['images']} images (object filling up to {f(look['fill'], 2)} of the "
                     f"window; zoom median {f(look['zoom_median'], 2)}, {f(zr[0], 2)}-{f(zr[1], 2)}); pose refitted "
                     f"after it on {look['pose_refined_images']} (to both looks' detections on "
                     f"{look.get('looks_disagreed_images', 0)}, where the looks disagreed)")
        if look.get("unposed_looked_again_images"):
            lines.append(f"images without a first-look pose: looked at with the object filling up to "
                         f"{f(look.get('fill_unposed'), 2)}; {look['unposed_looked_again_images']} still without "
                         f"a pose looked at again up to {f(look['fill'], 2)}")
    if s.get("skipped_files"):
        lines.append(f"skipped {len(s['skipped_files'])} unreadable file(s); listed in evaluation_summary.json")
    return "\n".join(lines)


def _key(t) -> str:
    """Threshold -> JSON key: 2 -> "2", 0.05 -> "0.05"."""
    t = float(t)
    return str(int(t)) if t.is_integer() else f"{t:g}"
