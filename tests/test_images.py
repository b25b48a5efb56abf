"""Image decoding: every file becomes 8-bit RGB in its stored pixel grid, or an error that names it."""

import numpy as np
import pytest
from PIL import Image

from pipeline.geometry import Geometry
from pipeline.images import (
    ImageError,
    crop_resize,
    decode,
    decode_scale,
    load_model_input,
    open_image,
)

RGB = (np.random.default_rng(0).random((40, 60, 3)) * 255).astype(np.uint8)


@pytest.mark.parametrize("mode, suffix", [(m, ".png") for m in ("RGB", "L", "RGBA", "P", "LA")]
                         + [("RGB", ".jpg"), ("L", ".jpg")])
def test_every_mode_becomes_rgb(tmp_path, mode, suffix):
    path = tmp_path / f"x{suffix}"
    Image.fromarray(RGB).convert(mode).save(path)
    got = np.asarray(open_image(path))
    want = np.asarray(Image.open(path).convert("RGB"))
    assert got.shape == (40, 60, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, want)


def test_sixteen_bit_is_scaled_to_its_maximum(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.arange(1200, dtype=np.uint16).reshape(30, 40) * 3).save(path)
    got = np.asarray(open_image(path))
    assert got.shape == (30, 40, 3) and got.max() == 255 and got[0, 0, 0] == 0


def test_exif_orientation_is_ignored(tmp_path):
    """Labels are in the stored pixel grid: a rotate-90 EXIF tag must not turn the image."""
    path = tmp_path / "tagged.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(RGB).save(path, exif=exif)
    assert open_image(path).size == (60, 40)


@pytest.mark.parametrize("content", [b"not an image", b"", "truncated"])
def test_broken_files_name_the_file(tmp_path, content):
    path = tmp_path / "broken.png"
    if content == "truncated":
        Image.fromarray(RGB).save(path)
        content = path.read_bytes()[:200]
    path.write_bytes(content)
    with pytest.raises(ImageError, match="broken.png"):
        open_image(path)
    with pytest.raises(ImageError, match="missing.png: file not found"):
        open_image(tmp_path / "missing.png")


# -- scaled JPEG decoding ------------------------------------------------------------------------

def test_decode_scale_keeps_two_decoded_px_per_input_px():
    assert decode_scale([[0, 0, 1000, 1000]], 128) == 2  # 1000 / 4 = 250 < 256
    assert decode_scale([[0, 0, 1024, 1100]], 128) == 4
    assert decode_scale([[-50, 10, 2098, 2158]], 128) == 8
    assert decode_scale([[0, 0, 2100, 2100], [0, 0, 300, 600]], 128) == 1  # the smallest window rules
    assert decode_scale(np.zeros((0, 4)), 128) == 1


def _blobs(size, centres, sigma):
    """A dark RGB image with a Gaussian blob (peak 250) at each original-px centre (corner origin)."""
    w, h = size
    x, y = np.arange(w) + 0.5, np.arange(h) + 0.5
    img = np.full((h, w), 5.0)
    for cx, cy in centres:
        img += 245.0 * np.exp(-((x[None] - cx) ** 2 + (y[:, None] - cy) ** 2) / (2 * sigma**2))
    return Image.fromarray(np.repeat(np.clip(img, 0, 255).astype(np.uint8)[..., None], 3, axis=2))


def _centroid(x, at, r=4):
    """Intensity centroid (x, y) of the model input ``x`` (S, S, 3) around input-px ``at``, corner origin."""
    cx, cy = (int(v) for v in at)
    patch = x[cy - r:cy + r + 1, cx - r:cx + r + 1, 0].astype(np.float64) - 5.0
    patch = np.clip(patch, 0, None)
    yy, xx = np.mgrid[cy - r:cy + r + 1, cx - r:cx + r + 1] + 0.5
    return np.array([(patch * xx).sum(), (patch * yy).sum()]) / patch.sum()


@pytest.mark.parametrize("size", [(1920, 1080), (1001, 777)])
def test_scaled_jpeg_decoding_keeps_positions(tmp_path, size):
    """A JPEG decoded 2x or 4x smaller in the DCT gives model inputs whose blobs sit where the
    geometry puts them, as the full decode does; a PNG decodes at full size."""
    g = Geometry()
    centres = [(960.3, 540.7), (700.25, 300.5), (1180.8, 820.1)] if size[0] == 1920 else [(500.4, 388.9), (350.7, 250.2)]
    img = _blobs(size, centres, sigma=12.0 * size[0] / 1920)
    img.save(tmp_path / "b.jpg", quality=100)
    img.save(tmp_path / "b.png")
    want = g.to_input(g.to_normalised(np.array(centres), size))
    full = crop_resize(open_image(tmp_path / "b.jpg"), g)
    boxes = []
    scaled = decode(tmp_path / "b.jpg", lambda s: boxes.append(s) or g.crop_box(s), g.input_size)
    assert boxes == [size] and scaled.size == size
    assert scaled.scale == decode_scale(g.crop_box(size), g.input_size) > 1
    assert scaled.image.size == tuple(-(-v // scaled.scale) for v in size)
    np.testing.assert_allclose(scaled.windows, g.crop_box(size)[None])
    x_scaled = crop_resize(scaled, g)
    x_png = load_model_input(tmp_path / "b.png", g)[0]
    assert decode(tmp_path / "b.png", g.crop_box, g.input_size).scale == 1
    for c in want:
        for x in (full, x_scaled, x_png):
            np.testing.assert_allclose(_centroid(x, c), c, atol=0.03)
    assert np.abs(x_scaled.astype(int) - full).mean() < 0.5  # grey levels


def test_scaled_decoding_serves_a_small_window_at_full_size(tmp_path):
    """A window of 1.5 input px per original px leaves no room to decode smaller."""
    img = _blobs((800, 600), [(400.5, 300.5)], sigma=3.0)
    img.save(tmp_path / "c.jpg", quality=95)
    g = Geometry()
    box = np.array([400.5 - 96, 300.5 - 96, 400.5 + 96, 300.5 + 96])
    d = decode(tmp_path / "c.jpg", lambda s: box, g.input_size)
    assert d.scale == 1 and d.image.size == (800, 600)
    x, size = load_model_input(tmp_path / "c.jpg", g, box)
    assert size == (800, 600)
    np.testing.assert_allclose(_centroid(x, (64, 64), r=6), (64, 64), atol=0.03)
