"""Z-buffered triangle rasteriser (vectorised numpy) and vertex visibility.

Buffers live on a *sample grid*: a crop of the image starting at pixel corner
(x0, y0) and supersampled by an integer factor s. Sample (row r, col c) sits at
image position u = x0 + (c + 0.5) / s, v = y0 + (r + 0.5) / s, so with s = 1
each image pixel is sampled at its centre (c + 0.5, r + 0.5).
Depth is camera-frame z (distance along the optical axis), inf = background.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

import numpy as np


NEAR = 1e-3  # near clipping plane (camera z, model units)


@dataclass
class Buffers:
    """Rendered sample grid. depth (h, w) float32 camera z (inf = empty);
    tri (h, w) int32 triangle id (-1 = empty); x0, y0 crop corner in image pixels; s supersampling."""

    depth: np.ndarray
    tri: np.ndarray
    x0: int
    y0: int
    s: int

    @property
    def mask(self) -> np.ndarray:
        return self.tri >= 0

    def sample_uv(self, rows: np.ndarray, cols: np.ndarray):
        """Image-pixel coordinates (u, v) of the given samples."""
        return self.x0 + (cols + 0.5) / self.s, self.y0 + (rows + 0.5) / self.s


def front_facing(tri_cam: np.ndarray) -> np.ndarray:
    """(T, 3, 3) camera-frame triangles (outward wound) -> (T,) bool, normal faces the camera."""
    n = np.cross(tri_cam[:, 1] - tri_cam[:, 0], tri_cam[:, 2] - tri_cam[:, 0])
    return np.einsum("ij,ij->i", n, tri_cam[:, 0]) < 0


def clip_near(tri: np.ndarray, near: float = NEAR) -> List[np.ndarray]:
    """Clip one (3, 3) camera-frame triangle to z >= near -> list of (3, 3) triangles."""
    z = tri[:, 2]
    if np.all(z >= near):
        return [tri]
    if np.all(z < near):
        return []
    poly = []
    for i in range(3):
        a, b = tri[i], tri[(i + 1) % 3]
        if a[2] >= near:
            poly.append(a)
        if (a[2] >= near) != (b[2] >= near):
            t = (near - a[2]) / (b[2] - a[2])
            poly.append(a + t * (b - a))
    return [np.stack([poly[0], poly[j], poly[j + 1]]) for j in range(1, len(poly) - 1)]


def rasterize(tri_xy: np.ndarray, tri_z: np.ndarray, tri_ids: Sequence[int],
              shape) -> tuple:
    """Z-buffer triangles on a sample grid.

    tri_xy (T, 3, 2): vertex positions in sample-grid units (sample (r, c) centre at
    (c + 0.5, r + 0.5)); tri_z (T, 3): camera z (> 0) of the vertices; tri_ids (T,):
    id written to the id buffer. shape (h, w). Depth is interpolated perspective-
    correctly (1/z linear in screen space). Returns (depth float32, ids int32).
    """
    h, w = shape
    depth = np.full((h, w), np.inf, np.float32)
    ids = np.full((h, w), -1, np.int32)
    for p, z, tid in zip(tri_xy, tri_z, tri_ids):
        (xa, ya), (xb, yb), (xc, yc) = p
        area = (xb - xa) * (yc - ya) - (xc - xa) * (yb - ya)
        if abs(area) < 1e-12:
            continue
        c0 = max(int(np.ceil(min(xa, xb, xc) - 0.5)), 0)
        c1 = min(int(np.floor(max(xa, xb, xc) - 0.5)), w - 1)
        r0 = max(int(np.ceil(min(ya, yb, yc) - 0.5)), 0)
        r1 = min(int(np.floor(max(ya, yb, yc) - 0.5)), h - 1)
        if c1 < c0 or r1 < r0:
            continue
        dx = (np.arange(c0, c1 + 1, dtype=np.float64) + 0.5 - xa).astype(np.float32)[None, :]
        dy = (np.arange(r0, r1 + 1, dtype=np.float64) + 0.5 - ya).astype(np.float32)[:, None]
        inv = 1.0 / area
        l1 = dx * np.float32((yc - ya) * inv) - dy * np.float32((xc - xa) * inv)
        l2 = dy * np.float32((xb - xa) * inv) - dx * np.float32((yb - ya) * inv)
        inside = (l1 >= 0) & (l2 >= 0) & (l1 + l2 <= 1)
        if not inside.any():
            continue
        w0, w1, w2 = 1.0 / z[0], 1.0 / z[1], 1.0 / z[2]
        with np.errstate(divide="ignore", over="ignore"):  # only pixels outside the triangle blow up
            zz = 1.0 / (np.float32(w0) + l1 * np.float32(w1 - w0) + l2 * np.float32(w2 - w0))
        dsub = depth[r0:r1 + 1, c0:c1 + 1]
        m = inside & (zz < dsub)
        dsub[m] = zz[m]
        ids[r0:r1 + 1, c0:c1 + 1][m] = tid
    return depth, ids


def vertex_visibility(buf: Buffers, uv: np.ndarray, z: np.ndarray,
                      incident: Sequence[set], front: np.ndarray,
                      radius: int = 0, rel_tol: float = 2e-3) -> np.ndarray:
    """Per-vertex z-buffer visibility (frame bounds NOT checked here).

    uv (K, 2) image pixels, z (K,) camera depth, incident[k] = ids of triangles
    containing vertex k, front (T,) front-facing flags. Vertex k is visible iff
    one of its triangles faces the camera and, within +-radius samples of the
    sample containing its projection (default: that sample only), some sample shows
    one of its own triangles or lies no nearer than z_k * (1 - rel_tol)
    (background counts, so silhouette vertices stay visible).
    """
    h, w = buf.depth.shape
    out = np.zeros(len(uv), dtype=bool)
    for k, ((u, v), zk) in enumerate(zip(uv, z)):
        own = [t for t in incident[k] if front[t]]
        if not own or zk <= NEAR:
            continue
        c = int(np.floor((u - buf.x0) * buf.s))
        r = int(np.floor((v - buf.y0) * buf.s))
        rs, re = max(r - radius, 0), min(r + radius + 1, h)
        cs, ce = max(c - radius, 0), min(c + radius + 1, w)
        if rs >= re or cs >= ce:
            out[k] = True  # projects outside the rendered crop: nothing drawn there
            continue
        dwin = buf.depth[rs:re, cs:ce]
        twin = buf.tri[rs:re, cs:ce]
        out[k] = bool(np.isin(twin, own).any() or (dwin >= zk * (1 - rel_tol)).any())
    return out
