import numpy as np
import pytest
from PIL import Image

from pipeline.geometry import Geometry
from pipeline.images import crop_resize

SIZES = [(1920, 1080), (1080, 1920), (640, 480), (1280, 720), (3000, 1000), (333, 777)]


@pytest.mark.parametrize("size", SIZES)
def test_round_trip_original_model_original(size):
    g = Geometry()
    rng = np.random.default_rng(1)
    uv = rng.uniform(0, 1, (50, 2)) * size
    back = g.from_normalised(g.from_input(g.to_input(g.to_normalised(uv, size))), size)
    assert np.abs(back - uv).max() < 1e-3


def test_seed_geometry_on_1920x1080_is_pure_crop_offset():
    g = Geometry()
    # 1920x1080 fits the canvas at scale 1: normalised = (u - 460) / 1000, (v - 40) / 1000.
    n = g.to_normalised(np.array([[460.0, 40.0], [960.0, 540.0], [1460.0, 1040.0]]), (1920, 1080))
    np.testing.assert_allclose(n, [[0, 0], [0.5, 0.5], [1, 1]], atol=1e-12)
    np.testing.assert_allclose(g.crop_box((1920, 1080)), [460, 40, 1460, 1040])


def test_smaller_than_canvas_and_portrait_scale():
    g = Geometry()
    # 960x540 is upscaled by 2; the image centre maps to the crop centre.
    np.testing.assert_allclose(g.to_normalised([[480.0, 270.0]], (960, 540)), [[0.5, 0.5]])
    np.testing.assert_allclose(g.affine((960, 540))[:2], [2 / 1000, 2 / 1000])
    # Portrait 1080x1920 fits the canvas height; its canvas width is round(607.5) = 608 px.
    a = g.affine((1080, 1920))
    np.testing.assert_allclose(a[:2], [608 / 1080 / 1000, 1080 / 1920 / 1000], rtol=1e-12)


def test_input_px_scale_matches_affine():
    g = Geometry()
    np.testing.assert_allclose(g.input_px_scale((1920, 1080)), [1000 / 128, 1000 / 128])


def test_invalid_sizes_raise():
    with pytest.raises(ValueError, match="crop"):
        Geometry(crop=(0, 10))
    with pytest.raises(ValueError, match="size"):
        Geometry().affine((0, 10))


@pytest.mark.parametrize("size", [(1920, 1080), (1080, 1920), (400, 300)])
def test_crop_resize_puts_image_content_where_geometry_says(size):
    """A small blob drawn at a known original position lands at the geometry's input position."""
    g = Geometry()
    w, h = size
    u, v = w * 0.5 + 37.3 * w / 1920, h * 0.5 - 21.7 * h / 1080
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    r = 12.0 * max(w, h) / 1920
    img = np.exp(-((xx - u) ** 2 + (yy - v) ** 2) / (2 * r * r))
    arr = np.repeat((img * 255).round().astype(np.uint8)[..., None], 3, -1)
    x = crop_resize(Image.fromarray(arr), g).astype(np.float64)[..., 0]
    assert x.shape == (128, 128)
    cy, cx = np.mgrid[0:128, 0:128] + 0.5
    centroid = np.array([(x * cx).sum(), (x * cy).sum()]) / x.sum()
    expected = g.to_input(g.to_normalised([[u, v]], size))[0]
    assert np.abs(centroid - expected).max() < 0.05


def test_crop_resize_pads_outside_with_black():
    g = Geometry()
    arr = np.full((1920, 1080, 3), 200, np.uint8)  # portrait: the crop extends past left/right edges
    x = crop_resize(Image.fromarray(arr), g)
    lo, hi = g.to_input(g.to_normalised([[0.0, 0.0], [1080.0, 1920.0]], (1080, 1920)))[:, 0]
    assert x[:, : int(lo) - 1].max() == 0 and x[:, int(hi) + 2 :].max() == 0
    assert x[:, int(lo) + 2 : int(hi) - 1].min() == 200
