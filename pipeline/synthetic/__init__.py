"""Built-in synthetic dataset generator (numpy renderer, 4SP dataset layout).

    from pipeline.synthetic import generate_dataset, load_mesh, builtin_mesh
    generate_dataset("data", count=100, seed=0)  # -> Path("data")
"""
from .camera import Camera
from .generate import generate_dataset
from .meshes import Mesh, MeshError, builtin_mesh, load_mesh
from .render import render_sample

__all__ = ["generate_dataset", "load_mesh", "builtin_mesh", "Mesh", "MeshError", "Camera",
           "render_sample"]
