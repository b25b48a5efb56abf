"""Scene sampling and rendering of one annotated image.

Pose: p_cam = R @ p_model + t (camera frame: x right, y down, z forward).
Annotation `coordinates` are the rotated model vertices R @ p_model (add
`translation` to get camera-frame points); `pixel_coordinates` are the exact,
unrounded projections in the corner-origin pixel frame (pixel centre = i + 0.5).
"""
from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist
from typing import Optional

import numpy as np
from PIL import Image, ImageFilter

from .backgrounds import choose_kind, make_background
from .camera import Camera, matrix_to_euler_xyz, matrix_to_quat, quat_to_matrix, random_quaternion
from .meshes import Mesh
from .raster import NEAR, Buffers, clip_near, front_facing, rasterize, vertex_visibility
from .shading import FaceFrames, shade

ROTATION_CONVENTION = ("intrinsic XYZ Euler angles in radians: R = Rx(x) @ Ry(y) @ Rz(z); "
                       "p_cam = R @ p_model + translation; camera x right, y down, z forward")


# 256 equiprobable standard-normal quantiles: cheap Gaussian noise from random bytes
_GAUSS_TABLE = np.array([NormalDist().inv_cdf((i + 0.5) / 256) for i in range(256)], np.float32)


def _box_down(a: np.ndarray, s: int) -> np.ndarray:
    """Mean over s x s blocks of the first two axes (sizes divisible by s)."""
    if s == 1:
        return a
    out = a[0::s, 0::s].copy()
    for dy in range(s):
        for dx in range(s):
            if dx or dy:
                out += a[dy::s, dx::s]
    out *= np.float32(1.0 / (s * s))
    return out


@dataclass
class Scene:
    """One sampled scene: rotation R (3, 3), translation t (3,), unit sun direction (3,) in the
    camera frame (towards the sun), lighting strengths and the background kind."""

    R: np.ndarray
    t: np.ndarray
    sun: np.ndarray
    sun_power: float = 1.0
    ambient: float = 0.06
    background: str = "black"


def image_rng(seed: int, index: int) -> np.random.Generator:
    """Independent RNG for image `index` of a run seeded with `seed`."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))


def sample_scene(mesh: Mesh, cam: Camera, rng: np.random.Generator,
                 background: str = "mixed") -> Scene:
    """Uniform SO(3) rotation; distance such that the rotated object's larger image-plane
    extent is 25-70 % of the frame height; placement like a 4SP render that stage 2 centre-crops:
    85 % near the frame centre (Gaussian jitter, sd 6 % of the height), 10 % shifted by 30-50 % of
    the height (keypoints leave a centre crop), 5 % pushed over a frame edge ("Outside view")."""
    R = quat_to_matrix(random_quaternion(rng))
    rot = mesh.vertices @ R.T
    extent = max(np.ptp(rot[:, 0]), np.ptp(rot[:, 1]))
    dist = cam.fy * extent / (rng.uniform(0.25, 0.7) * cam.height)
    dist = max(dist, 1.5 * mesh.radius())  # keep the camera well outside the object
    half_px = cam.fy * np.abs(rot[:, :2]).max() / (dist - mesh.radius())
    W, H = cam.width, cam.height
    mode = rng.random()
    if mode < 0.85:
        du, dv = np.clip(rng.normal(0, 0.06 * H, 2), -0.2 * H, 0.2 * H)
        uc, vc = W / 2 + du, H / 2 + dv
    elif mode < 0.95:
        angle = rng.uniform(0, 2 * np.pi)
        r = rng.uniform(0.3, 0.5) * H
        uc, vc = W / 2 + r * np.cos(angle), H / 2 + r * np.sin(angle)
    else:  # partly outside the frame
        uc, vc = rng.uniform(half_px, max(W - half_px, half_px + 1)), rng.uniform(0, H)
        edge_pos = rng.uniform(-0.2, 0.6) * half_px
        side = rng.integers(4)
        if side == 0:
            uc = edge_pos
        elif side == 1:
            uc = W - edge_pos
        elif side == 2:
            vc = edge_pos
        else:
            vc = H - edge_pos
    t = dist * np.array([(uc - cam.cx) / cam.fx, (vc - cam.cy) / cam.fy, 1.0])
    sun = rng.standard_normal(3)
    sun /= np.linalg.norm(sun)
    if rng.random() < 0.8:
        sun[2] = -abs(sun[2])  # mostly lit from the camera side
    return Scene(R, t, sun, float(rng.uniform(0.95, 1.4)), float(rng.uniform(0.04, 0.12)),
                 choose_kind(background, rng))


def render_object(mesh: Mesh, cam: Camera, R: np.ndarray, t: np.ndarray, ss: int = 2):
    """Z-buffer the mesh. Returns (Buffers or None if nothing is in view, front (T,) bool,
    p_cam (K, 3)). Buffer ids are triangle indices of mesh.triangles()."""
    tris, _ = mesh.triangles()
    p_cam = mesh.vertices @ R.T + t
    tri_cam = p_cam[tris]
    front = front_facing(tri_cam)
    sub, sub_id = [], []
    for i in np.nonzero(front)[0]:
        for tri in clip_near(tri_cam[i]):
            sub.append(tri)
            sub_id.append(i)
    if not sub:
        return None, front, p_cam
    sub = np.asarray(sub)
    uv = cam.project(sub.reshape(-1, 3)).reshape(-1, 3, 2)
    x0 = int(np.clip(np.floor(uv[..., 0].min()) - 1, 0, cam.width))
    x1 = int(np.clip(np.ceil(uv[..., 0].max()) + 1, 0, cam.width))
    y0 = int(np.clip(np.floor(uv[..., 1].min()) - 1, 0, cam.height))
    y1 = int(np.clip(np.ceil(uv[..., 1].max()) + 1, 0, cam.height))
    if x1 <= x0 or y1 <= y0:
        return None, front, p_cam
    xy = (uv - np.array([x0, y0])) * ss
    depth, ids = rasterize(xy, sub[..., 2], sub_id, ((y1 - y0) * ss, (x1 - x0) * ss))
    return Buffers(depth, ids, x0, y0, ss), front, p_cam


def _vertex_records(mesh: Mesh, cam: Camera, R, buf: Optional[Buffers], front, p_cam):
    tris, _ = mesh.triangles()
    incident = [set() for _ in range(mesh.num_vertices)]
    for ti, tri in enumerate(tris):
        for k in tri:
            incident[k].add(ti)
    z = p_cam[:, 2]
    behind = z <= NEAR
    uv = np.full((len(z), 2), np.nan)
    uv[~behind] = cam.project(p_cam[~behind])
    inframe = ~behind & cam.inside(np.nan_to_num(uv, nan=-1.0))
    zvis = np.zeros(len(z), bool)
    if buf is not None:
        zvis = vertex_visibility(buf, np.nan_to_num(uv, nan=-1.0), z, incident, front)
    rotated = mesh.vertices @ R.T
    vis, nonvis = [], []
    for k in range(len(z)):
        rec = {"index": k, "coordinates": [float(c) for c in rotated[k]]}
        if behind[k]:
            rec["status"] = "Behind camera"
            nonvis.append(rec)
            continue
        rec["pixel_coordinates"] = [float(uv[k, 0]), float(uv[k, 1])]
        if not inframe[k]:
            rec["status"] = "Outside view"
            nonvis.append(rec)
        elif zvis[k]:
            vis.append(rec)
        else:
            nonvis.append(rec)
    return vis, nonvis


def render_scene(mesh: Mesh, cam: Camera, scene: Scene, rng: np.random.Generator,
                 ss: int = 2, frames: Optional[FaceFrames] = None):
    """Render one scene -> (image (H, W, 3) uint8, annotation dict, object mask (H, W) bool)."""
    frames = frames or FaceFrames(mesh)
    img = make_background(scene.background, cam.width, cam.height, rng)
    buf, front, p_cam = render_object(mesh, cam, scene.R, scene.t, ss)
    mask = np.zeros((cam.height, cam.width), bool)
    if buf is not None:
        _, tri_face = mesh.triangles()
        rows, cols = np.nonzero(buf.mask)
        u, v = buf.sample_uv(rows, cols)
        pts = cam.unproject(u.astype(np.float32), v.astype(np.float32), buf.depth[rows, cols])
        col = shade(pts, tri_face[buf.tri[rows, cols]], frames, scene.R, scene.t,
                    scene.sun, scene.sun_power, scene.ambient)
        h, w = buf.depth.shape
        hc, wc = h // ss, w // ss
        rgb = np.zeros((h, w, 3), np.float32)
        rgb[rows, cols] = col
        prem, cov = _box_down(rgb, ss), _box_down(buf.mask.astype(np.float32), ss)
        sl = (slice(buf.y0, buf.y0 + hc), slice(buf.x0, buf.x0 + wc))
        img[sl] = prem + (1 - cov)[..., None] * img[sl]
        mask[sl] = cov > 0
    img *= 255.0
    if rng.random() < 0.3:  # slight optical blur
        q = Image.fromarray((np.clip(img, 0, 255) + 0.5).astype(np.uint8))
        img = np.asarray(q.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.0))), np.float32)
    sigma = np.float32(rng.uniform(1.0, 4.0))  # sensor noise, in 8-bit levels
    img += (_GAUSS_TABLE * sigma + np.float32(0.5))[rng.integers(0, 256, img.shape, dtype=np.uint8)]
    out = np.clip(img, 0, 255, out=img).astype(np.uint8)
    vis, nonvis = _vertex_records(mesh, cam, scene.R, buf, front, p_cam)
    x, y, z = matrix_to_euler_xyz(scene.R)
    q = matrix_to_quat(scene.R)
    ann = {
        "object_name": mesh.name,
        "visible_vertices": vis,
        "non_visible_vertices": nonvis,
        "rotation": {"x": x, "y": y, "z": z},
        "rotation_convention": ROTATION_CONVENTION,
        "rotation_quaternion": {"w": float(q[0]), "x": float(q[1]), "y": float(q[2]), "z": float(q[3])},
        "translation": [float(c) for c in scene.t],
        "camera": cam.to_dict(),
        "sun_direction": [float(c) for c in scene.sun],
        "background": scene.background,
    }
    return out, ann, mask


def render_sample(mesh: Mesh, index: int, seed: int = 0, width: int = 1920, height: int = 1080,
                  background: str = "mixed", ss: int = 2, frames: Optional[FaceFrames] = None):
    """Image `index` of a run with `seed` -> (image uint8 (H, W, 3), annotation, mask (H, W))."""
    rng = image_rng(seed, index)
    cam = Camera.from_fov(width, height)
    scene = sample_scene(mesh, cam, rng, background)
    return render_scene(mesh, cam, scene, rng, ss, frames)
