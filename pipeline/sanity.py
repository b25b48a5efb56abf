"""A one-figure sanity check of preprocessed arrays: inputs with keypoints, and their heatmaps."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.arrays import atomic_path, load_dataset


def write_sanity_grid(array_dir, out_png, count: int = 8) -> Path:
    """Draw ``count`` evenly spaced samples: image + visible keypoints (top), max heatmap (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = load_dataset(array_dir)
    n = len(data)
    idx = np.linspace(0, n - 1, min(count, n)).astype(int)
    s = data.x.shape[1]
    fig, axes = plt.subplots(2, len(idx), figsize=(2.2 * len(idx), 4.6), squeeze=False)
    for col, i in enumerate(idx):
        ax = axes[0, col]
        ax.imshow(data.x[i], extent=(0, s, s, 0))  # extent: pixel edges, so (x, y) plot where they are
        xy = data.xy[i] * s
        vis = data.visible[i]
        ax.scatter(xy[vis, 0], xy[vis, 1], s=14, c="lime", edgecolors="black", linewidths=0.5)
        for k in np.flatnonzero(vis):
            ax.annotate(str(k), xy[k], color="yellow", fontsize=6, xytext=(2, -2), textcoords="offset points")
        ax.set_title(str(data.stems[i])[:18], fontsize=7)
        ax.axis("off")
        ax = axes[1, col]
        if data.heatmaps is not None:
            ax.imshow(np.asarray(data.heatmaps[i], dtype=np.float32).max(axis=-1), cmap="magma", vmin=0, vmax=1)
        ax.set_title(f"{int(vis.sum())}/{len(vis)} visible", fontsize=7)
        ax.axis("off")
    fig.suptitle("preprocess sanity: model inputs with visible keypoints, and max over heatmaps", fontsize=9)
    fig.tight_layout()
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return out_png
