"""Typed configuration: dataclasses that flow from the command line (and optional YAML/JSON files).

Every stage has one config dataclass. ``add_dataclass_args`` exposes its fields as ``--flags``
(help text from the field's ``metadata["help"]``), ``from_args`` builds the instance back, and
``load_config_file`` merges a YAML or JSON file underneath explicit flags. Configs are saved as
JSON next to the arrays and models they produce, so later stages rebuild exactly.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.geometry import Geometry
from pipeline.views import ZoomViews


def _help(text: str, **kw):
    return field(metadata={"help": text}, **kw)


@dataclass
class PreprocessConfig:
    """Settings of ``preprocess_vis.py`` (seed-001 defaults)."""

    data_dir: str = _help("4SP dataset root (Rendered_Images/, JSON_Data_REF/, Object_Information/).", default="data")
    out_dir: str = _help("Where X_data.npy and Y_data.npz are written.", default=".")
    mesh: str = _help("Mesh information JSON; default: the one file in DATA_DIR/Object_Information/.", default="")
    canvas_w: int = _help("Width of the resize-with-pad canvas (px).", default=1920)
    canvas_h: int = _help("Height of the resize-with-pad canvas (px).", default=1080)
    crop_w: int = _help("Width of the centre crop taken from the canvas (px).", default=1000)
    crop_h: int = _help("Height of the centre crop taken from the canvas (px).", default=1000)
    img_size: int = _help("Side of the square model input (px).", default=128)
    heat_size: int = _help("Side of the square heatmaps (px).", default=64)
    sigma: float = _help("Gaussian standard deviation of heatmap targets, in heatmap pixels.", default=2.0)
    heatmap_dtype: str = _help("Storage dtype of heatmaps in Y_data.npz: float16 or float32.", default="float16")
    workers: int = _help("Parallel image decoders (0: one per CPU core).", default=0)
    limit: int = _help("Use only the first N annotated images (0: all).", default=0)
    shards: int = _help("Write N shard files plus data_index.json instead of one X/Y pair (0: unsharded).",
                        default=0)
    zoom_views: int = _help("Also write N zoomed views per render: crops centred on its object and magnified until "
                            "it fills a share drawn from --zoom-fill, like the second look at inference (0: none).",
                            default=0)
    zoom_fill: tuple[float, float] = _help("Range of the share of a zoomed view the object's extent fills.",
                                           default=(0.55, 0.9))
    zoom_jitter: float = _help("Standard deviation of a zoomed view's centre, as a share of its side.", default=0.02)
    zoom_seed: int = _help("Seed of the zoomed views (drawn per render stem).", default=0)
    skip_invalid: bool = _help("Skip bad images/annotations and list them, instead of stopping.", default=False)
    sanity_grid: str = _help("Write a PNG grid of samples with keypoints and heatmaps here ('' to skip).",
                             default="logs/preprocess_sanity.png")

    def __post_init__(self):
        if self.sigma <= 0:
            raise ValueError(f"sigma must be positive. Received: sigma={self.sigma}")
        if self.heatmap_dtype not in ("float16", "float32"):
            raise ValueError(f"heatmap_dtype must be float16 or float32. Received: {self.heatmap_dtype!r}")
        self.geometry()  # validates sizes
        self.zoom()  # validates the zoomed views

    def geometry(self) -> Geometry:
        return Geometry(
            canvas=(self.canvas_w, self.canvas_h),
            crop=(self.crop_w, self.crop_h),
            input_size=self.img_size,
            heatmap_size=self.heat_size,
        )

    def zoom(self) -> ZoomViews:
        return ZoomViews(self.zoom_views, tuple(self.zoom_fill), self.zoom_jitter, self.zoom_seed)


def geometry_from_dict(cfg: dict) -> Geometry:
    """Rebuild the Geometry from a saved PreprocessConfig dict (e.g. ``Dataset.config``)."""
    known = {f.name for f in dataclasses.fields(PreprocessConfig)}
    return PreprocessConfig(**{k: v for k, v in cfg.items() if k in known}).geometry()


# -- CLI bridge ---------------------------------------------------------------------------------
def _base_type(tp):
    origin = typing.get_origin(tp)
    if origin is typing.Union or str(origin) == "types.UnionType":
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0]
    return tp


def add_dataclass_args(parser: argparse.ArgumentParser, cls, defaults=None) -> None:
    """Add one ``--flag`` per field of dataclass ``cls`` (underscores become dashes)."""
    hints = typing.get_type_hints(cls)
    base = defaults if defaults is not None else cls()
    for f in dataclasses.fields(cls):
        if not f.init or f.metadata.get("cli") is False:
            continue
        tp = _base_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        default = getattr(base, f.name)
        help_text = f.metadata.get("help", "")
        if tp is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=f"{help_text} (default: {default})")
        elif typing.get_origin(tp) in (list, tuple):
            item = typing.get_args(tp)[0]
            parser.add_argument(flag, dest=f.name, type=item, nargs="+", default=None,
                                help=f"{help_text} (default: {' '.join(map(str, default))})")
        else:
            choices = f.metadata.get("choices")
            parser.add_argument(flag, dest=f.name, type=tp, default=None, choices=choices,
                                help=f"{help_text} (default: {default})")


def load_config_file(path) -> dict:
    """Read a YAML or JSON config file into a dict, with a clear error on bad content."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Config file {path} not found.")
    text = path.read_text()
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except Exception as e:  # noqa: BLE001 - report any parse error with the file name
        raise ValueError(f"Could not parse config file {path}: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"Config file {path} must hold a mapping of field names to values.")
    return data


def from_args(cls, args: argparse.Namespace, base: dict | None = None):
    """Build ``cls`` from parsed flags over ``base`` values (e.g. a preset or a config file)."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    values = dict(base or {})
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"Unknown {cls.__name__} fields {unknown}. Known: {sorted(names)}")
    for name in names:
        v = getattr(args, name, None)
        if v is not None:
            values[name] = v
    hints = typing.get_type_hints(cls)
    for name, v in list(values.items()):
        if typing.get_origin(_base_type(hints[name])) is tuple and isinstance(v, list):
            values[name] = tuple(v)
    return cls(**values)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
