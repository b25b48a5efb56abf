"""Tiny 4SP datasets for tests: images with bright dots at known, unrounded keypoint positions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def mesh_json(k: int) -> dict:
    edges = [[i, (i + 1) % k] for i in range(k)]
    return {
        "object_name": f"ring{k}",
        "total_vertices": k,
        "total_edges": len(edges),
        "total_faces": 0,
        "vertex_connectivity": {str(i): [(i - 1) % k, (i + 1) % k] for i in range(k)},
        "face_composition": [],
        "edge_composition": edges,
    }


def annotation(pixels, visible) -> dict:
    """A 4SP annotation; not-visible vertices alternate between back-facing and behind-camera."""
    vis, non = [], []
    for i, ((u, v), ok) in enumerate(zip(pixels, visible)):
        entry = {"index": i, "coordinates": [0.1 * i, 0.0, 1.0]}
        if ok:
            vis.append(entry | {"pixel_coordinates": [float(u), float(v)]})
        elif i % 2:
            non.append(entry | {"status": "Behind camera"})
        else:
            non.append(entry | {"pixel_coordinates": [float(u), float(v)]})
    return {
        "visible_vertices": vis,
        "non_visible_vertices": non,
        "rotation": {"x": 0.1, "y": 0.2, "z": 0.3},
        "rotation_quaternion": {"w": 1.0, "x": 0.0, "y": 0.0, "z": 0.0},
    }


def draw_dots(w: int, h: int, pixels, visible, radius: float = 3.0, rng=None) -> np.ndarray:
    """(H, W, 3) uint8: dim noise plus a bright Gaussian dot at each visible (u, v)."""
    rng = rng or np.random.default_rng(0)
    img = rng.uniform(0, 20, size=(h, w)).astype(np.float64)
    yy, xx = np.mgrid[0:h, 0:w] + 0.5  # pixel centres
    for (u, v), ok in zip(pixels, visible):
        if ok:
            img += 235 * np.exp(-((xx - u) ** 2 + (yy - v) ** 2) / (2 * radius**2))
    img = np.clip(img, 0, 255).astype(np.uint8)
    return np.repeat(img[..., None], 3, axis=-1)


def write_dataset(root, sizes=((320, 180),), k: int = 5, per_size: int = 2, seed: int = 0) -> Path:
    """Write a 4SP dataset; keypoints lie inside the centre crop region of each image."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for sub in ("Rendered_Images", "JSON_Data_REF", "Object_Information"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "Object_Information" / "mesh_information.json").write_text(json.dumps(mesh_json(k)))
    n = 0
    for w, h in sizes:
        for _ in range(per_size):
            side = min(w, h)
            cx, cy = w / 2, h / 2
            pixels = np.stack(
                [rng.uniform(cx - 0.35 * side, cx + 0.35 * side, k), rng.uniform(cy - 0.35 * side, cy + 0.35 * side, k)],
                axis=-1,
            )
            visible = rng.uniform(size=k) > 0.25
            visible[0] = True
            stem = f"img_{n:04d}"
            Image.fromarray(draw_dots(w, h, pixels, visible, radius=max(1.5, side / 80), rng=rng)).save(
                root / "Rendered_Images" / f"{stem}.png"
            )
            (root / "JSON_Data_REF" / f"{stem}.json").write_text(json.dumps(annotation(pixels, visible)))
            n += 1
    return root
