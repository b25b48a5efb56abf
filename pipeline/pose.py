"""The rigid object and its camera: calibration from the annotations, and pose-consistent keypoints.

The keypoints are vertices of one rigid object seen through one pinhole camera, so in every image
they are the projection of the same 3D points under some pose (rotation, translation): 6 numbers
explain all K positions. The network places most keypoints to a fraction of a pixel but sometimes
puts one on a neighbouring vertex. Fitting the pose robustly to the confident detections and
projecting the vertices back replaces such outliers, and averages the noise of the rest. Candidate
poses come from RANSAC and from every 4 confident detections (an exhaustive search: RANSAC's random
samples sometimes miss the pose that most detections agree on); the one with the best
confidence-weighted MSAC score wins, then least squares on its inliers and a confidence-weighted
Cauchy fit over all detections polish it.

What this needs is read from the training annotations during preprocessing: the vertices' 3D
``coordinates`` (any rigid copy: each annotation lists them in its own posed frame) and their
``pixel_coordinates``. A direct linear transform per image gives a 3x4 camera matrix whose RQ
factors give the intrinsics; their median over the images is the camera. The calibration is kept
only if every image's points are re-projected to within ``CALIBRATION_TOLERANCE`` model-input px
by that camera and one pose: otherwise (lens distortion, several cameras or objects, a non-rigid
object, inexact labels) no refinement is offered, and the preprocessing log says why.

Pixel positions are original-image pixels in the convention of :mod:`pipeline.geometry`; OpenCV's
projection uses the same one (pixel i centred at i + 0.5 when the principal point is in those units,
which it is, since it is fitted to them).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

MIN_POINTS = 6              # per image for the calibration's DLT (11 unknowns, 2 equations a point)
MIN_INLIERS = 5             # per image for a pose fit at inference (6 unknowns, one point to spare)
CALIBRATION_IMAGES = 400    # annotations the calibration reads, spread evenly over the dataset
CALIBRATION_TOLERANCE = 0.25  # model-input px: largest accepted re-projection RMS of any image
INLIER_TOLERANCE = 2.0      # model-input px: a detection within this of the fitted pose is an inlier
SCORE_SHARE = 0.75          # MSAC scale of the hypothesis score, as a share of the inlier tolerance
ROBUST_SHARE = 0.25         # Cauchy scale of the final robust fit, as a share of the inlier tolerance
SEED_POINTS = 12            # most confident detections whose every 4-subset seeds a pose (495 at most)


def _cv2():
    try:
        import cv2
    except ImportError as e:  # pragma: no cover - a dependency in requirements.txt
        raise ImportError("Pose refinement needs OpenCV: pip install opencv-python-headless "
                          "(listed in requirements.txt), or pass --refine none.") from e
    return cv2


@dataclass
class ObjectCamera:
    """The object's vertices (K, 3) in one rigid frame and the pinhole camera (3, 3) of images of one size."""

    vertices: np.ndarray
    intrinsics: np.ndarray
    image_size: tuple[int, int]
    rms_input_px: float  # worst per-image calibration re-projection RMS, model-input px
    images: int

    def to_dict(self) -> dict:
        return {"vertices": np.asarray(self.vertices).tolist(), "intrinsics": np.asarray(self.intrinsics).tolist(),
                "image_size": [int(s) for s in self.image_size], "rms_input_px": float(self.rms_input_px),
                "images": int(self.images)}

    @classmethod
    def from_dict(cls, d: dict) -> "ObjectCamera":
        return cls(vertices=np.asarray(d["vertices"], np.float64).reshape(-1, 3),
                   intrinsics=np.asarray(d["intrinsics"], np.float64).reshape(3, 3),
                   image_size=(int(d["image_size"][0]), int(d["image_size"][1])),
                   rms_input_px=float(d["rms_input_px"]), images=int(d["images"]))


# -- calibration ---------------------------------------------------------------------------------
def _normaliser(p: np.ndarray) -> np.ndarray:
    """Similarity (homogeneous) that centres points and scales their mean distance to sqrt(dim)."""
    d = p.shape[1]
    c = p.mean(0)
    s = np.sqrt(d) / max(np.linalg.norm(p - c, axis=1).mean(), 1e-12)
    t = np.eye(d + 1)
    t[:d, :d] *= s
    t[:d, d] = -s * c
    return t


def dlt_camera(points: np.ndarray, pixels: np.ndarray) -> np.ndarray | None:
    """3x4 camera matrix from >= 6 (3D, 2D) pairs by the normalised direct linear transform, None if degenerate."""
    t3, t2 = _normaliser(points), _normaliser(pixels)
    x = (t3 @ np.c_[points, np.ones(len(points))].T).T
    u = (t2 @ np.c_[pixels, np.ones(len(pixels))].T).T
    a = np.zeros((2 * len(x), 12))
    a[0::2, 0:4], a[0::2, 8:] = x, -u[:, :1] * x  # u-row: P1.X - u P3.X = 0
    a[1::2, 4:8], a[1::2, 8:] = x, -u[:, 1:2] * x  # v-row: P2.X - v P3.X = 0
    _, s, vt = np.linalg.svd(a)
    if s[-2] < 1e-9 * s[0]:  # rank < 11: coplanar or collinear points fix no camera
        return None
    p = np.linalg.inv(t2) @ vt[-1].reshape(3, 4) @ t3
    return p


def intrinsics_of(p: np.ndarray) -> np.ndarray:
    """Upper-triangular K (K[2, 2] = 1, positive diagonal) of a camera matrix P = K [R | t], by RQ."""
    flip = np.flipud(np.eye(3))
    q, r = np.linalg.qr((flip @ p[:, :3]).T)
    k = flip @ r.T @ flip
    k = k @ np.diag(np.sign(np.diag(k)))
    return k / k[2, 2]


def _posed_points(pixels: np.ndarray, points: np.ndarray) -> np.ndarray:
    return np.isfinite(pixels).all(1) & np.isfinite(points).all(1)


def calibrate(points: list, pixels: list, sizes: list, px_per_input_px,
              names: list | None = None) -> tuple[ObjectCamera | None, str]:
    """Fit the object's vertices and the camera to annotated images.

    Args:
        points: per image (K, 3) vertex coordinates (NaN where the annotation lists none).
        pixels: per image (K, 2) pixel coordinates of every vertex that has them, visible or not (NaN
            elsewhere).
        sizes: per image original (W, H).
        px_per_input_px: callable (W, H) -> original px per model-input px, to judge residuals in the
            space the accuracy is measured in.
        names: per image, how to name it in the note (e.g. its annotation file).
    Returns:
        (ObjectCamera, note) or (None, why not), the note one line for the log.
    """
    try:
        _cv2()
    except ImportError as e:
        return None, str(e)
    if not points:
        return None, "no annotations"
    full = [i for i, p in enumerate(points) if np.isfinite(p).all()]
    if not full:
        return None, "no annotation lists 3D coordinates for every vertex"
    vertices = np.asarray(points[full[0]], np.float64)
    sizes = [tuple(int(v) for v in s) for s in sizes]
    names = names or [f"annotation {i}" for i in range(len(points))]
    size = max(set(sizes), key=sizes.count)
    cams, used = [], []
    for i, s in enumerate(sizes):
        m = _posed_points(pixels[i], points[i])
        if s != size or m.sum() < MIN_POINTS:
            continue
        p = dlt_camera(np.asarray(points[i], np.float64)[m], np.asarray(pixels[i], np.float64)[m])
        if p is not None:
            cams.append(intrinsics_of(p))
            used.append(i)
    if len(cams) < 3:
        return None, (f"fewer than 3 annotations of {size[0]}x{size[1]} images have {MIN_POINTS} or more "
                      "vertices with both 3D and pixel coordinates in general position")
    k = np.median(np.stack(cams), axis=0)
    if abs(k[0, 1]) > 1e-3 * k[0, 0] or k[0, 0] <= 0 or k[1, 1] <= 0:
        return None, f"the fitted camera is not a plain pinhole (fx {k[0, 0]:.1f}, fy {k[1, 1]:.1f}, skew {k[0, 1]:.3g})"
    k[0, 1] = 0.0
    scale = float(np.mean(px_per_input_px(size)))
    worst = 0.0
    for i in used:
        m = _posed_points(pixels[i], vertices)
        fit = fit_pose(vertices[m], np.asarray(pixels[i], np.float64)[m], k, tolerance=np.inf)
        if fit is None:
            return None, f"no pose fits {names[i]} with the fitted camera"
        worst = max(worst, fit.rms / scale)
        if worst > CALIBRATION_TOLERANCE:
            return None, (f"one rigid object under one pinhole camera leaves {worst:.2f} model-input px of "
                          f"re-projection error on {names[i]} (tolerance {CALIBRATION_TOLERANCE}): lens "
                          "distortion, several cameras or objects, a non-rigid object or inexact labels")
    cam = ObjectCamera(vertices=vertices, intrinsics=k, image_size=size, rms_input_px=worst, images=len(used))
    return cam, (f"fitted on {len(used)} {size[0]}x{size[1]} annotations: fx {k[0, 0]:.1f}, fy {k[1, 1]:.1f}, "
                 f"principal point ({k[0, 2]:.1f}, {k[1, 2]:.1f}) px; worst re-projection RMS {worst:.2g} "
                 "model-input px")


# -- pose fitting --------------------------------------------------------------------------------
@dataclass
class PoseFit:
    """A fitted pose: Rodrigues rotation, translation, the indices it was fitted to, RMS residual (px)."""

    rvec: np.ndarray
    tvec: np.ndarray
    inliers: np.ndarray
    rms: float


def _robust_refine(v, x, intrinsics, rvec, tvec, weights, scale: float, iterations: int = 20):
    """Gauss-Newton on the Cauchy loss of the re-projection residuals (scale ``scale`` px), each point's
    term multiplied by its weight: residuals beyond a few ``scale`` count little, so points off the
    pose pull it little, and confident points more than doubtful ones."""
    cv2 = _cv2()
    rvec, tvec = np.array(rvec, np.float64).reshape(3, 1), np.array(tvec, np.float64).reshape(3, 1)
    for _ in range(iterations):
        proj, jac = cv2.projectPoints(v, rvec, tvec, intrinsics, None)
        r = proj.reshape(-1, 2) - x
        w = np.repeat(weights / (1.0 + (r ** 2).sum(1) / scale ** 2), 2)
        j = jac[:, :6]  # d(u, v) / d(rvec, tvec)
        a = j.T @ (w[:, None] * j)
        step = np.linalg.solve(a + 1e-9 * np.trace(a) * np.eye(6), -j.T @ (w * r.ravel()))
        rvec, tvec = rvec + step[:3, None], tvec + step[3:, None]
        if np.abs(step).max() < 1e-10:
            break
    return rvec, tvec


def fit_pose(vertices: np.ndarray, xy: np.ndarray, intrinsics: np.ndarray, tolerance: float,
             min_inliers: int = MIN_INLIERS, weights: np.ndarray | None = None,
             seeds: tuple | None = None, poses: list | None = None) -> PoseFit | None:
    """Pose of ``vertices`` (N, 3) that projects them onto ``xy`` (N, 2) pixels, robust to outliers.

    ``tolerance`` ``inf``: all points, least squares. Otherwise the candidates are RANSAC's pose
    (seeded: the same inputs give the same pose) and, with ``seeds`` = (vertices (C, 3), pixels (C, 2),
    one detection per vertex, most confident first), the pose of every 4 of the first ``SEED_POINTS``, and
    any ``poses`` given ((rvec, tvec) pairs, e.g. an earlier fit of the same image);
    the candidate with the highest MSAC score (:func:`_best_hypothesis`) is kept with the points within
    ``tolerance`` px of it. Levenberg-Marquardt then refines on them. With ``weights`` (N,), those
    weight the score, and a last robust fit over all points follows (:func:`_robust_refine`, Cauchy
    scale ``ROBUST_SHARE * tolerance``). None when fewer than ``min_inliers`` agree, or the object
    would be behind the camera."""
    cv2 = _cv2()
    v = np.ascontiguousarray(vertices, np.float64)
    x = np.ascontiguousarray(xy, np.float64)
    if len(v) < min_inliers:
        return None
    try:
        return _fit_pose(cv2, v, x, intrinsics, tolerance, min_inliers, weights, seeds, poses)
    except (cv2.error, np.linalg.LinAlgError):  # degenerate points (e.g. all on one line): no pose
        return None


def _rotations(rvecs: np.ndarray) -> np.ndarray:
    """(H, 3) axis-angle vectors -> (H, 3, 3) rotation matrices (Rodrigues' formula, batched)."""
    theta = np.linalg.norm(rvecs, axis=1)
    k = rvecs / np.maximum(theta, 1e-12)[:, None]
    cross = np.zeros((len(k), 3, 3))
    cross[:, 0, 1], cross[:, 0, 2], cross[:, 1, 2] = -k[:, 2], k[:, 1], -k[:, 0]
    cross -= cross.transpose(0, 2, 1)
    s, c = np.sin(theta)[:, None, None], np.cos(theta)[:, None, None]
    return np.eye(3) + s * cross + (1 - c) * cross @ cross


def _seed_hypotheses(cv2, seeds, intrinsics) -> list:
    """The pose (AP3P) of every 4 of the first ``SEED_POINTS`` seed detections."""
    sv, sx = (np.ascontiguousarray(a[:SEED_POINTS], np.float64) for a in seeds)
    out = []
    for sub in itertools.combinations(range(len(sv)), 4):
        sub = list(sub)
        try:
            ok, rvec, tvec = cv2.solvePnP(sv[sub], sx[sub], intrinsics, None, flags=cv2.SOLVEPNP_AP3P)
        except cv2.error:  # degenerate subset (collinear points)
            continue
        if ok and np.isfinite(rvec).all() and np.isfinite(tvec).all():
            out.append((rvec.reshape(3, 1), tvec.reshape(3, 1)))
    return out


def _best_hypothesis(v, x, intrinsics, hypotheses: list, weights, scale: float):
    """The (rvec, tvec) of ``hypotheses`` with the highest weighted MSAC score over the points:
    sum of weight * (1 - min(d^2 / scale^2, 1)) for re-projection distances d. Unlike an inlier count,
    it prefers the pose that fits its inliers closely, and ties between poses that explain the same
    detections go to the tighter one. Poses that put the object behind the camera score nothing."""
    rvecs = np.concatenate([r.reshape(1, 3) for r, _ in hypotheses])
    tvecs = np.concatenate([t.reshape(1, 3) for _, t in hypotheses])
    cam = v[None] @ _rotations(rvecs).transpose(0, 2, 1) + tvecs[:, None]   # (H, N, 3)
    z = cam[..., 2]
    uv = (cam @ np.asarray(intrinsics).T)[..., :2] / np.where(z > 0, z, 1.0)[..., None]
    d2 = ((uv - x) ** 2).sum(-1) / scale ** 2
    score = ((1.0 - np.minimum(d2, 1.0)) * weights).sum(1)
    score[(z <= 0).any(1)] = -np.inf
    return hypotheses[int(np.argmax(score))]


def _fit_pose(cv2, v, x, intrinsics, tolerance, min_inliers, weights, seeds, poses=None):
    if np.isinf(tolerance):
        ok, rvec, tvec = cv2.solvePnP(v, x, intrinsics, None, flags=cv2.SOLVEPNP_SQPNP)
        inl = np.arange(len(v))
    else:
        cv2.setRNGSeed(0)
        ok, rvec, tvec, _ = cv2.solvePnPRansac(v, x, intrinsics, None, iterationsCount=300,
                                               reprojectionError=float(tolerance), confidence=0.999,
                                               flags=cv2.SOLVEPNP_SQPNP)
        hypotheses = [(rvec, tvec)] if ok else []
        if seeds is not None and len(seeds[0]) >= 4:
            hypotheses += _seed_hypotheses(cv2, seeds, intrinsics)
        hypotheses += [(np.asarray(r, np.float64).reshape(3, 1), np.asarray(t, np.float64).reshape(3, 1))
                       for r, t in poses or ()]
        if not hypotheses:
            return None
        w = np.ones(len(v)) if weights is None else np.asarray(weights, np.float64)
        rvec, tvec = _best_hypothesis(v, x, intrinsics, hypotheses, w, SCORE_SHARE * tolerance)
        ok = True
        inl = np.flatnonzero(np.linalg.norm(project(v, rvec, tvec, intrinsics) - x, axis=1) <= tolerance)
    if not ok or len(inl) < min_inliers:
        return None
    for _ in range(2):  # refine, then re-collect the inliers under the refined pose once
        rvec, tvec = cv2.solvePnPRefineLM(v[inl], x[inl], intrinsics, None, rvec, tvec)
        d = np.linalg.norm(project(v, rvec, tvec, intrinsics) - x, axis=1)
        new = np.flatnonzero(d <= tolerance) if np.isfinite(tolerance) else inl
        if len(new) < min_inliers or np.array_equal(new, inl):
            break
        inl = new
    if weights is not None and np.isfinite(tolerance):
        rvec, tvec = _robust_refine(v, x, intrinsics, rvec, tvec, np.asarray(weights, np.float64),
                                      ROBUST_SHARE * tolerance)
    rot = cv2.Rodrigues(rvec)[0]
    if np.any((v @ rot.T + tvec.ravel())[:, 2] <= 0):
        return None
    d = np.linalg.norm(project(v[inl], rvec, tvec, intrinsics) - x[inl], axis=1)
    return PoseFit(rvec=rvec.ravel(), tvec=tvec.ravel(), inliers=inl, rms=float(np.sqrt(np.mean(d ** 2))))


def project(vertices: np.ndarray, rvec, tvec, intrinsics: np.ndarray) -> np.ndarray:
    """(N, 3) vertices under pose (rvec, tvec) -> (N, 2) pixels."""
    cv2 = _cv2()
    out, _ = cv2.projectPoints(np.ascontiguousarray(vertices, np.float64), np.asarray(rvec, np.float64),
                               np.asarray(tvec, np.float64), intrinsics, None)
    return out.reshape(-1, 2)


def refine_keypoints(cam: ObjectCamera, xy: np.ndarray, confidence: np.ndarray, sizes: np.ndarray,
                     min_confidence: float, px_per_input_px, votes: tuple | None = None,
                     poses: list | None = None) -> tuple[np.ndarray, list]:
    """Pose-consistent keypoints for a batch of images.

    Args:
        cam: the calibration.
        xy: (N, K, 2) detected keypoints, original pixels.
        confidence: (N, K) heatmap peaks; detections at or above ``min_confidence`` vote for the pose.
        sizes: (N, 2) original (W, H); images of another size than the calibration's are left as they are.
        px_per_input_px: callable (W, H) -> original px per model-input px (scales ``INLIER_TOLERANCE``).
        votes: optional (xy (N, M, 2) original px, confidence (N, M), vertex (M,) int): several detections
            of each vertex (e.g. one per test-time turn) that vote for the pose in place of ``xy`` and
            ``confidence``, which remain what an image without a pose keeps.
        poses: optional, per image a list of (rvec, tvec) candidate poses besides those fitted here.
    Returns:
        (N, K, 2) keypoints: every vertex projected under the pose fitted to an image's confident
        detections, or the detections where no pose fits; and per image a dict ``refined``, ``inliers``
        (keypoint indices), ``votes`` (inlier detections), ``rms_input_px``, ``rvec``, ``tvec`` (or
        ``reason``).
    """
    out = np.array(xy, np.float64, copy=True)
    if votes is None:
        votes = (out, confidence, np.arange(out.shape[1]))
    vote_xy, vote_conf, vertex = (np.asarray(v) for v in votes)

    def one(i):
        size = tuple(int(v) for v in sizes[i])
        if size != tuple(cam.image_size):
            return None, {"refined": False, "reason": f"image size {size[0]}x{size[1]} is not the calibrated "
                                                      f"{cam.image_size[0]}x{cam.image_size[1]}"}
        scale = float(np.mean(px_per_input_px(size)))
        cand = np.flatnonzero((vote_conf[i] >= min_confidence) & np.isfinite(vote_xy[i]).all(1))
        own = np.flatnonzero((confidence[i] >= min_confidence) & np.isfinite(out[i]).all(1))
        own = own[np.argsort(-confidence[i, own], kind="stable")]
        fit = fit_pose(cam.vertices[vertex[cand]], vote_xy[i, cand], cam.intrinsics, INLIER_TOLERANCE * scale,
                       weights=vote_conf[i, cand], seeds=(cam.vertices[own], out[i, own]),
                       poses=None if poses is None else poses[i])
        agree = np.unique(vertex[cand[fit.inliers]]) if fit is not None else np.zeros(0, int)
        if len(agree) < MIN_INLIERS:
            return None, {"refined": False, "reason": f"fewer than {MIN_INLIERS} confident detections agree on a pose"}
        return project(cam.vertices, fit.rvec, fit.tvec, cam.intrinsics), {
            "refined": True, "inliers": agree.tolist(), "votes": int(len(fit.inliers)),
            "rms_input_px": fit.rms / scale, "rvec": fit.rvec.tolist(), "tvec": fit.tvec.tolist()}

    info = []
    for i, (xy_i, info_i) in enumerate(_map_images(one, len(out))):
        if xy_i is not None:
            out[i] = xy_i
        info.append(info_i)
    return out, info


def _map_images(fn, n: int):
    """``fn`` over range(n), in order, on one thread per core: OpenCV releases the GIL while it solves,
    so the per-image fits of a batch run side by side (each fit is deterministic on its own)."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    workers = min(n, os.cpu_count() or 1)
    if workers <= 1:
        return [fn(i) for i in range(n)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, range(n)))


def _spread(items: list, n: int = CALIBRATION_IMAGES) -> list:
    """At most ``n`` of ``items``, evenly spaced over the list (first and last included)."""
    if len(items) <= n:
        return list(items)
    return [items[j] for j in np.linspace(0, len(items) - 1, n).round().astype(int)]


def calibrate_pairs(images: list, annotations: list, geometry) -> tuple[ObjectCamera | None, str]:
    """:func:`calibrate` on up to ``CALIBRATION_IMAGES`` (image path, Annotation) pairs spread evenly
    over the lists (None annotations and unreadable images are passed over)."""
    from pipeline.images import ImageError, image_size

    good = _spread([i for i, a in enumerate(annotations) if a is not None and a.points is not None])
    points, pixels, sizes, names = [], [], [], []
    for i in good:
        try:
            sizes.append(image_size(images[i]))
        except ImageError:
            continue
        points.append(annotations[i].points)
        pixels.append(annotations[i].pixels)
        names.append(annotations[i].path or str(images[i]))
    return calibrate(points, pixels, sizes, geometry.input_px_scale, names)


def calibrate_dataset(data_dir, num_keypoints: int, geometry) -> tuple[ObjectCamera | None, str]:
    """:func:`calibrate_pairs` over a 4SP dataset folder (annotations that fail to parse are passed over)."""
    from pipeline.annotations import AnnotationError, pair_dataset, parse_annotation

    images, anns = [], []
    for _, img, js in _spread(pair_dataset(data_dir).pairs):
        try:
            anns.append(parse_annotation(js, num_keypoints))
        except AnnotationError:
            continue
        images.append(img)
    return calibrate_pairs(images, anns, geometry)
