"""SoftArgMax, InputNormalization, FusedBatchNormalization, MatmulConv2D: agreement with references, gradients, configs."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.heatmaps import render, soft_argmax
from pipeline.layers import CAFFE_MEAN_BGR, FusedBatchNormalization, InputNormalization, MatmulConv2D, SoftArgMax


def _known_maps(seed=0, b=3, s=16, k=4):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0.1, 0.9, (b, k, 2))
    vis = np.ones((b, k), bool)
    return render(xy, vis, s, sigma=1.0), xy


def test_softargmax_matches_numpy_reference():
    maps, _ = _known_maps()
    out = SoftArgMax(beta=15.0)(maps.astype(np.float32)).numpy()
    ref = soft_argmax(maps, beta=15.0)  # (B, K, 2)
    assert out.shape == (3, 8)
    np.testing.assert_allclose(out.reshape(3, 4, 2), ref, atol=1e-3)


def test_softargmax_interleaved_xy_and_pixel_centres():
    s, k = 8, 2
    h = np.zeros((1, s, s, k), np.float32)
    h[0, 2, 5, 0] = 1.0  # row 2 (y), col 5 (x)
    h[0, 6, 1, 1] = 1.0
    out = SoftArgMax(beta=500.0)(h).numpy()[0]
    np.testing.assert_allclose(out, [5.5 / s, 2.5 / s, 1.5 / s, 6.5 / s], atol=1e-4)


def test_softargmax_uniform_map_is_centre():
    out = SoftArgMax(beta=15.0)(np.zeros((2, 6, 6, 3), np.float32)).numpy()
    np.testing.assert_allclose(out, 0.5, atol=1e-6)


def test_softargmax_gradient_reaches_heatmap():
    maps, _ = _known_maps()
    h = tf.Variable(maps.astype(np.float32))
    layer = SoftArgMax(beta=15.0)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(h) * tf.reshape(tf.range(24, dtype=tf.float32), (3, 8)))
    g = tape.gradient(loss, h).numpy()
    assert np.isfinite(g).all() and np.abs(g).max() > 0


def test_softargmax_config_round_trip_and_shape():
    layer = SoftArgMax(beta=7.5, name="sa")
    clone = SoftArgMax.from_config(layer.get_config())
    assert clone.beta == 7.5 and clone.name == "sa"
    assert layer.compute_output_shape((None, 16, 16, 5)) == (None, 10)
    with pytest.raises(ValueError, match="beta"):
        SoftArgMax(beta=0)


def test_input_normalization_caffe():
    rgb = np.array([[[[10.0, 20.0, 30.0]]]], np.float32)
    out = InputNormalization("caffe")(rgb).numpy()[0, 0, 0]
    np.testing.assert_allclose(out, [30 - CAFFE_MEAN_BGR[0], 20 - CAFFE_MEAN_BGR[1], 10 - CAFFE_MEAN_BGR[2]], atol=1e-4)
    u8 = np.array([[[[10, 20, 30]]]], np.uint8)
    np.testing.assert_allclose(InputNormalization("caffe")(u8).numpy()[0, 0, 0], out, atol=1e-4)


def test_input_normalization_config_round_trip():
    layer = InputNormalization("tf", name="norm")
    clone = InputNormalization.from_config(layer.get_config())
    assert clone.mode == "tf"
    np.testing.assert_allclose(clone(np.full((1, 1, 1, 3), 255.0, np.float32)).numpy(), 1.0)
    assert layer.compute_output_shape((None, 8, 8, 3)) == (None, 8, 8, 3)
    with pytest.raises(ValueError, match="mode"):
        InputNormalization("torch")


def _bn_pair(momentum=0.5):
    keras_bn = keras.layers.BatchNormalization(momentum=momentum, epsilon=1e-3)
    fused = FusedBatchNormalization(momentum=momentum, epsilon=1e-3)
    rng = np.random.default_rng(1)
    weights = [rng.normal(1.0, 0.3, 7).astype(np.float32), rng.normal(0.0, 1.0, 7).astype(np.float32),
               rng.normal(0.0, 1.0, 7).astype(np.float32), rng.uniform(0.5, 2.0, 7).astype(np.float32)]
    for layer in (keras_bn, fused):
        layer.build((4, 5, 6, 7))
        layer.set_weights(weights)
    return keras_bn, fused


def test_fused_batchnorm_matches_keras_batchnorm():
    x = tf.constant(np.random.default_rng(0).normal(2.0, 3.0, (4, 5, 6, 7)).astype(np.float32))
    keras_bn, fused = _bn_pair()
    # inference mode: moving statistics
    np.testing.assert_allclose(fused(x, training=False), keras_bn(x, training=False), atol=1e-5)
    # training mode: batch statistics, the same moving-average update, the same gradients
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        loss_k = tf.reduce_sum(keras_bn(x, training=True) ** 3)
        loss_f = tf.reduce_sum(fused(x, training=True) ** 3)
    np.testing.assert_allclose(loss_f, loss_k, rtol=1e-5)
    for a, b in zip(keras_bn.weights, fused.weights):
        np.testing.assert_allclose(b.numpy(), a.numpy(), atol=1e-5, err_msg=a.name)
    np.testing.assert_allclose(tape.gradient(loss_f, x), tape.gradient(loss_k, x), rtol=1e-4, atol=1e-3)
    for a, b in zip(tape.gradient(loss_k, keras_bn.trainable_variables),
                    tape.gradient(loss_f, fused.trainable_variables)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-2)
    # a frozen layer normalises with its moving statistics even when training
    fused.trainable = False
    np.testing.assert_allclose(fused(x, training=True), keras_bn(x, training=False), atol=1e-5)


def test_fused_batchnorm_bf16_and_round_trip():
    x = np.random.default_rng(2).normal(0.0, 1.0, (2, 8, 8, 7)).astype(np.float32)
    keras_bn, fused = _bn_pair()
    bf16 = FusedBatchNormalization.from_config({**fused.get_config(), "dtype": "mixed_bfloat16"})
    bf16.build(x.shape)
    bf16.set_weights(fused.get_weights())
    y = bf16(tf.cast(x, tf.bfloat16), training=True)
    assert y.dtype == tf.bfloat16
    np.testing.assert_allclose(tf.cast(y, tf.float32), keras_bn(x, training=True), atol=0.05)
    inp = keras.Input((8, 8, 7))
    model = keras.Model(inp, FusedBatchNormalization(name="bn")(inp))
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    assert isinstance(restored.get_layer("bn"), FusedBatchNormalization)


@pytest.mark.parametrize("kernel, side, strides, padding, expect_path", [
    (1, 8, 1, "same", "pointwise"),
    (1, 8, 2, "same", "pointwise"),  # reshape subsample
    (1, 7, 2, "valid", "pointwise"),  # odd side: strided-slice subsample
    (1, 9, 3, "same", "pointwise"),
    (3, 8, 1, "same", "small map"),
    (5, 6, 1, "same", "small map"),
    (3, 16, 1, "same", "conv"),  # larger map: oneDNN's own weight gradient
    (3, 8, 2, "same", "conv"),
    (3, 8, 1, "valid", "conv"),
])
def test_matmul_conv2d_equals_conv2d(kernel, side, strides, padding, expect_path):
    """Same outputs and gradients (input, kernel, bias) as keras Conv2D on every routed path.

    The small-map path is taken in 16-bit precision only; float16 is used here so that it can be
    compared with the reference at a known tolerance on the same float16 inputs."""
    dtype = "float16" if expect_path == "small map" else "float32"
    tol = 2e-2 if dtype == "float16" else 2e-5
    x = tf.constant(np.random.default_rng(0).normal(size=(3, side, side, 5)).astype(dtype))
    ref = keras.layers.Conv2D(6, kernel, strides=strides, padding=padding, activation="relu", dtype=dtype)
    ref.build(x.shape)
    fast = MatmulConv2D.from_config(ref.get_config())
    fast.build(x.shape)
    fast.set_weights(ref.get_weights())
    path = "pointwise" if fast._pointwise() else "small map" if fast._small_map(x) else "conv"
    assert path == expect_path
    results = []
    for layer in (ref, fast):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) * tf.cos(tf.cast(y, tf.float32)))
        results.append([y, *tape.gradient(loss, [x, layer.kernel, layer.bias])])
    assert results[1][0].shape == results[0][0].shape
    for a, b, name in zip(results[0], results[1], ("output", "d input", "d kernel", "d bias")):
        np.testing.assert_allclose(np.asarray(b, np.float32), np.asarray(a, np.float32), rtol=tol, atol=tol,
                                   err_msg=name)
    if expect_path == "small map":  # and the float32 layer keeps oneDNN's kernel
        assert not MatmulConv2D.from_config({**ref.get_config(), "dtype": "float32"})._small_map(x)


def test_matmul_conv2d_bf16_trains_and_round_trips():
    inp = keras.Input((8, 8, 4))
    x = MatmulConv2D(8, 3, padding="same", name="c3")(inp)
    out = MatmulConv2D(2, 1, strides=2, name="c1")(x)
    model = keras.Model(inp, out)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    assert isinstance(restored.get_layer("c3"), MatmulConv2D) and restored.get_layer("c1").strides == (2, 2)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        inp = keras.Input((8, 8, 4))
        bf16 = keras.Model(inp, MatmulConv2D(2, 1, strides=2)(MatmulConv2D(8, 3, padding="same")(inp)))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    bf16.set_weights(model.get_weights())
    rng = np.random.default_rng(3)
    xb, yb = rng.normal(size=(16, 8, 8, 4)).astype(np.float32), rng.normal(size=(16, 4, 4, 2)).astype(np.float32)
    assert bf16(xb).dtype == "bfloat16"
    np.testing.assert_allclose(tf.cast(bf16(xb), tf.float32), model(xb), atol=0.1)
    bf16.compile(keras.optimizers.SGD(0.05), "mse")
    losses = bf16.fit(xb, yb, epochs=5, batch_size=16, verbose=0).history["loss"]
    assert losses[-1] < losses[0]
