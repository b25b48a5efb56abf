"""FusedAdam: the same trajectory as Keras's Adam, and it saves and loads."""

import keras
import numpy as np

from pipeline.optimizers import FusedAdam


def _train(optimizer, steps_per_epoch=4, epochs=5):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 10)).astype(np.float32), rng.normal(size=(64, 3)).astype(np.float32)
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)])
    model.compile(optimizer, "mse")
    hist = model.fit(x, y, epochs=epochs, batch_size=16, verbose=0, shuffle=False).history["loss"]
    return model, hist


def test_fused_adam_matches_keras_adam():
    ref, ref_loss = _train(keras.optimizers.Adam(1e-2, beta_1=0.8, beta_2=0.99, epsilon=1e-6))
    fused, fused_loss = _train(FusedAdam(1e-2, beta_1=0.8, beta_2=0.99, epsilon=1e-6))
    assert int(fused.optimizer.iterations.numpy()) == 20
    assert ref_loss[-1] < 0.9 * ref_loss[0]  # it trained, so the comparison means something
    np.testing.assert_allclose(fused_loss, ref_loss, rtol=1e-5)
    for a, b in zip(ref.get_weights(), fused.get_weights()):
        np.testing.assert_allclose(b, a, atol=1e-5)
    for a, b in zip(ref.optimizer.variables, fused.optimizer.variables):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5, err_msg=a.name)


def test_fused_adam_saves_and_resumes(tmp_path):
    model, _ = _train(FusedAdam(1e-2), epochs=1)
    model.save(tmp_path / "m.keras")
    restored = keras.saving.load_model(tmp_path / "m.keras")
    assert isinstance(restored.optimizer, FusedAdam)
    assert int(restored.optimizer.iterations.numpy()) == 4
    for a, b in zip(model.optimizer.variables, restored.optimizer.variables):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a))
