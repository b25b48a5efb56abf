"""The one source of truth for image geometry: original pixels <-> crop <-> model input <-> heatmap.

Coordinate convention (used everywhere in the project)
------------------------------------------------------
All positions are *continuous* (x, y) coordinates with the origin at the top-left CORNER of an
image, x to the right, y down. Pixel column ``i`` covers ``[i, i + 1)`` and its centre is at
``i + 0.5``. This is the 4SP annotation convention (``u = ndc_x * W``), and it is also what
half-pixel-centre resampling (Pillow, ``tf.image.resize``) implements, so every resize is the
pure scale ``u' = u * W' / W`` with no offsets.

Spaces
------
- original:   pixels of the image on disk, size (W, H).
- canvas:     the image resized (aspect kept) to fit ``canvas`` and centred with padding.
- crop:       the centre ``crop`` window of the canvas.
- normalised: crop coordinates divided by the crop size, ``[0, 1]`` over the crop.
- input:      model input pixels, ``normalised * input_size``.
- heatmap:    heatmap pixels, ``normalised * heatmap_size``.

Original -> normalised is an axis-aligned affine map ``n = u * scale + offset`` per axis, so the
forward and inverse transforms here are exact to floating point.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Geometry:
    """Seed-001 preprocessing geometry: resize-with-pad to ``canvas``, centre ``crop``, resize.

    Sizes are (width, height) pairs in pixels; ``input_size`` and ``heatmap_size`` are square.
    """

    canvas: tuple[int, int] = (1920, 1080)
    crop: tuple[int, int] = (1000, 1000)
    input_size: int = 128
    heatmap_size: int = 64

    def __post_init__(self):
        for name in ("canvas", "crop"):
            w, h = getattr(self, name)
            if int(w) <= 0 or int(h) <= 0:
                raise ValueError(f"Geometry.{name} must be positive (width, height). Received: {name}={(w, h)}")
        if self.input_size <= 0 or self.heatmap_size <= 0:
            raise ValueError(
                f"input_size and heatmap_size must be positive. Received: input_size={self.input_size}, "
                f"heatmap_size={self.heatmap_size}"
            )

    # -- original <-> normalised -------------------------------------------------------------
    def affine(self, orig_size) -> np.ndarray:
        """Per-axis affine original -> normalised for images of ``orig_size``.

        Args:
            orig_size: (..., 2) array-like of original (W, H).
        Returns:
            (..., 4) float64 ``[scale_x, scale_y, offset_x, offset_y]`` so that
            ``n = u * scale + offset``.
        """
        size = np.asarray(orig_size, dtype=np.float64)
        w, h = size[..., 0], size[..., 1]
        if np.any(w <= 0) or np.any(h <= 0):
            raise ValueError(f"Image size must be positive. Received: {orig_size}")
        cw, ch = self.canvas
        s = np.minimum(cw / w, ch / h)
        # The canvas image has integer size; its exact per-axis scale follows from that size.
        nw, nh = np.maximum(np.round(w * s), 1), np.maximum(np.round(h * s), 1)
        sx, sy = nw / w, nh / h
        pad_x, pad_y = (cw - nw) // 2, (ch - nh) // 2
        crop_x0, crop_y0 = (cw - self.crop[0]) // 2, (ch - self.crop[1]) // 2
        return np.stack(
            [
                sx / self.crop[0],
                sy / self.crop[1],
                (pad_x - crop_x0) / self.crop[0],
                (pad_y - crop_y0) / self.crop[1],
            ],
            axis=-1,
        )

    def to_normalised(self, uv, orig_size) -> np.ndarray:
        """Original pixels (..., K, 2) -> normalised crop coords, for one (2,) or per-image (N, 2) size."""
        a = self.affine(orig_size)[..., None, :]
        uv = np.asarray(uv, dtype=np.float64)
        return uv * a[..., :2] + a[..., 2:]

    def from_normalised(self, xy, orig_size) -> np.ndarray:
        """Exact inverse of :meth:`to_normalised`: normalised (..., K, 2) -> original pixels."""
        a = self.affine(orig_size)[..., None, :]
        xy = np.asarray(xy, dtype=np.float64)
        return (xy - a[..., 2:]) / a[..., :2]

    def crop_box(self, orig_size) -> np.ndarray:
        """The crop window in original pixels, (..., 4) ``[x0, y0, x1, y1]`` (may extend past the image)."""
        corners = self.from_normalised(np.array([[0.0, 0.0], [1.0, 1.0]]), orig_size)
        return corners.reshape(corners.shape[:-2] + (4,))

    def look_box(self, orig_size, centre, zoom) -> np.ndarray:
        """A crop window like :meth:`crop_box`, ``zoom`` times smaller and centred on ``centre``
        (original px): (..., 4) ``[x0, y0, x1, y1]``, for (..., 2) sizes and centres and (...,) zooms."""
        box = self.crop_box(orig_size)
        half = 0.5 * (box[..., 2:] - box[..., :2]) / np.asarray(zoom, np.float64)[..., None]
        c = np.asarray(centre, np.float64)
        return np.concatenate([c - half, c + half], axis=-1)

    @staticmethod
    def from_box(xy, boxes) -> np.ndarray:
        """Normalised coords (..., K, 2) of crops taken at ``boxes`` (..., 4) -> original pixels: the
        box plays the part of :meth:`crop_box` (0 is its top-left corner, 1 its bottom-right)."""
        b = np.asarray(boxes, np.float64)[..., None, :]
        return b[..., :2] + np.asarray(xy, np.float64) * (b[..., 2:] - b[..., :2])

    @staticmethod
    def to_box(uv, boxes) -> np.ndarray:
        """Exact inverse of :meth:`from_box`: original pixels (..., K, 2) -> normalised coords of ``boxes``."""
        b = np.asarray(boxes, np.float64)[..., None, :]
        return (np.asarray(uv, np.float64) - b[..., :2]) / (b[..., 2:] - b[..., :2])

    @staticmethod
    def box_affine(boxes) -> np.ndarray:
        """The affine original -> normalised of crops taken at ``boxes`` (..., 4), in the layout of
        :meth:`affine`: ``to_box(uv, box) == uv * scale + offset``."""
        b = np.asarray(boxes, np.float64)
        side = b[..., 2:] - b[..., :2]
        return np.concatenate([1.0 / side, -b[..., :2] / side], axis=-1)

    # -- normalised <-> model spaces -----------------------------------------------------------
    def to_input(self, xy) -> np.ndarray:
        """Normalised -> model-input pixels."""
        return np.asarray(xy, dtype=np.float64) * self.input_size

    def from_input(self, uv) -> np.ndarray:
        """Model-input pixels -> normalised."""
        return np.asarray(uv, dtype=np.float64) / self.input_size

    def input_px_scale(self, orig_size) -> np.ndarray:
        """Original pixels per model-input pixel, (..., 2) (x, y): converts errors between the two spaces."""
        a = self.affine(orig_size)
        return 1.0 / (a[..., :2] * self.input_size)

    @staticmethod
    def rot90(xy, k: int) -> np.ndarray:
        """Normalised (..., 2) (x, y) of a point after ``np.rot90(image, k, axes=(row, column))``.

        A quarter turn maps pixel centre ``i`` to ``S - 1 - i``, i.e. ``x -> 1 - x``, so this is exact
        in every square space (input, heatmap) at once. ``k`` may be negative (the inverse turn).
        """
        xy = np.asarray(xy, dtype=np.float64)
        x, y = xy[..., 0], xy[..., 1]
        for _ in range(k % 4):
            x, y = y, 1.0 - x
        return np.stack([x, y], axis=-1)

    @staticmethod
    def rotate(xy, deg: float) -> np.ndarray:
        """Normalised (..., 2) (x, y) of a point after the image turns by ``deg`` degrees about its centre.

        ``p' = 0.5 + R(deg) (p - 0.5)``; with y down a positive angle turns clockwise on screen. This is
        the convention of :func:`pipeline.augment.warp_affine`; ``rotate(xy, -90 * k) == rot90(xy, k)``,
        and multiples of 90 degrees are computed exactly that way.
        """
        if float(deg) % 90.0 == 0.0:
            return Geometry.rot90(xy, -int(round(float(deg) / 90.0)))
        xy = np.asarray(xy, dtype=np.float64)
        a = np.radians(deg)
        dx, dy = xy[..., 0] - 0.5, xy[..., 1] - 0.5
        return np.stack([0.5 + np.cos(a) * dx - np.sin(a) * dy, 0.5 + np.sin(a) * dx + np.cos(a) * dy], axis=-1)

    @staticmethod
    def inside(xy) -> np.ndarray:
        """True where normalised (..., 2) coordinates fall inside the crop ``[0, 1)``."""
        xy = np.asarray(xy)
        return np.all((xy >= 0.0) & (xy < 1.0), axis=-1)
