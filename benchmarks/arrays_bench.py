"""Synthetic preprocessed arrays of any size, written chunk by chunk (flat memory), and the memory benchmark."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np


def make_arrays(directory, n: int, k: int = 11, img_size: int = 128, chunk: int = 1024) -> Path:
    """Write X_data.npy / Y_data.npz of random content in the preprocess_vis.py layout."""
    from pipeline.arrays import X_FILE, Y_FILE, write_npz_stored

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    x = np.lib.format.open_memmap(directory / X_FILE, mode="w+", dtype=np.uint8, shape=(n, img_size, img_size, 3))
    for a in range(0, n, chunk):
        b = min(a + chunk, n)
        x[a:b] = rng.integers(0, 256, (b - a, img_size, img_size, 3), dtype=np.uint8)
    x.flush()
    del x
    xy = rng.uniform(0.1, 0.9, (n, k, 2))
    vis = rng.uniform(size=(n, k)) > 0.2
    coords = np.where(vis[..., None], xy, -1).reshape(n, 2 * k).astype(np.float32)
    config = {"img_size": img_size, "heat_size": img_size // 2, "sigma": 2.0, "canvas_w": 1920, "canvas_h": 1080,
              "crop_w": 1000, "crop_h": 1000, "num_keypoints": k}
    write_npz_stored(directory / Y_FILE, {
        "coords": coords, "visible": vis, "keypoints_px": np.full((n, k, 2), np.nan),
        "stems": np.array([f"s{i}" for i in range(n)]), "orig_sizes": np.tile([[1920, 1080]], (n, 1)),
        "affine": np.tile([[1e-3, 1e-3, -0.46, -0.04]], (n, 1)), "edges": np.zeros((0, 2), np.int32),
        "config": np.array(json.dumps(config)),
    })
    return directory


def run_epoch_memory(n: int, preset: str = "cpu", batch: int = 32, train_steps: int = 5) -> dict:
    """One full pass of the training input pipeline over N samples plus a few training steps.

    Returns seconds and images/s of the input pass; the caller reads this process's peak RSS.
    """
    import time

    from pipeline.arrays import load_dataset
    from pipeline.input_data import make_dataset
    from pipeline.model import build_model
    from pipeline.train import compile_model
    from pipeline.training_config import PRESETS, TrainConfig

    cfg = TrainConfig(**PRESETS[preset])
    with tempfile.TemporaryDirectory() as tmp:
        make_arrays(tmp, n=n)
        ds = load_dataset(tmp)
        mcfg = cfg.model_config(128, ds.num_keypoints)
        data = make_dataset(ds, np.arange(n), batch, True, sigma=2.0, heat_size=mcfg.heatmap_size,
                            augment=cfg.augment_config(), seed=0)
        t = time.perf_counter()
        seen = sum(int(x.shape[0]) for x, _ in data)
        dt = time.perf_counter() - t
        model = build_model(mcfg, None)
        compile_model(model, 1e-4, 128)
        model.fit(data.repeat(), steps_per_epoch=train_steps, epochs=1, verbose=0)
    return {"n": n, "input_pass_images": seen, "input_pass_s": dt, "input_images_per_s": seen / dt}
