"""Preprocessing: the pipeline's stage vs a seed-001-style loop (eager TF, one image at a time)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def jpeg_copy(data_dir: str, out_dir: str, quality: int = 95) -> str:
    """The dataset at ``data_dir`` with its renders re-encoded as JPEG (once; kept for later runs)."""
    import os
    import shutil
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    src, dst = Path(data_dir), Path(out_dir)
    for sub in ("JSON_Data_REF", "Object_Information"):
        shutil.copytree(src / sub, dst / sub, dirs_exist_ok=True)
    (dst / "Rendered_Images").mkdir(parents=True, exist_ok=True)

    def convert(png: Path):
        out = dst / "Rendered_Images" / f"{png.stem}.jpg"
        if not out.exists():
            tmp = out.with_name(f".{out.name}.tmp")
            Image.open(png).convert("RGB").save(tmp, format="JPEG", quality=quality)
            os.replace(tmp, out)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(convert, sorted((src / "Rendered_Images").glob("*.png"))))
    return str(dst)


def run_pipeline(data_dir: str, out_dir: str, workers: int = 0) -> dict:
    from pipeline.config import PreprocessConfig
    from pipeline.preprocess import preprocess

    cfg = PreprocessConfig(data_dir=data_dir, out_dir=out_dir, workers=workers, sanity_grid="")
    report = preprocess(cfg, progress=False)
    return {"images": report.samples, "seconds": report.seconds, "images_per_s": report.images_per_second}


def run_naive(data_dir: str, out_dir: str) -> dict:
    """Seed-001 style: eager TF ops per image, Python lists, float32 X, stacked at the end."""
    import tensorflow as tf

    from pipeline.annotations import (
        find_mesh_file,
        load_mesh_info,
        pair_dataset,
        parse_annotation,
    )

    t0 = time.perf_counter()
    k = load_mesh_info(find_mesh_file(data_dir)).num_keypoints
    xs, hms, coords = [], [], []
    yy, xx = np.mgrid[0:64, 0:64]
    for stem, img_path, json_path in pair_dataset(data_dir).pairs:
        img = tf.io.decode_image(tf.io.read_file(str(img_path)), channels=3, expand_animations=False)
        img = tf.image.resize_with_pad(tf.cast(img, tf.float32), 1080, 1920)
        img = tf.image.crop_to_bounding_box(img, 40, 460, 1000, 1000)
        img = tf.image.resize(img, (128, 128))
        img = tf.keras.applications.resnet50.preprocess_input(img)
        xs.append(img.numpy())
        ann = parse_annotation(json_path, k)
        maps = np.zeros((64, 64, k), np.float32)
        c = np.full(2 * k, -1.0, np.float32)
        for i in np.flatnonzero(ann.visible):
            u, v = (ann.pixels[i] - [460, 40]) / 1000.0
            if 0 <= u < 1 and 0 <= v < 1:
                maps[..., i] = np.exp(-((xx - u * 63) ** 2 + (yy - v * 63) ** 2) / 8.0)
                c[2 * i : 2 * i + 2] = (u, v)
        hms.append(maps)
        coords.append(c)
    x = np.stack(xs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "X_naive.npy", x)
    np.savez(out / "Y_naive.npz", heatmaps=np.stack(hms), coords=np.stack(coords))
    dt = time.perf_counter() - t0
    return {"images": len(xs), "seconds": dt, "images_per_s": len(xs) / dt}
