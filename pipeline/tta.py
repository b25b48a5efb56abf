"""Test-time augmentation: predict on quarter turns of each input and average back.

A model trained with full-circle in-plane rotations (``--affine-prob`` > 0, ``--rotate-max-deg``
>= 180) has seen every quarter turn of every image. Its four predictions of the same keypoint
then carry partly independent errors, and the mean of the four heatmaps, turned back, has a
sharper, better-placed peak. Quarter turns are exact pixel permutations (no resampling), so the
geometry stays exact; :meth:`Geometry.rot90` is the coordinate convention.

Legend: B batch, S input side, Sh heatmap side, K keypoints.
"""

from __future__ import annotations

import numpy as np

from pipeline.geometry import Geometry

TTA_MODES = ("auto", "none", "rot4")
TURNS = {"none": (0,), "rot4": (0, 1, 2, 3)}


def resolve_tta(mode: str, train: dict | None) -> str:
    """``auto`` -> ``rot4`` when the training config drew full-circle rotations or quarter turns, else ``none``.

    ``train``: the ``train`` section of a model sidecar (a TrainConfig dict), or None when unknown.
    """
    if mode not in TTA_MODES:
        raise ValueError(f"tta must be one of {TTA_MODES}. Received: tta={mode!r}")
    if mode != "auto":
        return mode
    t = train or {}
    full_circle = float(t.get("affine_prob", 0.0)) > 0.0 and float(t.get("rotate_max_deg", 0.0)) >= 180.0
    turned = float(t.get("turn_prob", 0.0)) > 0.0
    return "rot4" if (full_circle or turned) and t.get("augment", True) else "none"


def turned_inputs(x: np.ndarray, mode: str) -> np.ndarray:
    """(B, S, S, C) -> (T*B, S, S, C): the batch once per turn of ``mode``, turn-major."""
    return np.concatenate([np.rot90(x, k, axes=(1, 2)) for k in TURNS[mode]])


def merge_outputs(out: dict, mode: str) -> dict:
    """Model outputs on :func:`turned_inputs` -> outputs for the original batch.

    heatmaps (T*B, Sh, Sh, K) are turned back and averaged; coords (T*B, 2K) normalised are turned
    back and averaged. Returns float32 ``heatmaps`` (B, Sh, Sh, K) and ``coords`` (B, 2K).
    """
    turns = TURNS[mode]
    t = len(turns)
    h = np.asarray(out["heatmaps"], np.float32)
    b = h.shape[0] // t
    h = h.reshape((t, b) + h.shape[1:])
    c = np.asarray(out["coords"], np.float64).reshape(t, b, -1, 2)
    maps = np.mean([np.rot90(h[i], -k, axes=(1, 2)) for i, k in enumerate(turns)], axis=0)
    xy = np.mean([Geometry.rot90(c[i], -k) for i, k in enumerate(turns)], axis=0)
    return {"heatmaps": maps.astype(np.float32), "coords": xy.reshape(b, -1).astype(np.float32)}
