"""BatchNorm folding: same outputs, no BatchNorm left where a convolution precedes it."""

import keras
import numpy as np

from pipeline.fold import fold_batchnorm
from pipeline.model import ModelConfig, build_model


def _randomise_batchnorm(model, rng):
    """Non-trivial statistics, so that a wrong fold shows (fresh layers are the identity map)."""
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 2.0, n))
            layer.beta.assign(rng.normal(0, 0.5, n))
            layer.moving_mean.assign(rng.normal(0, 0.5, n))
            layer.moving_variance.assign(rng.uniform(0.2, 3.0, n))


def _count_bn(model):
    return sum(isinstance(layer, keras.layers.BatchNormalization) for layer in model._flatten_layers())


def test_folded_model_predicts_the_same():
    rng = np.random.default_rng(0)
    cfg = ModelConfig(input_size=64, num_keypoints=3, backbone="resnet18ish", backbone_width=8,
                      decoder_widths=(16, 8, 8, 8, 8))
    model = build_model(cfg)
    _randomise_batchnorm(model, rng)
    x = rng.integers(0, 256, (2, 64, 64, 3)).astype("float32")
    before = model.predict_on_batch(x)
    folded = fold_batchnorm(model)
    assert _count_bn(model) > 20 and _count_bn(folded) == 0
    after = folded.predict_on_batch(x)
    assert set(after) == {"heatmaps", "coords"}
    for key in before:
        scale = float(np.abs(before[key]).max())
        assert np.abs(after[key] - before[key]).max() <= 1e-4 * max(scale, 1.0), key
    # the original model is untouched
    again = model.predict_on_batch(x)
    assert np.array_equal(again["heatmaps"], before["heatmaps"])


def test_batchnorm_not_after_a_convolution_stays():
    inp = keras.Input((8, 8, 2))
    a = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="c")(inp)
    b = keras.layers.BatchNormalization(name="bn_conv")(a)
    c = keras.layers.Add(name="add")([a, b])  # the conv output is read twice: no fold
    d = keras.layers.BatchNormalization(name="bn_add")(c)
    model = keras.Model(inp, d)
    _randomise_batchnorm(model, np.random.default_rng(1))
    folded = fold_batchnorm(model)
    assert _count_bn(folded) == 2
    x = np.random.default_rng(2).normal(size=(1, 8, 8, 2)).astype("float32")
    np.testing.assert_allclose(folded.predict_on_batch(x), model.predict_on_batch(x), rtol=1e-5, atol=1e-5)


def test_nested_model_reusing_outer_layer_names():
    def conv_bn(x, filters):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name="conv")(x)
        return keras.layers.BatchNormalization(name="bn")(x)

    inner_in = keras.Input((8, 8, 2))
    inner = keras.Model(inner_in, conv_bn(inner_in, 4), name="inner")
    inp = keras.Input((8, 8, 2))
    model = keras.Model(inp, conv_bn(keras.layers.ReLU(name="relu")(inner(inp)), 3))
    _randomise_batchnorm(model, np.random.default_rng(3))
    folded = fold_batchnorm(model)
    assert _count_bn(folded) == 0
    x = np.random.default_rng(4).normal(size=(2, 8, 8, 2)).astype("float32")
    np.testing.assert_allclose(folded.predict_on_batch(x), model.predict_on_batch(x), rtol=1e-5, atol=1e-5)
