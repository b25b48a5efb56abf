"""Figures for people: keypoint overlays (PIL, fast), heatmap grids, PCK curve and error histogram.

Symbols everywhere: ground truth = green circle, prediction = red cross (orange when its
confidence is below the visibility threshold, i.e. predicted not visible), a yellow line joins a
prediction to its ground truth, and each keypoint carries its index. Positions are (x, y) in the
continuous corner-origin convention of ``pipeline.geometry``; drawing at scale ``z`` maps x to
``x * z`` image pixels.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

GT_COLOUR = (40, 230, 60)
GT_LABEL_COLOUR = (150, 255, 150)
PRED_COLOUR = (255, 40, 40)
LOW_CONF_COLOUR = (255, 165, 0)
LINK_COLOUR = (255, 235, 0)
EDGE_COLOUR = (80, 160, 255)
BOX_COLOUR = (0, 200, 255)
UNSCORED_COLOUR = (150, 150, 150)


def _font(size: int):
    try:
        return ImageFont.load_default(size=max(8, int(size)))
    except (TypeError, OSError):  # Pillow without FreeType
        return ImageFont.load_default()


def _text(draw, xy, text, font, fill=(255, 255, 255)):
    draw.text(xy, text, font=font, fill=fill, stroke_width=max(1, font.size // 7) if hasattr(font, "size") else 1,
              stroke_fill=(0, 0, 0))


def _cross(draw, x, y, r, colour, width):
    draw.line([(x - r, y - r), (x + r, y + r)], fill=colour, width=width)
    draw.line([(x - r, y + r), (x + r, y - r)], fill=colour, width=width)


def draw_keypoints(img: Image.Image, pred, gt=None, gt_visible=None, pred_visible=None, *, scale: float = 1.0,
                   offset=(0.0, 0.0), edges=None, marker: float = 6.0, font_size: int = 14,
                   gt_unscored=None) -> Image.Image:
    """Draw predictions (and GT) on a copy of ``img``.

    Args:
        pred: (K, 2) predicted (x, y), NaN to skip; gt: (K, 2) or None; gt_visible: (K,) bool (GT drawn
            only there); pred_visible: (K,) bool (False drawn in orange).
        scale, offset: drawing position = ``xy * scale + offset`` image pixels.
        edges: (E, 2) mesh edges drawn thinly between predicted visible keypoints.
        gt_unscored: (K,) bool GT points drawn as grey circles: annotated visible but outside the crop.
    """
    out = img.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    font = _font(font_size)
    k = len(pred)
    p = np.asarray(pred, np.float64) * scale + np.asarray(offset)
    pv = np.ones(k, bool) if pred_visible is None else np.asarray(pred_visible, bool)
    g = None if gt is None else np.asarray(gt, np.float64) * scale + np.asarray(offset)
    gv = np.zeros(k, bool) if g is None else (np.isfinite(g).all(1) if gt_visible is None
                                               else np.asarray(gt_visible, bool) & np.isfinite(g).all(1))
    w = max(1, int(round(marker / 3)))
    if edges is not None:
        for a, b in np.asarray(edges).reshape(-1, 2):
            if pv[a] and pv[b] and np.isfinite(p[[a, b]]).all():
                draw.line([tuple(p[a]), tuple(p[b])], fill=EDGE_COLOUR, width=max(1, w // 2))
    for i in range(k):
        if gv[i] and np.isfinite(p[i]).all():
            draw.line([tuple(g[i]), tuple(p[i])], fill=LINK_COLOUR, width=max(1, w // 2))
    if gt_unscored is not None and g is not None:
        for i in np.flatnonzero(np.asarray(gt_unscored, bool) & np.isfinite(g).all(1)):
            x, y = g[i]
            r = 1.3 * marker
            draw.ellipse([x - r, y - r, x + r, y + r], outline=UNSCORED_COLOUR, width=w)
            _text(draw, (x + marker * 0.9, y - marker * 0.9 - font_size * 0.6), str(i), font, UNSCORED_COLOUR)
    for i in range(k):
        if gv[i]:
            x, y = g[i]
            r = 1.3 * marker
            draw.ellipse([x - r, y - r, x + r, y + r], outline=GT_COLOUR, width=w)
    for i in range(k):
        if np.isfinite(p[i]).all():
            _cross(draw, *p[i], marker * 0.8, PRED_COLOUR if pv[i] else LOW_CONF_COLOUR, w)
    # Index labels: white beside each prediction; green beside a GT point only when its prediction is
    # missing or far off (so distant pairs still match up, and close ones are not labelled twice).
    p_ok = np.isfinite(p).all(1)
    far = gv & ~(p_ok & (np.hypot(*(np.nan_to_num(p) - np.nan_to_num(g if g is not None else p)).T) < 2.5 * marker))
    for pts, ok, colour in ((g, far, GT_LABEL_COLOUR), (p, p_ok, (255, 255, 255))):
        for i in np.flatnonzero(ok):
            _text(draw, (pts[i][0] + marker * 0.9, pts[i][1] - marker * 0.9 - font_size * 0.6), str(i), font, colour)
    return out


def legend_strip(width: int, height: int = 26, font_size: int = 14, has_gt: bool = True,
                 title: str = "", extra: str = "", edges: bool = False,
                 unscored: bool = False) -> Image.Image:
    """A black strip naming the symbols (and a title) to stack above an overlay."""
    rows = 2 if title else 1
    strip = Image.new("RGB", (width, height * rows), (0, 0, 0))
    draw = ImageDraw.Draw(strip)
    font = _font(font_size)
    y = height * (rows - 1) + height // 2
    x = 8
    r = height // 4
    items = [("pred", PRED_COLOUR, "x"), ("pred, low conf", LOW_CONF_COLOUR, "x")]
    if has_gt:
        items = [("GT", GT_COLOUR, "o")] + items + [("error", LINK_COLOUR, "-")]
    if edges:
        items.append(("mesh edge", EDGE_COLOUR, "-"))
    if unscored:
        items.append(("GT outside crop (not scored)", UNSCORED_COLOUR, "o"))
    for name, colour, sym in items:
        if sym == "o":
            draw.ellipse([x, y - r, x + 2 * r, y + r], outline=colour, width=2)
        elif sym == "x":
            _cross(draw, x + r, y, r, colour, 2)
        else:
            draw.line([(x, y), (x + 2 * r, y)], fill=colour, width=2)
        draw.text((x + 2 * r + 4, y - font_size // 2 - 1), name, font=font, fill=(255, 255, 255))
        x += 2 * r + 12 + int(draw.textlength(name, font=font))
    if extra:
        draw.text((x + 4, y - font_size // 2 - 1), extra, font=font, fill=(200, 200, 200))
    if title:
        draw.text((8, height // 2 - font_size // 2 - 1), title, font=font, fill=(255, 255, 255))
    return strip


def _stack(top: Image.Image, bottom: Image.Image) -> Image.Image:
    out = Image.new("RGB", (max(top.width, bottom.width), top.height + bottom.height))
    out.paste(top, (0, 0))
    out.paste(bottom, (0, top.height))
    return out


def input_overlay(x, pred_px, gt_px=None, gt_visible=None, pred_visible=None, *, upscale: int = 4,
                  edges=None, title: str = "") -> Image.Image:
    """Model-input view (S, S, 3) uint8 upscaled ``upscale`` times, with keypoints in input pixels (K, 2)."""
    img = Image.fromarray(np.asarray(x, np.uint8))
    big = img.resize((img.width * upscale, img.height * upscale), Image.Resampling.BICUBIC)
    drawn = draw_keypoints(big, pred_px, gt_px, gt_visible, pred_visible, scale=upscale, edges=edges,
                           marker=max(4.0, big.width / 80), font_size=max(12, big.width // 32))
    strip = legend_strip(drawn.width, has_gt=gt_px is not None, title=title, edges=edges is not None)
    return _stack(strip, drawn)


def original_overlay(img: Image.Image, pred_px, crop_box, gt_px=None, gt_visible=None, pred_visible=None, *,
                     edges=None, title: str = "", gt_unscored=None) -> Image.Image:
    """Original-resolution image with the model's crop window and keypoints in original pixels (K, 2).

    ``gt_unscored`` (K,) marks GT points visible in the annotation but outside the crop (grey).
    """
    w, h = img.size
    unit = max(w, h) / 1000.0
    # The crop window may leave the image (padding); draw on a canvas large enough to show all of it.
    x0, y0, x1, y1 = (float(v) for v in crop_box)
    left, top = max(0.0, -x0), max(0.0, -y0)
    cw, ch = int(np.ceil(max(w + left, x1 + left))), int(np.ceil(max(h + top, y1 + top)))
    canvas = Image.new("RGB", (cw + 1, ch + 1), (40, 40, 40))
    canvas.paste(img.convert("RGB"), (int(round(left)), int(round(top))))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([x0 + left, y0 + top, x1 + left, y1 + top], outline=BOX_COLOUR, width=max(2, int(3 * unit)))
    drawn = draw_keypoints(canvas, pred_px, gt_px, gt_visible, pred_visible, offset=(left, top), edges=edges,
                           marker=max(5.0, 7 * unit), font_size=int(max(14, 20 * unit)), gt_unscored=gt_unscored)
    fs = int(max(14, 18 * unit))
    strip = legend_strip(drawn.width, height=int(fs * 1.8), font_size=fs, has_gt=gt_px is not None, title=title,
                         extra="cyan box: model input crop", edges=edges is not None,
                         unscored=gt_unscored is not None and bool(np.any(gt_unscored)))
    return _stack(strip, drawn)


_LUT = None


def plot_setup() -> None:
    """Select the Agg backend and build the heatmap colour table once (call before using threads)."""
    global _LUT
    import matplotlib

    matplotlib.use("Agg")
    if _LUT is None:
        from matplotlib import colormaps

        _LUT = (colormaps["magma"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)


def _colormap(values: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> (..., 3) uint8 with matplotlib's 'magma' lookup table (no figure involved)."""
    if _LUT is None:
        plot_setup()
    return _LUT[np.clip(np.asarray(values, np.float32) * 255, 0, 255).astype(np.int64)]


def heatmap_grid(x, heatmaps, pred_px=None, confidence=None, *, tile: int = 160, title: str = "") -> Image.Image:
    """The input and one tile per keypoint: its predicted heatmap over the dimmed input.

    Args:
        x: (S, S, 3) uint8 input; heatmaps: (Sh, Sh, K) in [0, 1]; pred_px: (K, 2) input pixels;
        confidence: (K,) peak values shown in each tile's label.
    """
    h = np.asarray(heatmaps, np.float32)
    k = h.shape[-1]
    cols = int(np.ceil(np.sqrt(k + 1)))
    rows = int(np.ceil((k + 1) / cols))
    font = _font(max(11, tile // 11))
    head = 24 if title else 0
    grid = Image.new("RGB", (cols * tile, rows * tile + head), (0, 0, 0))
    draw = ImageDraw.Draw(grid)
    if title:
        draw.text((6, 4), title, font=_font(14), fill=(255, 255, 255))
    base = Image.fromarray(np.asarray(x, np.uint8)).resize((tile, tile), Image.Resampling.BICUBIC)
    grid.paste(base, (0, head))
    _text(draw, (4, head + 2), "input", font)
    dim = np.asarray(base, np.float32) * 0.35
    s_in = np.asarray(x).shape[0]
    for i in range(k):
        r, c = divmod(i + 1, cols)
        hm = Image.fromarray(_colormap(h[..., i])).resize((tile, tile), Image.Resampling.NEAREST)
        blend = np.clip(dim + np.asarray(hm, np.float32) * 0.8, 0, 255).astype(np.uint8)
        t = Image.fromarray(blend)
        td = ImageDraw.Draw(t)
        if pred_px is not None and np.isfinite(pred_px[i]).all():
            px, py = np.asarray(pred_px[i]) * tile / s_in
            _cross(td, px, py, 5, (0, 255, 255), 2)
        label = f"k={i}" + (f"  c={confidence[i]:.2f}" if confidence is not None else "")
        _text(td, (4, 2), label, font)
        grid.paste(t, (c * tile, r * tile + head))
    return grid


def plot_pck_curve(curves: dict, path, marks=(2, 5, 10, 15, 20), xlabel="threshold (model-input px)") -> None:
    """curves: name -> (thresholds, percent). Saved as a PNG with matplotlib (Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for name, (t, p) in curves.items():
        ax.plot(t, p, label=name)
    for m in marks:
        ax.axvline(m, color="0.85", lw=0.8, zorder=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("PCK (% of GT-visible keypoints)")
    ax.set_ylim(0, 101)
    ax.set_xlim(0, max(t.max() for t, _ in curves.values()))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title("Percentage of correct keypoints")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_error_histogram(dist, path, median=None, p95=None, xlabel="Euclidean error (model-input px)") -> None:
    """Histogram of Euclidean errors with median and P95 lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = np.asarray(dist, np.float64)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    if d.size:
        hi = max(float(np.percentile(d, 99.5)), 1e-3)
        ax.hist(np.clip(d, 0, hi), bins=60, range=(0, hi), color="tab:blue", alpha=0.8)
        for v, name, colour in ((median, "median", "tab:green"), (p95, "P95", "tab:red")):
            if v is not None and np.isfinite(v):
                ax.axvline(v, color=colour, ls="--", label=f"{name} {v:.2f}")
        ax.legend()
        ax.set_title(f"{d.size} GT-visible keypoints (clipped at the 99.5th percentile, {hi:.2f})")
    else:
        ax.text(0.5, 0.5, "no GT-visible keypoints", ha="center", transform=ax.transAxes)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("keypoints")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
