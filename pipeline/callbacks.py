"""Training callbacks: best-model checkpoint with sidecar, TensorBoard heatmap grids, throughput,
elapsed time, the learning-rate schedule and the time budget."""

from __future__ import annotations

import math
import time
from pathlib import Path

import keras
import numpy as np

from pipeline import model_io


class BestModelCheckpoint(keras.callbacks.Callback):
    """Save the model (via ``model_io``, with sidecar) whenever ``monitor`` improves.

    The best value is stored in the sidecar, so a resumed run only overwrites a better model.
    """

    def __init__(self, path, meta: dict, monitor: str = "val_loss"):
        super().__init__()
        self.path, self.meta, self.monitor = Path(path), meta, monitor
        self.best = math.inf

    def on_train_begin(self, logs=None):
        prev = model_io.load_meta(self.path).get("best", {}) if self.path.is_file() else {}
        if prev.get("monitor") == self.monitor and prev.get("value") is not None:
            self.best = min(self.best, float(prev["value"]))

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not np.isfinite(value) or value >= self.best:
            return
        self.best = float(value)
        best = {"monitor": self.monitor, "value": self.best, "epoch": epoch + 1,
                **{k: float(v) for k, v in (logs or {}).items() if "px_error" in k or "pck" in k}}
        model_io.save_model(self.model, self.path, {**self.meta, "best": best})


class HeatmapImages(keras.callbacks.Callback):
    """Every ``every`` epochs, log a grid of fixed validation images next to their predicted heatmaps
    (max over keypoints, predicted coords drawn as dots) with ``tf.summary.image``."""

    def __init__(self, log_dir, images: np.ndarray, every: int = 5):
        super().__init__()
        self.log_dir, self.images, self.every = str(log_dir), np.asarray(images, np.float32), int(every)
        self._writer = None

    def on_epoch_end(self, epoch, logs=None):
        if self.every <= 0 or (epoch + 1) % self.every:
            return
        import tensorflow as tf

        # A direct call, not predict(): under MultiWorkerMirroredStrategy predict() is a collective
        # step that every worker would have to join, while this callback runs on the chief only.
        out = self.model(self.images, training=False)
        grid = heatmap_grid(self.images, np.asarray(out["heatmaps"]), np.asarray(out["coords"]))
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        with self._writer.as_default():
            tf.summary.image("val_heatmaps", grid[None], step=epoch + 1)
        self._writer.flush()


def heatmap_grid(images, heatmaps, coords) -> np.ndarray:
    """Rows of [image with predicted keypoints | max-over-K heatmap], (H_total, 2S, 3) float in [0, 1].

    Args:
        images: (N, S, S, 3) RGB 0..255; heatmaps: (N, S/2, S/2, K); coords: (N, 2K) normalised.
    """
    n, s = images.shape[0], images.shape[1]
    rows = []
    for i in range(n):
        img = np.clip(images[i] / 255.0, 0, 1).copy()
        hm = heatmaps[i].max(axis=-1)
        rep = s // hm.shape[0]
        hm = np.repeat(np.repeat(hm, rep, 0), rep, 1)
        hm_rgb = np.stack([hm, hm * 0.6, 1 - hm], -1)
        for x, y in coords[i].reshape(-1, 2) * s:
            c, r = int(np.clip(x, 0, s - 1)), int(np.clip(y, 0, s - 1))
            img[max(r - 1, 0):r + 2, max(c - 1, 0):c + 2] = (1.0, 0.0, 0.0)
        rows.append(np.concatenate([img, hm_rgb], axis=1))
    return np.concatenate(rows, axis=0).astype(np.float32)


class Throughput(keras.callbacks.Callback):
    """Training images per second, counting only the training part of each epoch."""

    def __init__(self, batch_size: int):
        super().__init__()
        self.batch_size = batch_size
        self.images = 0
        self.seconds = 0.0
        self._t = None

    def on_epoch_begin(self, epoch, logs=None):
        self._t = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.images += self.batch_size

    def _stop(self):
        if self._t is not None:
            self.seconds += time.perf_counter() - self._t
            self._t = None

    def on_test_begin(self, logs=None):
        self._stop()

    def on_epoch_end(self, epoch, logs=None):
        self._stop()

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


class SimulatedInterruption(RuntimeError):
    """Raised by :class:`StopAfterEpoch`."""


class StopAfterEpoch(keras.callbacks.Callback):
    """Raise after epoch ``epoch`` (0-based) finished: simulates an interrupted run in tests."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise SimulatedInterruption(f"StopAfterEpoch: interrupted after epoch {epoch}")


def elapsed_before(history_csv) -> float:
    """Seconds of training an earlier, interrupted invocation spent: the last ``elapsed_s`` of
    ``history_csv`` (0 when there is none; the interrupted partial epoch is not counted)."""
    if history_csv is None or not Path(history_csv).is_file():
        return 0.0
    import csv

    with open(history_csv) as f:
        rows = [r for r in csv.DictReader(f) if r.get("elapsed_s")]
    return float(rows[-1]["elapsed_s"]) if rows else 0.0


class ElapsedTime(keras.callbacks.Callback):
    """Adds ``elapsed_s`` (wall-clock seconds of training so far) to each epoch's logs.

    Place it before CSVLogger so the column is written. On a resumed run the count continues
    from the last ``elapsed_s`` in ``history_csv``. ``since`` (a ``time.perf_counter()`` value)
    starts the clock then instead of at ``fit``: a stage that follows another in the same process
    then counts the hand-over between them too.
    """

    def __init__(self, history_csv=None, since: float | None = None):
        super().__init__()
        self.base = elapsed_before(history_csv)
        self.since = since
        self._t0 = None

    def on_train_begin(self, logs=None):
        self._t0 = time.perf_counter() if self.since is None else self.since

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self._t0 is not None:
            logs["elapsed_s"] = self.base + time.perf_counter() - self._t0


class TimeBudget(keras.callbacks.Callback):
    """Stop training once ``seconds`` of wall-clock training have passed, counting the time of an
    interrupted earlier invocation (from ``history_csv``) too.

    It stops after the step that crosses the budget, mid-epoch if need be; Keras still validates
    and logs that last, shorter epoch. :meth:`fraction` tells a learning-rate schedule how far
    along the budget is, so that the decay ends when the time does, on a fast machine or a slow one.
    ``stop_at`` (0..1] stops at that fraction of the budget instead, while :meth:`fraction` still
    counts against the whole: a first stage of a budget then ends its share of a schedule that the
    next stage continues, and ``since`` (a ``clock()`` value) makes that next stage count the time
    from the end of the first, hand-over included (as :class:`ElapsedTime`). ``clock`` (seconds,
    monotonic) is injectable for tests.
    """

    def __init__(self, seconds: float, history_csv=None, clock=time.perf_counter, log=print, stop_at: float = 1.0,
                 since: float | None = None):
        super().__init__()
        if seconds <= 0:
            raise ValueError(f"The time budget must be positive. Received: {seconds} s")
        if not 0.0 < stop_at <= 1.0:
            raise ValueError(f"stop_at must be in (0, 1]. Received: {stop_at}")
        self.seconds, self.base, self.clock, self.log = float(seconds), elapsed_before(history_csv), clock, log
        self.stop_at = float(stop_at)
        self.since = since
        self._t0 = None
        self.stopped_at: tuple[int, int] | None = None  # (epoch, batch) of the stop
        self._epoch = 0

    def elapsed(self) -> float:
        return self.base + (self.clock() - self._t0 if self._t0 is not None else 0.0)

    def fraction(self) -> float:
        return min(self.elapsed() / self.seconds, 1.0)

    def on_train_begin(self, logs=None):
        self._t0 = self.clock() if self.since is None else self.since

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.stopped_at is None and self.elapsed() >= self.seconds * self.stop_at:
            self.stopped_at = (self._epoch, batch)
            self.model.stop_training = True
            what = "time budget" if self.stop_at == 1.0 else f"{self.stop_at:.0%} of the time budget"
            self.log(f"{what} of {self.seconds / 60:g} min reached at epoch {self._epoch + 1}, "
                     f"step {batch + 1}: stopping after this epoch's validation")


def cosine_lr(progress: float, base_lr: float, warmup: float, total: float, floor: float = 0.0,
              at_least: float = 0.0) -> float:
    """Learning rate at ``progress`` epochs into a phase: linear warm-up, then cosine decay to ``floor``.

    ``at_least`` (0..1) is a lower bound on the decay's position, e.g. the spent fraction of a time
    budget: the decay then ends at whichever runs out first, the epochs or the time.
    """
    if warmup > 0 and progress < warmup:
        return base_lr * max(progress, 0.0) / warmup
    span = max(total - warmup, 1e-9)
    t = min(max((progress - warmup) / span, at_least, 0.0), 1.0)
    return floor + (base_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


class _StepSchedule(keras.callbacks.Callback):
    """A value set at each step from the phase's fractional epoch (``_epoch`` + batch / steps)."""

    _epoch = 0

    def _set(self, progress: float) -> None:
        raise NotImplementedError

    def on_train_batch_begin(self, batch, logs=None):
        steps = (self.params or {}).get("steps") or 0
        if steps:
            self._set(self._epoch + batch / steps)


class CosineSchedule(_StepSchedule):
    """Per-step warm-up + cosine decay of the optimizer's learning rate over one training phase.

    A callback rather than a ``LearningRateSchedule`` object: it is driven by the epoch index Keras
    hands it, so a run resumed by ``BackupAndRestore`` lands at the same point of the curve, and a
    phase that starts at ``initial_epoch`` decays over its own epochs only. With a ``budget``
    (:class:`TimeBudget`) the decay follows the spent time when that runs ahead of the epochs.
    ``learning_rate`` is added to the epoch logs (CSV, TensorBoard).
    """

    def __init__(self, base_lr: float, epochs: int, warmup_epochs: float = 1.0, start_epoch: int = 0,
                 floor: float = 0.0, budget: TimeBudget | None = None):
        super().__init__()
        self.base_lr, self.epochs, self.warmup = float(base_lr), int(epochs), float(warmup_epochs)
        self.start, self.floor, self.budget = int(start_epoch), float(floor), budget
        self._epoch = 0

    def _set(self, progress: float) -> None:
        spent = self.budget.fraction() if self.budget is not None else 0.0
        lr = cosine_lr(progress, self.base_lr, self.warmup, self.epochs, self.floor, at_least=spent)
        self.model.optimizer.learning_rate.assign(lr)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch - self.start
        self._set(self._epoch)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class SigmaSchedule(_StepSchedule):
    """Moves the width of the rendered heatmap targets linearly from ``start`` to ``end`` over the
    ``epochs`` of phase 1, or over its time ``budget`` (:class:`TimeBudget`) when that runs ahead.

    Wide targets early make each keypoint's identity easy to learn; narrow ones late reward placing
    the peak exactly. :meth:`value` is what ``make_dataset(sigma=...)`` reads for each batch it
    gathers (a few prefetched batches lag by a step or two). Driven by the epoch index Keras hands it,
    so a resumed run continues at the same width. One instance serves both stages of a low-resolution
    start: ``budget`` is set per stage. ``heatmap_sigma`` is added to the epoch logs.
    """

    def __init__(self, start: float, end: float, epochs: int):
        super().__init__()
        if start <= 0 or end <= 0:
            raise ValueError(f"Heatmap sigmas must be positive. Received: start={start}, end={end}")
        self.start, self.end, self.epochs = float(start), float(end), int(epochs)
        self.budget: TimeBudget | None = None
        self._sigma = self.start
        self._epoch = 0

    def value(self) -> float:
        return self._sigma

    def at(self, progress: float) -> float:
        """Sigma at ``progress`` (0..1, clipped) of the phase."""
        t = min(max(progress, 0.0), 1.0)
        return self.start + (self.end - self.start) * t

    def finish(self) -> None:
        """Hold the final sigma (phase 2, or a phase 1 that ended in an earlier run)."""
        self._sigma = self.end

    def _set(self, epochs_done: float) -> None:
        spent = self.budget.fraction() if self.budget is not None else 0.0
        self._sigma = self.at(max(epochs_done / max(self.epochs, 1), spent))

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._set(epoch)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["heatmap_sigma"] = self._sigma
