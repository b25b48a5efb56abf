"""Fake preprocessed datasets (X_data.npy + Y_data.npz) that a model can learn in seconds.

Each image is dim noise with one bright, distinctly coloured disc per visible keypoint, centred at
the (unrounded) keypoint position, drawn with antialiased edges so the sub-pixel centre is encoded in
the pixels. Not-visible keypoints get no disc and coords -1. Usable from any test:

    from tests.fakedata import make_fake_dataset
    make_fake_dataset(tmp_path, n=64, k=4, img_size=64)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.arrays import X_FILE, Y_FILE, write_npz_stored
from pipeline.heatmaps import render

_PALETTE = np.array([[255, 40, 40], [40, 255, 40], [60, 60, 255], [255, 255, 40], [255, 40, 255],
                     [40, 255, 255], [255, 150, 40], [150, 40, 255], [255, 255, 255], [150, 255, 150],
                     [255, 150, 150], [150, 150, 255]], dtype=np.float32)


def draw_sample(xy, visible, img_size: int, rng, radius: float | None = None) -> np.ndarray:
    """One (S, S, 3) uint8 image with a disc of colour ``_PALETTE[k]`` at each visible normalised xy."""
    s = img_size
    radius = radius if radius is not None else max(1.5, s / 32)
    img = rng.uniform(0, 40, (s, s, 3)).astype(np.float32)
    c = np.arange(s) + 0.5
    for k, ((x, y), ok) in enumerate(zip(xy, visible)):
        if not ok:
            continue
        d = np.sqrt((c[None, :] - x * s) ** 2 + (c[:, None] - y * s) ** 2)
        a = np.clip(radius + 0.5 - d, 0.0, 1.0)[..., None]  # antialiased coverage
        img = img * (1 - a) + _PALETTE[k % len(_PALETTE)] * a
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def make_fake_dataset(directory, n: int = 64, k: int = 4, img_size: int = 64, heat_size: int | None = None,
                      sigma: float = 1.5, p_hidden: float = 0.15, seed: int = 0,
                      with_heatmaps: bool = True) -> Path:
    """Write ``X_data.npy`` and ``Y_data.npz`` in the preprocess_vis.py layout into ``directory``.

    Keypoints are uniform in [0.1, 0.9]^2 (normalised); each is hidden with probability ``p_hidden``.
    Returns the directory.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    heat_size = heat_size or img_size // 2
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0.1, 0.9, (n, k, 2))
    visible = rng.uniform(size=(n, k)) >= p_hidden
    x = np.stack([draw_sample(xy[i], visible[i], img_size, rng) for i in range(n)])
    coords = np.where(visible[..., None], xy, -1.0).reshape(n, 2 * k).astype(np.float32)
    crop = 1000
    config = {"img_size": img_size, "heat_size": heat_size, "sigma": sigma, "canvas_w": 1920, "canvas_h": 1080,
              "crop_w": crop, "crop_h": crop, "num_keypoints": k, "fake": True}
    orig = np.tile([[1920, 1080]], (n, 1))
    affine = np.tile([[1 / crop, 1 / crop, -460 / crop, -40 / crop]], (n, 1))
    kp_px = (xy - affine[:, None, 2:]) / affine[:, None, :2]
    members = {
        "coords": coords,
        "visible": visible,
        "stems": np.array([f"fake_{i:05d}" for i in range(n)]),
        "orig_sizes": orig.astype(np.int32),
        "affine": affine,
        "keypoints_px": np.where(visible[..., None], kp_px, np.nan),
        "config": np.array(json.dumps(config)),
        "edges": np.array([[i, (i + 1) % k] for i in range(k)], dtype=np.int32),
    }
    if with_heatmaps:
        members["heatmaps"] = render(xy, visible, heat_size, sigma, dtype=np.float16)
    np.save(directory / X_FILE, x)
    write_npz_stored(directory / Y_FILE, members)
    return directory
