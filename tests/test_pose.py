"""Object/camera calibration from annotations and pose-consistent keypoints: known cameras, known poses."""

import json

import numpy as np
import pytest

from pipeline import pose
from pipeline.geometry import Geometry
from pipeline.synthetic import builtin_mesh
from pipeline.synthetic.camera import quat_to_matrix, random_quaternion

GEOMETRY = Geometry()
VERTICES = builtin_mesh("spacecraft").vertices
K_TRUE = np.array([[1500.0, 0.0, 910.5], [0.0, 1480.0, 530.25], [0.0, 0.0, 1.0]])


def _scene(rng, k=K_TRUE, distortion=0.0, vertices=VERTICES):
    """One annotation of ``vertices`` under a random pose: (rotated points (K, 3), pixels (K, 2), R, t)."""
    r = quat_to_matrix(random_quaternion(rng))
    t = np.array([rng.uniform(-0.5, 0.5), rng.uniform(-0.3, 0.3), rng.uniform(6.0, 12.0)])
    p = vertices @ r.T
    c = p + t
    n = c[:, :2] / c[:, 2:]
    n = n * (1 + distortion * (n ** 2).sum(1, keepdims=True))
    return p, n @ k[:2, :2].T + k[:2, 2], r, t


def _annotations(count, seed=0, **kw):
    rng = np.random.default_rng(seed)
    scenes = [_scene(rng, **kw) for _ in range(count)]
    return [s[0] for s in scenes], [s[1] for s in scenes], [(1920, 1080)] * count


def test_dlt_then_rq_recover_the_intrinsics():
    points, pixels, _, _ = _scene(np.random.default_rng(1))
    p = pose.dlt_camera(points, pixels)
    np.testing.assert_allclose(pose.intrinsics_of(p), K_TRUE, rtol=1e-7, atol=1e-6)
    assert pose.dlt_camera(points[:, :2] @ np.ones((2, 3)), pixels) is None  # coplanar: no camera


def test_calibration_fits_the_camera_and_a_rigid_copy_of_the_object():
    points, pixels, sizes = _annotations(30)
    cam, note = pose.calibrate(points, pixels, sizes, GEOMETRY.input_px_scale)
    assert cam is not None, note
    np.testing.assert_allclose(cam.intrinsics, K_TRUE, rtol=1e-7, atol=1e-6)
    assert cam.image_size == (1920, 1080) and cam.images == 30 and cam.rms_input_px < 1e-6
    d = lambda v: np.linalg.norm(v[:, None] - v[None], axis=-1)  # noqa: E731
    np.testing.assert_allclose(d(cam.vertices), d(VERTICES), atol=1e-9)
    again = pose.ObjectCamera.from_dict(json.loads(json.dumps(cam.to_dict())))
    np.testing.assert_allclose(again.intrinsics, cam.intrinsics)
    assert "fitted on 30 1920x1080 annotations" in note


def test_calibration_refuses_lens_distortion_and_degenerate_labels():
    points, pixels, sizes = _annotations(30, distortion=0.5)
    cam, note = pose.calibrate(points, pixels, sizes, GEOMETRY.input_px_scale)
    assert cam is None and ("re-projection error" in note or "not a plain pinhole" in note), note
    line = [np.c_[np.arange(11) * 0.1, np.zeros(11), np.ones(11)]] * 5  # collinear dummy coordinates
    cam, note = pose.calibrate(line, pixels[:5], sizes[:5], GEOMETRY.input_px_scale)
    assert cam is None and "general position" in note
    cam, note = pose.calibrate([np.full((11, 3), np.nan)] * 5, pixels[:5], sizes[:5], GEOMETRY.input_px_scale)
    assert cam is None and "3D coordinates for every vertex" in note


@pytest.fixture(scope="module")
def camera():
    return pose.ObjectCamera(vertices=VERTICES, intrinsics=K_TRUE, image_size=(1920, 1080), rms_input_px=0.0,
                             images=1)


def test_refinement_moves_a_wrong_vertex_back_and_averages_the_noise(camera):
    rng = np.random.default_rng(3)
    _, truth, _, _ = _scene(rng)
    noisy = truth + rng.normal(0, 0.8, truth.shape)  # 0.8 original px, about 0.1 model-input px
    wrong = noisy.copy()
    wrong[2] = truth[7] + 0.3  # keypoint 2 detected on vertex 7
    conf = np.ones((1, 11))
    out, info = pose.refine_keypoints(camera, wrong[None], conf, np.array([[1920, 1080]]), 0.2,
                                      GEOMETRY.input_px_scale)
    assert info[0]["refined"] and 2 not in info[0]["inliers"] and len(info[0]["inliers"]) == 10
    err_before = np.linalg.norm(wrong - truth, axis=1)
    err_after = np.linalg.norm(out[0] - truth, axis=1)
    assert err_before[2] > 20 and err_after[2] < 1.0
    assert err_after.mean() < np.linalg.norm(noisy - truth, axis=1).mean()  # 6 pose numbers fitted to 20
    assert info[0]["rms_input_px"] < 0.2


def test_refinement_leaves_other_sizes_and_too_few_detections_alone(camera):
    _, truth, _, _ = _scene(np.random.default_rng(4))
    conf = np.ones((2, 11))
    conf[1, 4:] = 0.0  # four confident detections cannot check a 6-number pose
    xy = np.stack([truth, truth]) + 0.5
    out, info = pose.refine_keypoints(camera, xy, conf, np.array([[1280, 720], [1920, 1080]]), 0.2,
                                      GEOMETRY.input_px_scale)
    np.testing.assert_array_equal(out, xy)
    assert not info[0]["refined"] and "1280x720 is not the calibrated 1920x1080" in info[0]["reason"]
    assert not info[1]["refined"] and "fewer than 5" in info[1]["reason"]


def test_degenerate_detections_give_no_pose(camera):
    """All candidate detections on one pixel (a collapsed prediction): no pose, no exception."""
    xy = np.full((1, 11, 2), 700.0)
    out, info = pose.refine_keypoints(camera, xy, np.ones((1, 11)), np.array([[1920, 1080]]), 0.2,
                                      GEOMETRY.input_px_scale)
    np.testing.assert_array_equal(out, xy)
    assert not info[0]["refined"]


def test_calibration_names_the_annotation_that_breaks_rigidity():
    points, pixels, sizes = _annotations(12)
    stretched = VERTICES * np.array([1.0, 1.0, 1.4])  # annotation 7 shows a deformed object
    points[7], pixels[7], _, _ = _scene(np.random.default_rng(99), vertices=stretched)
    cam, note = pose.calibrate(points, pixels, sizes, GEOMETRY.input_px_scale, [f"a{i}.json" for i in range(12)])
    assert cam is None and "on a7.json" in note and "non-rigid object" in note


def test_votes_of_several_turns_outvote_a_wrong_one(camera):
    """Three votes per vertex near the truth and a fourth on another vertex: all eleven come back."""
    rng = np.random.default_rng(6)
    _, truth, _, _ = _scene(rng)
    votes = np.concatenate([truth + rng.normal(0, 0.8, truth.shape) for _ in range(3)] + [truth[::-1]])
    vertex = np.tile(np.arange(11), 4)
    conf = np.ones((1, 44))
    detections = truth[::-1][None].copy()  # the merged detections are all wrong; they are only the fallback
    out, info = pose.refine_keypoints(camera, detections, np.ones((1, 11)), np.array([[1920, 1080]]), 0.2,
                                      GEOMETRY.input_px_scale, votes=(votes[None], conf, vertex))
    assert info[0]["refined"] and info[0]["inliers"] == list(range(11)) and 33 <= info[0]["votes"] <= 34
    assert np.linalg.norm(out[0] - truth, axis=1).max() < 1.0


def test_rotations_match_opencv():
    cv2 = pytest.importorskip("cv2")
    rvecs = np.random.default_rng(8).normal(0, 1.5, (20, 3))
    rvecs[0] = 0.0
    want = np.stack([cv2.Rodrigues(r)[0] for r in rvecs])
    np.testing.assert_allclose(pose._rotations(rvecs), want, atol=1e-12)


def test_hypothesis_score_prefers_the_tight_pose_and_rejects_one_behind_the_camera(camera):
    _, truth, r, t = _scene(np.random.default_rng(9))
    rvec = pose._cv2().Rodrigues(r)[0]
    v = VERTICES
    good = (rvec, t.reshape(3, 1))
    loose = (rvec, (t + [0.004, 0.0, 0.0]).reshape(3, 1))  # a few px off everywhere
    behind = (rvec, (-t).reshape(3, 1))
    best = pose._best_hypothesis(v, truth, K_TRUE, [loose, behind, good, loose], np.ones(11), 10.0)
    assert best is good
    assert pose._best_hypothesis(v, truth, K_TRUE, [behind, loose], np.ones(11), 10.0) is loose


def test_five_right_detections_among_six_strays_are_found_every_time(camera):
    """Random 5-point samples catch 5 right detections out of 11 in under half of 300 tries; the
    exhaustive search over 4-subsets always does."""
    rng = np.random.default_rng(10)
    for _ in range(8):
        _, truth, _, _ = _scene(rng)
        xy = truth + rng.normal(0, 0.5, truth.shape)
        stray = rng.permutation(11)[:6]
        xy[stray] = truth.mean(0) + rng.uniform(-150, 150, (6, 2))
        conf = np.ones((1, 11))
        out, info = pose.refine_keypoints(camera, xy[None], conf, np.array([[1920, 1080]]), 0.2,
                                          GEOMETRY.input_px_scale)
        assert info[0]["refined"] and sorted(info[0]["inliers"]) == sorted(set(range(11)) - set(stray))
        assert np.linalg.norm(out[0] - truth, axis=1).max() < 7.8  # one model-input px


def test_a_batch_fitted_side_by_side_equals_each_image_fitted_alone(camera):
    """The per-image fits run on a thread pool: every image must get exactly what it gets on its own,
    in its own place, strays, unconfident images and other image sizes included."""
    rng = np.random.default_rng(12)
    n = 9
    xy, conf = np.zeros((n, 11, 2)), rng.uniform(0.3, 1.0, (n, 11))
    for i in range(n):
        xy[i] = _scene(rng)[1] + rng.normal(0, 0.8, (11, 2))
        xy[i, rng.permutation(11)[:3]] += rng.uniform(-120, 120, (3, 2))
    conf[4] = 0.1  # nothing confident: no pose
    sizes = np.array([[1920, 1080]] * n)
    sizes[6] = (1280, 720)  # not the calibrated size: left as detected
    out, info = pose.refine_keypoints(camera, xy, conf, sizes, 0.2, GEOMETRY.input_px_scale)
    assert [i["refined"] for i in info] == [True] * 4 + [False, True, False, True, True]
    for i in range(n):
        one, one_info = pose.refine_keypoints(camera, xy[i:i + 1], conf[i:i + 1], sizes[i:i + 1], 0.2,
                                              GEOMETRY.input_px_scale)
        np.testing.assert_array_equal(out[i], one[0])
        assert info[i] == one_info[0]
    np.testing.assert_array_equal(out[[4, 6]], xy[[4, 6]])
