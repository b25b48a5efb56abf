"""Procedural surface materials and lighting (deferred, per rendered sample).

Materials: 0 gold foil (crinkled MLI), 1 white panels, 2 solar cells, 3 dark metal.
Surface coordinates (a, b) are in model units on each polygon's own plane.
"""
from __future__ import annotations

import numpy as np

from .meshes import DARK, GOLD, SOLAR, WHITE, Mesh, face_normals

# base albedo, specular strength, shininess
_MAT = {GOLD: ((0.85, 0.62, 0.22), 0.55, 14.0),
        WHITE: ((0.80, 0.80, 0.78), 0.15, 10.0),
        SOLAR: ((0.10, 0.15, 0.42), 0.60, 50.0),
        DARK: ((0.26, 0.26, 0.28), 0.25, 20.0)}


def _hash(i: np.ndarray, j: np.ndarray, salt: int = 0) -> np.ndarray:
    """Deterministic pseudo-random value in [0, 1) per integer lattice point."""
    h = (i.astype(np.int64) * 73856093) ^ (j.astype(np.int64) * 19349663) ^ (salt * 83492791)
    h = (h ^ (h >> 13)) * 1274126177
    return ((h ^ (h >> 16)) & 0xFFFF).astype(np.float32) / 65536.0


def value_noise(a: np.ndarray, b: np.ndarray, salt: int = 0) -> np.ndarray:
    """Smooth 2D value noise in [0, 1) (bilinear, smoothstep-faded)."""
    ia, ib = np.floor(a), np.floor(b)
    fa, fb = (a - ia).astype(np.float32), (b - ib).astype(np.float32)
    fa, fb = fa * fa * (3 - 2 * fa), fb * fb * (3 - 2 * fb)
    n00, n10 = _hash(ia, ib, salt), _hash(ia + 1, ib, salt)
    n01, n11 = _hash(ia, ib + 1, salt), _hash(ia + 1, ib + 1, salt)
    return (n00 * (1 - fa) + n10 * fa) * (1 - fb) + (n01 * (1 - fa) + n11 * fa) * fb


class FaceFrames:
    """Per-polygon model-frame data: normal (F, 3), origin (F, 3), in-plane axes e1, e2 (F, 3)."""

    def __init__(self, mesh: Mesh):
        v = mesh.vertices
        self.normal = face_normals(v, mesh.faces)
        self.origin = np.array([v[f].mean(axis=0) for f in mesh.faces])
        e1 = np.array([v[f[1]] - v[f[0]] for f in mesh.faces])
        e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
        self.e1 = e1
        self.e2 = np.cross(self.normal, e1)
        self.material = np.asarray(mesh.materials, dtype=np.int64)
        self.jitter = 0.85 + 0.3 * _hash(np.arange(len(mesh.faces)), np.full(len(mesh.faces), 7))


def _albedo(mat: int, a: np.ndarray, b: np.ndarray, face: np.ndarray):
    """Albedo (N, 3) and specular multiplier (N,) for samples of one material."""
    base = np.asarray(_MAT[mat][0], np.float32)
    if mat == GOLD:
        n = 0.6 * value_noise(a * 9, b * 9, 1) + 0.4 * value_noise(a * 31, b * 31, 2)
        seam = ((np.abs((a / 0.37) - np.round(a / 0.37)) < 0.03)
                | (np.abs((b / 0.29) - np.round(b / 0.29)) < 0.03))
        lum = (0.55 + 0.8 * n) * np.where(seam, 0.55, 1.0)
        return base[None] * lum[:, None], 0.2 + 1.6 * n ** 2
    if mat == SOLAR:
        size = 0.16
        ca, cb = np.floor(a / size), np.floor(b / size)
        fa, fb = a / size - ca, b / size - cb
        grid = (fa < 0.07) | (fb < 0.07)
        cell = 0.85 + 0.3 * _hash(ca, cb, 3)
        alb = np.where(grid[:, None], np.float32([0.55, 0.55, 0.6]), base[None] * cell[:, None])
        busbar = (np.abs(fa - 0.5) < 0.02)
        alb = np.where(busbar[:, None], np.float32([0.35, 0.35, 0.4]), alb)
        return alb, np.where(grid, 0.4, 1.0)
    if mat == WHITE:
        lines = ((np.abs(a / 0.3 - np.round(a / 0.3)) < 0.04)
                 | (np.abs(b / 0.3 - np.round(b / 0.3)) < 0.04))
        lum = (0.9 + 0.15 * value_noise(a * 5, b * 5, 4)) * np.where(lines, 0.6, 1.0)
        return base[None] * lum[:, None], np.ones_like(a, dtype=np.float32)
    r = np.sqrt(a * a + b * b)
    ring = (np.abs(r - 0.2) < 0.04) | (r < 0.08)
    lum = (0.9 + 0.2 * value_noise(a * 12, b * 12, 5)) * np.where(ring, 0.45, 1.0)
    return base[None] * lum[:, None], np.ones_like(a, dtype=np.float32)


def shade(p_cam: np.ndarray, face: np.ndarray, frames: FaceFrames, R: np.ndarray,
          t: np.ndarray, sun: np.ndarray, sun_power: float = 1.0,
          ambient: float = 0.06) -> np.ndarray:
    """Colour (N, 3) float32 in [0, 1] of N surface samples.

    p_cam (N, 3) camera-frame points, face (N,) polygon index, R/t the model->camera
    pose, sun (3,) unit vector towards the sun in the camera frame.
    """
    f32 = np.float32
    p_cam = p_cam.astype(f32, copy=False)
    # surface coords: a = e1 . (R^T (p - t) - o) = (R e1) . p - (R e1) . t - e1 . o
    e1c, e2c = (frames.e1 @ R.T).astype(f32), (frames.e2 @ R.T).astype(f32)
    off1 = (e1c @ t.astype(f32) + np.einsum("ij,ij->i", frames.e1, frames.origin)).astype(f32)
    off2 = (e2c @ t.astype(f32) + np.einsum("ij,ij->i", frames.e2, frames.origin)).astype(f32)
    a = np.einsum("ij,ij->i", p_cam, e1c[face]) - off1[face]
    b = np.einsum("ij,ij->i", p_cam, e2c[face]) - off2[face]
    n_cam = (frames.normal @ R.T).astype(f32)
    sun32 = sun.astype(f32)
    ndl = np.clip((n_cam @ sun32)[face], 0, None)  # flat shading: one value per face
    view = p_cam * (f32(-1) / np.sqrt(np.einsum("ij,ij->i", p_cam, p_cam)))[:, None]
    half = view + sun32
    half *= (f32(1) / np.maximum(np.sqrt(np.einsum("ij,ij->i", half, half)), f32(1e-9)))[:, None]
    ndh = np.clip(np.einsum("ij,ij->i", half, n_cam[face]), 0, None)
    out = np.empty((len(face), 3), np.float32)
    mats = frames.material[face]
    jit = frames.jitter[face]
    for mat in np.unique(mats):
        sel = mats == mat
        alb, spec_mul = _albedo(int(mat), a[sel], b[sel], face[sel])
        _, ks, shin = _MAT[int(mat)]
        spec = ks * spec_mul * ndh[sel] ** shin * (ndl[sel] > 0)
        light = ambient + sun_power * ndl[sel]
        out[sel] = alb * (jit[sel] * light)[:, None] + (sun_power * spec)[:, None] * np.float32([1, 0.97, 0.9])
    return np.clip(out, 0.0, 1.0)
