"""Preprocessing stage: a 4SP dataset -> ``X_data.npy`` (uint8 inputs) and ``Y_data.npz`` (targets).

Images are decoded and resampled in parallel worker processes and streamed into preallocated
memory-mapped temp files, so memory stays flat in N; the outputs appear (renamed into place)
only after every image has been processed, so an interrupted or failed run leaves the previous
outputs untouched and never a half-written file.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline import heatmaps
from pipeline.annotations import (
    AnnotationError,
    find_mesh_file,
    load_mesh_info,
    pair_dataset,
    parse_annotation,
)
from pipeline.arrays import INDEX_FILE, X_FILE, Y_FILE, atomic_path, shard_names, write_npz_stored
from pipeline.config import PreprocessConfig, to_dict
from pipeline.geometry import Geometry
from pipeline.images import ImageError, crop_resize, decode, keep_freed_buffers, png_decoder
from pipeline.pose import calibrate_pairs
from pipeline.views import ZoomViews

CHUNK = 256  # heatmaps rendered and written per block


class PreprocessError(RuntimeError):
    """Invalid input that stops preprocessing; lists every bad file."""


@dataclass
class PreprocessReport:
    """What a run did: counts, skipped files, timing."""

    samples: int = 0  # rows written: renders x views per render
    renders: int = 0
    num_keypoints: int = 0
    skipped: list = field(default_factory=list)  # [(path, reason)]
    images_without_json: list = field(default_factory=list)
    json_without_image: list = field(default_factory=list)
    seconds: float = 0.0
    camera_note: str = ""  # the object/camera calibration used for pose refinement at inference, or why none
    png_decoder: str = ""  # what decoded 8-bit PNG files (pipeline.images.png_decoder)
    x_path: str = ""
    y_path: str = ""

    @property
    def images_per_second(self) -> float:
        return self.renders / self.seconds if self.seconds > 0 else 0.0


_GEOMETRY: Geometry | None = None
_ZOOM: ZoomViews = ZoomViews()


def _init_worker(geometry: Geometry, zoom: ZoomViews) -> None:
    global _GEOMETRY, _ZOOM
    _GEOMETRY, _ZOOM = geometry, zoom
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if png_decoder() == "wuffs":
        keep_freed_buffers()


def _load(task):
    """Decode one image once into its views: (i, inputs (V, S, S, 3), size, view boxes (V - 1, 4), error)."""
    i, path, stem, points = task

    def windows(size):  # the geometry's crop, then the zoomed views
        zoomed = _ZOOM.boxes(_GEOMETRY, size, points, stem) if _ZOOM.count else np.zeros((0, 4))
        return np.concatenate([_GEOMETRY.crop_box(size)[None], zoomed])

    try:
        img = decode(path, windows, _GEOMETRY.input_size)
        x = np.stack([crop_resize(img, _GEOMETRY, b) for b in img.windows])
        return i, x, img.size, img.windows[1:], None
    except ImageError as e:
        return i, None, None, None, str(e)


def _parse_all(pairs, k: int):
    anns, bad = [], []
    for stem, img_path, json_path in pairs:
        try:
            anns.append(parse_annotation(json_path, k))
        except AnnotationError as e:
            anns.append(None)
            bad.append((str(json_path), str(e)))
    return anns, bad


def _decode_images(tasks, geometry, zoom, workers, x_out, progress):
    """Fill rows ``i * V .. i * V + V - 1`` of ``x_out`` with the V views of image ``i`` (the geometry's
    crop, then ``zoom.count`` zoomed views) from ``tasks`` [(path, stem, points)]; returns (sizes (N, 2),
    view boxes (N, V - 1, 4), {i: error})."""
    from tqdm import tqdm

    n, v = len(tasks), 1 + zoom.count
    sizes = np.zeros((n, 2), dtype=np.int32)
    boxes = np.zeros((n, zoom.count, 4))
    errors = {}
    bar = tqdm(total=n, desc="preprocess", unit="img", disable=not progress)
    tasks = [(i, *t) for i, t in enumerate(tasks)]
    if workers <= 1:
        _init_worker(geometry, zoom)
        results = map(_load, tasks)
        pool = None
    else:
        ctx = mp.get_context("fork" if hasattr(os, "fork") else "spawn")
        pool = ctx.Pool(workers, initializer=_init_worker, initargs=(geometry, zoom))
        results = pool.imap_unordered(_load, tasks, chunksize=8)
    try:
        for i, x, size, b, err in results:
            if err is None:
                x_out[i * v:(i + 1) * v] = x
                sizes[i], boxes[i] = size, b
            else:
                errors[i] = err
            bar.update(1)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
    return sizes, boxes, errors


def preprocess(cfg: PreprocessConfig, progress: bool = True) -> PreprocessReport:
    """Run the stage; see the module docstring. Raises PreprocessError listing bad files."""
    t0 = time.perf_counter()
    geometry = cfg.geometry()
    data_dir, out_dir = Path(cfg.data_dir), Path(cfg.out_dir)
    mesh_path = Path(cfg.mesh) if cfg.mesh else find_mesh_file(data_dir)
    mesh = load_mesh_info(mesh_path)
    k = mesh.num_keypoints
    pairing = pair_dataset(data_dir)
    report = PreprocessReport(
        num_keypoints=k,
        images_without_json=pairing.images_without_json,
        json_without_image=pairing.json_without_image,
        png_decoder=png_decoder(),
    )
    pairs = pairing.pairs[: cfg.limit] if cfg.limit > 0 else pairing.pairs
    if not pairs:
        raise PreprocessError(
            f"No image in {data_dir}/Rendered_Images has an annotation of the same stem in "
            f"{data_dir}/JSON_Data_REF; nothing to train on. Generate the built-in data with "
            "`python -m pipeline.synthetic --out data --count 1000`."
        )
    anns, bad = _parse_all(pairs, k)
    if bad and not cfg.skip_invalid:
        raise PreprocessError(_bad_message(bad))

    n = len(pairs)
    cam, note = calibrate_pairs([p[1] for p in pairs], anns, geometry)
    report.camera_note = note if cam else f"none ({note})"
    out_dir.mkdir(parents=True, exist_ok=True)
    part = _Part(
        geometry=geometry,
        cfg=cfg,
        k=k,
        workers=cfg.workers if cfg.workers > 0 else (os.cpu_count() or 1),
        progress=progress,
        edges=mesh.edges,
        config=to_dict(cfg) | {"num_keypoints": k, "mesh_path": str(mesh_path), "mesh_name": mesh.name,
                               "data_dir_abs": str(data_dir.resolve()), "png_decoder": report.png_decoder,
                               "object_camera": cam.to_dict() if cam else None, "object_camera_note": report.camera_note},
    )
    shards = max(1, cfg.shards)
    if shards > n:
        raise PreprocessError(f"--shards {shards} is more than the {n} samples; use at most {n}.")
    names = [shard_names(i, shards) for i in range(shards)] if cfg.shards > 0 else [(X_FILE, Y_FILE)]
    bounds = np.linspace(0, n, len(names) + 1).round().astype(int)
    counts = []
    with contextlib.ExitStack() as stack:  # every file is renamed into place only if all succeed
        for (x_name, y_name), a, b in zip(names, bounds[:-1], bounds[1:]):
            x_tmp = stack.enter_context(atomic_path(out_dir / x_name))
            y_tmp = stack.enter_context(atomic_path(out_dir / y_name))
            m, part_bad = part.write(pairs[a:b], anns[a:b], x_tmp, y_tmp, bad)
            bad += part_bad
            counts.append(m)
        m = sum(counts)
        if m == 0:
            raise PreprocessError("Every sample was invalid; nothing written.\n" + _bad_message(bad))
        if cfg.shards > 0:
            index_tmp = stack.enter_context(atomic_path(out_dir / INDEX_FILE))
            index_tmp.write_text(json.dumps({
                "num_shards": shards, "samples": m, "num_keypoints": k,
                "shards": [{"x": x, "y": y, "samples": c} for (x, y), c in zip(names, counts)],
            }, indent=2))
    _remove_stale_outputs(out_dir, sharded=cfg.shards > 0, keep=names)
    report.samples, report.renders = m, m // (1 + cfg.zoom_views)
    report.skipped = bad
    report.seconds = time.perf_counter() - t0
    report.x_path, report.y_path = str(out_dir / names[0][0]), str(out_dir / names[0][1])
    if cfg.shards > 0:
        report.x_path, report.y_path = str(out_dir / INDEX_FILE), f"{len(names)} shards"
    if cfg.sanity_grid:
        from pipeline.sanity import write_sanity_grid

        write_sanity_grid(out_dir, cfg.sanity_grid)
    return report


@dataclass
class _Part:
    """Writes one X/Y file pair (the whole dataset, or one shard) from (pair, annotation) lists."""

    geometry: Geometry
    cfg: PreprocessConfig
    k: int
    workers: int
    progress: bool
    edges: np.ndarray
    config: dict

    def write(self, pairs, anns, x_tmp: Path, y_tmp: Path, bad_so_far) -> tuple[int, list]:
        g, k, cfg = self.geometry, self.k, self.cfg
        zoom = cfg.zoom()
        v = 1 + zoom.count  # rows per image: the geometry's crop, then the zoomed views
        n, s, hs = len(pairs), g.input_size, g.heatmap_size
        hm_dtype = np.dtype(cfg.heatmap_dtype)
        h_tmp = x_tmp.with_name(x_tmp.name + ".heatmaps.npy")  # scratch, streamed into the npz
        with _scratch(h_tmp):
            x_all = np.lib.format.open_memmap(x_tmp, mode="w+", dtype=np.uint8, shape=(n * v, s, s, 3))
            nowhere = np.full((k, 2), np.nan)
            tasks = [(img, stem, a.pixels if a is not None else nowhere) for (stem, img, _), a in zip(pairs, anns)]
            sizes, boxes, img_errors = _decode_images(tasks, g, zoom, self.workers, x_all, self.progress)
            bad = [(str(pairs[i][1]), e) for i, e in sorted(img_errors.items())]
            if (bad or bad_so_far) and not cfg.skip_invalid:
                raise PreprocessError(_bad_message(bad_so_far + bad))
            idx = np.array([i for i, a in enumerate(anns) if a is not None and i not in img_errors], dtype=int)
            rows = (idx[:, None] * v + np.arange(v)).reshape(-1)  # every view of each valid image
            m = len(rows)
            rep = lambda a: np.repeat(np.asarray(a), v, axis=0)  # noqa: E731 - per image -> per row
            pixels = rep([anns[i].pixels for i in idx]) if m else np.zeros((0, k, 2))  # original px
            vis_ann = rep([anns[i].visible for i in idx]) if m else np.zeros((0, k), bool)
            sizes = rep(sizes[idx])
            # original -> normalised per row: the geometry's crop for view 0, each zoomed view's own box
            affine = np.concatenate([g.affine(sizes[::v])[:, None],
                                     Geometry.box_affine(boxes[idx])], axis=1).reshape(m, 4) if m else np.zeros((0, 4))
            norm = pixels * affine[:, None, :2] + affine[:, None, 2:]  # (M, K, 2)
            visible = vis_ann & g.inside(np.nan_to_num(norm, nan=-1.0))
            coords = np.where(visible[..., None], norm, -1.0).astype(np.float32).reshape(m, 2 * k)
            keypoints_px = np.where(visible[..., None], pixels, np.nan)

            if m < n * v:  # compact the valid rows into a fresh file of the right length
                x_keep = np.lib.format.open_memmap(h_tmp, mode="w+", dtype=np.uint8, shape=(m, s, s, 3))
                for a in range(0, m, CHUNK):
                    x_keep[a:a + CHUNK] = x_all[rows[a:a + CHUNK]]
                x_keep.flush()
                del x_all, x_keep
                os.replace(h_tmp, x_tmp)
            else:
                x_all.flush()
                del x_all

            heat = np.lib.format.open_memmap(h_tmp, mode="w+", dtype=hm_dtype, shape=(m, hs, hs, k))
            for a in range(0, m, CHUNK):
                b = min(a + CHUNK, m)
                heat[a:b] = heatmaps.render(norm[a:b], visible[a:b], hs, cfg.sigma, dtype=hm_dtype)
            heat.flush()
            del heat
            write_npz_stored(
                y_tmp,
                {
                    "heatmaps": h_tmp,
                    "coords": coords,
                    "visible": visible,
                    "keypoints_px": keypoints_px,
                    "stems": rep([pairs[i][0] for i in idx]).astype(str) if m else np.zeros(0, str),
                    "views": np.tile(np.arange(v, dtype=np.int16), len(idx)),
                    "orig_sizes": sizes.astype(np.int32).reshape(m, 2),
                    "affine": affine,
                    "edges": self.edges,
                    "config": np.array(json.dumps(self.config)),
                },
            )
        return m, bad


def _remove_stale_outputs(out_dir: Path, sharded: bool, keep) -> None:
    """Delete outputs of an earlier run in the other layout, so the two never mix."""
    keep = {name for pair in keep for name in pair}
    stale = list(out_dir.glob("X_data-*-of-*.npy")) + list(out_dir.glob("Y_data-*-of-*.npz"))
    if sharded:
        stale += [out_dir / X_FILE, out_dir / Y_FILE]
    else:
        stale.append(out_dir / INDEX_FILE)
    for p in stale:
        if p.name not in keep:
            p.unlink(missing_ok=True)


@contextlib.contextmanager
def _scratch(path: Path):
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def _bad_message(bad) -> str:
    lines = [f"{len(bad)} invalid input file(s); nothing was written:"]
    lines += [f"  {reason}" for _, reason in bad[:50]]
    if len(bad) > 50:
        lines.append(f"  ... and {len(bad) - 50} more")
    lines.append("Fix or remove them, or pass --skip-invalid to skip them.")
    return "\n".join(lines)
