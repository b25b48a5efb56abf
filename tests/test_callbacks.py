"""Weight averaging: what validation, later callbacks and the final model see, and what training sees."""

import keras
import numpy as np
import pytest

from pipeline.callbacks import AveragedWeights
from pipeline.optimizers import FusedAdam
from pipeline.training_config import parse_train_config

MOMENTUM = 0.8


class _Recorder(keras.callbacks.Callback):
    """Raw weights after every step, and the weights a callback sees at each epoch end."""

    def __init__(self, stop_after_epoch=None):
        super().__init__()
        self.steps, self.at_epoch_end, self.stop_after_epoch = [], [], stop_after_epoch

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append([w.copy() for w in self.model.get_weights()])

    def on_epoch_end(self, epoch, logs=None):
        self.at_epoch_end.append([w.copy() for w in self.model.get_weights()])
        if epoch == self.stop_after_epoch:
            self.model.stop_training = True


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 4)).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5], [3.0]]) + 0.3 * rng.normal(size=(96, 1))).astype("float32")
    return x[:64], y[:64], x[64:], y[64:]


def _fit(ema: bool, epochs=4, stop_after_epoch=None):
    keras.utils.set_random_seed(0)
    x, y, xv, yv = _data()
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(FusedAdam(0.1, use_ema=ema, ema_momentum=MOMENTUM), loss="mse")
    steps = _Recorder(stop_after_epoch)  # before the averaging (like EarlyStopping): raw weights, may stop the run
    seen = _Recorder()  # after it: sees the average
    cbs = [steps, AveragedWeights(), seen] if ema else [steps, seen]
    hist = model.fit(x, y, batch_size=16, epochs=epochs, validation_data=(xv, yv), shuffle=False, verbose=0,
                     callbacks=cbs)
    return model, steps, seen, hist.history, (xv, yv)


def _expected_average(steps):
    """Keras's EMA: the first step copies, then avg = m avg + (1 - m) w."""
    avg = [w.copy() for w in steps[0]]
    for ws in steps[1:]:
        avg = [MOMENTUM * a + (1 - MOMENTUM) * w for a, w in zip(avg, ws)]
    return avg


def _close(a, b, tol=1e-5):
    return all(np.allclose(u, v, rtol=tol, atol=tol) for u, v in zip(a, b))


def test_final_model_validation_and_later_callbacks_use_the_average():
    model, steps, seen, hist, (xv, yv) = _fit(ema=True)
    avg = _expected_average(steps.steps)
    assert _close(model.get_weights(), avg)
    assert not _close(model.get_weights(), steps.steps[-1], tol=1e-3)  # the average is not the last step
    assert hist["val_loss"][-1] == pytest.approx(model.evaluate(xv, yv, verbose=0), rel=1e-5)
    per_epoch = len(steps.steps) // 4
    for epoch, ws in enumerate(seen.at_epoch_end):
        assert _close(ws, _expected_average(steps.steps[:(epoch + 1) * per_epoch]))


def test_training_itself_is_unchanged_by_the_averaging():
    _, with_ema, _, _, _ = _fit(ema=True)
    _, without, _, _, _ = _fit(ema=False)
    assert len(with_ema.steps) == len(without.steps) == 16
    assert _close(with_ema.steps[-1], without.steps[-1])


def test_a_run_stopped_early_still_ends_on_the_average():
    model, steps, _, hist, _ = _fit(ema=True, epochs=6, stop_after_epoch=1)
    assert len(hist["loss"]) == 2 and len(steps.steps) == 8
    assert _close(model.get_weights(), _expected_average(steps.steps))
    assert not _close(model.get_weights(), steps.steps[-1], tol=1e-3)


def test_ema_momentum_flag_is_validated():
    assert parse_train_config(["--ema-momentum", "0.999"]).ema_momentum == 0.999
    with pytest.raises(ValueError, match="ema_momentum"):
        parse_train_config(["--ema-momentum", "1.0"])
