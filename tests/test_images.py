"""Image decoding: every file becomes 8-bit RGB in its stored pixel grid, or an error that names it."""

import numpy as np
import pytest
from PIL import Image

from pipeline.images import ImageError, open_image

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
