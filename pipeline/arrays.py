"""On-disk arrays: atomic writes, streamed ``.npz`` archives, and memory-mapped loading.

``Y_data.npz`` is written *uncompressed* (ZIP_STORED), so each member is a plain ``.npy`` stored
contiguously inside the archive and can be memory-mapped in place; training then never reads
the whole file into memory.
"""

from __future__ import annotations

import contextlib
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

X_FILE = "X_data.npy"
Y_FILE = "Y_data.npz"
INDEX_FILE = "data_index.json"  # written instead of X/Y when preprocessing into shards


def shard_names(i: int, n: int) -> tuple[str, str]:
    """File names of shard ``i`` of ``n``: (X file, Y file)."""
    return f"X_data-{i:05d}-of-{n:05d}.npy", f"Y_data-{i:05d}-of-{n:05d}.npz"


class ConcatArray:
    """Read-only row-wise concatenation of arrays (memory-mapped shards) without copying them.

    Supports what the pipeline needs of an array: ``shape``, ``dtype``, ``len``, integer and
    slice indexing, and fancy indexing with an integer array (``x[np.sort(idx)]`` gathers from
    each shard in turn).
    """

    def __init__(self, parts):
        self.parts = list(parts)
        if not self.parts:
            raise ValueError("ConcatArray needs at least one part.")
        tail = self.parts[0].shape[1:]
        if any(p.shape[1:] != tail or p.dtype != self.parts[0].dtype for p in self.parts):
            raise ValueError("Shards disagree in sample shape or dtype; re-run preprocess_vis.py.")
        self.bounds = np.cumsum([0] + [p.shape[0] for p in self.parts])
        self.shape = (int(self.bounds[-1]),) + tuple(tail)
        self.dtype = self.parts[0].dtype
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None):
        out = np.concatenate([np.asarray(p) for p in self.parts])
        return out.astype(dtype) if dtype is not None else out

    def __getitem__(self, key):
        if isinstance(key, tuple):
            rows, rest = key[0], key[1:]
            return self[rows][(slice(None),) + rest] if not np.isscalar(rows) else self[rows][rest]
        if isinstance(key, (int, np.integer)):
            i = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(f"index {key} out of range for {len(self)} samples")
            s = int(np.searchsorted(self.bounds, i, side="right")) - 1
            return self.parts[s][i - self.bounds[s]]
        if isinstance(key, slice):
            key = np.arange(len(self))[key]
        idx = np.asarray(key)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        idx = np.where(idx < 0, idx + len(self), idx)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"index out of range for {len(self)} samples")
        shard = np.searchsorted(self.bounds, idx, side="right") - 1
        out = np.empty((idx.size,) + self.shape[1:], dtype=self.dtype)
        for s in np.unique(shard):
            m = shard == s
            out[m] = self.parts[s][idx[m] - self.bounds[s]]
        return out


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary sibling of ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path, obj) -> None:
    """Write JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=_json_default))


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"Not JSON serialisable: {type(o).__name__}")


def write_npz_stored(path, members: dict) -> None:
    """Write an uncompressed ``.npz`` atomically, streaming members from arrays or ``.npy`` files.

    Args:
        members: name -> ndarray, or name -> Path of an existing ``.npy`` file (copied in chunks,
            so a large member never has to fit in memory).
    """
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, value in members.items():
                if isinstance(value, (str, Path)):
                    zf.write(value, arcname=f"{name}.npy")
                else:
                    with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
                        np.lib.format.write_array(f, np.asanyarray(value), allow_pickle=False)


def load_npz(path, mmap: bool = True) -> dict:
    """Load every member of an ``.npz``; stored (uncompressed) numeric members are memory-mapped."""
    path = Path(path)
    out = {}
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"{path} is not a readable .npz archive ({e}). Re-run preprocess_vis.py.") from e
    with zf, open(path, "rb") as raw:
        for info in zf.infolist():
            name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            if mmap and info.compress_type == zipfile.ZIP_STORED:
                # Local header: 30 bytes + name + extra; the .npy data follows.
                raw.seek(info.header_offset)
                head = raw.read(30)
                n, m = int.from_bytes(head[26:28], "little"), int.from_bytes(head[28:30], "little")
                start = info.header_offset + 30 + n + m
                raw.seek(start)
                version = np.lib.format.read_magic(raw)
                read_header = {(1, 0): np.lib.format.read_array_header_1_0}.get(
                    version, np.lib.format.read_array_header_2_0
                )
                shape, fortran, dtype = read_header(raw)
                if dtype.hasobject:
                    raise ValueError(f"{path}:{info.filename} holds Python objects; refusing to load it.")
                if dtype.kind in "biufc" and int(np.prod(shape)) > 0:
                    out[name] = np.memmap(
                        path, dtype=dtype, mode="r", offset=raw.tell(), shape=shape,
                        order="F" if fortran else "C",
                    )
                    continue
            with zf.open(info) as f:
                out[name] = np.lib.format.read_array(f, allow_pickle=False)
    return out


@dataclass
class Dataset:
    """Preprocessed arrays (see ``preprocess_vis.py``). Arrays may be memory-mapped.

    Attributes:
        x: (N, S_in, S_in, 3) uint8 RGB model inputs.
        coords: (N, 2K) float32 normalised (x0, y0, x1, y1, ...), -1 where not visible.
        visible: (N, K) bool.
        heatmaps: (N, S_hm, S_hm, K) targets, or None when not loaded.
        keypoints_px: (N, K, 2) float64 ground truth in original pixels (NaN where unknown).
        stems: (N,) str; orig_sizes: (N, 2) int (W, H); affine: (N, 4) original -> normalised.
        config: the preprocessing config (dict) that produced the arrays.
        edges: (E, 2) int mesh edges, for drawing.
        views: (N,) int, which view of its render a row is: 0 the geometry's crop, 1.. a zoomed view
            (``preprocess_vis.py --zoom-views``); None for arrays without views (all 0).
    """

    x: np.ndarray
    coords: np.ndarray
    visible: np.ndarray
    heatmaps: np.ndarray | None
    keypoints_px: np.ndarray
    stems: np.ndarray
    orig_sizes: np.ndarray
    affine: np.ndarray
    config: dict
    edges: np.ndarray
    views: np.ndarray | None = None

    @property
    def num_keypoints(self) -> int:
        return self.visible.shape[1]

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def xy(self) -> np.ndarray:
        """(N, K, 2) normalised coordinates (-1 where not visible)."""
        return np.asarray(self.coords).reshape(len(self), -1, 2)


def load_dataset(directory=".", mmap: bool = True, shards=None) -> Dataset:
    """Load the preprocessed arrays of ``directory`` with clear errors.

    Reads ``X_data.npy`` + ``Y_data.npz``, or, where preprocessing wrote shards, the shards that
    ``data_index.json`` lists (all of them, or only the indices in ``shards``), memory-mapped and
    concatenated without copying.
    """
    directory = Path(directory)
    index = directory / INDEX_FILE
    if index.is_file() and not (directory / X_FILE).is_file():
        meta = json.loads(index.read_text())
        n = int(meta["num_shards"])
        chosen = range(n) if shards is None else list(shards)
        bad = [i for i in chosen if not 0 <= i < n]
        if bad:
            raise ValueError(f"{index} lists {n} shards; shard indices {bad} do not exist.")
        parts = [_load_pair(directory / a, directory / b, mmap) for a, b in (shard_names(i, n) for i in chosen)]
        return _concat(parts)
    if shards is not None:
        raise ValueError(f"{directory} holds unsharded arrays; re-run preprocess_vis.py with --shards N.")
    return _load_pair(directory / X_FILE, directory / Y_FILE, mmap)


def _concat(parts: list) -> Dataset:
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    if any(p.num_keypoints != first.num_keypoints for p in parts):
        raise ValueError("Shards disagree in the number of keypoints; re-run preprocess_vis.py.")
    cat = lambda name: np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
    return Dataset(
        x=ConcatArray([p.x for p in parts]),
        coords=cat("coords"),
        visible=cat("visible"),
        heatmaps=ConcatArray([p.heatmaps for p in parts]) if all(p.heatmaps is not None for p in parts) else None,
        keypoints_px=cat("keypoints_px"),
        stems=cat("stems"),
        orig_sizes=cat("orig_sizes"),
        affine=cat("affine"),
        config=first.config,
        edges=first.edges,
        views=cat("views") if all(p.views is not None for p in parts) else None,
    )


def _load_pair(xp: Path, yp: Path, mmap: bool) -> Dataset:
    directory = xp.parent
    for p in (xp, yp):
        if not p.is_file():
            raise FileNotFoundError(
                f"{p} not found. Run `python preprocess_vis.py --out-dir {directory}` first."
            )
    try:
        x = np.load(xp, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as e:
        raise ValueError(f"{xp} is not a valid .npy file ({e}). Re-run preprocess_vis.py.") from e
    y = load_npz(yp, mmap=mmap)
    missing = [k for k in ("coords", "visible", "stems", "orig_sizes", "affine", "config") if k not in y]
    if missing:
        raise ValueError(f"{yp} lacks keys {missing}; it was not written by this version of preprocess_vis.py.")
    n = x.shape[0]
    if x.ndim != 4 or x.shape[-1] != 3 or y["coords"].shape[0] != n:
        raise ValueError(
            f"{xp} has shape {x.shape} but {yp} holds {y['coords'].shape[0]} samples; "
            "the two files come from different runs. Re-run preprocess_vis.py."
        )
    k = y["visible"].shape[1]
    return Dataset(
        x=x,
        coords=y["coords"],
        visible=np.asarray(y["visible"]).astype(bool),
        heatmaps=y.get("heatmaps"),
        keypoints_px=y.get("keypoints_px", np.full((n, k, 2), np.nan)),
        stems=np.asarray(y["stems"]).astype(str),
        orig_sizes=np.asarray(y["orig_sizes"]),
        affine=np.asarray(y["affine"]),
        config=json.loads(str(y["config"])),
        edges=np.asarray(y.get("edges", np.zeros((0, 2), np.int32))),
        views=np.asarray(y["views"]) if "views" in y else None,
    )
