"""Reading the 4SP dataset format: folder layout, mesh information and per-image annotations.

Layout::

    DATA_ROOT/Rendered_Images/<stem>.png|jpg|jpeg
    DATA_ROOT/JSON_Data_REF/<stem>.json
    DATA_ROOT/Object_Information/mesh_information[_<name>].json

Pixel coordinates in annotations are original-image pixels in the convention of
``pipeline.geometry`` (corner origin, pixel i centred at i + 0.5).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.images import IMAGE_SUFFIXES

IMAGES_DIR = "Rendered_Images"
ANNOTATIONS_DIR = "JSON_Data_REF"
MESH_DIR = "Object_Information"
GENERATE_HINT = "Generate the built-in dataset with `python -m pipeline.synthetic --out data --count 1000`."


class AnnotationError(ValueError):
    """A malformed dataset file; the message names the file and what is wrong."""


@dataclass
class MeshInfo:
    """Keypoint mesh topology. Keypoint k is mesh vertex k."""

    name: str
    num_keypoints: int
    edges: np.ndarray  # (E, 2) int32
    faces: list = field(default_factory=list)
    path: str = ""


@dataclass
class Annotation:
    """One image's labels: (K, 2) original pixels (NaN where absent), (K,) visibility, and (K, 3) the
    vertices' 3D ``coordinates`` in the annotation's frame (NaN where absent; used for calibration)."""

    stem: str
    pixels: np.ndarray
    visible: np.ndarray
    path: str = ""
    points: np.ndarray | None = None


def _read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise AnnotationError(f"{path}: file not found.") from None
    except UnicodeDecodeError as e:
        raise AnnotationError(f"{path}: not UTF-8 text ({e}).") from None
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}.") from None


def find_mesh_file(data_dir) -> Path:
    """The mesh information file of a dataset: ``mesh_information.json`` or the single ``_<name>`` one."""
    folder = Path(data_dir) / MESH_DIR
    files = sorted(folder.glob("mesh_information*.json")) if folder.is_dir() else []
    if not files:
        raise AnnotationError(
            f"No mesh information file in {folder} (expected mesh_information[_<name>].json, which gives "
            f"the number of keypoints). Pass --mesh PATH, or: {GENERATE_HINT}"
        )
    if len(files) > 1:
        plain = folder / "mesh_information.json"
        if plain in files:
            return plain
        raise AnnotationError(
            f"Several mesh files in {folder}: {[f.name for f in files]}. Choose one with --mesh PATH."
        )
    return files[0]


def load_mesh_info(path) -> MeshInfo:
    """Parse a mesh information JSON (``total_vertices`` gives K)."""
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict) or "total_vertices" not in data:
        raise AnnotationError(f"{path}: missing key 'total_vertices' (the number of keypoints K).")
    k = data["total_vertices"]
    if not isinstance(k, int) or k <= 0:
        raise AnnotationError(f"{path}: 'total_vertices' must be a positive integer. Received: {k!r}")
    edges = np.asarray(data.get("edge_composition") or np.zeros((0, 2)), dtype=np.int64).reshape(-1, 2)
    if edges.size and (edges.min() < 0 or edges.max() >= k):
        raise AnnotationError(f"{path}: 'edge_composition' has a vertex index outside [0, {k - 1}].")
    return MeshInfo(
        name=str(data.get("object_name", path.stem)),
        num_keypoints=k,
        edges=edges.astype(np.int32),
        faces=list(data.get("face_composition", [])),
        path=str(path),
    )


def _entries(data: dict, key: str, path: Path) -> list:
    value = data.get(key, [])
    if not isinstance(value, list):
        raise AnnotationError(f"{path}: '{key}' must be a list. Received: {type(value).__name__}")
    return value


def _index(entry, k: int, key: str, path: Path) -> int:
    if not isinstance(entry, dict) or "index" not in entry:
        raise AnnotationError(f"{path}: an entry of '{key}' has no 'index'.")
    i = entry["index"]
    if isinstance(i, bool) or not isinstance(i, int):
        raise AnnotationError(f"{path}: '{key}' index must be an integer. Received: {i!r}")
    if not 0 <= i < k:
        raise AnnotationError(
            f"{path}: '{key}' has index {i}, outside [0, {k - 1}] for the mesh's K={k} vertices. "
            "Is the right mesh information file in use (--mesh)?"
        )
    return i


def _pixel(entry, key: str, path: Path):
    uv = entry.get("pixel_coordinates")
    if uv is None:
        return None
    if not isinstance(uv, (list, tuple)) or len(uv) != 2:
        raise AnnotationError(f"{path}: '{key}' index {entry['index']}: pixel_coordinates must be [u, v].")
    try:
        u, v = float(uv[0]), float(uv[1])
    except (TypeError, ValueError):
        raise AnnotationError(f"{path}: '{key}' index {entry['index']}: non-numeric pixel_coordinates {uv!r}.") from None
    if not (math.isfinite(u) and math.isfinite(v)):
        raise AnnotationError(f"{path}: '{key}' index {entry['index']}: pixel_coordinates {uv!r} are not finite.")
    return u, v


def _point(entry, key: str, path: Path):
    xyz = entry.get("coordinates")
    if xyz is None:
        return None
    try:
        p = [float(c) for c in xyz]
    except (TypeError, ValueError):
        raise AnnotationError(f"{path}: '{key}' index {entry['index']}: non-numeric coordinates {xyz!r}.") from None
    if len(p) != 3 or not all(math.isfinite(c) for c in p):
        raise AnnotationError(f"{path}: '{key}' index {entry['index']}: coordinates must be 3 finite numbers "
                              f"[x, y, z]. Received: {xyz!r}")
    return p


def parse_annotation(path, num_keypoints: int) -> Annotation:
    """Read one annotation JSON into (K, 2) pixels and (K,) visibility, validating every entry."""
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: expected a JSON object with 'visible_vertices'.")
    if "visible_vertices" not in data:
        raise AnnotationError(f"{path}: missing key 'visible_vertices'.")
    k = num_keypoints
    pixels = np.full((k, 2), np.nan)
    visible = np.zeros(k, dtype=bool)
    points = np.full((k, 3), np.nan)
    seen = set()
    for key, is_visible in (("visible_vertices", True), ("non_visible_vertices", False)):
        for entry in _entries(data, key, path):
            i = _index(entry, k, key, path)
            if i in seen:
                raise AnnotationError(f"{path}: vertex index {i} is listed twice.")
            seen.add(i)
            uv = _pixel(entry, key, path)
            if is_visible and uv is None:
                raise AnnotationError(f"{path}: visible vertex {i} has no pixel_coordinates.")
            if uv is not None:
                pixels[i] = uv
            xyz = _point(entry, key, path)
            if xyz is not None:
                points[i] = xyz
            visible[i] = is_visible
    return Annotation(stem=path.stem, pixels=pixels, visible=visible, path=str(path), points=points)


@dataclass
class Pairing:
    """Images matched to annotations by stem, and what did not match."""

    pairs: list  # [(stem, image_path, json_path)]
    images_without_json: list
    json_without_image: list


def pair_dataset(data_dir) -> Pairing:
    """Match ``Rendered_Images/<stem>.*`` with ``JSON_Data_REF/<stem>.json``."""
    root = Path(data_dir)
    img_dir, ann_dir = root / IMAGES_DIR, root / ANNOTATIONS_DIR
    if not img_dir.is_dir():
        raise AnnotationError(f"{img_dir} not found: {root} is not a 4SP dataset. {GENERATE_HINT}")
    images = {}
    for p in sorted(img_dir.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            if p.stem in images:
                raise AnnotationError(f"{img_dir}: two images share the stem '{p.stem}' ({images[p.stem].name}, {p.name}).")
            images[p.stem] = p
    jsons = {p.stem: p for p in sorted(ann_dir.glob("*.json"))} if ann_dir.is_dir() else {}
    if not images:
        raise AnnotationError(f"{img_dir} holds no images ({', '.join(IMAGE_SUFFIXES)}). {GENERATE_HINT}")
    pairs = [(s, images[s], jsons[s]) for s in sorted(images) if s in jsons]
    return Pairing(
        pairs=pairs,
        images_without_json=[str(images[s]) for s in sorted(images) if s not in jsons],
        json_without_image=[str(jsons[s]) for s in sorted(jsons) if s not in images],
    )
