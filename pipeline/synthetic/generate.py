"""Dataset writer (4SP layout) and command-line interface.

DATA_ROOT/Rendered_Images/<stem>.png, DATA_ROOT/JSON_Data_REF/<stem>.json,
DATA_ROOT/Object_Information/mesh_information.json; stems img_000000, ...
Image i is rendered from its own RNG seeded with (seed, i), so output does not
depend on the number of workers, and a run can be resumed or grown: DATA_ROOT/generation.json
records the settings, and ``resume=True`` renders only the images whose PNG and JSON are not both
on disk yet. Every file is written to a temporary sibling and renamed into place
(``pipeline.arrays.atomic_path``).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import numbers
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence, Union

from tqdm import tqdm

from pipeline.annotations import ANNOTATIONS_DIR, IMAGES_DIR, MESH_DIR
from pipeline.arrays import atomic_path

from .backgrounds import KINDS
from .meshes import Mesh, MeshError, load_mesh
from .png import encode_png
from .render import render_sample
from .shading import FaceFrames

JSON_DIR, INFO_DIR = ANNOTATIONS_DIR, MESH_DIR
MESH_FILE = "mesh_information.json"
MANIFEST_FILE = "generation.json"


def stem_for(index: int) -> str:
    return f"img_{index:06d}"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1).encode("utf-8"))


_STATE: dict = {}


def _init_worker(mesh: Mesh, out_dir: str, seed: int, width: int, height: int, background: str):
    _STATE.update(mesh=mesh, out=Path(out_dir), seed=seed, width=width, height=height,
                  background=background, frames=FaceFrames(mesh))


def _settings(mesh: Mesh, seed: int, width: int, height: int, background: str) -> dict:
    """What decides every pixel and label of a dataset (not the count or the workers)."""
    return {"seed": seed, "width": width, "height": height, "background": background, "mesh": mesh.info()}


def _todo(out: Path, count: int, settings: dict, resume: bool) -> list:
    """Indices still to render; with ``resume``, checks that DATA_ROOT was made with ``settings``."""
    if not resume:
        return list(range(count))
    stems = [stem_for(i) for i in range(count)]
    pngs = {p.stem for p in (out / IMAGES_DIR).glob("*.png")}
    if pngs:
        manifest = out / MANIFEST_FILE
        try:
            old = json.loads(manifest.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{manifest}: cannot resume, no readable generation record ({e}); "
                             f"generate into an empty directory or without --resume") from None
        diff = [k for k in settings if old.get(k) != settings[k]]
        if diff:
            raise ValueError(f"{manifest}: cannot resume, the dataset was made with other {', '.join(diff)}; "
                             f"pass the same settings, or generate into another directory")
        beyond = sorted(pngs - set(stems))
        if beyond:
            raise ValueError(f"{out / IMAGES_DIR}: holds {len(beyond)} images that a run of --count {count} does not "
                             f"write (e.g. {beyond[0]}.png); pass the count they were made with, or use another "
                             f"directory")
    done = pngs & {p.stem for p in (out / JSON_DIR).glob("*.json")}
    return [i for i, stem in enumerate(stems) if stem not in done]


def _render_one(index: int) -> int:
    s = _STATE
    img, ann, _ = render_sample(s["mesh"], index, s["seed"], s["width"], s["height"],
                                s["background"], frames=s["frames"])
    stem = stem_for(index)
    ann["image"] = f"{stem}.png"
    atomic_write_bytes(s["out"] / IMAGES_DIR / f"{stem}.png", encode_png(img))
    atomic_write_json(s["out"] / JSON_DIR / f"{stem}.json", ann)
    return index


def generate_dataset(out_dir: Union[str, Path], count: int, seed: int = 0,
                     mesh: Union[str, Path, Mesh] = "spacecraft", width: int = 1920,
                     height: int = 1080, workers: Optional[int] = None,
                     background: str = "mixed", progress: bool = True, resume: bool = False) -> Path:
    """Render `count` annotated images into out_dir (4SP layout); returns out_dir as a Path.

    mesh: 'spacecraft', 'cuboid', a .json / .obj path, or a Mesh. workers: process
    count (default os.cpu_count(); 1 = in-process). background: mixed|black|stars|earth.
    resume: keep the images already complete in out_dir (same settings required) and render the
    rest, to finish an interrupted run or grow a dataset.
    """
    if isinstance(count, bool) or not isinstance(count, numbers.Integral) or count <= 0:
        raise ValueError(f"count must be a positive integer, got {count!r}")
    count = int(count)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if int(width) < 16 or int(height) < 16:
        raise ValueError(f"image size must be at least 16x16, got {width}x{height}")
    if background != "mixed" and background not in KINDS:
        raise ValueError(f"unknown background {background!r}; choose mixed, {', '.join(KINDS)}")
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    mesh_obj = load_mesh(mesh)
    out = Path(out_dir)
    for sub in (IMAGES_DIR, JSON_DIR, INFO_DIR):
        (out / sub).mkdir(parents=True, exist_ok=True)
        for stale in (out / sub).glob("*.tmp"):  # debris of an interrupted earlier run
            stale.unlink()
    settings = _settings(mesh_obj, int(seed), int(width), int(height), background)
    todo = _todo(out, count, settings, resume)
    atomic_write_json(out / MANIFEST_FILE, settings)
    atomic_write_json(out / INFO_DIR / MESH_FILE, mesh_obj.info())
    args = (mesh_obj, str(out), int(seed), int(width), int(height), background)
    workers = max(1, min(workers, len(todo)))
    bar = tqdm(total=len(todo), desc="rendering", unit="img", disable=not progress)
    try:
        if workers == 1:
            _init_worker(*args)
            for i in todo:
                _render_one(i)
                bar.update()
        else:
            # fork is cheapest, but unsafe once TensorFlow (threads) lives in this process
            ctx = mp.get_context("spawn" if "tensorflow" in sys.modules or os.name == "nt" else "fork")
            with ctx.Pool(workers, initializer=_init_worker, initargs=args) as pool:
                for _ in pool.imap_unordered(_render_one, todo, chunksize=1):
                    bar.update()
    finally:
        bar.close()
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline.synthetic",
                                description="Render a synthetic keypoint dataset in the 4SP layout.")
    p.add_argument("--out", required=True, help="output DATA_ROOT directory")
    p.add_argument("--count", type=int, required=True, help="number of images (> 0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mesh", default="spacecraft", help="spacecraft | cuboid | PATH.json | PATH.obj")
    p.add_argument("--width", type=int, default=1920)
    p.add_argument("--height", type=int, default=1080)
    p.add_argument("--workers", type=int, default=None, help="processes (default: all CPU cores)")
    p.add_argument("--background", default="mixed", choices=("mixed",) + KINDS)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--resume", action="store_true",
                   help="keep the images already complete in --out (made with the same settings) and render "
                        "only the missing ones: finishes an interrupted run, or grows a dataset to --count")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    t0 = time.perf_counter()
    try:
        out = generate_dataset(args.out, args.count, args.seed, args.mesh, args.width,
                               args.height, args.workers, args.background, not args.no_progress,
                               resume=args.resume)
    except (MeshError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    dt = time.perf_counter() - t0
    if args.resume:
        print(f"{out} holds {args.count} images; finished in {dt:.1f} s")
    else:
        print(f"wrote {args.count} images to {out} in {dt:.1f} s ({args.count / dt:.2f} img/s)")
    return 0
