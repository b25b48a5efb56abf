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
from pipeline.arrays import X_FILE, Y_FILE, atomic_path, write_npz_stored
from pipeline.config import PreprocessConfig, to_dict
from pipeline.geometry import Geometry
from pipeline.images import ImageError, load_model_input

CHUNK = 256  # heatmaps rendered and written per block


class PreprocessError(RuntimeError):
    """Invalid input that stops preprocessing; lists every bad file."""


@dataclass
class PreprocessReport:
    """What a run did: counts, skipped files, timing."""

    samples: int = 0
    num_keypoints: int = 0
    skipped: list = field(default_factory=list)  # [(path, reason)]
    images_without_json: list = field(default_factory=list)
    json_without_image: list = field(default_factory=list)
    seconds: float = 0.0
    x_path: str = ""
    y_path: str = ""

    @property
    def images_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0


_GEOMETRY: Geometry | None = None


def _init_worker(geometry: Geometry) -> None:
    global _GEOMETRY
    _GEOMETRY = geometry
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def _load(task):
    i, path = task
    try:
        x, size = load_model_input(path, _GEOMETRY)
        return i, x, size, None
    except ImageError as e:
        return i, None, None, str(e)


def _parse_all(pairs, k: int):
    anns, bad = [], []
    for stem, img_path, json_path in pairs:
        try:
            anns.append(parse_annotation(json_path, k))
        except AnnotationError as e:
            anns.append(None)
            bad.append((str(json_path), str(e)))
    return anns, bad


def _decode_images(paths, geometry, workers, x_out, progress):
    """Fill ``x_out[i]`` from ``paths[i]``; returns (sizes (N, 2), {i: error})."""
    from tqdm import tqdm

    n = len(paths)
    sizes = np.zeros((n, 2), dtype=np.int32)
    errors = {}
    tasks = list(enumerate(paths))
    bar = tqdm(total=n, desc="preprocess", unit="img", disable=not progress)
    if workers <= 1:
        _init_worker(geometry)
        results = map(_load, tasks)
        pool = None
    else:
        ctx = mp.get_context("fork" if hasattr(os, "fork") else "spawn")
        pool = ctx.Pool(workers, initializer=_init_worker, initargs=(geometry,))
        results = pool.imap_unordered(_load, tasks, chunksize=8)
    try:
        for i, x, size, err in results:
            if err is None:
                x_out[i] = x
                sizes[i] = size
            else:
                errors[i] = err
            bar.update(1)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
    return sizes, errors


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
    s, hs = geometry.input_size, geometry.heatmap_size
    out_dir.mkdir(parents=True, exist_ok=True)
    workers = cfg.workers if cfg.workers > 0 else (os.cpu_count() or 1)
    hm_dtype = np.dtype(cfg.heatmap_dtype)
    h_tmp = out_dir / f".heatmaps.{os.getpid()}.tmp.npy"  # scratch, streamed into Y_data.npz
    with atomic_path(out_dir / X_FILE) as x_tmp, atomic_path(out_dir / Y_FILE) as y_tmp, _scratch(h_tmp):
        x_all = np.lib.format.open_memmap(x_tmp, mode="w+", dtype=np.uint8, shape=(n, s, s, 3))
        sizes, img_errors = _decode_images([p[1] for p in pairs], geometry, workers, x_all, progress)
        bad += [(str(pairs[i][1]), e) for i, e in sorted(img_errors.items())]
        if bad and not cfg.skip_invalid:
            raise PreprocessError(_bad_message(bad))
        keep = np.array([a is not None and i not in img_errors for i, a in enumerate(anns)])
        if not keep.any():
            raise PreprocessError("Every sample was invalid; nothing written.\n" + _bad_message(bad))
        idx = np.flatnonzero(keep)
        m = len(idx)
        pixels = np.stack([anns[i].pixels for i in idx])  # (M, K, 2) original px
        vis_ann = np.stack([anns[i].visible for i in idx])
        sizes = sizes[idx]
        norm = geometry.to_normalised(pixels, sizes)  # (M, K, 2)
        visible = vis_ann & geometry.inside(np.nan_to_num(norm, nan=-1.0))
        coords = np.where(visible[..., None], norm, -1.0).astype(np.float32).reshape(m, 2 * k)
        keypoints_px = np.where(visible[..., None], pixels, np.nan)

        if m < n:  # compact the valid rows into a fresh file of the right length
            x_keep = np.lib.format.open_memmap(h_tmp, mode="w+", dtype=np.uint8, shape=(m, s, s, 3))
            for a in range(0, m, CHUNK):
                x_keep[a:a + CHUNK] = x_all[idx[a:a + CHUNK]]
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

        config = to_dict(cfg) | {"num_keypoints": k, "mesh_path": str(mesh_path), "mesh_name": mesh.name}
        write_npz_stored(
            y_tmp,
            {
                "heatmaps": h_tmp,
                "coords": coords,
                "visible": visible,
                "keypoints_px": keypoints_px,
                "stems": np.array([pairs[i][0] for i in idx]),
                "orig_sizes": sizes.astype(np.int32),
                "affine": geometry.affine(sizes),
                "edges": mesh.edges,
                "config": np.array(json.dumps(config)),
            },
        )
    report.samples = m
    report.skipped = bad
    report.seconds = time.perf_counter() - t0
    report.x_path, report.y_path = str(out_dir / X_FILE), str(out_dir / Y_FILE)
    if cfg.sanity_grid:
        from pipeline.sanity import write_sanity_grid

        write_sanity_grid(report.x_path, report.y_path, cfg.sanity_grid)
    return report


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
