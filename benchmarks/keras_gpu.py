"""GPU figures of the ``paper`` model on a machine where TensorFlow cannot be installed.

An offline GPU machine may carry JAX (or PyTorch) with its CUDA libraries but no TensorFlow, and
TensorFlow with its own CUDA libraries is gigabytes that cannot be fetched there. Keras 3 runs the
same network, losses and decoders on the JAX backend: the pipeline's TensorFlow fast paths
(``FusedBatchNormalization``, ``MatmulConv2D``, ``FusedAdam``) step aside for the stock Keras maths
on any other backend. This module measures, on such a machine:

- training images/s of the ``paper`` architecture (ResNet-50 U-Net, 128 px, K=11) at several
  batches in float32 and mixed bfloat16, fed from host arrays through ``model.fit``;
- inference images/s at batch 32 and batch-1 latency (median, p95), model only;
- accuracy: a recipe trained on preprocessed arrays (``X_data.npy``, or ``X_data.npy.xz``, and the
  ``coords``/``visible``/``config`` of ``Y_data.npz``) and scored on held-out arrays with the
  arg-max + sub-pixel decoder of ``use_vis.py`` (in model-input pixels, the 128-px space of
  ``evaluation_summary.json``). ``paper`` is seed 001's settings: batch 128, Adam 5e-4 with
  ReduceLROnPlateau, focal loss (alpha 0.25, gamma 2) + 5 x L1, the preprocessing sigma, 20 epochs,
  backbone from scratch (no ImageNet weights offline). Its photometric augmentation is a tf.data
  stage, so it is left out here. ``long`` spends the time that is left on the ``cpu`` preset's loss
  settings (alpha 0.5, gamma 0, sigma 1.5) with cosine decay and quarter-turn augmentation, scored
  with and without rot4 test-time augmentation.

Every section runs against one deadline (``--budget-s``) and the results file is rewritten after
each, so a run cut short still leaves what it measured::

    KERAS_BACKEND=jax python -m benchmarks.keras_gpu --train DIR --test DIR --out gpu.json
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import platform
import time
from pathlib import Path

import numpy as np

VAL_SPLIT = 0.15
SEED = 1


class Clock:
    """The run's deadline."""

    def __init__(self, budget_s: float):
        self.start = time.perf_counter()
        self.budget_s = budget_s

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.start)


# -- data ----------------------------------------------------------------------------------------
def load_arrays(folder: str, limit: int = 0) -> dict:
    """Images, normalised coordinates, visibility and the preprocessing config of an arrays folder."""
    d = Path(folder)
    xz = d / "X_data.npy.xz"
    if (d / "X_data.npy").is_file():
        x = np.load(d / "X_data.npy", mmap_mode="r")
    elif xz.is_file():
        import io

        with lzma.open(xz) as f:
            x = np.load(io.BytesIO(f.read()))
    else:
        raise FileNotFoundError(f"{d}: no X_data.npy (or X_data.npy.xz). Run preprocess_vis.py --out-dir {d}.")
    if not (d / "Y_data.npz").is_file():
        raise FileNotFoundError(f"{d}: no Y_data.npz beside the images. Run preprocess_vis.py --out-dir {d}.")
    y = np.load(d / "Y_data.npz")
    n = len(x) if not limit else min(limit, len(x))
    cfg = json.loads(str(y["config"]))
    k = int(cfg["num_keypoints"])
    return {"x": np.ascontiguousarray(x[:n]), "xy": y["coords"][:n].reshape(n, k, 2).astype(np.float64),
            "visible": y["visible"][:n].astype(bool), "config": cfg}


class Batches:
    """Training batches with heatmaps rendered per batch (and optional random quarter turns)."""

    def __init__(self, data: dict, rows, batch: int, heat_size: int, sigma: float, turns: bool, seed: int,
                 **kwargs):
        import keras

        class _Set(keras.utils.PyDataset):
            def __len__(_):
                return len(self.rows) // batch

            def __getitem__(_, i):
                return self.batch(i)

            def on_epoch_end(_):
                self.epoch += 1
                self.rng.shuffle(self.rows)

        self.data, self.rows, self.bs = data, np.array(rows), batch
        self.heat_size, self.sigma, self.turns = heat_size, sigma, turns
        self.rng = np.random.default_rng(seed)
        self.rng.shuffle(self.rows)
        self.seed, self.epoch = seed, 0
        self.dataset = _Set(**kwargs)

    def batch(self, i: int):
        from pipeline.geometry import Geometry
        from pipeline.heatmaps import render

        idx = np.sort(self.rows[i * self.bs:(i + 1) * self.bs])
        x = self.data["x"][idx]
        xy, vis = self.data["xy"][idx], self.data["visible"][idx]
        if self.turns:  # one array operation per turn, not per image
            k = np.random.default_rng((self.seed, self.epoch, i)).integers(0, 4, len(idx))
            for t in (1, 2, 3):
                on = k == t
                x[on] = np.rot90(x[on], t, axes=(1, 2))
                xy[on] = Geometry.rot90(xy[on], t)
        heat = render(xy, vis, self.heat_size, self.sigma)
        coords = np.where(vis[..., None], xy, -1.0).reshape(len(idx), -1).astype(np.float32)
        return x, {"heatmaps": heat, "coords": coords}


# -- model ---------------------------------------------------------------------------------------
def model_config(preset: str, img_size: int, k: int):
    """The architecture of a ``train_vis.py`` preset for these arrays."""
    from pipeline.training_config import PRESETS, TrainConfig

    return TrainConfig(**PRESETS[preset]).model_config(img_size, k)


def new_model(preset: str, policy: str, img_size: int, k: int, lr, alpha: float = 0.25, gamma: float = 2.0):
    import keras

    from pipeline.losses import PCK, FocalHeatmapLoss, MaskedL1Loss, PixelError
    from pipeline.model import build_model

    keras.mixed_precision.set_global_policy(policy)
    model = build_model(model_config(preset, img_size, k), None)
    model.compile(optimizer=keras.optimizers.Adam(lr),
                  loss={"heatmaps": FocalHeatmapLoss(alpha, gamma), "coords": MaskedL1Loss()},
                  loss_weights={"heatmaps": 1.0, "coords": 5.0},
                  metrics={"coords": [PixelError(img_size), PCK(2.0, img_size)]})
    return model


def _epoch_clock():
    import keras

    class EpochClock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times = []

        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self.t0)

    return EpochClock()


def _random_batch(n: int, img_size: int, heat_size: int, k: int, seed: int = 0):
    from pipeline.heatmaps import render

    rng = np.random.default_rng(seed)
    xy = rng.uniform(0.1, 0.9, (n, k, 2))
    vis = np.ones((n, k), bool)
    x = rng.integers(0, 256, (n, img_size, img_size, 3), dtype=np.uint8)
    return x, {"heatmaps": render(xy, vis, heat_size, 2.0), "coords": xy.reshape(n, -1).astype(np.float32)}


def train_speed(preset: str, batch: int, policy: str, *, img_size: int = 128, k: int = 11, images: int = 4096,
                repeats: int = 3) -> dict:
    """Median images/s over ``repeats`` epochs after one epoch of compilation and warm-up."""
    model = new_model(preset, policy, img_size, k, 1e-4)
    steps = max(8, images // batch)
    x, y = _random_batch(steps * batch, img_size, img_size // 2, k)
    clock = _epoch_clock()
    model.fit(x, y, batch_size=batch, epochs=1 + repeats, shuffle=False, verbose=0, callbacks=[clock])
    rates = [steps * batch / t for t in clock.times[1:]]
    return {"batch": batch, "precision": policy, "images_per_s": float(np.median(rates)),
            "first_epoch_s": clock.times[0], "steps_per_epoch": steps}


def infer_speed(preset: str, policy: str, *, img_size: int = 128, k: int = 11, images: int = 2048, latency_calls: int = 200) -> dict:
    """Images/s of ``model.predict`` at batch 32, and batch-1 latency of ``predict_on_batch`` (ms)."""
    model = new_model(preset, policy, img_size, k, 1e-4)
    x, _ = _random_batch(images, img_size, img_size // 2, k)
    model.predict(x[:64], batch_size=32, verbose=0)
    runs = []
    for _ in range(3):
        t = time.perf_counter()
        model.predict(x, batch_size=32, verbose=0)
        runs.append(images / (time.perf_counter() - t))
    one = x[:1]
    for _ in range(10):
        model.predict_on_batch(one)
    lat = []
    for _ in range(latency_calls):
        t = time.perf_counter()
        np.asarray(model.predict_on_batch(one)["heatmaps"])
        lat.append((time.perf_counter() - t) * 1e3)
    return {"precision": policy, "batch32_images_per_s": float(np.median(runs)),
            "batch1_latency_ms_median": float(np.median(lat)), "batch1_latency_ms_p95": float(np.percentile(lat, 95))}


# -- accuracy ------------------------------------------------------------------------------------
def predict_keypoints(model, x, tta: str = "none", batch: int = 64):
    """Model-input-pixel keypoints of ``use_vis.py``'s default decoder (arg-max + Newton step)."""
    from pipeline.infer import decode
    from pipeline.tta import merge_outputs, turned_inputs

    xy, conf = [], []
    for i in range(0, len(x), batch):
        xb = x[i:i + batch]
        n = len(xb)
        if n < batch:  # one batch shape: no recompilation for the last, shorter batch
            xb = np.concatenate([xb, np.zeros((batch - n,) + xb.shape[1:], xb.dtype)])
        out = model.predict_on_batch(turned_inputs(xb, tta))
        bxy, bconf = decode(merge_outputs({k: np.asarray(v) for k, v in out.items()}, tta), "peak")
        xy.append(bxy[:n])
        conf.append(bconf[:n])
    return np.concatenate(xy), np.concatenate(conf)


def score(model, data: dict, tta: str = "none") -> dict:
    from pipeline.evaluate import space_metrics

    size = int(data["config"]["img_size"])
    xy, _ = predict_keypoints(model, data["x"], tta)
    m = space_metrics(xy * size, data["xy"] * size, data["visible"])
    return {key: m[key] for key in ("visible_keypoints_count", "euclidean_mean", "euclidean_median",
                                    "euclidean_p95", "mae_dx", "mae_dy", "rmse_dx", "rmse_dy", "pck_percent")}


def _val_pck_clock(val: dict, start: float):
    """Per-epoch validation PCK@2px of the peak decoder and the wall time since ``start``."""
    import keras

    class ValPCK(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.rows = []

        def on_epoch_end(self, epoch, logs=None):
            s = score(self.model, val)
            self.rows.append({"epoch": epoch + 1, "seconds": time.perf_counter() - start,
                              "val_peak_pck_2px": s["pck_percent"]["2"], "val_peak_mean_px": s["euclidean_mean"],
                              "loss": float(logs.get("loss", np.nan)), "val_loss": float(logs.get("val_loss", np.nan)),
                              "lr": float(np.asarray(self.model.optimizer.learning_rate))})
            print(f"[gpu]   epoch {epoch + 1}: {self.rows[-1]}", flush=True)

    return ValPCK()


def _deadline(clock: Clock, reserve_s: float):
    """Stop training (after the current step) once only ``reserve_s`` of the run's budget is left."""
    import keras

    class Deadline(keras.callbacks.Callback):
        stopped_early = False

        def on_train_batch_end(self, batch, logs=None):
            if clock.left() < reserve_s:
                self.model.stop_training = True
                self.stopped_early = True

    return Deadline()


def train_recipe(name: str, preset: str, train: dict, test: dict, *, epochs: int, policy: str, lr: float, schedule: str,
                 alpha: float, gamma: float, sigma: float, turns: bool, batch: int, clock: Clock,
                 reserve_s: float, workers: int = 8, val_curve: int = 256) -> dict:
    """Train one recipe, scoring the first ``val_curve`` validation samples after every epoch."""
    import keras

    n = len(train["x"])
    rows = np.random.default_rng(SEED).permutation(n)
    n_val = int(round(n * VAL_SPLIT))
    val_rows, train_rows = np.sort(rows[:n_val]), rows[n_val:]
    val = {"x": train["x"][val_rows], "xy": train["xy"][val_rows], "visible": train["visible"][val_rows],
           "config": train["config"]}
    size, heat = int(train["config"]["img_size"]), int(train["config"]["heat_size"])
    k = train["xy"].shape[1]
    steps = len(train_rows) // batch
    if schedule == "cosine":
        lr_arg = keras.optimizers.schedules.CosineDecay(0.0, steps * (epochs - 1), warmup_target=lr,
                                                        warmup_steps=steps)
    else:
        lr_arg = lr
    model = new_model(preset, policy, size, k, lr_arg, alpha, gamma)
    gen = Batches(train, train_rows, batch, heat, sigma, turns, SEED, workers=workers, max_queue_size=16)
    val_gen = Batches(val, np.arange(n_val), min(batch, n_val), heat, sigma, False, SEED)
    start = time.perf_counter()
    curve = {key: (v[:val_curve] if key != "config" else v) for key, v in val.items()}
    cbs = [_val_pck_clock(curve, start), _epoch_clock(), _deadline(clock, reserve_s)]
    if schedule == "plateau":
        cbs.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.8, patience=10, verbose=0))
    model.fit(gen.dataset, validation_data=val_gen.dataset, epochs=epochs, verbose=0, callbacks=cbs)
    train_s = time.perf_counter() - start
    hist, epoch_clock = cbs[0].rows, cbs[1]
    reached = next((r["seconds"] for r in hist if r["val_peak_pck_2px"] >= 95.0), None)
    out = {"recipe": name, "epochs": epochs, "batch": batch, "precision": policy, "learning_rate": lr,
           "lr_schedule": schedule, "focal_alpha": alpha, "focal_gamma": gamma, "heatmap_sigma": sigma,
           "quarter_turn_augmentation": turns, "train_samples": len(train_rows), "val_samples": n_val,
           "train_seconds": train_s, "epoch_seconds_median": float(np.median(epoch_clock.times[1:] or epoch_clock.times)),
           "train_images_per_s": float(steps * batch / np.median(epoch_clock.times[1:] or epoch_clock.times)),
           "epochs_run": len(hist), "stopped_at_deadline": cbs[2].stopped_early,
           "val_curve_samples": len(curve["x"]),
           "seconds_to_val_pck2_95": reached, "history": hist, "test": {"none": score(model, test)}}
    if turns:
        out["test"]["rot4"] = score(model, test, "rot4")
    return out


# -- driver --------------------------------------------------------------------------------------
def machine() -> dict:
    import keras

    from benchmarks.machine import cpu_model, gpu_name

    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "gpu": gpu_name() or "none", "python": platform.python_version(),
            "keras": keras.__version__, "backend": keras.backend.backend(), "numpy": np.__version__}
    if info["backend"] == "jax":
        import jax

        info["jax"] = jax.__version__
        info["devices"] = [str(d) for d in jax.devices()]
    return info


def _compilation_cache() -> None:
    """Let JAX reuse compiled steps across the section's identical models."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        try:
            jax.config.update("jax_compilation_cache_dir", os.environ.get("JAX_CACHE_DIR", "/tmp/jax_cache"))
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
        except (AttributeError, ValueError) as e:  # an older or newer JAX without these options
            print(f"[gpu] no persistent compilation cache: {e}", flush=True)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.keras_gpu", description=__doc__.split("\n")[0])
    p.add_argument("--train", required=True, help="Arrays folder of the training renders.")
    p.add_argument("--test", required=True, help="Arrays folder of the held-out renders.")
    p.add_argument("--out", required=True, help="Results JSON (rewritten after each section).")
    p.add_argument("--budget-s", type=float, default=480.0, help="Wall-clock budget of the whole run (s).")
    p.add_argument("--preset", default="paper", choices=["paper", "cpu", "tiny"],
                   help="Architecture (a train_vis.py preset); the recipes keep their own loss settings.")
    p.add_argument("--train-batches", type=int, nargs="+", default=[16, 128, 1024])
    p.add_argument("--precisions", nargs="+", default=["mixed_bfloat16", "float32"],
                   choices=["mixed_bfloat16", "float32", "mixed_float16"], help="The first also trains the recipes.")
    p.add_argument("--paper-epochs", type=int, default=20)
    p.add_argument("--recipe-batch", type=int, default=128, help="Batch of the accuracy recipes (paper: 128).")
    p.add_argument("--speed-images", type=int, default=4096, help="Images per timed training epoch.")
    p.add_argument("--limit", type=int, default=0, help="Use only the first N training samples (0: all).")
    p.add_argument("--sections", nargs="+", default=["speed", "paper", "infer", "long"],
                   choices=["speed", "paper", "infer", "long"], help="What to run (in the order of the docstring).")
    p.add_argument("--long-epochs", type=int, default=0,
                   help="Epochs of the long recipe (0: as many as the time left allows, from the paper run's epochs).")
    p.add_argument("--reserve-s", type=float, default=40.0, help="Time kept back from the long recipe (s).")
    a = p.parse_args(argv)
    clock = Clock(a.budget_s)
    out = Path(a.out)
    _compilation_cache()
    res: dict = {"machine": machine(), "preset": a.preset, "args": vars(a), "sections": {}}

    def save(section: str, value) -> None:
        res["sections"][section] = value
        res["elapsed_s"] = time.perf_counter() - clock.start
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(res, indent=1, default=float))
        tmp.replace(out)
        print(f"[gpu] {section} ({res['elapsed_s']:.0f} s): {json.dumps(value, default=float)[:600]}", flush=True)

    def guarded(section: str, fn, need_s: float):
        if clock.left() < need_s:
            save(section, {"skipped": f"{clock.left():.0f} s left, {need_s:.0f} s needed"})
            return None
        try:
            value = fn()
        except Exception as e:  # noqa: BLE001 - one section's failure must not lose the others
            value = {"error": f"{type(e).__name__}: {e}"}
        save(section, value)
        return value

    print(f"[gpu] {res['machine']}", flush=True)
    train = load_arrays(a.train, a.limit)
    test = load_arrays(a.test)
    sigma = float(train["config"]["sigma"])
    tag = {"mixed_bfloat16": "bf16", "float32": "f32", "mixed_float16": "f16"}
    first = (a.recipe_batch, a.precisions[0])
    if "speed" in a.sections:
        guarded(f"train_speed_{tag[first[1]]}_b{first[0]}",
                lambda: train_speed(a.preset, first[0], first[1], images=a.speed_images), 30)
    paper = None if "paper" not in a.sections else guarded("accuracy_paper", lambda: train_recipe(
        "paper", a.preset, train, test, epochs=a.paper_epochs, policy=a.precisions[0], lr=5e-4, schedule="plateau",
        alpha=0.25, gamma=2.0, sigma=sigma, turns=False, batch=a.recipe_batch, clock=clock, reserve_s=30.0), 60)
    speeds = [(b, prec) for b in a.train_batches for prec in a.precisions if (b, prec) != first]
    speeds.sort(key=lambda bp: (bp[0] != first[0], a.train_batches.index(bp[0]), a.precisions.index(bp[1])))
    if "infer" in a.sections:
        guarded(f"infer_speed_{tag[first[1]]}", lambda: infer_speed(a.preset, first[1], images=a.speed_images // 2), 45)
    for b, prec in speeds if "speed" in a.sections else []:
        guarded(f"train_speed_{tag[prec]}_b{b}", lambda b=b, prec=prec: train_speed(a.preset, b, prec, images=a.speed_images), 60)
    for prec in a.precisions[1:] if "infer" in a.sections else []:
        guarded(f"infer_speed_{tag[prec]}", lambda prec=prec: infer_speed(a.preset, prec, images=a.speed_images // 2), 45)
    epochs = a.long_epochs
    if not epochs and paper and "epoch_seconds_median" in paper:
        epoch_s = paper["epoch_seconds_median"] * 1.3  # the quarter turns cost a little more; the deadline stops it
        epochs = int((clock.left() - a.reserve_s) // epoch_s)
    if "long" in a.sections:
        if epochs < 5:
            save("accuracy_long", {"skipped": f"time for {epochs} epochs only (--long-epochs sets them)"})
        else:
            guarded("accuracy_long", lambda: train_recipe(
                "long", a.preset, train, test, epochs=epochs, policy=a.precisions[0], lr=1e-3, schedule="cosine",
                alpha=0.5, gamma=0.0, sigma=sigma * 0.75, turns=True, batch=a.recipe_batch, clock=clock,
                reserve_s=a.reserve_s), 0)
    return res


if __name__ == "__main__":
    os.environ.setdefault("KERAS_BACKEND", "jax")  # Keras is imported inside the functions, after this
    main()
