"""Rotations, quaternions and the pinhole camera.

Camera frame (OpenCV): origin at the optical centre, x right, y down, z forward
along the optical axis. An object point p (model frame) maps to the camera
frame as  p_cam = R @ p + t.  Pixel frame: origin at the top-left CORNER of the
image, u right, v down; the centre of pixel column i is u = i + 0.5.
Euler angles are intrinsic X-Y-Z (radians):  R = Rx(x) @ Ry(y) @ Rz(z).
Quaternions are (w, x, y, z), Hamilton convention, w >= 0.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


def random_quaternion(rng: np.random.Generator) -> np.ndarray:
    """Uniform random unit quaternion (w, x, y, z) -> uniform rotation over SO(3)."""
    while True:
        q = rng.standard_normal(4)
        n = np.linalg.norm(q)
        if n > 1e-8:
            q = q / n
            return q if q[0] >= 0 else -q


def quat_to_matrix(q) -> np.ndarray:
    """(w, x, y, z) unit quaternion -> (3, 3) rotation matrix."""
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def matrix_to_quat(R: np.ndarray) -> np.ndarray:
    """(3, 3) rotation matrix -> (w, x, y, z) with w >= 0."""
    R = np.asarray(R, dtype=np.float64)
    K = np.array([
        [R[0, 0] - R[1, 1] - R[2, 2], R[1, 0] + R[0, 1], R[2, 0] + R[0, 2], R[2, 1] - R[1, 2]],
        [R[1, 0] + R[0, 1], R[1, 1] - R[0, 0] - R[2, 2], R[2, 1] + R[1, 2], R[0, 2] - R[2, 0]],
        [R[2, 0] + R[0, 2], R[2, 1] + R[1, 2], R[2, 2] - R[0, 0] - R[1, 1], R[1, 0] - R[0, 1]],
        [R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1], R[0, 0] + R[1, 1] + R[2, 2]]]) / 3.0
    vals, vecs = np.linalg.eigh(K)
    x, y, z, w = vecs[:, np.argmax(vals)]
    q = np.array([w, x, y, z])
    return q if q[0] >= 0 else -q


def euler_xyz_to_matrix(x: float, y: float, z: float) -> np.ndarray:
    """Intrinsic XYZ Euler angles (radians) -> R = Rx(x) @ Ry(y) @ Rz(z)."""
    cx, sx, cy, sy, cz, sz = np.cos(x), np.sin(x), np.cos(y), np.sin(y), np.cos(z), np.sin(z)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rx @ ry @ rz


def matrix_to_euler_xyz(R: np.ndarray):
    """(3, 3) rotation -> intrinsic XYZ angles (x, y, z) with R = Rx(x) Ry(y) Rz(z)."""
    y = float(np.arcsin(np.clip(R[0, 2], -1.0, 1.0)))
    if abs(R[0, 2]) < 1.0 - 1e-9:
        x = float(np.arctan2(-R[1, 2], R[2, 2]))
        z = float(np.arctan2(-R[0, 1], R[0, 0]))
    else:  # gimbal lock: put everything into x
        x = float(np.arctan2(R[2, 1], R[1, 1]))
        z = 0.0
    return x, y, z


@dataclass
class Camera:
    """Pinhole intrinsics in pixels; (cx, cy) = principal point in the corner-origin frame."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    @classmethod
    def from_fov(cls, width: int, height: int, vfov_deg: float = 30.0) -> "Camera":
        """Square pixels, principal point at the image centre (W/2, H/2)."""
        f = 0.5 * height / np.tan(np.radians(vfov_deg) / 2.0)
        return cls(float(f), float(f), width / 2.0, height / 2.0, int(width), int(height))

    def project(self, p_cam: np.ndarray) -> np.ndarray:
        """(N, 3) camera-frame points (z > 0) -> (N, 2) unrounded pixel coords (u, v)."""
        p = np.asarray(p_cam, dtype=np.float64)
        return np.stack([self.fx * p[:, 0] / p[:, 2] + self.cx,
                         self.fy * p[:, 1] / p[:, 2] + self.cy], axis=1)

    def unproject(self, u: np.ndarray, v: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Pixel coords + depth z -> (..., 3) camera-frame points."""
        return np.stack([(u - self.cx) / self.fx * z, (v - self.cy) / self.fy * z, z], axis=-1)

    def inside(self, uv: np.ndarray) -> np.ndarray:
        """(N, 2) -> (N,) bool: 0 <= u < W and 0 <= v < H."""
        return ((uv[:, 0] >= 0) & (uv[:, 0] < self.width)
                & (uv[:, 1] >= 0) & (uv[:, 1] < self.height))

    def to_dict(self) -> dict:
        return asdict(self)
