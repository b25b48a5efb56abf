"""Inference: image files -> original-resolution keypoints, the pipeline vs a per-image loop."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def _model(preset: str, k: int):
    from pipeline.model import build_model
    from pipeline.training_config import PRESETS, TrainConfig

    return build_model(TrainConfig(**PRESETS[preset]).model_config(128, k), None)


def _files(data_dir: str, limit: int):
    from pipeline.images import list_images

    files = list_images(Path(data_dir) / "Rendered_Images")[:limit]
    if not files:
        raise FileNotFoundError(f"No images in {data_dir}/Rendered_Images")
    return files


def run_pipeline(data_dir: str, preset: str = "paper", limit: int = 256, k: int = 11) -> dict:
    """Batch 32 throughput and batch-1 latency (median, p95) end to end, plus model-only images/s.

    The model has the precision that ``train_vis.py --precision auto`` gives the preset on this
    machine (a saved model keeps its layers' precision, so that is what use_vis.py then runs)."""
    from pipeline.fold import fold_batchnorm
    from pipeline.geometry import Geometry
    from pipeline.infer import benchmark_throughput, predict_files
    from pipeline.precision import apply_precision
    from pipeline.training_config import PRESETS, TrainConfig

    g = Geometry()
    files = _files(data_dir, limit)
    policy, _ = apply_precision("auto", TrainConfig(**PRESETS[preset]).backbone)
    model = fold_batchnorm(_model(preset, k))  # as use_vis.py loads it
    e2e_32 = benchmark_throughput(model, files, g, batch_size=32)
    e2e_tta = {mode: benchmark_throughput(model, files, g, batch_size=32, tta=mode) for mode in ("rot4", "rot8")}
    lat = []
    predict_files(model, files[:2], g, batch_size=1, progress=False)
    for f in files[:40]:
        t = time.perf_counter()
        p = predict_files(model, [f], g, batch_size=1, progress=False)
        g.from_normalised(p.xy, p.sizes)  # to original pixels, as use_vis does
        lat.append(time.perf_counter() - t)
    x = np.random.default_rng(0).integers(0, 256, (32, 128, 128, 3)).astype(np.uint8)
    model.predict_on_batch(x)
    t = time.perf_counter()
    for _ in range(5):
        model.predict_on_batch(x)
    model_32 = 5 * 32 / (time.perf_counter() - t)
    t = time.perf_counter()
    for _ in range(20):
        model.predict_on_batch(x[:1])
    model_1 = 20 / (time.perf_counter() - t)
    return {
        "preset": preset, "images": len(files), "precision": policy,
        "e2e_b32_images_per_s": e2e_32, **{f"e2e_b32_{m}_images_per_s": v for m, v in e2e_tta.items()},
        "e2e_b1_latency_ms_median": 1000 * float(np.median(lat)),
        "e2e_b1_latency_ms_p95": 1000 * float(np.percentile(lat, 95)),
        "model_b32_images_per_s": model_32, "model_b1_images_per_s": model_1,
    }


def run_naive(data_dir: str, preset: str = "paper", limit: int = 64, k: int = 11) -> dict:
    """Seed-001 style: per image, eager TF preprocessing then ``model.predict`` on a batch of one, with
    the network built from stock Keras layers."""
    import tensorflow as tf

    from benchmarks.train_bench import stock_model

    files = _files(data_dir, limit)
    model = stock_model(_model(preset, k))

    def one(f):
        img = tf.io.decode_image(tf.io.read_file(str(f)), channels=3, expand_animations=False)
        h, w = int(img.shape[0]), int(img.shape[1])
        img = tf.image.resize_with_pad(tf.cast(img, tf.float32), 1080, 1920)
        img = tf.image.crop_to_bounding_box(img, 40, 460, 1000, 1000)
        img = tf.image.resize(img, (128, 128))
        out = model.predict(img[None].numpy(), verbose=0)
        xy = out["coords"].reshape(-1, 2) * 1000 + [460, 40]
        s = min(1920 / w, 1080 / h)
        return (xy - [(1920 - w * s) / 2, (1080 - h * s) / 2]) / s

    one(files[0])
    lat = []
    t0 = time.perf_counter()
    for f in files:
        t = time.perf_counter()
        one(f)
        lat.append(time.perf_counter() - t)
    dt = time.perf_counter() - t0
    return {"preset": preset, "images": len(files), "e2e_images_per_s": len(files) / dt,
            "e2e_b1_latency_ms_median": 1000 * float(np.median(lat)),
            "e2e_b1_latency_ms_p95": 1000 * float(np.percentile(lat, 95))}
