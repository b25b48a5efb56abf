"""Zoomed training views: extra crops of each render, centred on its object and magnified.

At inference the second look (:mod:`pipeline.second_look`) crops each image again around the
object, magnified until it fills up to ``FILL`` of the window. A model trained only on the
geometry's fixed crop has seen objects at the scales the renders happen to give them, mostly
smaller than that. Preprocessing can add, per render, ``count`` crops of the same kind: centred on
the bounding box of the annotated vertices (the pose's projected vertices play that part at
inference), jittered a little, and magnified until that box fills a share drawn from ``fill``,
within the same limits as the second look (never below zoom 1 nor past one original pixel per
model-input pixel). The draws are seeded per render stem, so they do not depend on the order,
sharding or worker count of the run.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from pipeline.geometry import Geometry
from pipeline.second_look import look_boxes


@dataclass(frozen=True)
class ZoomViews:
    """How many views per render (0: none), the range of the object's share of a view, the centre
    jitter (standard deviation, as a share of the view's side) and the seed."""

    count: int = 0
    fill: tuple[float, float] = (0.55, 0.9)
    jitter: float = 0.02
    seed: int = 0

    def __post_init__(self):
        if len(self.fill) != 2:
            raise ValueError(f"zoom_fill takes two shares, low and high. Received: {tuple(self.fill)}")
        lo, hi = (float(v) for v in self.fill)
        if self.count < 0:
            raise ValueError(f"zoom_views must be >= 0. Received: {self.count}")
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"zoom_fill must be two shares 0 < low <= high <= 1. Received: {tuple(self.fill)}")
        if self.jitter < 0:
            raise ValueError(f"zoom_jitter must be >= 0. Received: {self.jitter}")

    def boxes(self, geometry: Geometry, size, points: np.ndarray, stem: str) -> np.ndarray:
        """The ``count`` view windows (count, 4) ``[x0, y0, x1, y1]`` original px of one render of
        ``size`` (W, H), from its vertices ``points`` (K, 2) original px (NaN where unknown). A render
        without a known vertex gets the geometry's crop window, jittered."""
        n = self.count
        rng = np.random.default_rng([self.seed, zlib.crc32(str(stem).encode())])
        fills = rng.uniform(float(self.fill[0]), float(self.fill[1]), n)
        pts = np.broadcast_to(np.asarray(points, np.float64), (n,) + np.shape(points))
        boxes, _ = look_boxes(geometry, np.tile(np.asarray(size, np.float64), (n, 1)), pts,
                              np.isfinite(pts).all(-1), fills)
        shift = rng.normal(0.0, self.jitter, (n, 2)) * (boxes[:, 2:] - boxes[:, :2])
        return boxes + np.concatenate([shift, shift], axis=1)
