"""Procedural backgrounds: black space, star field, Earth limb. Output (H, W, 3) float32 in [0, 1]."""
from __future__ import annotations

import numpy as np
from PIL import Image

KINDS = ("black", "stars", "earth")
_MIX_P = (0.25, 0.4, 0.35)


def choose_kind(kind: str, rng: np.random.Generator) -> str:
    """Resolve 'mixed' to one concrete kind; validate the others."""
    if kind == "mixed":
        return str(rng.choice(KINDS, p=_MIX_P))
    if kind not in KINDS:
        raise ValueError(f"unknown background {kind!r}; choose mixed, {', '.join(KINDS)}")
    return kind


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """(h, w) float32 smooth noise in ~[0, 1]: a random (cells x cells*w/h) grid upsampled bilinearly."""
    gh, gw = max(cells, 2), max(int(round(cells * w / h)), 2)
    grid = rng.random((gh, gw), dtype=np.float32)
    return np.asarray(Image.fromarray(grid, mode="F").resize((w, h), Image.BILINEAR))


def _fbm(rng: np.random.Generator, h: int, w: int, base: int, octaves: int = 4) -> np.ndarray:
    total, amp, norm = np.zeros((h, w), np.float32), 1.0, 0.0
    for o in range(octaves):
        total += amp * _smooth_noise(rng, h, w, base * 2 ** o)
        norm += amp
        amp *= 0.5
    return total / norm


def stars(img: np.ndarray, rng: np.random.Generator, density: float = 1.0) -> np.ndarray:
    """Add point stars in place (power-law brightness, slight colour tint)."""
    h, w = img.shape[:2]
    n = int(rng.integers(150, 900) * density * (w * h) / (1920 * 1080)) + 1
    x = rng.integers(0, w, n)
    y = rng.integers(0, h, n)
    mag = np.clip(0.15 / rng.random(n) ** 0.6, 0, 1.0).astype(np.float32) * 0.9
    tint = 1 - 0.25 * rng.random((n, 3)).astype(np.float32)
    img[y, x] = np.maximum(img[y, x], mag[:, None] * tint)
    big = mag > 0.6  # bright stars bleed into neighbours
    for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0)):
        yy, xx = np.clip(y[big] + dy, 0, h - 1), np.clip(x[big] + dx, 0, w - 1)
        img[yy, xx] = np.maximum(img[yy, xx], 0.35 * mag[big, None] * tint[big])
    return img


def _up(a: np.ndarray, w: int, h: int) -> np.ndarray:
    """Bilinear upsampling of a (h', w') float32 map to (h, w)."""
    return np.asarray(Image.fromarray(np.ascontiguousarray(a, np.float32), mode="F")
                      .resize((w, h), Image.BILINEAR))


def earth(img: np.ndarray, rng: np.random.Generator, scale: int = 3) -> np.ndarray:
    """Paint (in place) a large Earth-like disc whose limb crosses the frame, with land,
    clouds, limb haze and an atmosphere glow. Computed at 1/scale resolution, upsampled."""
    H, W = img.shape[:2]
    h, w = max(H // scale, 8), max(W // scale, 8)
    sx, sy = W / w, H / h
    radius = float(rng.uniform(1.0, 3.5) * max(W, H))
    ang = rng.uniform(0, 2 * np.pi)
    d = np.array([np.cos(ang), np.sin(ang)])
    p = np.array([rng.uniform(0.15, 0.85) * W, rng.uniform(0.15, 0.85) * H])
    cx, cy = p + d * radius  # limb passes through p, planet lies towards d
    xs = ((np.arange(w, dtype=np.float32) + 0.5) * np.float32(sx) - np.float32(cx))[None, :]
    ys = ((np.arange(h, dtype=np.float32) + 0.5) * np.float32(sy) - np.float32(cy))[:, None]
    r = np.sqrt(xs * xs + ys * ys) / np.float32(radius)  # 1 at the limb
    mu = np.sqrt(np.clip(1 - r * r, 0, 1))  # cosine of the view angle on the sphere
    landn = _fbm(rng, h, w, 3)
    land = np.clip((landn - 0.56) * 20, 0, 1)[..., None]
    ocean = np.float32([0.03, 0.13, 0.38])
    green = np.float32([0.2, 0.27, 0.1]) * (0.7 + 0.6 * _fbm(rng, h, w, 12, 3))[..., None]
    ground = ocean * (1 - land) + green * land
    cloud = np.clip((_fbm(rng, h, w, 4, 5) - 0.45) * 3.5, 0, 1)[..., None]
    surf = ground * (1 - cloud) + np.float32([0.95, 0.95, 0.97]) * cloud
    sun_side = rng.uniform(-1, 1, 2).astype(np.float32)  # day/night gradient across the disc
    day = np.clip(0.55 + 0.6 * (sun_side[0] * xs + sun_side[1] * ys) / max(W, H), 0.08, 1.0)
    haze = np.exp(-mu * 12)[..., None] * np.float32([0.35, 0.55, 1.0])
    disc = np.clip(surf * ((0.25 + 0.75 * np.sqrt(mu)) * day)[..., None]
                   + 0.5 * haze * day[..., None], 0, 1)
    alpha = np.clip((1 - r) * radius / sx + 0.5, 0, 1)  # ~1 px anti-aliased limb
    glow = np.exp(-np.clip(r - 1, 0, None) * radius / (0.01 * radius + 6))
    glow = (glow * (1 - alpha) * day)[..., None] * np.float32([0.3, 0.5, 1.0])
    prem = disc * alpha[..., None] + glow
    a_full = _up(alpha, W, H)[..., None]
    layer = np.stack([_up(prem[..., c], W, H) for c in range(3)], axis=-1)
    img[...] = layer + (1 - a_full) * img
    return img


def make_background(kind: str, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """Background image (height, width, 3) float32 for a concrete kind (not 'mixed')."""
    img = np.zeros((height, width, 3), np.float32)
    if kind == "black":
        return img
    stars(img, rng, density=1.0 if kind == "stars" else 0.4)
    if kind == "earth":
        earth(img, rng)
    return img
