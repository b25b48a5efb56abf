"""The prediction stage behind ``use_vis.py``: model + inputs -> predictions, figures, evaluation.

Outputs (under ``out_dir``, default ``predictions/``)::

    predictions.json, predictions.csv     per image and keypoint: original and model-input pixels,
                                          confidence, predicted visibility, ground truth when known;
                                          with pose refinement also each detection before it, and
                                          per image the fitted pose (``pipeline.pose``) and the
                                          second look's window (``pipeline.second_look``)
    overlays/<stem>.png                   model-input view (upscaled), prediction vs ground truth
    heatmaps/<stem>.png                   per-keypoint heatmap grid
    original_overlays/<stem>.png          original resolution with the crop box
    evaluation_summary.json / .txt        metrics (annotated inputs only), see ``pipeline.evaluate``
    pck_curve.png, error_histogram.png

A run writes everything into a hidden temporary folder inside ``out_dir`` and then replaces the
managed entries above in one sweep, so old and new files never mix (entries a run does not produce,
e.g. the summary of an unannotated run, are removed).
"""

from __future__ import annotations

import csv
import math
import os
import shutil
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pipeline import evaluate as ev
from pipeline import visualize as vis
from pipeline.arrays import atomic_path, write_json
from pipeline.config import geometry_from_dict
from pipeline.fold import fold_batchnorm
from pipeline.geometry import Geometry
from pipeline.images import ImageError, open_image
from pipeline.infer import DECODERS, InferError, collect_inputs, ground_truth, predict_files
from pipeline.second_look import LOOKS, look_fills
from pipeline.tta import check_tta, resolve_tta

MANAGED = ("predictions.json", "predictions.csv", "evaluation_summary.json", "evaluation_summary.txt",
           "pck_curve.png", "error_histogram.png", "overlays", "heatmaps", "original_overlays")
DEFAULT_MODEL = "visible_keypoints_model.keras"
REFINES = ("auto", "pose", "none")
HOLD_BYTES = 256 << 20  # decoded images held between the two looks (see _two_looks)


def _help(text: str, meta=None, **kw):
    return field(metadata={"help": text, **(meta or {})}, **kw)


@dataclass
class InferConfig:
    """Settings of ``use_vis.py``."""

    input: tuple[str, ...] = _help("4SP dataset folder(s), image folder(s) or image file(s); default: the "
                                   "model's training data_dir, else data/.", default=())
    model: str = _help("Trained .keras model (with its .json sidecar); default: the newest "
                       "logs/<run>/best_model.keras, else visible_keypoints_model.keras.", default="")
    out_dir: str = _help("Output folder (its managed files are replaced on each run).", default="predictions")
    batch_size: int = _help("Images per model call.", default=32)
    limit: int = _help("Predict on the first N images only (0: all).", default=0)
    split: str = _help("auto: the training run's held-out val_stems when the input is its training data, "
                       "else all; val; all.", default="auto", meta={"choices": ("auto", "val", "all")})
    decoder: str = _help("peak: heatmap arg-max with log-quadratic sub-pixel refinement; softargmax: the "
                         "model's coords output.", default="peak", meta={"choices": DECODERS})
    tta: str = _help("Test-time augmentation: rotN averages the predictions on N evenly spaced in-plane turns "
                     "of each image (N a multiple of 4: rot4, rot8, rot12, ...; N times the model work; for "
                     "models trained with rotations); auto: rot8 when the model's training config drew "
                     "full-circle rotations, rot4 when it drew quarter turns only, else none.", default="auto")
    refine: str = _help("pose: replace the detections by the projections of the object's vertices under the pose "
                        "fitted (RANSAC) to the confident ones, using the object and camera calibrated from the "
                        "training annotations; none: the detections as they are; auto: pose when a calibration "
                        "exists (the model's sidecar, else the training data's annotations), else none.",
                        default="auto", meta={"choices": REFINES})
    second_look: str = _help("auto: with pose refinement, predict again on a window re-centred on the fitted "
                             "pose and magnified until the object fills up to 0.9 of it (less where the model's "
                             "training objects were smaller; never past one image pixel per input pixel), and fit the "
                             "pose again to that look's detections (to both looks' without test-time turns; "
                             "twice the model work); off: one look.",
                             default="auto", meta={"choices": LOOKS})
    vis_threshold: float = _help("A keypoint is predicted visible when its heatmap peak >= this (focal-loss "
                                 "heatmaps peak below 1; the summary reports the best-F1 threshold).", default=0.2)
    visualize: str = _help("Figures for the first N images, or 'all'.", default="16")
    upscale: int = _help("Upscaling of the model-input overlays.", default=4)
    progress: bool = _help("Show progress bars.", default=True)

    def __post_init__(self):
        if isinstance(self.input, str):
            self.input = (self.input,)
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be positive. Received: batch_size={self.batch_size}")
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}. Received: decoder={self.decoder!r}")
        check_tta(self.tta)
        if self.refine not in REFINES:
            raise ValueError(f"refine must be one of {REFINES}. Received: refine={self.refine!r}")
        if self.second_look not in LOOKS:
            raise ValueError(f"second_look must be one of {LOOKS}. Received: second_look={self.second_look!r}")
        if self.split not in ("auto", "val", "all"):
            raise ValueError(f"split must be auto, val or all. Received: split={self.split!r}")
        if not 0.0 <= self.vis_threshold <= 1.0:
            raise ValueError(f"vis_threshold must be in [0, 1]. Received: vis_threshold={self.vis_threshold}")
        if self.visualize != "all" and not str(self.visualize).isdigit():
            raise ValueError(f"visualize must be a count or 'all'. Received: visualize={self.visualize!r}")

    def num_figures(self, n: int) -> int:
        return n if self.visualize == "all" else min(n, int(self.visualize))


def resolve_model_path(path: str = "") -> Path:
    """``path``, else the newest ``logs/<run>/best_model.keras``, else ``visible_keypoints_model.keras``."""
    if path:
        return Path(path)
    runs = sorted(Path("logs").glob("*/best_model.keras"), key=lambda p: p.stat().st_mtime)
    return runs[-1] if runs else Path(DEFAULT_MODEL)


def load_model_and_geometry(path: Path):
    """(model, meta, geometry, K); missing or unusable model files raise InferError naming the file.

    The model comes with its BatchNorms folded into their convolutions (:mod:`pipeline.fold`): the same
    predictions, a few percent faster."""
    from pipeline.model_io import load_model

    try:
        model, meta = load_model(path)
    except FileNotFoundError as e:
        raise InferError(str(e)) from None
    except ValueError as e:
        raise InferError(f"{e}. Re-train or re-export the model with train_vis.py.") from None
    if meta.get("preprocess"):
        geometry = geometry_from_dict(meta["preprocess"])
    else:
        geometry = Geometry()
        warnings.warn(f"{path}: no preprocessing config in the sidecar; assuming the seed-001 geometry {geometry}.",
                      stacklevel=2)
    out = getattr(model, "output", None)
    if not isinstance(out, dict) or "heatmaps" not in out or "coords" not in out:
        raise InferError(f"{path}: the model must return a dict with 'heatmaps' and 'coords'. Received: {out}")
    s_in, k = model.input_shape[1], int(out["heatmaps"].shape[-1])
    if s_in != geometry.input_size:
        raise InferError(f"{path}: the model takes {s_in} px inputs but its sidecar's preprocessing says "
                         f"img_size={geometry.input_size}. The sidecar belongs to another model; re-save it.")
    return fold_batchnorm(model), meta, geometry, k


def object_camera(meta: dict, refine: str, k: int, geometry: Geometry):
    """(ObjectCamera or None, one-line note) for ``--refine``: the sidecar's calibration; for models saved
    before calibrations were stored, one fitted now to the training data's annotations."""
    from pipeline.pose import ObjectCamera, calibrate_dataset

    if refine == "none":
        return None, "off (--refine none)"
    pre = meta.get("preprocess") or {}
    if "object_camera" in pre:
        cam = ObjectCamera.from_dict(pre["object_camera"]) if pre["object_camera"] else None
        note = pre.get("object_camera_note", "")
    else:
        root = pre.get("data_dir_abs") or pre.get("data_dir") or ""
        if not root or not Path(root).is_dir():
            cam, note = None, "the model's sidecar holds no calibration and its training data is not at hand"
        else:
            cam, note = calibrate_dataset(root, k, geometry)
            note = f"from the training annotations in {root}: {note}"
    if cam is not None and len(cam.vertices) != k:
        cam, note = None, f"the calibration has {len(cam.vertices)} vertices, the model {k} keypoints"
    if cam is None and refine == "pose":
        raise InferError(f"--refine pose: no object/camera calibration ({note}). Pass --refine none or auto.")
    return cam, (f"pose ({note})" if cam is not None else f"none ({note})")


def select_split(samples, roots, meta: dict, split: str) -> tuple[list, str, str]:
    """Pick the images to evaluate; never silently evaluate on training images.

    Returns (samples, split used, a note for people).
    """
    val = set(meta.get("val_stems") or [])
    pre = meta.get("preprocess") or {}
    train_dirs = {Path(d).resolve() for d in (pre.get("data_dir_abs"), pre.get("data_dir")) if d}
    if train_dirs:  # the training data is recognised by its folder: other datasets reuse stem names
        is_training = any(Path(r).resolve() in train_dirs for r in roots)
    else:
        is_training = bool({s.stem for s in samples} & val)
    if split == "auto":
        split = "val" if is_training and val else "all"
    if split == "val":
        if not val:
            raise InferError("--split val: the model's sidecar records no val_stems. Use --split all.")
        chosen = [s for s in samples if s.stem in val]
        if not chosen:
            raise InferError(f"--split val: none of the {len(samples)} input images is in the model's "
                             f"{len(val)} val_stems. Use --split all, or pass the training data.")
        note = (f"evaluating the held-out validation split recorded by training ({len(chosen)} of "
                f"{len(samples)} images); --split all for every image")
        return chosen, "val", note
    note = f"all {len(samples)} input images"
    if is_training:
        used = sum(1 for s in samples if s.pixels is not None and s.stem not in val)
        if val and used:
            note += f"; WARNING: {used} of them were training images, their errors are optimistic"
        elif not val:
            note += "; WARNING: these look like the training data and no val_stems are recorded, so some may be training images"
        warnings.warn(note, stacklevel=2)
    return samples, "all", note


def _clean(o):
    """JSON-safe: NaN/inf -> None, numpy -> Python."""
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, np.ndarray):
        return _clean(o.tolist())
    if isinstance(o, (np.generic,)):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, Path):
        return str(o)
    return o


def _rows(samples, keep, r: dict):
    """Per-image records for predictions.json and flat per-keypoint rows for the CSV."""
    images, rows = [], []
    for i in np.flatnonzero(keep):
        s = samples[i]
        kps = []
        for k in range(r["pred_orig"].shape[1]):
            rec = {
                "index": k,
                "x_orig": r["pred_orig"][i, k, 0], "y_orig": r["pred_orig"][i, k, 1],
                "x_input": r["pred_in"][i, k, 0], "y_input": r["pred_in"][i, k, 1],
                "confidence": r["conf"][i, k], "pred_visible": bool(r["pred_vis"][i, k]),
            }
            if r["pose"][i] is not None:  # the network's own detection, before pose refinement
                rec.update({"x_orig_detected": r["det_orig"][i, k, 0], "y_orig_detected": r["det_orig"][i, k, 1]})
            if r["has_gt"][i]:
                rec.update({
                    "gt_x_orig": r["gt_orig"][i, k, 0], "gt_y_orig": r["gt_orig"][i, k, 1],
                    "gt_x_input": r["gt_in"][i, k, 0], "gt_y_input": r["gt_in"][i, k, 1],
                    "gt_visible": bool(r["gt_vis"][i, k]),
                    "gt_visible_in_annotation": bool(s.visible[k]),
                    "error_input_px": float(np.hypot(*(r["pred_in"][i, k] - r["gt_in"][i, k])))
                    if r["gt_vis"][i, k] else None,
                })
            kps.append(rec)
            rows.append({"stem": s.stem, "image": str(s.image), **rec})
        images.append({"stem": s.stem, "image": str(s.image),
                       "annotation": str(s.annotation) if s.annotation else None,
                       "orig_size": r["sizes"][i], "crop_box_orig": r["boxes"][i],
                       **({"pose": r["pose"][i]} if r["pose"][i] is not None else {}),
                       **({"second_look_box_orig": r["look"]["boxes"][i], "second_look_zoom": r["look"]["zooms"][i]}
                          if r["look"] is not None else {}), "keypoints": kps})
    return images, rows


CSV_FIELDS = ["stem", "image", "index", "x_orig", "y_orig", "x_input", "y_input", "confidence", "pred_visible",
              "x_orig_detected", "y_orig_detected",
              "gt_x_orig", "gt_y_orig", "gt_x_input", "gt_y_input", "gt_visible", "gt_visible_in_annotation",
              "error_input_px"]


def _write_csv(path: Path, rows) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow({k: ("" if v is None else (f"{v:.4f}" if isinstance(v, float) else v))
                        for k, v in _clean(row).items()})


def _figures(tmp: Path, samples, r: dict, preds, cfg: InferConfig, edges, progress: bool) -> None:
    """Overlays, heatmap grids and original overlays of the first images, drawn by a thread pool."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    n_fig = min(cfg.num_figures(len(samples)), len(preds.inputs))
    for name in ("overlays", "heatmaps", "original_overlays"):
        (tmp / name).mkdir()

    def draw(i):
        s = samples[i]
        gt_in = r["gt_in"][i] if r["has_gt"][i] else None
        gt_orig = r["gt_orig"][i] if r["has_gt"][i] else None
        title = f"{s.stem}  ({cfg.decoder} decoder)"
        vis.input_overlay(preds.inputs[i], r["pred_in"][i], gt_in, r["gt_vis"][i], r["pred_vis"][i],
                          upscale=cfg.upscale, edges=edges, title=title).save(tmp / "overlays" / f"{s.stem}.png")
        vis.heatmap_grid(preds.inputs[i], preds.heatmaps[i], r["pred_in"][i], r["conf"][i],
                         title=title).save(tmp / "heatmaps" / f"{s.stem}.png")
        try:
            img = open_image(s.image)
        except ImageError:
            return
        unscored = (s.visible & ~r["gt_vis"][i]) if r["has_gt"][i] else None
        vis.original_overlay(img, r["pred_orig"][i], r["boxes"][i], gt_orig, r["gt_vis"][i], r["pred_vis"][i],
                             edges=edges, title=f"{title}  {img.width}x{img.height}", gt_unscored=unscored
                             ).save(tmp / "original_overlays" / f"{s.stem}.png", compress_level=1)

    todo = [i for i in range(n_fig) if preds.ok[i]]
    vis.plot_setup()  # pyplot state is not thread-safe: import it here, before the pool
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for _ in tqdm(pool.map(draw, todo), total=len(todo), desc="figures", unit="img", disable=not progress):
            pass


def _swap_in(tmp: Path, out: Path) -> None:
    """Replace the managed entries of ``out`` with those of ``tmp`` (removing stale ones)."""
    for name in MANAGED:
        old, new = out / name, tmp / name
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        elif old.exists() or old.is_symlink():
            old.unlink()
        if new.exists():
            os.replace(new, old)


def _unique_stems(samples) -> None:
    seen: dict[str, int] = {}
    for s in samples:
        n = seen.get(s.stem, 0)
        seen[s.stem] = n + 1
        if n:
            s.stem = f"{s.stem}_{n + 1}"


def _refine(cam, preds, geometry: Geometry, cfg: InferConfig):
    """First-look pose refinement: (xy (N, K, 2) normalised, per-image pose info or None)."""
    from pipeline.pose import refine_keypoints
    from pipeline.second_look import votes_of

    sizes = preds.sizes
    safe = np.where(sizes > 0, sizes, 1)
    ok = preds.ok
    detected = geometry.from_normalised(preds.xy, safe)
    votes = votes_of(preds, lambda a: geometry.from_normalised(a, safe), cfg.decoder == "peak")
    refined, info = refine_keypoints(cam, detected[ok], preds.confidence[ok], sizes[ok], cfg.vis_threshold,
                                     geometry.input_px_scale, (votes[0][ok], votes[1][ok], votes[2]))
    xy = preds.xy.copy()
    xy[ok] = geometry.to_normalised(refined, safe[ok])
    pose_info = [None] * len(ok)
    for j, i in enumerate(np.flatnonzero(ok)):
        pose_info[i] = info[j]
    return xy, pose_info


def _look_and_refit(model, samples, cam, first, xy, pose_info, boxes, geometry: Geometry, cfg: InferConfig,
                    tta: str, **predict_kw):
    """Predict ``samples`` on ``boxes`` and fit the pose again (:func:`pipeline.second_look.refit`) from
    the first look's ``first`` predictions, ``xy`` and ``pose_info``: (that look's Predictions, xy,
    pose_info, disagreed). ``predict_kw``: passed on to :func:`predict_files`."""
    from pipeline.second_look import refit

    again = predict_files(model, [s.image for s in samples], geometry, batch_size=cfg.batch_size,
                          decoder=cfg.decoder, tta=tta, boxes=boxes, **predict_kw)
    return (again, *refit(cam, first, again, xy, pose_info, boxes, geometry, cfg.vis_threshold,
                          cfg.decoder == "peak"))


def _second_look(model, samples, cam, preds, xy, pose_info, geometry: Geometry, cfg: InferConfig, meta: dict,
                 tta: str, **predict_kw):
    """Predict again on windows centred on the first estimate (:mod:`pipeline.second_look`) and fit the
    pose again. An image without a first-look pose is looked at less magnified
    (:func:`pipeline.second_look.look_fills`); where no pose comes of that either, its window at the
    posed images' share is kept for :func:`_third_look`. Images where the fit fails keep the first
    look's result. Returns (xy normalised, pose_info, {"boxes", "zooms", "ok", "fill", "fill_note",
    "refined", "disagreed", "retry", "retry_boxes", "retry_zooms"}). ``predict_kw``: passed on to
    :func:`predict_files`."""
    from pipeline.second_look import fill_share, look_boxes

    safe = np.where(preds.sizes > 0, preds.sizes, 1)
    refined = np.array([bool(p and p.get("refined")) for p in pose_info])
    mask = np.where(refined[:, None], True, preds.confidence >= cfg.vis_threshold)
    fill, fill_note = fill_share(meta)
    fills = look_fills(fill, refined)
    centre_on = geometry.from_normalised(xy, safe)
    boxes, zooms = look_boxes(geometry, safe, centre_on, mask, fills)
    again, xy, pose_info, disagreed = _look_and_refit(model, samples, cam, preds, xy, pose_info, boxes, geometry,
                                                      cfg, tta, progress=cfg.progress, **predict_kw)
    retry = preds.ok & again.ok & (fills < fill) & ~_refitted(pose_info)
    # the posed share's windows, read only where ``retry``: computed only when some image needs them
    retry_boxes, retry_zooms = look_boxes(geometry, safe, centre_on, mask, fill) if retry.any() else (boxes, zooms)
    return xy, pose_info, {"boxes": boxes, "zooms": zooms, "ok": preds.ok & again.ok, "fill": fill,
                           "fill_note": fill_note, "refined": _refitted(pose_info), "disagreed": disagreed,
                           "retry": retry, "retry_boxes": retry_boxes, "retry_zooms": retry_zooms}


def _third_look(model, samples, cam, preds, xy, pose_info, look: dict, geometry: Geometry, cfg: InferConfig,
                tta: str, pad: bool):
    """The images without a pose after a less magnified second look (``look["retry"]``), looked at again
    at the posed images' share, all in one pass (decoded again: a few images). Where a pose is fitted
    it replaces their result and ``look``'s window, zoom and flags (updated in place)."""
    idx = np.flatnonzero(look["retry"])
    if len(idx) == 0:
        return xy, pose_info
    boxes = look["retry_boxes"][idx]
    _, new_xy, new_info, disagreed = _look_and_refit(model, [samples[i] for i in idx], cam, preds.take(idx),
                                                     xy[idx], [pose_info[i] for i in idx], boxes, geometry, cfg,
                                                     tta, progress=False, pad=pad)
    xy, pose_info = xy.copy(), list(pose_info)
    for j in np.flatnonzero(_refitted(new_info)):
        i = idx[j]
        xy[i], pose_info[i] = new_xy[j], new_info[j]
        look["boxes"][i], look["zooms"][i] = boxes[j], look["retry_zooms"][i]
        look["refined"][i], look["disagreed"][i] = True, disagreed[j]
    return xy, pose_info


def _refitted(pose_info) -> np.ndarray:
    """(N,) whether each image's pose was fitted after a second look."""
    return np.array([bool(p and p.get("looks") == 2) for p in pose_info], bool)


def _chunk_size(files, batch_size: int) -> int:
    """Images per chunk of :func:`_two_looks`: as many whole batches as fit ``HOLD_BYTES`` of decoded
    images the size of the first readable one (one batch at least)."""
    from pipeline.images import image_size
    from pipeline.infer import decoded_bytes

    for f in files:
        try:
            size = image_size(f)
        except ImageError:
            continue
        return batch_size * max(1, HOLD_BYTES // (decoded_bytes(size) * batch_size))
    return batch_size


def _two_looks(model, samples, cam, geometry: Geometry, cfg: InferConfig, meta: dict, tta: str, keep: int):
    """Both looks and their pose fits, chunk by chunk: the images a chunk's first look decodes are held
    for its second look (:class:`pipeline.infer.HeldImages`, within ``HOLD_BYTES``), so each file is
    decoded once; then :func:`_third_look` for all chunks' images that need it. Each image's result is
    that of one pass over all images. Returns (first-look Predictions, xy normalised, pose_info, look)
    as :func:`_second_look`."""
    from tqdm.auto import tqdm

    from pipeline.infer import HeldImages, concat_predictions

    files = [s.image for s in samples]
    n = len(files)
    step = _chunk_size(files, cfg.batch_size)
    kw = dict(batch_size=cfg.batch_size, decoder=cfg.decoder, tta=tta, pad=n > cfg.batch_size)
    parts = []
    with tqdm(total=2 * n, unit="img", desc=f"predict, two looks ({cfg.decoder}, tta {tta})",
              disable=not cfg.progress) as bar:
        for a in range(0, n, step):
            held = HeldImages(HOLD_BYTES)
            part = predict_files(model, files[a:a + step], geometry, keep=max(0, keep - a), held=held, bar=bar, **kw)
            xy, info = _refine(cam, part, geometry, cfg)
            xy, info, look = _second_look(model, samples[a:a + step], cam, part, xy, info, geometry, cfg, meta, tta,
                                          held=held, bar=bar, pad=kw["pad"])
            parts.append((part, xy, info, look))
    preds = concat_predictions([p[0] for p in parts])
    looks = [p[3] for p in parts]
    look = {**looks[0], **{key: np.concatenate([lk[key] for lk in looks])
                           for key in ("boxes", "zooms", "ok", "refined", "disagreed", "retry", "retry_boxes",
                                       "retry_zooms")}}
    xy, info = np.concatenate([p[1] for p in parts]), [i for p in parts for i in p[2]]
    xy, info = _third_look(model, samples, cam, preds, xy, info, look, geometry, cfg, tta, kw["pad"])
    return preds, xy, info, look


def _look_summary(look, ok) -> dict | None:
    if look is None:
        return None
    z = look["zooms"][look["ok"]]
    return {"fill": float(look["fill"]), "fill_note": look["fill_note"],
            "fill_unposed": float(look_fills(look["fill"], [False])[0]), "images": int(look["ok"].sum()),
            "pose_refined_images": int(look["refined"].sum()), "looks_disagreed_images": int(look["disagreed"].sum()),
            "unposed_looked_again_images": int(look["retry"].sum()),
            "zoom_median": float(np.median(z)) if len(z) else None,
            "zoom_range": [float(z.min()), float(z.max())] if len(z) else None}


def run(cfg: InferConfig) -> dict:
    """Predict, write the outputs, evaluate where annotations exist; returns the summary (or {})."""
    model_path = resolve_model_path(cfg.model)
    model, meta, geometry, k = load_model_and_geometry(model_path)
    inputs = list(cfg.input) or [(meta.get("preprocess") or {}).get("data_dir") or "data"]
    found = collect_inputs(inputs, k)
    samples, split, note = select_split(found.samples, found.dataset_roots, meta, cfg.split)
    if cfg.limit:
        samples = samples[: cfg.limit]
    _unique_stems(samples)
    tta = resolve_tta(cfg.tta, meta.get("train"))
    cam, refine_note = object_camera(meta, cfg.refine, k, geometry)
    refine = "pose" if cam is not None else "none"
    print(f"model {model_path} (K={k}, input {geometry.input_size} px); {len(samples)} images; {note}; "
          f"test-time augmentation: {tta}; refinement: {refine_note}")

    n_fig = cfg.num_figures(len(samples))
    pose_info, look = [None] * len(samples), None
    if cam is not None and cfg.second_look == "auto":
        preds, xy, pose_info, look = _two_looks(model, samples, cam, geometry, cfg, meta, tta, n_fig)
    else:
        preds = predict_files(model, [s.image for s in samples], geometry, batch_size=cfg.batch_size,
                              decoder=cfg.decoder, keep=n_fig, progress=cfg.progress, tta=tta)
        xy = preds.xy
        if cam is not None:
            xy, pose_info = _refine(cam, preds, geometry, cfg)
    skipped = list(found.skipped)
    for i, msg in sorted(preds.errors.items()):
        warnings.warn(f"Skipping unreadable image: {msg}", stacklevel=2)
        skipped.append({"file": str(samples[i].image), "reason": msg})
    sizes = preds.sizes
    has_gt, gt_orig, gt_in, gt_vis = ground_truth(samples, sizes, geometry)
    if gt_orig.shape[1] == 0:  # nothing annotated
        gt_orig = gt_in = np.full(preds.xy.shape, np.nan)
        gt_vis = np.zeros(preds.xy.shape[:2], bool)
    has_gt &= preds.ok
    safe = np.where(sizes > 0, sizes, 1)
    detected = geometry.from_normalised(preds.xy, safe)
    r = {
        "pred_in": geometry.to_input(xy), "pred_orig": geometry.from_normalised(xy, safe),
        "det_orig": detected, "det_in": geometry.to_input(preds.xy), "pose": pose_info,
        "conf": preds.confidence, "pred_vis": preds.confidence >= cfg.vis_threshold,
        "gt_in": gt_in, "gt_orig": gt_orig, "gt_vis": gt_vis & has_gt[:, None], "has_gt": has_gt,
        "sizes": sizes, "boxes": geometry.crop_box(safe), "look": look,
    }

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".run-{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        images, rows = _rows(samples, preds.ok, r)
        header = {"model": str(model_path), "decoder": cfg.decoder, "tta": tta, "refine": refine,
                  "second_look": _look_summary(look, preds.ok),
                  "refine_note": refine_note, "vis_threshold": cfg.vis_threshold,
                  "num_keypoints": k, "geometry": asdict(geometry), "split": split, "inputs": inputs,
                  "spaces": {"orig": "original-image pixels, corner origin, pixel i centred at i+0.5",
                             "input": f"model-input pixels ({geometry.input_size} px crop)"},
                  "skipped_files": skipped}
        write_json(tmp / "predictions.json", _clean({**header, "images": images}))
        _write_csv(tmp / "predictions.csv", rows)
        _figures(tmp, samples, r, preds, cfg, found.edges if len(found.edges) else None, cfg.progress)
        summary = {}
        if has_gt.any():
            extra = {"decoder": cfg.decoder, "tta": tta, "refine": refine, "second_look": _look_summary(look, preds.ok),
                     "model": str(model_path), "data_dir": [str(p) for p in found.dataset_roots],
                     "inputs": inputs, "split": split, "split_note": note, "skipped_files": skipped,
                     "num_keypoints": k}
            if cam is not None:
                refined_imgs = [p for p, ok in zip(pose_info, has_gt) if ok and p is not None]
                det = ev.space_metrics(r["det_in"], gt_in, r["gt_vis"])
                extra["pose_refined_images"] = int(sum(p["refined"] for p in refined_imgs))
                extra["detections_before_refinement"] = {
                    key: det[key] for key in ("mae_dx", "mae_dy", "rmse_dx", "rmse_dy", "euclidean_mean",
                                              "euclidean_median", "euclidean_p95", "pck_percent")}
            summary = ev.build_summary(pred_in=r["pred_in"], gt_in=gt_in, pred_orig=r["pred_orig"], gt_orig=gt_orig,
                                       gt_mask=r["gt_vis"], has_gt=has_gt, confidence=r["conf"],
                                       vis_threshold=cfg.vis_threshold, img_size=geometry.input_size,
                                       processed=int(preds.ok.sum()), extra=extra)
            summary = _clean(summary)
            write_json(tmp / "evaluation_summary.json", summary)
            text = ev.format_summary(summary)
            (tmp / "evaluation_summary.txt").write_text(text + "\n")
            _, _, d = ev.errors(r["pred_in"], gt_in, r["gt_vis"])
            vis.plot_pck_curve({f"{cfg.decoder} (AUC {summary['pck_auc']:.3f})": ev.pck_curve(d)},
                               tmp / "pck_curve.png")
            vis.plot_error_histogram(d, tmp / "error_histogram.png", summary["euclidean_median"],
                                     summary["euclidean_p95"])
        _swap_in(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"predicted {int(preds.ok.sum())} images" + (f", skipped {len(skipped)} file(s)" if skipped else "")
          + f"; outputs in {out}/")
    if summary:
        print(ev.format_summary(summary))
    else:
        print("no annotations among the inputs: no evaluation_summary written")
    return summary
