"""Image files -> model inputs, through the geometry of ``pipeline.geometry``.

The seed-001 chain (resize-with-pad to the canvas, centre crop, resize to the model input) is
an axis-aligned affine map, so it is done here as ONE antialiased resample of the crop window
(taken in original pixels, zero-padded where it leaves the image). That equals the three-step
chain up to resampling filters, costs one resize instead of two, and is exact in geometry.
"""

from __future__ import annotations

import ctypes
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.geometry import Geometry

try:  # optional (requirements-fast.txt): decodes PNG faster than Pillow, pixel for pixel the same
    from pywuffs import ImageDecoderType, PixelFormat
    from pywuffs.aux import ImageDecoder, ImageDecoderConfig
except ImportError:
    ImageDecoder = None

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
RESAMPLE = Image.Resampling.BILINEAR  # antialiased when reducing (Pillow scales the kernel)
# Scaled JPEG decoding keeps at least this many decoded pixels per model-input pixel across every
# crop window, so the final antialiased resample still reduces: on 1080p renders, a 1000-px window
# decoded at 1/2 changed the 128-px inputs by 0.16 grey levels on average (JPEG q95 itself: 0.25).
MIN_DECODED_PER_INPUT = 2.0
DCT_SCALES = (8, 4, 2)  # the reductions libjpeg's scaled inverse DCT offers
PNG_DECODER_ENV = "KEYPOINTS_PNG_DECODER"  # "pillow" rules Wuffs out where it is installed


class ImageError(ValueError):
    """An image file that cannot be read; the message names the file."""


@dataclass(frozen=True)
class Decoded:
    """An RGB image decoded ``scale`` times smaller than its file (1: full size), with the file's own
    (W, H) and the crop windows (V, 4) in original px it was decoded for. Pixel ``j`` of ``image``
    covers original ``[scale * j, scale * (j + 1))``: the pure scale of ``pipeline.geometry``.

    ``image`` is a Pillow image, or the (H, W, 3) uint8 array Wuffs decoded: :func:`crop_resize` then
    hands Pillow only each crop window, as copying a whole 1080p render into a Pillow image costs
    3-4 ms and, in two worker processes, thousands of page faults per image."""

    image: Image.Image | np.ndarray
    size: tuple[int, int]
    scale: int = 1
    windows: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))

    def pil(self) -> Image.Image:
        """The decoded image as a Pillow RGB image."""
        return Image.fromarray(self.image) if isinstance(self.image, np.ndarray) else self.image


def decode_scale(windows, input_size: int) -> int:
    """The largest JPEG reduction (1, 2, 4 or 8) that keeps :data:`MIN_DECODED_PER_INPUT` decoded px per
    input px on the smallest of ``windows`` (V, 4) [x0, y0, x1, y1] in original px."""
    w = np.asarray(windows, np.float64).reshape(-1, 4)
    if len(w) == 0 or input_size <= 0:
        return 1
    side = float(np.min(np.minimum(w[:, 2] - w[:, 0], w[:, 3] - w[:, 1])))
    return next((k for k in DCT_SCALES if side / k >= MIN_DECODED_PER_INPUT * input_size), 1)


def png_decoder() -> str:
    """The decoder of 8-bit grey and RGB PNG files: "wuffs" where pywuffs is installed (Wuffs inflates
    and unfilters about 1.4x faster than Pillow's zlib path: 20 vs 28 ms for a 1080p render, and 12.4
    vs 17 ms per render on two threads, AMD EPYC), unless ``$KEYPOINTS_PNG_DECODER`` is "pillow"."""
    if ImageDecoder is None or os.environ.get(PNG_DECODER_ENV, "").lower() == "pillow":
        return "pillow"
    return "wuffs"


def keep_freed_buffers() -> bool:
    """Have glibc keep freed blocks of up to 32 MB for reuse (True where it could be told).

    By default it hands a freed multi-megabyte block back to the system at once, so every Wuffs decode
    faults its pixel buffer in anew: about 3,900 page faults per 1080p render in a preprocessing
    worker, 35-38 instead of 26 ms per image there (2-core AMD EPYC). Call it in processes that decode
    many images."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
        return bool(libc.mallopt(m_mmap_threshold, 32 << 20) and libc.mallopt(m_trim_threshold, 128 << 20))
    except (OSError, AttributeError):  # not glibc
        return False


def _wuffs_rgb(path: Path, img: Image.Image) -> np.ndarray | None:
    """``img`` (opened by Pillow, not loaded) decoded by Wuffs to (H, W, 3) uint8, or None where Pillow
    must decode it.

    Only 8-bit grey or RGB, non-interlaced, without a transparent colour: Wuffs composites alpha and
    tRNS onto black where Pillow's RGB conversion drops them, and Pillow maps 16-bit files its own way.
    """
    if img.format != "PNG" or png_decoder() != "wuffs" or "transparency" in img.info or img.info.get("interlace"):
        return None
    if len(img.tile) != 1 or img.tile[0][3] not in ("L", "RGB"):  # Pillow's raw mode: 8-bit grey or RGB
        return None
    cfg = ImageDecoderConfig()
    cfg.enabled_decoders = [ImageDecoderType.PNG]
    cfg.pixel_format = PixelFormat.RGB
    result = ImageDecoder(cfg).decode(str(path))
    if result.error_message:
        raise OSError(result.error_message)
    return result.pixbuf


def decode(path, windows: Callable | None = None, input_size: int = 0) -> Decoded:
    """Open and decode ``path`` as 8-bit RGB for crops resampled to ``input_size`` px.

    ``windows(size)``: the crop windows (V, 4) in original px the caller will take from an image of
    file size ``size`` (W, H). A JPEG is then decoded smaller by libjpeg's scaled inverse DCT, by the
    factor of :func:`decode_scale`: for a 1000-px window of a 1080p render, decoding took 4.8 instead
    of 7.3 ms and the resample 1.1 instead of 3.1 ms (2 decoded px per input px, 2-core AMD EPYC).
    Other formats decode at full size, 8-bit grey and RGB PNG by Wuffs where :func:`png_decoder` says so.
    """
    path = Path(path)
    try:
        img = Image.open(path)
        size = img.size
    except FileNotFoundError:
        raise ImageError(f"{path}: file not found.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{path}: not a readable image ({e}). Replace or remove the file.") from None
    boxes = np.asarray(windows(size), np.float64).reshape(-1, 4) if windows is not None else np.zeros((0, 4))
    scale = 1
    try:
        pixels = _wuffs_rgb(path, img)
        if pixels is not None:
            img.close()
            return Decoded(pixels, (int(size[0]), int(size[1])), 1, boxes)
        k = decode_scale(boxes, input_size) if img.format == "JPEG" else 1
        if k > 1:
            drafted = img.draft(None, (max(1, size[0] // k), max(1, size[1] // k)))
            if drafted is not None:  # (mode, the file's extent in decoded px)
                scale = round(size[0] / drafted[1][2])
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{path}: not a readable image ({e}). Replace or remove the file.") from None
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        arr = arr / max(arr.max(), 1.0) * 255.0
        img = Image.fromarray(arr.astype(np.uint8))
    img = img if img.mode == "RGB" else img.convert("RGB")  # convert() would copy an RGB image
    return Decoded(img, (int(size[0]), int(size[1])), scale, boxes)


def open_image(path) -> Image.Image:
    """Open and fully decode an image as a Pillow 8-bit RGB image, with errors that name the file."""
    return decode(path).pil()


def image_size(path) -> tuple[int, int]:
    """(W, H) of an image file from its header only."""
    try:
        with Image.open(path) as img:
            return img.size
    except (UnidentifiedImageError, OSError) as e:
        raise ImageError(f"{path}: not a readable image ({e}).") from None


def crop_resize(img: Image.Image | Decoded, geometry: Geometry, box=None) -> np.ndarray:
    """Map an original RGB image to the model input: (S, S, 3) uint8.

    The crop window (``box`` in original px, default :meth:`Geometry.crop_box`) is cut at integer
    bounds (Pillow fills the part outside the image with black) and resampled with a fractional
    box, so the output pixel grid is exactly the normalised grid of that window. A :class:`Decoded`
    image decoded smaller takes the window divided by its scale.
    """
    size, scale = img.size, (img.scale if isinstance(img, Decoded) else 1)
    img = img.image if isinstance(img, Decoded) else img
    box = geometry.crop_box(size) if box is None else np.asarray(box, np.float64)
    x0, y0, x1, y1 = (float(v) / scale for v in box)
    ix0, iy0 = math.floor(x0), math.floor(y0)
    ix1, iy1 = math.ceil(x1), math.ceil(y1)
    box = (x0 - ix0, y0 - iy0, x1 - ix0, y1 - iy0)
    window = _crop(img, (ix0, iy0, ix1, iy1)) if isinstance(img, np.ndarray) else img.crop((ix0, iy0, ix1, iy1))
    s = geometry.input_size
    return np.asarray(window.resize((s, s), RESAMPLE, box=box), dtype=np.uint8)


def _crop(pixels: np.ndarray, box) -> Image.Image:
    """``Image.crop`` for an (H, W, 3) array: integer ``box`` [x0, y0, x1, y1], black outside the image."""
    x0, y0, x1, y1 = box
    h, w = pixels.shape[:2]
    if x0 >= 0 and y0 >= 0 and x1 <= w and y1 <= h:
        return Image.fromarray(pixels[y0:y1, x0:x1])
    out = np.zeros((y1 - y0, x1 - x0, 3), np.uint8)
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if cx1 > cx0 and cy1 > cy0:
        out[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0] = pixels[cy0:cy1, cx0:cx1]
    return Image.fromarray(out)


def load_model_input(path, geometry: Geometry, box=None, opener=None) -> tuple[np.ndarray, tuple[int, int]]:
    """Read ``path`` and return (model input (S, S, 3) uint8 of the crop window ``box``, original (W, H)).

    ``opener``: what decodes ``path`` in place of :func:`decode` (e.g. one that keeps the image whole
    for a later, smaller window)."""
    if opener is None:
        window = geometry.crop_box if box is None else (lambda size: box)
        img = decode(path, window, geometry.input_size)
    else:
        img = opener(path)
    return crop_resize(img, geometry, box), img.size


def list_images(directory) -> list[Path]:
    """Image files directly inside ``directory``, sorted by name."""
    directory = Path(directory)
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
