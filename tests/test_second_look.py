"""The second look's windows: centred on the object, magnified to the sizes of the training objects."""

from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from pipeline.geometry import Geometry
from pipeline.images import crop_resize
from pipeline.second_look import (
    FILL,
    UNPOSED_FILL,
    disagreement,
    fill_share,
    final_votes,
    look_boxes,
    look_fills,
    object_extent,
)

G = Geometry()  # 1920x1080 -> centre 1000x1000 crop [460, 40, 1460, 1040] -> 128 px


def test_object_extent_is_a_percentile_of_the_visible_boxes():
    k = 3
    coords = np.full((5, 2 * k), -1.0)
    for i, side in enumerate([0.1, 0.2, 0.3, 0.4]):
        coords[i, :4] = [0.2, 0.3, 0.2 + side, 0.3 + side / 2]  # two visible keypoints, x extent = side
    coords[4, :2] = [0.5, 0.5]  # one visible keypoint: no extent, left out
    assert object_extent(coords, 100.0) == pytest.approx(0.4)
    assert object_extent(coords, 50.0) == pytest.approx(0.25)
    assert object_extent(np.full((2, 2 * k), -1.0)) is None


def test_fill_share_stays_within_the_training_objects():
    assert fill_share(None)[0] == fill_share({})[0] == FILL  # no sidecar figure: the default share
    small = {"objects": {"extent": 0.5}, "train": {"affine_prob": 0.5, "scale_range": 0.2}}
    assert fill_share(small)[0] == pytest.approx(0.6)  # 0.5 seen, 1.2x by the augmentation
    assert fill_share({**small, "train": {"affine_prob": 0.0, "scale_range": 0.2}})[0] == pytest.approx(0.5)
    assert fill_share({"objects": {"extent": 0.8}, "train": small["train"]})[0] == FILL  # 0.96 > FILL


def test_look_boxes_centre_on_the_object_fill_the_share_and_keep_it_inside():
    pts = np.full((4, 2, 2), np.nan)
    pts[0] = [[900.0, 500.0], [1100.0, 600.0]]  # 200 px wide: 0.9 of the window at zoom 4.5
    pts[1] = [[400.0, 300.0], [1400.0, 700.0]]  # 1000 px wide: 0.9 of the window caps the zoom below 1 -> 1
    pts[3] = [[990.0, 540.0], [1010.0, 550.0]]  # 20 px wide: capped at one image px per input px
    mask = np.array([[True, True], [True, True], [False, False], [True, True]])  # image 2: nothing to centre on
    sizes = np.array([[1920, 1080]] * 4)
    boxes, zooms = look_boxes(G, sizes, pts, mask, 0.9)
    np.testing.assert_allclose(zooms, [4.5, 1.0, 1.0, 1000 / 128])
    h = 500 / 4.5
    np.testing.assert_allclose(boxes[0], [1000 - h, 550 - h, 1000 + h, 550 + h])
    np.testing.assert_allclose(boxes[1], [400.0, 0.0, 1400.0, 1000.0])
    np.testing.assert_allclose(boxes[2], G.crop_box((1920, 1080)))
    np.testing.assert_allclose(boxes[3, 2:] - boxes[3, :2], [128.0, 128.0])
    _, zooms = look_boxes(G, sizes, pts, mask, 0.6)  # a smaller share: 3x
    np.testing.assert_allclose(zooms[0], 3.0)


def test_an_image_without_a_first_look_pose_is_magnified_less():
    np.testing.assert_allclose(look_fills(FILL, [True, False]), [FILL, UNPOSED_FILL])
    np.testing.assert_allclose(look_fills(0.5, [True, False]), [0.5, 0.5])  # never more than the posed share
    pts = np.array([[[900.0, 500.0], [1100.0, 600.0]]] * 2)  # the same 200-px extent in both images
    sizes = np.array([[1920, 1080]] * 2)
    boxes, zooms = look_boxes(G, sizes, pts, np.ones((2, 2), bool), look_fills(0.9, [True, False]))
    np.testing.assert_allclose(zooms, [4.5, 4.5 * UNPOSED_FILL / 0.9])
    np.testing.assert_allclose(boxes[:, 2] - boxes[:, 0], 1000 / zooms)  # the same centre, a wider window
    np.testing.assert_allclose(boxes[:, :2] + boxes[:, 2:], [[2000.0, 1100.0]] * 2)


def test_box_coordinates_round_trip_and_match_the_crop():
    size = np.array([1280, 720])
    uv = np.array([[[3.0, 4.0], [640.5, 359.25], [1279.0, 719.0]]])
    box = G.look_box(size, np.array([700.0, 300.0]), 1.3)
    np.testing.assert_allclose(Geometry.from_box(Geometry.to_box(uv, box[None]), box[None]), uv, atol=1e-9)
    crop = G.crop_box(size)
    np.testing.assert_allclose(Geometry.to_box(uv, crop[None]), G.to_normalised(uv, size), atol=1e-12)
    centre = 0.5 * (crop[:2] + crop[2:])
    np.testing.assert_allclose(G.look_box(size, centre, 1.0), crop, atol=1e-9)


def test_a_window_shows_a_point_where_its_coordinates_say():
    """A bright square centred at a known original pixel position lands, in the resampled window, at
    the model-input position that Geometry.to_box gives (intensity centroid within 0.05 px)."""
    img = np.zeros((1080, 1920, 3), np.uint8)
    img[546:555, 996:1005] = 255  # 9x9 pixels, centre (1000.5, 550.5) in the pixel-centre convention
    box = G.look_box((1920, 1080), np.array([1010.0, 530.0]), 1.2)
    x = crop_resize(Image.fromarray(img), G, box)[..., 0].astype(np.float64)
    ys, xs = np.mgrid[0:128, 0:128] + 0.5
    got = np.array([(x * xs).sum(), (x * ys).sum()]) / x.sum()
    want = G.to_input(Geometry.to_box(np.array([[[1000.5, 550.5]]]), box[None]))[0, 0]
    np.testing.assert_allclose(got, want, atol=0.05)


def _look(n, k, t, offset):
    """Predictions of one look in normalised coords; ``t`` test-time turns (0: none)."""
    rng = np.random.default_rng(int(offset * 10))
    xy = rng.uniform(0.2, 0.8, (n, k, 2))
    turn_xy = xy[:, None] + rng.normal(0, 0.01, (n, t, k, 2)) if t else None
    return SimpleNamespace(xy=xy, confidence=np.full((n, k), 0.5 + offset), turn_xy=turn_xy,
                           turn_conf=np.full((n, t, k), 0.5 + offset) if t else None)


def test_final_votes_are_the_second_looks_turns_or_both_looks_detections():
    n, k, t = 3, 4, 8
    to1, to2 = (lambda a: 1000.0 * a), (lambda a: 2000.0 * a)
    first, second = _look(n, k, t, 0.1), _look(n, k, t, 0.3)
    xy, conf, vertex = final_votes(first, second, to1, to2, use_turns=True)  # turns: the second look's alone
    assert xy.shape == (n, t * k, 2) and conf.shape == (n, t * k) and vertex.shape == (t * k,)
    np.testing.assert_allclose(xy, 2000.0 * second.turn_xy.reshape(n, t * k, 2))
    np.testing.assert_allclose(conf, 0.8)
    np.testing.assert_array_equal(vertex, np.tile(np.arange(k), t))
    for use_turns, a, b in ((False, first, second), (True, _look(n, k, 0, 0.1), _look(n, k, 0, 0.3))):
        xy, conf, vertex = final_votes(a, b, to1, to2, use_turns)  # one detection per vertex and look: both
        assert xy.shape == (n, 2 * k, 2)
        np.testing.assert_allclose(xy[:, :k], 2000.0 * b.xy)
        np.testing.assert_allclose(xy[:, k:], 1000.0 * a.xy)
        np.testing.assert_allclose(conf, np.concatenate([np.full((n, k), 0.8), np.full((n, k), 0.6)], 1))
        np.testing.assert_array_equal(vertex, np.r_[np.arange(k), np.arange(k)])
    # looks that disagree: both looks' turns vote, the second look's first
    xy, conf, vertex = final_votes(first, second, to1, to2, use_turns=True, both=True)
    assert xy.shape == (n, 2 * t * k, 2)
    np.testing.assert_allclose(xy[:, : t * k], 2000.0 * second.turn_xy.reshape(n, t * k, 2))
    np.testing.assert_allclose(xy[:, t * k:], 1000.0 * first.turn_xy.reshape(n, t * k, 2))
    np.testing.assert_allclose(conf[:, : t * k], 0.8)
    np.testing.assert_allclose(conf[:, t * k:], 0.6)
    np.testing.assert_array_equal(vertex, np.tile(np.arange(k), 2 * t))


def test_disagreement_is_the_median_distance_between_the_looks():
    first = np.zeros((2, 5, 2))
    second = first.copy()
    second[0, :, 0] = [1.0, 2.0, 3.0, 4.0, 40.0]  # one vertex far off does not move the median
    second[1] = [[3.0, 4.0]] * 5  # the whole object moved by 5
    np.testing.assert_allclose(disagreement(first, second), [3.0, 5.0])
    np.testing.assert_allclose(disagreement(first, first), [0.0, 0.0])


def test_refit_lets_both_looks_vote_where_the_second_one_disagrees():
    """Three images of a known pose P. The first look's turns all see P (confidence 0.9). The second
    look's turns see P on image 1, but on image 0 a pose Q whose vertices lie about 5 model px away
    (confidence 0.5), and image 2's second look could not be read. Image 0 must be refitted to both
    looks (and so land on P, the better supported), image 1 to its second look, image 2 left alone."""
    import cv2

    from pipeline.infer import Predictions
    from pipeline.pose import ObjectCamera
    from pipeline.second_look import DISAGREEMENT, refit
    from pipeline.synthetic import builtin_mesh

    verts = builtin_mesh("spacecraft").vertices
    intr = np.array([[1500.0, 0.0, 960.0], [0.0, 1500.0, 540.0], [0.0, 0.0, 1.0]])
    cam = ObjectCamera(vertices=verts, intrinsics=intr, image_size=(1920, 1080), rms_input_px=0.0, images=1)
    rvec, t_p = np.array([0.4, -0.7, 0.2]), np.array([0.05, -0.02, 9.0])
    shift = 5.0 * G.input_px_scale((1920, 1080))[0] * 9.0 / 1500.0  # 5 model px sideways, in metres at 9 m

    def proj(t):
        return cv2.projectPoints(verts, rvec, t, intr, None)[0].reshape(-1, 2)

    p_px, q_px = proj(t_p), proj(t_p + [shift, 0.0, 0.0])
    n, t, k = 3, 4, len(verts)
    sizes = np.tile([1920, 1080], (n, 1))
    rng = np.random.default_rng(0)

    def look(points, conf, to_coords, ok=(True,) * n):
        turns = np.stack([[to_coords(p + rng.normal(0, 0.3, p.shape), i) for _ in range(t)]
                          for i, p in enumerate(points)])
        return Predictions(xy=turns.mean(1), confidence=np.full((n, k), conf), sizes=sizes, ok=np.array(ok),
                           errors={}, inputs=np.zeros(0), heatmaps=np.zeros(0), turn_xy=turns,
                           turn_conf=np.full((n, t, k), conf))

    first = look([p_px] * n, 0.9, lambda p, i: G.to_normalised(p, sizes[i]))
    xy = G.to_normalised(np.stack([p_px] * n), sizes)
    pose_info = [{"refined": True, "rvec": rvec.tolist(), "tvec": t_p.tolist()}] * n
    boxes, zooms = look_boxes(G, sizes, G.from_normalised(xy, sizes), np.ones((n, k), bool), FILL)
    assert (zooms > 1.5).all()
    second = look([q_px, p_px, p_px], 0.5, lambda p, i: Geometry.to_box(p, boxes[i]), ok=(True, True, False))

    out, info, disagreed = refit(cam, first, second, xy, pose_info, boxes, G, 0.2, use_turns=True)
    err = lambda a, b: np.linalg.norm(G.to_input(a) - G.to_input(G.to_normalised(b, sizes[0])), axis=-1)  # noqa: E731
    assert disagreed.tolist() == [True, False, False]
    assert np.median(err(xy[0], q_px)) >= DISAGREEMENT  # the second look alone would have moved image 0
    assert err(out[0], p_px).max() < 0.1 and err(out[1], p_px).max() < 0.1
    assert info[0]["looks"] == 2 and info[0]["looks_disagreed"] and info[1]["looks"] == 2
    assert "looks_disagreed" not in info[1]
    np.testing.assert_array_equal(out[2], xy[2])
    assert info[2] is pose_info[2] and "looks" not in pose_info[0]  # the inputs are left as they were
    # one detection per vertex and look: both looks always vote, nothing counts as a disagreement
    _, info1, disagreed1 = refit(cam, first, second, xy, pose_info, boxes, G, 0.2, use_turns=False)
    assert not disagreed1.any() and info1[0]["looks"] == 2 and "looks_disagreed" not in info1[0]
