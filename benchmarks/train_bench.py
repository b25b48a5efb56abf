"""Training throughput: the pipeline's input + model vs seed-001-style in-memory float32 feeding."""

from __future__ import annotations

import tempfile
import time

import numpy as np

from benchmarks.arrays_bench import make_arrays


def _model_cfg(preset: str, img_size: int, k: int):
    from pipeline.training_config import PRESETS, TrainConfig

    cfg = TrainConfig(**PRESETS[preset])
    return cfg, cfg.model_config(img_size, k)


def _timed_fit(model, data, steps: int, warmup: int, batch: int, repeats: int = 3) -> float:
    """Median steady-state images/s over ``repeats`` epochs of ``steps`` steps.

    Each epoch is timed from its first batch's end to its last (the fixed cost of starting an epoch,
    which a long training run pays once per epoch of hundreds of steps, is left out), so short runs
    do not understate fast models. A shared VM's speed drifts, hence the median.
    """
    import keras

    class BatchClock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.ends = []

        def on_train_batch_end(self, batch, logs=None):
            self.ends.append(time.perf_counter())

    model.fit(data, steps_per_epoch=warmup, epochs=1, verbose=0)
    rates = []
    for _ in range(repeats):
        clock = BatchClock()
        model.fit(data, steps_per_epoch=steps + 1, epochs=1, verbose=0, callbacks=[clock])
        rates.append(steps * batch / (clock.ends[-1] - clock.ends[0]))
    return float(np.median(rates))


def run_pipeline(preset: str = "paper", batch: int = 16, precision: str = "auto", jit: bool = False,
                 steps: int = 10, warmup: int = 3, k: int = 11, img_size: int = 128) -> dict:
    """Images/s of training through the real input pipeline (memmap uint8, on-the-fly heatmaps, augment)."""
    from pipeline.arrays import load_dataset
    from pipeline.input_data import make_dataset
    from pipeline.model import build_model
    from pipeline.precision import apply_precision
    from pipeline.train import compile_model

    cfg, mcfg = _model_cfg(preset, img_size, k)
    policy, _ = apply_precision(precision, cfg.backbone)
    with tempfile.TemporaryDirectory() as tmp:
        make_arrays(tmp, n=max(batch * 4, 64), k=k, img_size=img_size)
        ds = load_dataset(tmp)
        data = make_dataset(ds, np.arange(len(ds)), batch, True, sigma=2.0, heat_size=mcfg.heatmap_size,
                            augment=cfg.augment_config(), seed=0).repeat()
        model = build_model(mcfg, None)
        compile_model(model, 1e-4, img_size, jit=jit)
        ips = _timed_fit(model, data, steps, warmup, batch)
    return {"preset": preset, "batch": batch, "precision": policy, "jit": jit, "images_per_s": ips}


def stock_model(model):
    """The same network from stock Keras parts (Conv2D, BatchNormalization), as seed 001 builds it."""
    from pipeline.model import FAST_LAYERS, swap_layers

    return swap_layers(model, {fast: stock for stock, fast in FAST_LAYERS.items()})


def run_naive(preset: str = "paper", batch: int = 16, steps: int = 10, warmup: int = 3, k: int = 11,
              img_size: int = 128, n: int = 256) -> dict:
    """Seed-001 style: whole float32 X and heatmaps in memory, from_tensor_slices, a float32 model of
    stock Keras layers with Keras's Adam, no XLA."""
    import keras
    import tensorflow as tf

    from pipeline.heatmaps import render
    from pipeline.model import build_model
    from pipeline.train import compile_model

    _, mcfg = _model_cfg(preset, img_size, k)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (n, img_size, img_size, 3)).astype(np.float32)
    xy = rng.uniform(0.1, 0.9, (n, k, 2))
    vis = np.ones((n, k), bool)
    hm = render(xy, vis, mcfg.heatmap_size, 2.0)
    coords = xy.reshape(n, 2 * k).astype(np.float32)
    data = (tf.data.Dataset.from_tensor_slices((x, {"heatmaps": hm, "coords": coords}))
            .shuffle(n).batch(batch, drop_remainder=True).repeat())
    model = stock_model(build_model(mcfg, None))
    compile_model(model, 1e-4, img_size, optimizer=keras.optimizers.Adam(1e-4))
    ips = _timed_fit(model, data, steps, warmup, batch)
    return {"preset": preset, "batch": batch, "precision": "float32", "jit": False, "images_per_s": ips}
