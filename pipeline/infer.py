"""Batched prediction: image files -> model -> decoded keypoints in normalised, input and original pixels.

Legend: N images, K keypoints, S model-input side, Sh heatmap side. The model takes (B, S, S, 3)
RGB 0..255 and returns ``{"heatmaps": (B, Sh, Sh, K) sigmoid, "coords": (B, 2K) normalised
x0, y0, x1, y1, ...}``. Positions follow ``pipeline.geometry`` (corner origin, pixel i centred at
i + 0.5); predictions go back to original pixels through ``Geometry.from_normalised``, the exact
inverse of the preprocessing.

Inputs are a 4SP dataset folder (``Rendered_Images/`` + ``JSON_Data_REF/``), a folder of images,
or image files. Images are decoded by a thread pool a few batches ahead of the model
(:func:`image_batches`), so the model sees full batches while the next ones decode.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline import annotations as ann
from pipeline.geometry import Geometry
from pipeline.heatmaps import decode_peak
from pipeline.images import IMAGE_SUFFIXES, ImageError, list_images, load_model_input
from pipeline.images import decode as decode_image
from pipeline.tta import merge_outputs, tta_angles, turned_inputs

DECODERS = ("peak", "softargmax")


class InferError(ValueError):
    """Bad inputs to inference (missing model, K mismatch, nothing to predict on); names the file and the fix."""


@dataclass
class Sample:
    """One image to predict on; ``pixels`` (K, 2) original px and ``visible`` (K,) when annotated."""

    stem: str
    image: Path
    annotation: Path | None = None
    pixels: np.ndarray | None = None
    visible: np.ndarray | None = None


@dataclass
class InputSet:
    """What ``collect_inputs`` found: samples, the dataset roots among the inputs, files skipped."""

    samples: list
    dataset_roots: list = field(default_factory=list)
    skipped: list = field(default_factory=list)  # [{"file": str, "reason": str}]
    edges: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int32))


def _check_json_k(path: Path, k: int, skipped: list) -> bool:
    """Stop on a K mismatch (it means the wrong model or the wrong data); skip unreadable JSON."""
    try:
        data = json.loads(path.read_text())
        entries = list(data.get("visible_vertices", [])) + list(data.get("non_visible_vertices", []))
        indices = [e["index"] for e in entries if isinstance(e, dict) and isinstance(e.get("index"), int)]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError, TypeError) as e:
        skipped.append({"file": str(path), "reason": f"unreadable annotation: {e}"})
        warnings.warn(f"Skipping {path}: unreadable annotation ({e}).", stacklevel=3)
        return False
    if indices and max(indices) >= k:
        raise InferError(
            f"{path} has vertex index {max(indices)}, but the model predicts K={k} keypoints. "
            "The model was trained on another object: pass --model with a model trained on this mesh, "
            "or predict on data of the model's object."
        )
    return True


def _dataset_samples(root: Path, k: int, out: InputSet) -> list:
    pairing = ann.pair_dataset(root)
    try:
        mesh = ann.load_mesh_info(ann.find_mesh_file(root))
    except ann.AnnotationError as e:
        warnings.warn(f"{e} Going on without the mesh (no K check against it, no edges drawn).", stacklevel=3)
        mesh = None
    if mesh is not None:
        if mesh.num_keypoints != k:
            raise InferError(
                f"{mesh.path} gives K={mesh.num_keypoints} keypoints (total_vertices) but the model predicts "
                f"K={k}. Pass --model with a model trained on '{mesh.name}', or predict on the model's object."
            )
        out.edges = mesh.edges
    samples = []
    for stem, img, js in pairing.pairs:
        if not _check_json_k(js, k, out.skipped):
            continue
        try:
            a = ann.parse_annotation(js, k)
        except ann.AnnotationError as e:
            out.skipped.append({"file": str(js), "reason": str(e)})
            warnings.warn(f"Skipping {js}: {e}", stacklevel=2)
            continue
        samples.append(Sample(stem, img, js, a.pixels, a.visible))
    samples += [Sample(Path(p).stem, Path(p)) for p in pairing.images_without_json]
    samples.sort(key=lambda s: s.stem)
    return samples


def _single_file(path: Path, k: int, out: InputSet) -> Sample:
    """An image file; its annotation is used when it sits in a 4SP dataset."""
    js = path.parent.parent / ann.ANNOTATIONS_DIR / f"{path.stem}.json"
    if path.parent.name == ann.IMAGES_DIR and js.is_file() and _check_json_k(js, k, out.skipped):
        try:
            a = ann.parse_annotation(js, k)
            return Sample(path.stem, path, js, a.pixels, a.visible)
        except ann.AnnotationError as e:
            out.skipped.append({"file": str(js), "reason": str(e)})
    return Sample(path.stem, path)


def collect_inputs(paths, num_keypoints: int) -> InputSet:
    """Gather samples from dataset folders, image folders and image files (in the order given)."""
    out = InputSet(samples=[])
    for raw in paths:
        p = Path(raw)
        if p.is_dir() and (p / ann.IMAGES_DIR).is_dir():
            out.samples += _dataset_samples(p, num_keypoints, out)
            out.dataset_roots.append(p)
        elif p.is_dir():
            files = list_images(p)
            if not files:
                raise InferError(
                    f"{p} holds no images. Expected a 4SP dataset folder ({ann.IMAGES_DIR}/ with "
                    f"{ann.ANNOTATIONS_DIR}/), a folder of images ({', '.join(IMAGE_SUFFIXES)}), or image files."
                )
            out.samples += [Sample(f.stem, f) for f in files]
        elif p.is_file():
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                raise InferError(f"{p} is not an image file (expected one of {', '.join(IMAGE_SUFFIXES)}).")
            out.samples.append(_single_file(p, num_keypoints, out))
        else:
            raise InferError(f"{p} not found. Pass a 4SP dataset folder, a folder of images, or image files.")
    if not out.samples:
        raise InferError(f"No images to predict on in {', '.join(map(str, paths))}.")
    return out


class HeldImages:
    """Decoded images kept from a first pass over some files to a second, within ``budget`` bytes, so
    each file is decoded once: the first time an image is asked for it is kept (if it fits), the
    second time it is handed out and let go. Images past the budget are decoded again."""

    def __init__(self, budget: int):
        self.budget, self.used = int(budget), 0
        self._images: dict = {}
        self._asked: set = set()
        self._lock = threading.Lock()

    def take(self, path, i: int):
        with self._lock:
            img = self._images.pop(i, None)
            first = i not in self._asked
            self._asked.add(i)
            if img is not None:
                self.used -= decoded_bytes(img.size)
                return img
        img = decode_image(path)
        with self._lock:
            if first and self.used + decoded_bytes(img.size) <= self.budget:
                self._images[i] = img
                self.used += decoded_bytes(img.size)
        return img


def decoded_bytes(size) -> int:
    """Memory of a decoded RGB image of ``size`` (W, H), at most: Pillow keeps a pixel in 4 bytes (a
    Wuffs-decoded array in 3)."""
    return 4 * int(size[0]) * int(size[1])


def _load_or_blank(files, i: int, geometry: Geometry, errors: dict, boxes=None, held=None):
    """Model input, (W, H) and True for ``files[i]`` (cropped at ``boxes[i]`` if given); a black input,
    (0, 0) and False (error noted) if unreadable. ``held``: a :class:`HeldImages` to take it from."""
    try:
        opener = None if held is None else functools.partial(held.take, i=i)
        x, (w, h) = load_model_input(files[i], geometry, None if boxes is None else boxes[i], opener)
        return x, np.array([w, h], np.int32), np.bool_(True)
    except ImageError as e:
        errors[i] = str(e)
        s = geometry.input_size
        return np.zeros((s, s, 3), np.uint8), np.zeros(2, np.int32), np.bool_(False)


def image_batches(files, geometry: Geometry, batch_size: int, workers: int = 0, boxes=None, held=None,
                  ahead: int = 2):
    """Batches over image files, decoded by a thread pool ``ahead`` batches ahead of the consumer.

    Yields (index (B,), input (B, S, S, 3) uint8, (W, H) (B, 2), ok (B,)); returns it as a generator
    with the ``errors`` dict it fills: a file that cannot be read yields a black input with ``ok``
    False and its message there. ``workers`` decoders (0: one per CPU core, at least 2); Pillow
    and Wuffs release the GIL while they decode, Pillow while it resamples. ``boxes`` (N, 4):
    per-image crop windows in original px in place of the geometry's. ``held``: decoded images kept
    between two passes (:class:`HeldImages`).

    Not tf.data: destroying a finished tf.data iterator whose map ran Python waited up to 5 s for
    its threads after the model had run (measured on 2 cores, TensorFlow 2.21), once per pass, and
    building one cost more than decoding and predicting a single image.
    """
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    files = [str(f) for f in files]
    errors: dict[int, str] = {}
    n = len(files)

    def batches():
        with ThreadPoolExecutor(max_workers=workers or max(2, os.cpu_count() or 1)) as pool:
            pending, submitted = deque(), 0
            try:
                for start in range(0, n, batch_size):
                    while submitted < min(n, start + (ahead + 1) * batch_size):
                        pending.append(pool.submit(_load_or_blank, files, submitted, geometry, errors, boxes, held))
                        submitted += 1
                    stop = min(n, start + batch_size)
                    x, size, ok = (np.stack(part) for part in zip(*(pending.popleft().result()
                                                                    for _ in range(stop - start))))
                    yield np.arange(start, stop), x, size, ok
            finally:
                for f in pending:
                    f.cancel()

    return batches(), errors


@dataclass
class Predictions:
    """Model outputs for N files, decoded.

    xy: (N, K, 2) normalised; confidence: (N, K) heatmap peak; sizes: (N, 2) original (W, H);
    ok: (N,) readable; errors: index -> message; inputs / heatmaps: the first ``keep`` images'
    (S, S, 3) uint8 inputs and (Sh, Sh, K) float16 heatmaps, for figures.
    """

    xy: np.ndarray
    confidence: np.ndarray
    sizes: np.ndarray
    ok: np.ndarray
    errors: dict
    inputs: np.ndarray
    heatmaps: np.ndarray
    turn_xy: np.ndarray | None = None  # (N, T, K, 2) normalised: each test-time turn's own peaks
    turn_conf: np.ndarray | None = None  # (N, T, K) their heights

    def take(self, idx) -> Predictions:
        """The predictions of images ``idx`` (their errors re-indexed; no figures' inputs or heatmaps)."""
        idx = np.asarray(idx, int)
        where = {int(i): j for j, i in enumerate(idx)}
        turns = {} if self.turn_xy is None else {"turn_xy": self.turn_xy[idx], "turn_conf": self.turn_conf[idx]}
        return Predictions(xy=self.xy[idx], confidence=self.confidence[idx], sizes=self.sizes[idx], ok=self.ok[idx],
                           errors={where[i]: e for i, e in self.errors.items() if i in where},
                           inputs=self.inputs[:0], heatmaps=self.heatmaps[:0], **turns)


def decode(outputs: dict, decoder: str) -> tuple[np.ndarray, np.ndarray]:
    """Model outputs -> (xy (B, K, 2) normalised, confidence (B, K) heatmap peak).

    ``peak_xy``, where test-time augmentation left it (:func:`pipeline.tta.merge_outputs`), replaces
    the peak decoded from the averaged heatmaps.
    """
    h = np.asarray(outputs["heatmaps"], np.float32)
    xy_peak, conf = decode_peak(h, refine=True)
    if decoder == "peak":
        return (outputs["peak_xy"] if "peak_xy" in outputs else xy_peak), conf
    if decoder == "softargmax":
        c = np.asarray(outputs["coords"], np.float64)
        return c.reshape(c.shape[0], -1, 2), conf
    raise InferError(f"Unknown decoder {decoder!r}; choose one of {DECODERS}.")


def concat_predictions(parts: list) -> Predictions:
    """One :class:`Predictions` of consecutive chunks' (their ``errors`` re-indexed)."""
    def cat(name):
        arrays = [getattr(p, name) for p in parts]
        if any(a is None for a in arrays):
            return None
        arrays = [a for a in arrays if a.size] or arrays[:1]
        return np.concatenate(arrays)

    errors, start = {}, 0
    for p in parts:
        errors.update({start + i: msg for i, msg in p.errors.items()})
        start += len(p.ok)
    return Predictions(xy=cat("xy"), confidence=cat("confidence"), sizes=cat("sizes"), ok=cat("ok"), errors=errors,
                       inputs=cat("inputs"), heatmaps=cat("heatmaps"), turn_xy=cat("turn_xy"),
                       turn_conf=cat("turn_conf"))


def predict_files(model, files, geometry: Geometry, *, batch_size: int = 32, decoder: str = "peak",
                  keep: int = 0, progress: bool = True, tta: str = "none", boxes=None, held: HeldImages | None = None,
                  pad: bool | None = None, bar=None) -> Predictions:
    """Run ``model`` over image files in batches; see :class:`Predictions`.

    ``tta``: ``none``, or ``rotN`` (see :mod:`pipeline.tta`; the model then sees N times the images).
    ``boxes``: (N, 4) per-image crop windows in original px (:meth:`Geometry.look_box`); the normalised
    coordinates are then those of each image's window (:meth:`Geometry.from_box` maps them back).
    ``held``: a :class:`HeldImages` that keeps the decoded images for a second call on the same
    files. ``pad``: fill a short batch up to ``batch_size`` so the model sees one shape (default:
    when there is more than one batch). ``bar``: a tqdm bar to advance instead of showing its own.
    """
    import contextlib

    from tqdm.auto import tqdm

    if decoder not in DECODERS:
        raise InferError(f"Unknown decoder {decoder!r}; choose one of {DECODERS}.")
    try:
        tta_angles(tta)
    except ValueError as e:
        raise InferError(f"Unknown test-time augmentation: {e}") from None
    n = len(files)
    ds, errors = image_batches(files, geometry, batch_size, boxes=boxes, held=held)
    pad = n > batch_size if pad is None else pad
    xy = conf = turn_xy = turn_conf = None
    sizes, ok = np.zeros((n, 2), np.int64), np.zeros(n, bool)
    inputs, maps = [], []
    with contextlib.ExitStack() as stack:
        if bar is None:
            bar = stack.enter_context(tqdm(total=n, unit="img", desc=f"predict ({decoder}, tta {tta})",
                                           disable=not progress))
        for idx, x, size, good in ds:
            b = len(idx)
            xb = x
            if pad and b < batch_size:  # pad a short batch: one traced shape only
                xb = np.concatenate([x, np.zeros((batch_size - b,) + x.shape[1:], x.dtype)])
            out = merge_outputs(model.predict_on_batch(turned_inputs(xb, tta)), tta)
            out = {key: v[:b] for key, v in out.items()}
            bxy, bconf = decode(out, decoder)
            if xy is None:
                xy = np.full((n,) + bxy.shape[1:], np.nan)
                conf = np.zeros((n,) + bconf.shape[1:])
            xy[idx], conf[idx] = bxy, bconf
            if "turn_xy" in out:
                if turn_xy is None:
                    turn_xy = np.full((n,) + out["turn_xy"].shape[1:], np.nan)
                    turn_conf = np.zeros((n,) + out["turn_conf"].shape[1:])
                turn_xy[idx], turn_conf[idx] = out["turn_xy"], out["turn_conf"]
            sizes[idx], ok[idx] = size, good
            room = keep - sum(len(b) for b in inputs)
            if room > 0:
                inputs.append(x[:room])
                maps.append(np.asarray(out["heatmaps"][:room], np.float16))
            bar.update(len(idx))
    xy[~ok], conf[~ok] = np.nan, 0.0
    if turn_conf is not None:
        turn_conf[~ok] = 0.0
    return Predictions(
        xy=xy, confidence=conf, sizes=sizes, ok=ok, errors=dict(errors),
        inputs=np.concatenate(inputs) if inputs else np.zeros((0,), np.uint8),
        heatmaps=np.concatenate(maps) if maps else np.zeros((0,), np.float16),
        turn_xy=turn_xy, turn_conf=turn_conf,
    )


def ground_truth(samples, sizes, geometry: Geometry):
    """GT of the samples in all spaces.

    Returns:
        has_gt (N,), pixels (N, K, 2) original px (NaN where unknown), input_px (N, K, 2),
        visible (N, K): visible in the annotation AND inside the crop (the keypoints that count).
    """
    n = len(samples)
    k = next((s.pixels.shape[0] for s in samples if s.pixels is not None), 0)
    has = np.array([s.pixels is not None for s in samples], bool)
    px = np.full((n, k, 2), np.nan)
    vis = np.zeros((n, k), bool)
    for i, s in enumerate(samples):
        if s.pixels is not None:
            px[i], vis[i] = s.pixels, s.visible
    safe = np.where(sizes > 0, sizes, 1)
    norm = geometry.to_normalised(px, safe)
    with np.errstate(invalid="ignore"):
        inside = Geometry.inside(norm)
    vis = vis & inside & np.isfinite(norm).all(-1) & (sizes > 0).all(-1)[:, None]
    return has, px, geometry.to_input(norm), vis


def benchmark_throughput(model, files, geometry: Geometry, batch_size: int, repeats: int = 1,
                         tta: str = "none") -> float:
    """Images per second end to end from files (decode + model + decoding), after one warm-up batch."""
    import time

    predict_files(model, files[:batch_size], geometry, batch_size=batch_size, progress=False, tta=tta)
    t = time.perf_counter()
    for _ in range(repeats):
        predict_files(model, files, geometry, batch_size=batch_size, progress=False, tta=tta)
    return repeats * len(files) / (time.perf_counter() - t)
