"""Image decoding: every file becomes 8-bit RGB in its stored pixel grid, or an error that names it."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import images
from pipeline.geometry import Geometry
from pipeline.images import (
    PNG_DECODER_ENV,
    ImageError,
    crop_resize,
    decode,
    decode_scale,
    load_model_input,
    open_image,
)

RGB = (np.random.default_rng(0).random((40, 60, 3)) * 255).astype(np.uint8)


@pytest.fixture(params=["wuffs", "pillow"])
def png_decoder(request, monkeypatch):
    """Each test that takes this runs with either PNG decoder (Wuffs only where pywuffs is installed)."""
    if request.param == "wuffs" and images.ImageDecoder is None:
        pytest.skip("pywuffs is not installed (requirements-fast.txt)")
    monkeypatch.setenv(PNG_DECODER_ENV, request.param)
    assert images.png_decoder() == request.param
    return request.param


@pytest.fixture
def wuffs_calls(monkeypatch):
    """Counts the PNG files Wuffs decodes (the real decoder, wrapped)."""
    calls = []
    real = images.ImageDecoder
    monkeypatch.delenv(PNG_DECODER_ENV, raising=False)

    def counting(cfg):
        calls.append(cfg)
        return real(cfg)

    monkeypatch.setattr(images, "ImageDecoder", counting)
    return calls


@pytest.mark.parametrize("mode, suffix", [(m, ".png") for m in ("RGB", "L", "RGBA", "P", "LA")]
                         + [("RGB", ".jpg"), ("L", ".jpg")])
def test_every_mode_becomes_rgb(tmp_path, mode, suffix, png_decoder):
    path = tmp_path / f"x{suffix}"
    Image.fromarray(RGB).convert(mode).save(path)
    got = np.asarray(open_image(path))
    want = np.asarray(Image.open(path).convert("RGB"))
    assert got.shape == (40, 60, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, want)


def test_sixteen_bit_is_scaled_to_its_maximum(tmp_path, png_decoder):
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
def test_broken_files_name_the_file(tmp_path, content, png_decoder):
    path = tmp_path / "broken.png"
    if content == "truncated":
        Image.fromarray(RGB).save(path)
        content = path.read_bytes()[:200]
    path.write_bytes(content)
    with pytest.raises(ImageError, match="broken.png"):
        open_image(path)
    with pytest.raises(ImageError, match="missing.png: file not found"):
        open_image(tmp_path / "missing.png")


@pytest.mark.skipif(images.ImageDecoder is None, reason="pywuffs is not installed (requirements-fast.txt)")
def test_wuffs_decodes_plain_png_and_leaves_the_rest_to_pillow(tmp_path, wuffs_calls):
    """Wuffs takes 8-bit grey and RGB files and gives Pillow's pixels; files whose alpha, transparent
    colour or 16-bit samples Wuffs would map otherwise go to Pillow."""
    import cv2

    rng = np.random.default_rng(1)
    big = rng.integers(0, 256, (300, 500, 3), dtype=np.uint8)
    files = {"rgb.png": Image.fromarray(big), "grey.png": Image.fromarray(big).convert("L"),
             "small.png": Image.fromarray(RGB), "alpha.png": Image.fromarray(RGB).convert("RGBA")}
    for name, im in files.items():
        im.save(tmp_path / name)
    Image.fromarray(RGB).save(tmp_path / "trns.png", transparency=tuple(int(v) for v in RGB[0, 0]))
    cv2.imwrite(str(tmp_path / "deep.png"), rng.integers(0, 65536, (30, 40, 3), dtype=np.uint16))
    for name, by_wuffs in [("rgb.png", 1), ("grey.png", 1), ("small.png", 1), ("alpha.png", 0),
                           ("trns.png", 0), ("deep.png", 0)]:
        before = len(wuffs_calls)
        got = np.asarray(open_image(tmp_path / name))
        assert len(wuffs_calls) - before == by_wuffs, name
        np.testing.assert_array_equal(got, np.asarray(Image.open(tmp_path / name).convert("RGB")), err_msg=name)
    # the transparent colour occurs at pixel (0, 0): Wuffs would have made it black
    assert open_image(tmp_path / "trns.png").getpixel((0, 0)) == tuple(int(v) for v in RGB[0, 0])


@pytest.mark.parametrize("box", [(100, 50, 300, 250), (-40, -30, 120, 90), (380, 200, 560, 380), (-90, 0, -10, 80),
                                 (10.3, 20.7, 130.2, 140.6)])
def test_windows_cut_from_a_decoded_array_match_pillow(tmp_path, png_decoder, box):
    """A window inside, across the corner, past the far edge, wholly outside, at fractional bounds: the
    model input cut from the decoded file equals the one Pillow cuts from its own image."""
    path = tmp_path / "r.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (300, 500, 3), dtype=np.uint8)).save(path)
    g = Geometry(input_size=64)
    img = decode(path)
    assert isinstance(img.image, np.ndarray) == (png_decoder == "wuffs")
    got = crop_resize(img, g, np.array(box, float))
    want = crop_resize(Image.open(path).convert("RGB"), g, np.array(box, float))
    np.testing.assert_array_equal(got, want)
    assert got.shape == (64, 64, 3) and (box[2] > 0 or got.max() == 0)


_FAULTS_PER_DECODE = """
import resource, sys
from pipeline.geometry import Geometry
from pipeline.images import crop_resize, decode, keep_freed_buffers
if sys.argv[2] == "keep":
    assert keep_freed_buffers()
for i in range(3):
    crop_resize(decode(sys.argv[1]), Geometry())
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(10):
    crop_resize(decode(sys.argv[1]), Geometry())
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 10)
"""


@pytest.mark.skipif(images.ImageDecoder is None or sys.platform != "linux", reason="pywuffs on glibc Linux")
def test_kept_buffers_spare_each_decode_its_page_faults(tmp_path):
    """Without :func:`keep_freed_buffers` glibc hands each decode's 6 MB pixel buffer back and the next
    decode faults it in again (about 4,000 page faults per 1080p render); with it, next to none."""
    path = tmp_path / "render.png"
    noise = np.random.default_rng(0).integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, compress_level=1)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop(PNG_DECODER_ENV, None)
    faults = {how: float(subprocess.run([sys.executable, "-c", _FAULTS_PER_DECODE, str(path), how], env=env,
                                        capture_output=True, text=True, check=True).stdout)
              for how in ("default", "keep")}
    assert faults["keep"] < 50, faults  # default: 3,989 on the 2-core AMD EPYC of 2026-12-08


def test_the_png_decoder_can_be_ruled_out(monkeypatch):
    monkeypatch.setenv(PNG_DECODER_ENV, "pillow")
    assert images.png_decoder() == "pillow"
    monkeypatch.delenv(PNG_DECODER_ENV)
    assert images.png_decoder() == ("pillow" if images.ImageDecoder is None else "wuffs")


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
