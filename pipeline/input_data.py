"""tf.data input pipeline from memory-mapped preprocessed arrays.

Only index vectors live in the graph: each batch of indices is gathered from the ``X_data.npy`` /
``Y_data.npz`` memmaps by ``tf.numpy_function`` (sorted indices -> sequential reads), so memory does
not grow with the dataset. Heatmap targets are rendered on the fly from the coordinates with
``pipeline.heatmaps.render_tf`` (the codec used everywhere) unless stored heatmaps are requested.

Distribution: under ``tf.distribute`` each worker should read only its own part. tf.data's
``AutoShardPolicy.DATA`` shards the *output* of the pipeline, i.e. every worker would still gather and
render every batch and throw away (W-1)/W of them. So a multi-worker training pipeline shards the
index stream itself (``num_shards``/``shard_index``, after the seeded shuffle that every worker repeats
identically, before any image is read) and sets ``AutoShardPolicy.OFF``; ``limit`` trims each epoch to
whole global batches so every worker runs the same number of steps. Unsharded pipelines keep
``AutoShardPolicy.DATA`` (the index dataset has no files to shard by): correct under any strategy, and
with one worker it changes nothing.

Batches: x (B, S, S, 3) float32 RGB 0..255; targets dict ``heatmaps`` (B, S/2, S/2, K) float32 and
``coords`` (B, 2K) float32 normalised, -1 where not visible.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

from pipeline.arrays import Dataset
from pipeline.augment import AugmentConfig, augment_batch, random_affine, random_quarter_turns
from pipeline.heatmaps import render_tf


def split_indices(n: int, val_fraction: float, seed: int, stems=None, views=None) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic seeded split of ``range(n)`` into sorted (train, val) index arrays.

    Where rows share a render (``stems`` (n,) repeat, as with zoomed views), the renders are split
    instead, so that no render has views on both sides; validation then keeps only each held-out
    render's view 0 (``views`` (n,)), the geometry's own crop, so its figures compare with those of
    arrays without views. Arrays whose stems are all distinct split exactly as without ``stems``.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_split must be in [0, 1). Received: val_split={val_fraction}")
    if stems is not None:
        if len(stems) != n:
            raise ValueError(f"split_indices: {len(stems)} stems for {n} rows.")
        unique, render = np.unique(np.asarray(stems), return_inverse=True)
        if len(unique) < n:
            _, val_renders = split_indices(len(unique), val_fraction, seed)
            held = np.isin(render, val_renders)
            val = held if views is None else held & (np.asarray(views) == 0)
            return np.flatnonzero(~held), np.flatnonzero(val)
    perm = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_fraction))
    if val_fraction > 0 and n_val == 0 and n > 1:
        n_val = 1
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def check_dataset(ds: Dataset, sample: int = 256) -> None:
    """Fail early on inconsistent shapes or NaN values (checks a sample of the images)."""
    n, k = len(ds), ds.num_keypoints
    if ds.coords.shape != (n, 2 * k):
        raise ValueError(f"coords has shape {ds.coords.shape}; expected ({n}, {2 * k}) for K={k} keypoints.")
    if ds.x.shape[1] != ds.x.shape[2]:
        raise ValueError(f"X_data images must be square. Received shape {ds.x.shape}.")
    if ds.heatmaps is not None and ds.heatmaps.shape[-1] != k:
        raise ValueError(f"heatmaps have {ds.heatmaps.shape[-1]} channels but there are K={k} keypoints.")
    coords = np.asarray(ds.coords)
    if not np.isfinite(coords).all():
        raise ValueError(f"coords hold {int((~np.isfinite(coords)).sum())} NaN/inf values; re-run preprocess_vis.py.")
    if np.issubdtype(ds.x.dtype, np.floating):
        idx = np.linspace(0, n - 1, min(n, sample)).astype(int)
        if not np.isfinite(np.asarray(ds.x[idx])).all():
            raise ValueError("X_data holds NaN/inf pixel values; re-run preprocess_vis.py.")


def make_dataset(ds: Dataset, indices: np.ndarray, batch_size: int, training: bool, *, sigma: float | Callable[[], float],
                 heat_size: int, augment: AugmentConfig | None = None, stored_heatmaps: bool = False,
                 seed: int = 0, drop_remainder: bool | None = None, num_shards: int = 1, shard_index: int = 0,
                 limit: int | None = None, auto_shard: bool = True, repeat: bool = False,
                 downsample: int = 1) -> tf.data.Dataset:
    """Batched tf.data pipeline over ``indices`` of ``ds``.

    Training batches are reshuffled every epoch (seeded) and augmented; validation batches are in
    index order and not augmented. ``limit`` keeps the first ``limit`` (shuffled) indices of each
    epoch; then ``num_shards``/``shard_index`` keep every ``num_shards``-th of them (this worker's
    part); ``batch_size`` is the batch this pipeline emits. ``auto_shard=False`` (a pipeline that
    is already this worker's own) sets ``AutoShardPolicy.OFF``, else ``AutoShardPolicy.DATA``.
    ``repeat`` makes the stream endless (each pass reshuffled; batches never straddle two passes), so
    that ``fit`` with ``steps_per_epoch`` keeps one iterator for the whole run: Keras otherwise
    discards the iterator at every epoch end, and on 2 cores that teardown stalled some epoch
    boundaries for 30-40 s with the CPU idle (4 of 18 in one run: 2.8 of its 32.8 min).
    ``downsample`` f > 1 average-pools the images by f x f blocks before any augmentation (the
    low-resolution stage of training): each pooled pixel covers exactly f x f pixels, so normalised
    corner-origin coordinates stay exact. ``heat_size`` is then the side of the pooled model's maps.
    ``sigma`` (heatmap pixels) may be a function of no arguments: each batch then reads it as it is
    gathered, so a training callback can change the targets' width during a run (``SigmaSchedule``).
    """
    indices = np.asarray(indices, dtype=np.int64)
    if len(indices) == 0:
        raise ValueError("make_dataset got no samples.")
    if stored_heatmaps and ds.heatmaps is None:
        raise ValueError("--heatmap-source stored, but Y_data.npz holds no heatmaps. Use --heatmap-source render.")
    geometric = training and augment is not None and augment.affine_prob > 0
    turns = training and augment is not None and augment.turn_prob > 0
    if (geometric or turns) and stored_heatmaps:
        raise ValueError("Geometric augmentation (--affine-prob or --turn-prob > 0) moves keypoints, so heatmaps "
                         "must be rendered from them: use --heatmap-source render, or set both to 0.")
    if downsample < 1 or ds.x.shape[1] % downsample:
        raise ValueError(f"downsample={downsample} must be a positive divisor of the {ds.x.shape[1]} px image side.")
    if downsample > 1 and stored_heatmaps:
        raise ValueError("Low-resolution training draws its heatmaps at the pooled size: use --heatmap-source render.")
    drop = training if drop_remainder is None else drop_remainder
    n_used = min(len(indices), limit or len(indices)) // max(1, num_shards)
    if drop and batch_size > n_used:
        raise ValueError(f"batch_size={batch_size} is larger than the {len(indices)} training samples. "
                         "Lower --batch-size or add data.")
    k, s = ds.num_keypoints, ds.x.shape[1]
    x_mm, c_mm, v_mm, h_mm = ds.x, ds.coords, ds.visible, ds.heatmaps

    scheduled = callable(sigma)
    if scheduled and stored_heatmaps:
        raise ValueError("A changing heatmap sigma needs rendered targets: use --heatmap-source render.")

    def gather(idx):
        idx = np.sort(idx)
        out = [np.asarray(x_mm[idx]), np.asarray(c_mm[idx], np.float32), np.asarray(v_mm[idx], bool)]
        if stored_heatmaps:
            out.append(np.asarray(h_mm[idx], np.float32))
        if scheduled:
            out.append(np.float32(sigma()))
        return tuple(out)

    def load(idx):
        types = [tf.as_dtype(x_mm.dtype), tf.float32, tf.bool] + ([tf.float32] if stored_heatmaps else [])
        types += [tf.float32] if scheduled else []
        parts = tf.numpy_function(gather, [idx], types, stateful=scheduled)
        x, coords, vis = parts[0], parts[1], parts[2]
        width = tf.ensure_shape(parts[-1], []) if scheduled else sigma
        x = tf.ensure_shape(tf.cast(x, tf.float32), [None, s, s, 3])
        if downsample > 1:
            x = tf.nn.avg_pool2d(x, downsample, downsample, "VALID")
        coords = tf.ensure_shape(coords, [None, 2 * k])
        vis = tf.ensure_shape(vis, [None, k])
        if geometric:
            x, xy, vis = random_affine(x, tf.reshape(coords, [-1, k, 2]), vis, augment)
            coords = tf.reshape(xy, [-1, 2 * k])
        if turns:
            x, xy = random_quarter_turns(x, tf.reshape(coords, [-1, k, 2]), augment.turn_prob)
            coords = tf.reshape(xy, [-1, 2 * k])
        if stored_heatmaps:
            hm = tf.ensure_shape(parts[3], [None, heat_size, heat_size, k])
        else:
            hm = render_tf(tf.reshape(coords, [-1, k, 2]), vis, heat_size, width)
        return x, {"heatmaps": hm, "coords": coords}

    data = tf.data.Dataset.from_tensor_slices(indices)
    if training:
        data = data.shuffle(len(indices), seed=seed, reshuffle_each_iteration=True)
    if limit:
        data = data.take(limit)
    if num_shards > 1:
        data = data.shard(num_shards, shard_index)
    data = data.batch(batch_size, drop_remainder=drop)
    data = data.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=not training)
    if training and augment is not None:
        data = data.map(lambda x, y: (augment_batch(x, augment), y), num_parallel_calls=tf.data.AUTOTUNE)
    if repeat:
        data = data.repeat()
    options = tf.data.Options()
    options.autotune.enabled = True
    policy = tf.data.experimental.AutoShardPolicy
    options.experimental_distribute.auto_shard_policy = policy.DATA if auto_shard else policy.OFF
    return data.with_options(options).prefetch(tf.data.AUTOTUNE)
