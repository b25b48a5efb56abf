"""Keypoint meshes: built-in spacecraft / cuboid, JSON and OBJ loading, topology.

All vertices are in the model (object) frame, float64, shape (K, 3). Faces are
polygons (lists of vertex indices) wound counter-clockwise when seen from
outside, i.e. the right-hand normal (v1 - v0) x (v2 - v0) points outward.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

# Material ids understood by shading.py.
GOLD, WHITE, SOLAR, DARK = 0, 1, 2, 3


class MeshError(ValueError):
    """Raised for an invalid mesh (bad file, open surface, bad indices...)."""


@dataclass
class Mesh:
    """A closed keypoint mesh; its K vertices are the keypoints.

    vertices: (K, 3) float64 model-frame xyz. faces: polygons (index lists),
    outward wound. materials: optional per-face material id (see shading.py).
    """

    vertices: np.ndarray
    faces: List[List[int]]
    name: str = "object"
    materials: Optional[List[int]] = field(default=None)

    def __post_init__(self) -> None:
        self.vertices = np.asarray(self.vertices, dtype=np.float64)
        self.faces = [[int(i) for i in f] for f in self.faces]
        if self.materials is None:
            self.materials = [(GOLD, WHITE, SOLAR, GOLD, DARK, WHITE)[i % 6]
                              for i in range(len(self.faces))]

    @property
    def num_vertices(self) -> int:
        return int(self.vertices.shape[0])

    def edges(self) -> List[Tuple[int, int]]:
        """Sorted unique undirected polygon edges (a < b)."""
        es = set()
        for f in self.faces:
            for a, b in zip(f, f[1:] + f[:1]):
                es.add((min(a, b), max(a, b)))
        return sorted(es)

    def connectivity(self) -> Dict[str, List[int]]:
        """{"i": sorted neighbour indices} over polygon edges."""
        nb: Dict[int, set] = {i: set() for i in range(self.num_vertices)}
        for a, b in self.edges():
            nb[a].add(b)
            nb[b].add(a)
        return {str(i): sorted(nb[i]) for i in range(self.num_vertices)}

    def triangles(self) -> Tuple[np.ndarray, np.ndarray]:
        """Fan-triangulate the (convex, planar) polygons -> (tris (T, 3), tri_face (T,)) int arrays."""
        tris, owner = [], []
        for fi, f in enumerate(self.faces):
            for j in range(1, len(f) - 1):
                tris.append((f[0], f[j], f[j + 1]))
                owner.append(fi)
        return np.asarray(tris, dtype=np.int64), np.asarray(owner, dtype=np.int64)

    def radius(self) -> float:
        """Bounding radius about the model origin (the rotation centre)."""
        return float(np.linalg.norm(self.vertices, axis=1).max())

    def info(self) -> dict:
        """mesh_information.json content (4SP format + extra `vertices`)."""
        edges = self.edges()
        return {
            "object_name": self.name,
            "total_vertices": self.num_vertices,
            "total_edges": len(edges),
            "total_faces": len(self.faces),
            "vertex_connectivity": self.connectivity(),
            "face_composition": [list(f) for f in self.faces],
            "edge_composition": [list(e) for e in edges],
            "vertices": self.vertices.tolist(),
        }


def face_normals(vertices: np.ndarray, faces: List[List[int]]) -> np.ndarray:
    """Unit outward normals (F, 3) of polygons by Newell's method."""
    out = np.zeros((len(faces), 3))
    for i, f in enumerate(faces):
        p = vertices[f]
        q = np.roll(p, -1, axis=0)
        n = np.array([np.sum((p[:, 1] - q[:, 1]) * (p[:, 2] + q[:, 2])),
                      np.sum((p[:, 2] - q[:, 2]) * (p[:, 0] + q[:, 0])),
                      np.sum((p[:, 0] - q[:, 0]) * (p[:, 1] + q[:, 1]))])
        out[i] = n / max(np.linalg.norm(n), 1e-300)
    return out


def signed_volume(vertices: np.ndarray, faces: List[List[int]]) -> float:
    """Enclosed volume; positive iff faces are wound outward."""
    vol = 0.0
    for f in faces:
        v0 = vertices[f[0]]
        for j in range(1, len(f) - 1):
            vol += float(np.dot(v0, np.cross(vertices[f[j]], vertices[f[j + 1]])))
    return vol / 6.0


def validate_mesh(mesh: Mesh, source: str = "mesh") -> Mesh:
    """Check closedness/orientation; flip a fully inverted mesh. Raises MeshError."""
    v = mesh.vertices
    if v.ndim != 2 or v.shape[1] != 3 or v.shape[0] < 4:
        raise MeshError(f"{source}: need at least 4 vertices of 3 coordinates, got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise MeshError(f"{source}: vertex coordinates must be finite numbers")
    k = v.shape[0]
    if len(mesh.faces) < 4:
        raise MeshError(f"{source}: need at least 4 faces for a closed mesh, got {len(mesh.faces)}")
    directed: Dict[Tuple[int, int], int] = {}
    used = set()
    for fi, f in enumerate(mesh.faces):
        if len(f) < 3:
            raise MeshError(f"{source}: face {fi} has {len(f)} vertices (need >= 3)")
        if len(set(f)) != len(f):
            raise MeshError(f"{source}: face {fi} repeats a vertex: {f}")
        for i in f:
            if not 0 <= i < k:
                raise MeshError(f"{source}: face {fi} uses vertex index {i}, but there are only {k} vertices")
        used.update(f)
        for a, b in zip(f, f[1:] + f[:1]):
            if (a, b) in directed:
                raise MeshError(f"{source}: edge {a}->{b} used twice in the same direction "
                                f"(faces {directed[(a, b)]} and {fi}); faces are not consistently wound")
            directed[(a, b)] = fi
    unused = sorted(set(range(k)) - used)
    if unused:
        raise MeshError(f"{source}: vertices {unused} are not used by any face")
    for (a, b), fi in directed.items():
        if (b, a) not in directed:
            raise MeshError(f"{source}: mesh is not closed: edge {a}-{b} of face {fi} has no "
                            f"neighbouring face (or its neighbour is wound the other way)")
    tri_area = np.linalg.norm(np.cross(*(v[mesh.triangles()[0][:, j]] - v[mesh.triangles()[0][:, 0]]
                                         for j in (1, 2))), axis=1)
    if np.any(tri_area <= 1e-12 * max(mesh.radius(), 1e-12) ** 2):
        raise MeshError(f"{source}: mesh has degenerate (zero-area) faces")
    if signed_volume(v, mesh.faces) < 0:  # consistently inside-out: flip all
        mesh.faces = [[f[0]] + f[:0:-1] for f in mesh.faces]
    return mesh


def _spacecraft() -> Mesh:
    """A bus with a nose antenna and two unequal solar wings.

    Shape and materials are deliberately asymmetric: no rotation maps the object onto itself, so
    every vertex's identity can be told from the image (a symmetric object makes keypoint labels
    ambiguous and no detector can then beat chance on the swapped pairs).
    """
    a, b, c = 0.5, 0.28, 0.55  # bus half extents
    v = [(-a, -b, -c), (a, -b, -c), (a, b, -c), (-a, b, -c),
         (-a, -b, c), (a, -b, c), (a, b, c), (-a, b, c),
         (0.18, 0.10, 1.3),      # 8: antenna / nose apex, off-centre
         (2.6, 0.0, 0.12),       # 9: +x solar wing tip, long and level
         (-1.7, 0.08, -0.45)]    # 10: -x wing tip, short and swept down
    faces = [[0, 3, 2, 1], [0, 1, 5, 4], [2, 3, 7, 6]]
    mats = [DARK, GOLD, WHITE]   # bottom, -y side, +y side
    pyramids = (([1, 2, 6, 5], 9, (SOLAR, SOLAR, SOLAR, SOLAR)),
                ([3, 0, 4, 7], 10, (SOLAR, DARK, SOLAR, DARK)),
                ([4, 5, 6, 7], 8, (GOLD, WHITE, WHITE, DARK)))
    for quad, apex, face_mats in pyramids:
        for i in range(4):
            faces.append([quad[i], quad[(i + 1) % 4], apex])
            mats.append(face_mats[i])
    return Mesh(np.array(v), faces, "spacecraft", mats)


def _cuboid() -> Mesh:
    a, b, c = 0.6, 0.4, 0.3
    v = [(-a, -b, -c), (a, -b, -c), (a, b, -c), (-a, b, -c),
         (-a, -b, c), (a, -b, c), (a, b, c), (-a, b, c)]
    faces = [[0, 3, 2, 1], [4, 5, 6, 7], [0, 1, 5, 4], [2, 3, 7, 6], [1, 2, 6, 5], [3, 0, 4, 7]]
    return Mesh(np.array(v), faces, "cuboid", [DARK, WHITE, GOLD, GOLD, SOLAR, SOLAR])


_BUILTIN = {"spacecraft": _spacecraft, "cuboid": _cuboid}


def builtin_mesh(name: str = "spacecraft") -> Mesh:
    """Built-in mesh: 'spacecraft' (11 vertices, 15 faces) or 'cuboid' (8 vertices)."""
    if name not in _BUILTIN:
        raise MeshError(f"unknown built-in mesh {name!r}; choose one of {sorted(_BUILTIN)}")
    return validate_mesh(_BUILTIN[name](), name)


def _load_json(path: Path) -> Mesh:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MeshError(f"{path}: cannot read mesh JSON: {e}") from None
    if not isinstance(data, dict):
        raise MeshError(f"{path}: mesh JSON must be an object with 'vertices' and 'face_composition'")
    for key in ("vertices", "face_composition"):
        if key not in data:
            raise MeshError(f"{path}: mesh JSON lacks the required key {key!r}")
    try:
        verts = np.asarray(data["vertices"], dtype=np.float64)
        faces = [[int(i) for i in f] for f in data["face_composition"]]
    except (TypeError, ValueError) as e:
        raise MeshError(f"{path}: malformed 'vertices' or 'face_composition': {e}") from None
    if "total_vertices" in data and int(data["total_vertices"]) != len(verts):
        raise MeshError(f"{path}: total_vertices={data['total_vertices']} but {len(verts)} vertices given")
    return Mesh(verts, faces, str(data.get("object_name", path.stem)))


def _load_obj(path: Path) -> Mesh:
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise MeshError(f"{path}: cannot read OBJ file: {e}") from None
    verts, faces, name = [], [], path.stem
    for ln, line in enumerate(lines, 1):
        parts = line.split("#", 1)[0].split()
        if not parts:
            continue
        try:
            if parts[0] == "v":
                verts.append([float(x) for x in parts[1:4]])
                if len(verts[-1]) != 3:
                    raise ValueError("vertex needs 3 coordinates")
            elif parts[0] == "f":
                idx = [int(p.split("/")[0]) for p in parts[1:]]
                faces.append([i - 1 if i > 0 else len(verts) + i for i in idx])
            elif parts[0] == "o" and len(parts) > 1:
                name = parts[1]
        except ValueError as e:
            raise MeshError(f"{path}:{ln}: cannot parse line {line.strip()!r}: {e}") from None
    if not verts or not faces:
        raise MeshError(f"{path}: OBJ file has no 'v' or no 'f' lines")
    return Mesh(np.asarray(verts), faces, name)


def load_mesh(spec: Union[str, Path, Mesh] = "spacecraft") -> Mesh:
    """Mesh from a built-in name, a .json (mesh_information schema + 'vertices') or .obj path."""
    if isinstance(spec, Mesh):
        return validate_mesh(spec, spec.name)
    if isinstance(spec, str) and spec in _BUILTIN:
        return builtin_mesh(spec)
    path = Path(spec)
    if path.suffix.lower() not in (".json", ".obj"):
        raise MeshError(f"{spec}: not a built-in mesh ({sorted(_BUILTIN)}) nor a .json/.obj file")
    if not path.is_file():
        raise MeshError(f"{path}: mesh file does not exist")
    mesh = _load_json(path) if path.suffix.lower() == ".json" else _load_obj(path)
    return validate_mesh(mesh, str(path))
