"""Image files -> model inputs, through the geometry of ``pipeline.geometry``.

The seed-001 chain (resize-with-pad to the canvas, centre crop, resize to the model input) is
an axis-aligned affine map, so it is done here as ONE antialiased resample of the crop window
(taken in original pixels, zero-padded where it leaves the image). That equals the three-step
chain up to resampling filters, costs one resize instead of two, and is exact in geometry.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.geometry import Geometry

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
RESAMPLE = Image.Resampling.BILINEAR  # antialiased when reducing (Pillow scales the kernel)


class ImageError(ValueError):
    """An image file that cannot be read; the message names the file."""


def open_image(path) -> Image.Image:
    """Open and fully decode an image as 8-bit RGB, with errors that name the file."""
    path = Path(path)
    try:
        img = Image.open(path)
        img.load()
    except FileNotFoundError:
        raise ImageError(f"{path}: file not found.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{path}: not a readable image ({e}). Replace or remove the file.") from None
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        arr = arr / max(arr.max(), 1.0) * 255.0
        img = Image.fromarray(arr.astype(np.uint8))
    return img if img.mode == "RGB" else img.convert("RGB")  # convert() would copy an RGB image


def image_size(path) -> tuple[int, int]:
    """(W, H) of an image file from its header only."""
    try:
        with Image.open(path) as img:
            return img.size
    except (UnidentifiedImageError, OSError) as e:
        raise ImageError(f"{path}: not a readable image ({e}).") from None


def crop_resize(img: Image.Image, geometry: Geometry, box=None) -> np.ndarray:
    """Map an original RGB image to the model input: (S, S, 3) uint8.

    The crop window (``box`` in original px, default :meth:`Geometry.crop_box`) is cut at integer
    bounds (Pillow fills the part outside the image with black) and resampled with a fractional
    box, so the output pixel grid is exactly the normalised grid of that window.
    """
    x0, y0, x1, y1 = (float(v) for v in (geometry.crop_box(img.size) if box is None else box))
    ix0, iy0 = math.floor(x0), math.floor(y0)
    ix1, iy1 = math.ceil(x1), math.ceil(y1)
    window = img.crop((ix0, iy0, ix1, iy1))
    box = (x0 - ix0, y0 - iy0, x1 - ix0, y1 - iy0)
    s = geometry.input_size
    return np.asarray(window.resize((s, s), RESAMPLE, box=box), dtype=np.uint8)


def load_model_input(path, geometry: Geometry, box=None, opener=None) -> tuple[np.ndarray, tuple[int, int]]:
    """Read ``path`` and return (model input (S, S, 3) uint8 of the crop window ``box``, original (W, H)).

    ``opener``: what decodes ``path`` in place of :func:`open_image` (e.g. one that keeps the image)."""
    img = (opener or open_image)(path)
    return crop_resize(img, geometry, box), img.size


def list_images(directory) -> list[Path]:
    """Image files directly inside ``directory``, sorted by name."""
    directory = Path(directory)
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
