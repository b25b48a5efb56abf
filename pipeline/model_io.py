"""Saving and loading trained models with their sidecar metadata.

A model ``foo.keras`` is always accompanied by ``foo.json``, which holds what inference needs to
rebuild the data conventions: the preprocessing config (geometry, heat size, sigma), the train and
model configs, K and the validation split. Both files are written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras

from pipeline.arrays import atomic_path, write_json

DEFAULT_MODEL = "visible_keypoints_model.keras"


def sidecar_path(path) -> Path:
    """``<path without .keras>.json``."""
    path = Path(path)
    return path.with_suffix(".json") if path.suffix == ".keras" else path.with_name(path.name + ".json")


def save_model(model: keras.Model, path, meta: dict) -> Path:
    """Write ``path`` (.keras) and its JSON sidecar ``meta`` atomically; returns the model path.

    ``meta`` should hold at least ``preprocess`` (dict), ``train`` (dict), ``model`` (dict, a
    ``ModelConfig``), ``num_keypoints`` and ``val_stems``.
    """
    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"Model path must end in .keras. Received: {path}")
    with atomic_path(path) as tmp:
        tmp_keras = tmp.with_name(tmp.name + ".keras")  # Keras insists on the suffix
        try:
            model.save(tmp_keras)
            tmp_keras.replace(tmp)
        finally:
            if tmp_keras.exists():
                tmp_keras.unlink()
    write_json(sidecar_path(path), {"format": "visible-keypoints-model/1", **meta})
    return path


def load_meta(path) -> dict:
    """Read the sidecar of model ``path`` ({} with no sidecar)."""
    side = sidecar_path(path)
    if not side.is_file():
        return {}
    try:
        return json.loads(side.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"Model sidecar {side} is not valid JSON ({e}).") from e


def load_model(path=DEFAULT_MODEL, compile: bool = False) -> tuple[keras.Model, dict]:
    """Load a model saved by :func:`save_model` (safe mode) and its sidecar metadata.

    Returns:
        (model, meta). Raises FileNotFoundError with what to do when the file is missing.
    """
    import pipeline.model  # noqa: F401  (registers the custom layers, losses and metric)

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Model file {path} not found. Train one with `python train_vis.py` (it writes "
            f"{DEFAULT_MODEL} by default) or pass --model PATH to a trained .keras file."
        )
    try:
        model = keras.saving.load_model(path, compile=compile, safe_mode=True)
    except Exception as e:  # noqa: BLE001 - add the file name to any loading error
        raise ValueError(f"Could not load model {path}: {e}") from e
    meta = load_meta(path)
    if not meta:
        import warnings

        warnings.warn(f"{sidecar_path(path)} is missing: preprocessing settings are unknown.", stacklevel=2)
    return model, meta
