"""Training of the visible-keypoint model (``train_vis.py`` calls :func:`train`).

Phase 1 trains the decoder and heads with the backbone frozen (BatchNorm in inference mode) when
the backbone is pretrained, or the whole network when it is not. Phase 2 (``--fine-tune``)
unfreezes everything and continues the epoch count at a small learning rate. Each phase resumes
from ``logs/<run>/backup`` after an interruption when rerun with the same ``--run-name``.

Everything runs under a ``tf.distribute`` strategy (``--strategy``, see ``pipeline.distribute`` and
docs/distributed.md): the model is built and compiled in its scope, only the chief writes the run
folder and the model, and under multi-worker training each worker reads only its part of the data.
"""

from __future__ import annotations

import dataclasses
import json
import time
from datetime import datetime
from pathlib import Path

import keras
import numpy as np

from pipeline import model_io
from pipeline.arrays import load_dataset, write_json
from pipeline.callbacks import (BestModelCheckpoint, CosineSchedule, ElapsedTime, HeatmapImages, SigmaSchedule,
                                Throughput, TimeBudget)
from pipeline.distribute import (global_batch_size, prepare_multiworker_fit, resolve_strategy, scratch_dir,
                                 sync_batchnorm, worker_shards)
from pipeline.input_data import check_dataset, make_dataset, split_indices
from pipeline.losses import PCK, FocalHeatmapLoss, MaskedL1Loss, PixelError
from pipeline.model import ModelConfig, build_model, check_heatmap_size, resolve_weights, set_backbone_trainable
from pipeline.optimizers import FusedAdam
from pipeline.precision import apply_precision
from pipeline.second_look import EXTENT_PERCENTILE, object_extent
from pipeline.training_config import TrainConfig


def compile_model(model, learning_rate: float, img_size: int, lambda_coords: float = 5.0,
                  alpha: float = 0.25, gamma: float = 2.0, jit: bool = False, replicas: int = 1,
                  optimizer=None) -> None:
    """FusedAdam (or ``optimizer``) + focal heatmap loss + lambda * masked L1 coords loss.

    Metrics: pixel error and PCK@2px of the SoftArgMax coordinates (``coords_px_error``,
    ``coords_pck_2px``) and of the peak decoder used at inference (``heatmaps_peak_px_error``,
    ``heatmaps_peak_pck_2px``).

    ``replicas``: replicas in sync (compile in the strategy's scope). Keras divides a per-sample loss by
    the replica count before the gradients are summed over replicas, but leaves a loss that is already
    a scalar alone; both losses here are batch-level means, so the weights carry that 1/replicas and
    the step is the replica-averaged gradient. (Keras then reports the per-output ``*_loss`` logs
    ``replicas`` times too large; ``loss`` and ``val_loss`` are right.)
    """
    model.compile(
        optimizer=optimizer or FusedAdam(learning_rate),
        loss={"heatmaps": FocalHeatmapLoss(alpha, gamma), "coords": MaskedL1Loss()},
        loss_weights={"heatmaps": 1.0 / replicas, "coords": lambda_coords / replicas},
        metrics={"coords": [PixelError(img_size), PCK(2.0, img_size)],
                 "heatmaps": [PixelError(img_size, decoder="peak"), PCK(2.0, img_size, decoder="peak")]},
        jit_compile=jit,
    )


def _log(msg: str) -> None:
    print(f"[train] {msg}", flush=True)


def _build(mcfg: ModelConfig, weights: str):
    weights_arg, note = resolve_weights(mcfg, weights)
    try:
        model = build_model(mcfg, weights_arg)
    except Exception as e:  # noqa: BLE001 - a failed download under --weights auto falls back
        if weights != "auto" or weights_arg is None:
            raise
        _log(f"WARNING: could not load ImageNet weights ({e}); --weights auto: training from scratch.")
        weights_arg, note = None, "backbone initialised at random (--weights auto fallback)"
        model = build_model(mcfg, None)
    return model, weights_arg is not None, note


def heatmap_targets(cfg: TrainConfig, mcfg: ModelConfig, pre: dict) -> tuple[int, float]:
    """(side, sigma in heatmap pixels) of the training targets, given the preprocessing config ``pre``.

    Stored heatmaps are used as preprocessed, so their side must be the model's. Rendered ones are
    drawn at the model's heatmap side with ``--heatmap-sigma``, else with the preprocessing sigma
    scaled to that side (the same width in input pixels): changing the decoder needs no new arrays.
    """
    pre_side = int(pre.get("heat_size", mcfg.input_size // 2))
    pre_sigma = float(pre.get("sigma", 2.0))
    if cfg.heatmap_source == "stored":
        check_heatmap_size(mcfg, pre_side, source=f"{cfg.data_dir}/Y_data.npz")
        if cfg.heatmap_sigma_end > 0 and cfg.heatmap_sigma_end != pre_sigma:
            raise ValueError(f"--heatmap-sigma-end {cfg.heatmap_sigma_end} needs --heatmap-source render: the heatmaps "
                             f"stored in {cfg.data_dir}/Y_data.npz were drawn with sigma {pre_sigma}.")
        if cfg.heatmap_sigma > 0 and cfg.heatmap_sigma != pre_sigma:
            raise ValueError(f"--heatmap-sigma {cfg.heatmap_sigma} needs --heatmap-source render: the heatmaps stored "
                             f"in {cfg.data_dir}/Y_data.npz were drawn with sigma {pre_sigma} (--heatmap-sigma 0 "
                             "trains on them as they are).")
        return pre_side, pre_sigma
    side = mcfg.heatmap_size
    return side, cfg.heatmap_sigma or pre_sigma * side / pre_side


def _lr_callback(cfg, phase: int, monitor: str, chief: bool, budget: TimeBudget | None = None):
    """The phase's learning-rate control: ReduceLROnPlateau, or the per-step cosine schedule."""
    if cfg.lr_schedule == "cosine":
        if phase == 1:
            return CosineSchedule(cfg.learning_rate, cfg.epochs, cfg.warmup_epochs, budget=budget)
        return CosineSchedule(cfg.fine_tune_lr, cfg.fine_tune_epochs, 0.0, start_epoch=cfg.epochs)
    return keras.callbacks.ReduceLROnPlateau(monitor=monitor, factor=cfg.lr_factor, patience=cfg.lr_patience,
                                             verbose=1 if chief else 0)


def _callbacks(cfg, out_dir: Path, phase: int, meta: dict, monitor: str, sample_images, throughput, dist,
               low_res: bool = False, since: float | None = None, sigma: SigmaSchedule | None = None):
    """Callbacks of one phase. Only the chief logs (CSV, TensorBoard, images); every worker backs up and
    checkpoints, because those saves are collectives under MultiWorkerMirroredStrategy (non-chief
    ``out_dir`` is a private scratch folder). ``low_res``: the low-resolution stage of phase 1, which
    stops at its share of the time budget, backs up on its own, and neither saves a best model nor
    draws heatmap grids (its network has another input size). ``since``: see :class:`ElapsedTime`.
    ``sigma``: the target-width schedule of phase 1, driven by this stage's epochs and budget."""
    chief = dist.is_chief
    cbs = [ElapsedTime(out_dir / "history.csv", since)] if chief else []
    budget = None
    if phase == 1 and cfg.time_budget > 0:
        budget = TimeBudget(60.0 * cfg.time_budget, out_dir / "history.csv", log=_log,
                            stop_at=cfg.low_res_share if low_res else 1.0, since=since)
        cbs.append(budget)
    cbs += [
        keras.callbacks.BackupAndRestore(str(out_dir / "backup" / ("phase1_low_res" if low_res else f"phase{phase}")),
                                         delete_checkpoint=True),
        keras.callbacks.TerminateOnNaN(),
        _lr_callback(cfg, phase, monitor, chief, budget),
    ]
    if phase == 1 and sigma is not None:
        sigma.budget = budget
        cbs.append(sigma)
    if not low_res:
        cbs.append(BestModelCheckpoint(out_dir / "best_model.keras", meta, monitor=monitor))
    if chief:
        cbs += [keras.callbacks.CSVLogger(str(out_dir / "history.csv"), append=True),
                keras.callbacks.TensorBoard(str(out_dir / "tensorboard"), write_graph=False, update_freq="epoch",
                                            profile_batch=0)]
    cbs.append(throughput)
    if chief and not low_res and sample_images is not None and cfg.image_every > 0:
        cbs.append(HeatmapImages(out_dir / "tensorboard" / "images", sample_images, cfg.image_every))
    if cfg.early_stopping > 0:
        cbs.append(keras.callbacks.EarlyStopping(monitor=monitor, patience=cfg.early_stopping, verbose=1 if chief else 0))
    return cbs


@dataclasses.dataclass
class _Data:
    """The arrays this worker opened and its training/validation pipelines.

    ``train_idx``/``val_idx`` index the whole dataset (the split of a single-process run);
    ``my_val`` indexes ``ds`` (this worker's arrays: all of them, or its own shards).
    """

    ds: object
    train_idx: np.ndarray
    val_idx: np.ndarray
    my_val: np.ndarray
    train: object
    val: object
    steps: int  # training batches in one pass over this worker's part (the stream repeats)
    note: str


def _split_keys(cfg: TrainConfig, ds, n_total: int):
    """(stems, views) of every row of the arrays, for :func:`split_indices`; (None, None) for arrays
    without zoomed views, which split by row. A worker that opened only its shards reads the other
    shards' (small arrays) only when there are views to keep together."""
    if not ds.config.get("zoom_views"):
        return None, None
    if len(ds) != n_total:
        ds = load_dataset(cfg.data_dir)
    return ds.stems, ds.views


def _local_part(idx: np.ndarray, start: int, end: int) -> np.ndarray:
    return idx[(idx >= start) & (idx < end)] - start


def _data(cfg: TrainConfig, dist, ds, own, global_batch: int, common: dict, aug, train_sigma=None) -> _Data:
    """The split and input pipelines of this process (see ``pipeline.input_data``).

    ``ds`` holds this worker's arrays: all of them, or (``own`` from :func:`worker_shards`) its shards.
    ``train_sigma`` (a function, see ``make_dataset``) overrides ``common``'s sigma for training batches.
    """
    tr = common if train_sigma is None else dict(common, sigma=train_sigma)
    n_total = sum(own[1]) if own else len(ds)
    stems, views = _split_keys(cfg, ds, n_total)
    train_idx, val_idx = split_indices(n_total, cfg.val_split, cfg.seed, stems, views)
    if global_batch > len(train_idx):
        raise ValueError(f"batch_size={global_batch} is larger than the {len(train_idx)} training samples "
                         f"({n_total} in {cfg.data_dir}, val_split={cfg.val_split}). Lower --batch-size.")
    if not dist.multi_worker:
        train = make_dataset(ds, train_idx, global_batch, True, augment=aug, seed=cfg.seed, repeat=True, **tr)
        val = make_dataset(ds, val_idx, global_batch, False, **common) if len(val_idx) else None
        return _Data(ds, train_idx, val_idx, val_idx, train, val, len(train_idx) // global_batch, "")

    per_worker = global_batch // dist.num_workers
    if own:  # each worker trains on its own shards; equal step counts via the smallest worker
        bounds = np.cumsum([0] + own[1])
        per = len(own[0])
        ranges = [(int(bounds[w * per]), int(bounds[(w + 1) * per])) for w in range(dist.num_workers)]
        my_train, my_val = (_local_part(i, *ranges[dist.worker_index]) for i in (train_idx, val_idx))
        steps = min(len(_local_part(train_idx, a, b)) for a, b in ranges) // per_worker
        n_val = min(len(_local_part(val_idx, a, b)) for a, b in ranges)
        limit, shards = steps * per_worker, 1
        note = (f"worker reads only its shards {own[0]} of {len(own[1])} ({len(ds)} samples); "
                f"{n_val} validation samples per worker")
    else:  # every worker opens all arrays (memory-mapped) and reads 1/W of each shuffled epoch
        my_train, my_val = train_idx, val_idx
        steps = len(train_idx) // global_batch
        limit, shards, n_val = steps * global_batch, dist.num_workers, len(val_idx)
        note = "index stream sharded over workers after the shuffle (AutoShardPolicy.OFF); validation DATA-sharded"
    if steps == 0:
        raise ValueError(f"batch_size={global_batch} is larger than the training samples of a worker. Lower --batch-size.")

    def train_fn(ctx):
        return make_dataset(ds, my_train, ctx.get_per_replica_batch_size(global_batch), True, augment=aug,
                            seed=cfg.seed, limit=limit, num_shards=shards, shard_index=ctx.input_pipeline_id,
                            auto_shard=False, repeat=True, **tr)

    def val_fn(ctx):
        return make_dataset(ds, my_val, ctx.get_per_replica_batch_size(global_batch), False, limit=n_val,
                            auto_shard=False, **common)

    train = dist.strategy.distribute_datasets_from_function(train_fn)
    if own:
        val = dist.strategy.distribute_datasets_from_function(val_fn) if n_val else None
    else:
        val = make_dataset(ds, val_idx, global_batch, False, **common) if len(val_idx) else None
    return _Data(ds, train_idx, val_idx, my_val[:n_val], train, val, steps, note)


def release_low_res_stage() -> None:
    """Free the low-resolution network and input pipelines now, not at interpreter exit.

    Keras models sit in reference cycles, so they wait for the garbage collector. Left to the
    collection at exit, they cost 29.8 s in a 12-min cpu-preset run (2-core AMD EPYC: one gen-2
    collection during shutdown, after training), and 0.5 s when collected here at the hand-over.
    """
    import gc

    t = time.perf_counter()
    n = gc.collect()
    _log(f"released the low-resolution stage ({n} objects) in {time.perf_counter() - t:.1f} s")


def _val_stems(cfg: TrainConfig, data: _Data) -> list[str]:
    if len(data.ds) == len(data.train_idx) + len(data.val_idx):
        return [str(s) for s in data.ds.stems[data.val_idx]]
    try:  # this worker opened only its shards; the stems of all of them are small
        return [str(s) for s in load_dataset(cfg.data_dir).stems[data.val_idx]]
    except (FileNotFoundError, ValueError):
        _log("WARNING: not every shard is readable here; split.json lists this worker's validation stems only.")
        return [str(s) for s in data.ds.stems[data.my_val]]


def train(cfg: TrainConfig, extra_callbacks=()) -> dict:
    """Run both phases; return a summary dict (also written to ``logs/<run>/summary.json`` by the chief)."""
    t_start = time.perf_counter()
    if cfg.threads > 0:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(cfg.threads)
    dist = resolve_strategy(cfg.strategy, cfg.cluster)  # before anything initialises TF devices
    if cfg.time_budget > 0 and dist.multi_worker:
        raise ValueError("--time-budget needs a single-process run: each worker would read its own clock and "
                         "they could stop at different steps, leaving the others waiting. Use --epochs instead.")
    with scratch_dir(dist, cfg.run_name) as scratch:
        return _train(cfg, dist, scratch, extra_callbacks, t_start)


def _train(cfg: TrainConfig, dist, scratch: Path | None, extra_callbacks, t_start: float) -> dict:
    chief = dist.is_chief
    run_dir = Path(cfg.log_dir) / (cfg.run_name or datetime.now().strftime("%Y%m%d-%H%M%S"))
    if (run_dir / "summary.json").is_file():  # resuming is for interrupted runs; a finished one is kept as it is
        raise ValueError(f"{run_dir} holds a finished run ({run_dir / 'summary.json'}); training again under the same "
                         "--run-name would mix its logs and overwrite its model. Pass another --run-name (none gives "
                         f"a timestamped folder), or delete {run_dir} to start over.")
    out_dir, model_out = (run_dir, Path(cfg.model_out)) if chief else (scratch / "run", scratch / "model.keras")
    out_dir.mkdir(parents=True, exist_ok=True)
    global_batch = global_batch_size(cfg.batch_size, cfg.batch_size_mode, dist.num_replicas)

    policy, why = apply_precision(cfg.precision, cfg.backbone)  # the policy is global: set before building under the scope
    keras.utils.set_random_seed(cfg.seed)
    aug = cfg.augment_config() if cfg.augment else None
    own = worker_shards(cfg.data_dir, dist.num_workers, dist.worker_index)
    ds = load_dataset(cfg.data_dir, shards=own[0] if own else None)
    check_dataset(ds)
    pre = ds.config
    img_size, k = int(ds.x.shape[1]), ds.num_keypoints
    if int(pre.get("img_size", img_size)) != img_size:
        raise ValueError(f"X_data images are {img_size} px but the preprocessing config says "
                         f"img_size={pre['img_size']} ({cfg.data_dir}). Re-run preprocess_vis.py.")
    mcfg = cfg.model_config(img_size, k)
    heat_size, sigma = heatmap_targets(cfg, mcfg, pre)
    low_res_factor, low_res_why = cfg.resolve_low_res_factor(img_size)
    low_res = low_res_factor > 1
    if low_res:
        f = low_res_factor
        if img_size % f or (img_size // f) % 32:
            raise ValueError(f"--low-res-factor {f} pools the {img_size} px images of {cfg.data_dir}/X_data.npy to "
                             f"{img_size / f:g} px, but the network needs a multiple of 32. Use a factor that gives "
                             "one, or --low-res-factor 1 (no low-resolution stage).")
        if cfg.epochs < 2:
            raise ValueError("--low-res-factor needs --epochs >= 2: one stage at low resolution, one at full size.")
    sigma_end = cfg.heatmap_sigma_end or sigma
    schedule = SigmaSchedule(sigma, sigma_end, cfg.epochs) if sigma_end != sigma else None
    common = dict(sigma=sigma_end, heat_size=heat_size, stored_heatmaps=cfg.heatmap_source == "stored")
    data = _data(cfg, dist, ds, own, global_batch, common, aug, schedule and schedule.value)
    train_idx, val_idx = data.train_idx, data.val_idx

    with dist.scope():
        model, pretrained, note = _build(mcfg, cfg.weights)
        n_sync = sync_batchnorm(model) if dist.num_replicas > 1 and cfg.sync_batchnorm else 0

    val_stems = _val_stems(cfg, data) if chief else []
    distribute = {"strategy": dist.name, "replicas": dist.num_replicas, "workers": dist.num_workers,
                  "global_batch": global_batch, "per_replica_batch": global_batch // dist.num_replicas,
                  "sync_batchnorm_layers": n_sync}
    meta = {"preprocess": pre, "train": dataclasses.asdict(cfg), "model": dataclasses.asdict(mcfg),
            "num_keypoints": k, "precision": policy, "backbone_init": note, "val_stems": val_stems,
            "targets": {"heat_size": heat_size, "sigma": sigma_end, **({"sigma_start": sigma} if schedule else {})},
            "low_res": {"factor": low_res_factor, "reason": low_res_why},
            "objects": {"extent": object_extent(ds.coords), "percentile": EXTENT_PERCENTILE, "images": len(ds)}}
    if chief:
        write_json(run_dir / "split.json", {"seed": cfg.seed, "val_split": cfg.val_split,
                                             "val_indices": val_idx, "val_stems": val_stems})
        write_json(run_dir / "config.json", {**meta, "precision_reason": why, "run_dir": str(run_dir),
                                             "n_train": len(train_idx), "n_val": len(val_idx),
                                             "distribute": distribute})

    monitor = "val_loss" if data.val is not None else "loss"
    sample_images = np.asarray(data.ds.x[np.sort(data.my_val[:6])], np.float32) if len(data.my_val) else None
    steps = cfg.steps_per_epoch or data.steps

    _log(f"run folder {run_dir}; {len(train_idx)} train / {len(val_idx)} val images, K={k}, "
         f"{img_size}px input, {heat_size}px heatmaps (sigma {sigma:g}"
         + (f", moving to {sigma_end:g} over phase 1" if schedule else "") + f"); precision {policy} ({why}); {note}")
    _log(f"strategy {dist.name}: {dist.num_replicas} replica(s) on {dist.num_workers} worker(s), this process "
         f"{dist.task}{' (chief)' if chief else f' (writes only to {scratch})'}; global batch {global_batch} = "
         f"{global_batch // dist.num_replicas} per replica x {dist.num_replicas} (--batch-size-mode "
         f"{cfg.batch_size_mode}); learning rate {cfg.learning_rate} as given, not scaled with the batch"
         + (f"; {n_sync} BatchNorm layers use global-batch statistics" if n_sync else "")
         + (f"; {data.note}" if data.note else ""))
    throughput = Throughput(global_batch)
    extra = list(extra_callbacks)
    phase1_marker = out_dir / "phase1_done.weights.h5"
    history = {}

    probe_x = np.asarray(data.ds.x[:1], np.float32)  # one plain batch: see prepare_multiworker_fit
    probe_y = {"heatmaps": np.zeros((1, heat_size, heat_size, k), np.float32),
               "coords": np.asarray(data.ds.coords[:1], np.float32)}

    def compile_(lr):
        with dist.scope():
            compile_model(model, lr, img_size, cfg.lambda_coords, cfg.focal_alpha, cfg.focal_gamma, cfg.jit,
                          dist.num_replicas)
        prepare_multiworker_fit(model, dist, probe_x, probe_y)

    def fit(phase, since=None, **kw):
        return model.fit(data.train, validation_data=data.val, shuffle=False, steps_per_epoch=steps,
                         callbacks=_callbacks(cfg, out_dir, phase, meta, monitor, sample_images, throughput, dist,
                                              since=since, sigma=schedule) + extra, verbose=cfg.verbose if chief else 0, **kw)

    def low_res_stage():
        """Phase 1's first epochs on pooled images (see ``--low-res-factor``); returns the next epoch."""
        marker = out_dir / "low_res_done.json"
        if marker.is_file():
            done = int(json.loads(marker.read_text())["epochs"])
            if not (out_dir / "backup" / "phase1").exists():  # else BackupAndRestore restores a later state
                model.load_weights(out_dir / "low_res_done.weights.h5")
            _log(f"low-resolution stage already finished ({marker}); continuing at full size from epoch {done + 1}")
            return done, None
        f = low_res_factor
        low_cfg = dataclasses.replace(mcfg, input_size=img_size // f)
        low_common = dict(common, heat_size=low_cfg.heatmap_size, downsample=f)
        low_data = _data(cfg, dist, ds, own, global_batch, low_common, aug, schedule and schedule.value)
        with dist.scope():
            low = build_model(low_cfg, None)
            if dist.num_replicas > 1 and cfg.sync_batchnorm:
                sync_batchnorm(low)
            low.set_weights(model.get_weights())
            if pretrained:
                set_backbone_trainable(low, False)
            compile_model(low, cfg.learning_rate, img_size, cfg.lambda_coords, cfg.focal_alpha, cfg.focal_gamma,
                          cfg.jit, dist.num_replicas)
        prepare_multiworker_fit(low, dist, probe_x[:, ::f, ::f], {
            "heatmaps": np.zeros((1, low_cfg.heatmap_size, low_cfg.heatmap_size, k), np.float32),
            "coords": probe_y["coords"]})
        epochs = max(1, min(cfg.epochs - 1, round(cfg.low_res_share * cfg.epochs)))
        _log(f"low-resolution stage: {low_cfg.input_size} px input ({f}x{f} average-pooled), "
             f"{low_cfg.heatmap_size} px heatmaps (sigma {sigma:g}{' onwards' if schedule else ''}), for {epochs} epochs"
             + (f" or {cfg.low_res_share:.0%} of the time budget" if cfg.time_budget > 0 else ""))
        low_tp = Throughput(global_batch)
        h = low.fit(low_data.train, validation_data=low_data.val, shuffle=False, steps_per_epoch=low_data.steps,
                    epochs=epochs, verbose=cfg.verbose if chief else 0,
                    callbacks=_callbacks(cfg, out_dir, 1, meta, monitor, None, low_tp, dist, low_res=True,
                                         sigma=schedule) + extra)
        ended = time.perf_counter()  # the hand-over to full size counts against the budget
        done = h.epoch[-1] + 1 if h.epoch else epochs
        model.set_weights(low.get_weights())
        model.save_weights(out_dir / "low_res_done.weights.h5")
        write_json(marker, {"epochs": done, "images_per_second": low_tp.images_per_second})
        _log(f"low-resolution stage done after {done} epochs ({low_tp.images_per_second:.1f} train images/s); "
             f"continuing at {img_size} px")
        return done, (h.history, low.optimizer, ended)

    if cfg.fine_tune and phase1_marker.is_file():
        _log(f"phase 1 already finished ({phase1_marker}); resuming with phase 2")
    else:
        if pretrained:
            set_backbone_trainable(model, False)
            _log(f"phase 1: backbone frozen (BatchNorm in inference mode), lr {cfg.learning_rate}")
        else:
            _log(f"phase 1: backbone NOT pretrained, so it is trained too (no freezing), lr {cfg.learning_rate}")
        if cfg.time_budget > 0:
            _log(f"time budget {cfg.time_budget:g} min: phase 1 stops then, or after {cfg.epochs} epochs"
                 + ("; the cosine decay follows whichever runs out first" if cfg.lr_schedule == "cosine" else ""))
        start, low = 0, None
        if cfg.low_res_factor != 1:
            _log(f"low-resolution start: factor {low_res_factor} ({low_res_why})")
        if low_res:
            start, low = low_res_stage()
            if low is not None:
                history.update(low[0])
        compile_(cfg.learning_rate)
        if low is not None:  # carry Adam's moments over: one optimisation, two input sizes
            with dist.scope():
                model.optimizer.build(model.trainable_variables)
                for dst, src in zip(model.optimizer.variables, low[1].variables, strict=True):
                    dst.assign(src)
        since = low[2] if low is not None else None
        if low is not None:
            low = None
            release_low_res_stage()
        for key, v in fit(1, since=since, initial_epoch=start, epochs=cfg.epochs).history.items():
            history.setdefault(key, []).extend(v)
        if cfg.fine_tune:
            model.save_weights(phase1_marker)

    if cfg.fine_tune:
        if not history:  # phase 1 finished in an earlier, interrupted invocation
            model.load_weights(phase1_marker)
        set_backbone_trainable(model, True)
        if schedule is not None:
            schedule.finish()
        _log(f"phase 2: fine-tuning everything at lr {cfg.fine_tune_lr} for {cfg.fine_tune_epochs} epochs")
        compile_(cfg.fine_tune_lr)
        h = fit(2, initial_epoch=cfg.epochs, epochs=cfg.epochs + cfg.fine_tune_epochs)
        for key, v in h.history.items():
            history.setdefault(key, []).extend(v)

    model_io.save_model(model, model_out, meta)  # every worker: saving reads SyncOnRead (collective) variables
    best = model_io.load_meta(out_dir / "best_model.keras").get("best", {})
    summary = {
        "run_dir": str(run_dir), "model_out": str(cfg.model_out), "best_model": str(run_dir / "best_model.keras"),
        "best": best, "final_logs": {key: float(v[-1]) for key, v in history.items() if v},
        "seconds": time.perf_counter() - t_start, "train_images_per_second": throughput.images_per_second,
        "precision": policy, "distribute": distribute, "chief": chief,
    }
    if not chief:
        return summary
    write_json(run_dir / "summary.json", summary)
    px = best.get("val_heatmaps_peak_px_error", best.get("heatmaps_peak_px_error", float("nan")))
    _log(f"done in {summary['seconds']:.0f} s; best {best.get('monitor', monitor)} {best.get('value', float('nan')):.4f} "
         f"at epoch {best.get('epoch', '?')}, best-model peak-decoder error {px:.3f} px (input space); "
         f"{throughput.images_per_second:.1f} train images/s; model -> {cfg.model_out}")
    return summary


def measure_throughput(model_cfg: ModelConfig, batch_size: int = 16, steps: int = 10, warmup: int = 3,
                       precision: str = "float32", jit: bool = False, frozen_backbone: bool = False) -> float:
    """Train ``steps`` steps on random data and return training images per second.

    ``warmup`` steps (graph tracing, oneDNN primitive creation) are excluded from the timing, and so
    is everything around the steps: the timed span runs from the end of the first timed step to the
    end of the last (a second ``fit`` call took a further 3-4 s to return, measured on a 2-core CPU).
    """
    import tensorflow as tf

    apply_precision(precision)
    try:
        model = build_model(model_cfg, None)
        if frozen_backbone:
            set_backbone_trainable(model, False)
        compile_model(model, 1e-4, model_cfg.input_size, jit=jit)
        s, k, hs = model_cfg.input_size, model_cfg.num_keypoints, model_cfg.heatmap_size
        rng = np.random.default_rng(0)
        x = rng.uniform(0, 255, (batch_size, s, s, 3)).astype(np.float32)
        y = {"heatmaps": rng.uniform(0, 1, (batch_size, hs, hs, k)).astype(np.float32),
             "coords": rng.uniform(0, 1, (batch_size, 2 * k)).astype(np.float32)}
        data = tf.data.Dataset.from_tensors((x, y)).repeat()
        model.fit(data, steps_per_epoch=warmup, epochs=1, verbose=0)
        ends = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: stamps.append(time.perf_counter()))
        stamps: list[float] = []
        model.fit(data, steps_per_epoch=steps + 1, epochs=1, verbose=0, callbacks=[ends])
        return steps * batch_size / (stamps[-1] - stamps[0])
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _benchmark_main(argv=None) -> None:
    """``python -m pipeline.train --preset paper --precision float32 mixed_bfloat16 --batch-size 16``"""
    import argparse
    import json

    from pipeline.training_config import PRESETS

    p = argparse.ArgumentParser(description="Training throughput (images/s) of a preset's architecture on random data.")
    p.add_argument("--preset", default="paper", choices=sorted(PRESETS))
    p.add_argument("--precision", nargs="+", default=["float32", "mixed_bfloat16"])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--input-size", type=int, default=128)
    p.add_argument("--keypoints", type=int, default=11)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--jit", action="store_true")
    p.add_argument("--frozen", action="store_true", help="Freeze the backbone (phase 1 with pretrained weights).")
    a = p.parse_args(argv)
    cfg = TrainConfig(**PRESETS[a.preset]).model_config(a.input_size, a.keypoints)
    for prec in a.precision:
        ips = measure_throughput(cfg, a.batch_size, a.steps, precision=prec, jit=a.jit, frozen_backbone=a.frozen)
        print(json.dumps({"preset": a.preset, "precision": prec, "batch_size": a.batch_size, "jit": a.jit,
                          "frozen": a.frozen, "images_per_s": round(ips, 2)}), flush=True)


if __name__ == "__main__":
    _benchmark_main()
