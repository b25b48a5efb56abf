"""Built-in synthetic dataset generator: vectorised-numpy renderer, 4SP dataset layout.

    from pipeline.synthetic import generate_dataset, load_mesh, builtin_mesh
    root = generate_dataset("data", count=100, seed=0)        # -> Path("data")
    mesh = load_mesh("my_object.obj")                         # or .json / "cuboid"
    img, ann, mask = render_sample(mesh, index=0, seed=0)     # in-memory, one image

CLI: python -m pipeline.synthetic --out data --count N --seed S [--mesh ...]
Contact sheet: python -m pipeline.synthetic.contact_sheet DATA_ROOT out.png
Conventions (see camera.py): p_cam = R @ p_model + t, camera x right / y down / z
forward; pixel origin at the image's top-left corner, pixel centre = i + 0.5;
Euler angles intrinsic XYZ (R = Rx Ry Rz); quaternions (w, x, y, z).
"""
from .camera import Camera
from .generate import generate_dataset
from .meshes import Mesh, MeshError, builtin_mesh, load_mesh
from .render import render_sample

__all__ = ["generate_dataset", "load_mesh", "builtin_mesh", "Mesh", "MeshError", "Camera",
           "render_sample"]
