"""Custom Keras layers of the keypoint model: input normalisation, fused BatchNorm, SoftArgMax.

Legend: B batch, S heatmap side, K keypoints. Heatmaps are (B, S, S, K) with rows = y. Coordinates
are normalised (x, y) in [0, 1] over the crop, with heatmap pixel (r, c) centred at
``((c + 0.5) / S, (r + 0.5) / S)`` -- the convention of ``pipeline.heatmaps`` (encode and decode
must agree, see ``pipeline.heatmaps.soft_argmax`` for the numpy reference).
"""

from __future__ import annotations

import keras
from keras import ops

# ImageNet channel means in BGR order, for 0..255 inputs ("caffe" mode of keras.applications).
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
NORMALISATION_MODES = ("caffe", "tf", "none")


@keras.saving.register_keras_serializable(package="keypoints")
class InputNormalization(keras.layers.Layer):
    """Map plain RGB images in 0..255 to what the backbone expects.

    Modes:
        caffe: RGB -> BGR, then subtract the ImageNet BGR means (ResNet-50).
        tf:    scale to [-1, 1] (MobileNetV2).
        none:  identity (cast to float only).

    Input (B, H, W, 3) uint8 or float RGB; output the same shape in the layer's compute dtype.
    """

    def __init__(self, mode: str = "caffe", **kwargs):
        super().__init__(**kwargs)
        if mode not in NORMALISATION_MODES:
            raise ValueError(f"InputNormalization mode must be one of {NORMALISATION_MODES}. Received: mode={mode!r}")
        self.mode = mode

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        if self.mode == "caffe":
            x = ops.flip(x, axis=-1)
            x = x - ops.convert_to_tensor(CAFFE_MEAN_BGR, dtype=self.compute_dtype)
        elif self.mode == "tf":
            x = x / 127.5 - 1.0
        return x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"mode": self.mode})
        return config


@keras.saving.register_keras_serializable(package="keypoints")
class SoftArgMax(keras.layers.Layer):
    """Differentiable expected position of each heatmap channel.

    ``p = softmax(beta * h)`` over the S x S pixels of each channel, then
    ``x = sum p_rc (c + 0.5) / S`` and ``y = sum p_rc (r + 0.5) / S``.

    Input (B, S, S, K) heatmaps (any float dtype; computed in float32).
    Output (B, 2K) float32 normalised coordinates interleaved ``x0, y0, x1, y1, ...`` (the layout of
    ``coords`` in ``Y_data.npz``).
    """

    def __init__(self, beta: float = 15.0, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if beta <= 0:
            raise ValueError(f"SoftArgMax beta must be positive. Received: beta={beta}")
        self.beta = float(beta)

    def call(self, heatmaps):
        h = ops.cast(heatmaps, "float32")
        s_y, s_x, k = h.shape[1], h.shape[2], h.shape[3]
        if s_y is None or s_x is None or k is None:
            raise ValueError(f"SoftArgMax needs static (S, S, K) dims. Received shape: {h.shape}")
        z = ops.transpose(h, (0, 3, 1, 2))  # (B, K, Sy, Sx)
        z = ops.reshape(z, (-1, k, s_y * s_x)) * self.beta
        p = ops.softmax(z, axis=-1)
        p = ops.reshape(p, (-1, k, s_y, s_x))
        cx = (ops.arange(s_x, dtype="float32") + 0.5) / float(s_x)
        cy = (ops.arange(s_y, dtype="float32") + 0.5) / float(s_y)
        x = ops.sum(ops.sum(p, axis=2) * cx, axis=-1)  # (B, K)
        y = ops.sum(ops.sum(p, axis=3) * cy, axis=-1)
        return ops.reshape(ops.stack([x, y], axis=-1), (-1, 2 * k))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 2 * input_shape[3])

    def get_config(self):
        config = super().get_config()
        config.update({"beta": self.beta})
        return config


@keras.saving.register_keras_serializable(package="keypoints")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """BatchNormalization through TensorFlow's fused kernel (oneDNN on CPUs, cuDNN on GPUs).

    Keras 3 normalises with separate moment and arithmetic ops, upcast to float32 even under a bf16
    policy: on a 2-core CPU that took 18 % (float32) and 27 % (bf16) of a ResNet-50 U-Net training
    step. The fused kernel does the same maths in one pass over float32 or bf16/float16 activations
    (statistics in float32); forward + backward measured 2.1-2.5x (float32) and 6x (bf16) faster
    there. Variables, config and the moving-average update are the Keras layer's, so weights move
    freely between the two. Masks, renorm, synchronized (cross-replica) statistics, a channel axis
    other than the last of a 4-D input, or another backend take the Keras path.
    """

    def _fusable(self, inputs, mask) -> bool:
        return (keras.backend.backend() == "tensorflow" and mask is None and not self.renorm
                and not self.synchronized and len(inputs.shape) == 4 and self.axis in (3, -1))

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        x = inputs if inputs.dtype in (tf.float32, tf.bfloat16, tf.float16) else tf.cast(inputs, tf.float32)
        channels = x.shape[-1]
        gamma = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels], tf.float32)
        beta = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels], tf.float32)
        if training and self.trainable:
            y, mean, variance = tf.compat.v1.nn.fused_batch_norm(x, gamma, beta, epsilon=self.epsilon,
                                                                 is_training=True)
            # the kernel returns the Bessel-corrected variance; the Keras layer averages the biased one
            n = tf.cast(tf.size(x) // channels, tf.float32)
            variance = variance * (n - 1.0) / tf.maximum(n, 1.0)
            m = self.momentum
            self.moving_mean.assign(self.moving_mean * m + tf.cast(mean, self.moving_mean.dtype) * (1.0 - m))
            self.moving_variance.assign(self.moving_variance * m
                                        + tf.cast(variance, self.moving_variance.dtype) * (1.0 - m))
        else:
            y, _, _ = tf.compat.v1.nn.fused_batch_norm(
                x, gamma, beta, mean=tf.cast(self.moving_mean, tf.float32),
                variance=tf.cast(self.moving_variance, tf.float32), epsilon=self.epsilon, is_training=False)
        return tf.cast(y, self.compute_dtype)


def _subsample(x, sh: int, sw: int):
    """``x[:, ::sh, ::sw, :]`` as a reshape and a slice of whole pixels, with a zero-padding gradient
    (TensorFlow's strided-slice gradient cost 5 ms per ResNet-50 stride-2 layer at batch 16 on a CPU)."""
    import tensorflow as tf

    b, h, w, c = x.shape
    if h is None or w is None or c is None or h % sh or w % sw:
        return x[:, ::sh, ::sw, :]

    @tf.custom_gradient
    def sub(t):
        n = tf.shape(t)[0]
        y = tf.reshape(t, [n, h // sh, sh, w // sw, sw * c])[:, :, 0, :, :c]

        def grad(dy):
            d = tf.pad(dy[:, :, None], [[0, 0], [0, 0], [0, sh - 1], [0, 0], [0, (sw - 1) * c]])
            return tf.reshape(d, [n, h, w, c])

        return y, grad

    return sub(x)


# Feature maps up to this many pixels (8x8) take the shifted-matmul weight gradient in MatmulConv2D.
SMALL_MAP_PIXELS = 64


def _shifted_matmul_filter_grad(x, dy, kh: int, kw: int):
    """Weight gradient of a stride-1 "same" convolution as kh * kw matrix products.

    For each kernel offset (i, j) the gradient is the product of the padded input shifted by (i, j)
    and ``dy``, both flattened to (pixels, channels): the same sums as Conv2DBackpropFilter.
    """
    import tensorflow as tf

    h, w, cin, cout = x.shape[1], x.shape[2], x.shape[3], dy.shape[3]
    ph, pw = (kh - 1) // 2, (kw - 1) // 2
    padded = tf.pad(x, [[0, 0], [ph, kh - 1 - ph], [pw, kw - 1 - pw], [0, 0]])
    d = tf.reshape(dy, [-1, cout])
    grads = [tf.matmul(tf.reshape(padded[:, i:i + h, j:j + w, :], [-1, cin]), d, transpose_a=True)
             for i in range(kh) for j in range(kw)]
    return tf.reshape(tf.stack(grads), [kh, kw, cin, cout])


@keras.saving.register_keras_serializable(package="keypoints")
class MatmulConv2D(keras.layers.Conv2D):
    """Conv2D that routes the shapes oneDNN's convolution kernels handle poorly through matrix products.

    Same maths, variables and config as ``keras.layers.Conv2D``. Measured on a 2-core AMX CPU in
    bf16 at batch 16, where TensorFlow's matrix product runs at full speed but its convolutions do not:
    - 1x1 kernels run as one product over all pixels (a stride subsamples first): forward + backward
      of ResNet-50's 1x1 layers 1.7-3.1x faster (4x4x2048 -> 512: 5.0 vs 1.8 ms); float32 about even.
    - in 16-bit precision, stride-1 "same" convolutions with odd kernels on maps of at most
      SMALL_MAP_PIXELS pixels compute their weight gradient as shifted products
      (:func:`_shifted_matmul_filter_grad`): 2.3-2.9x faster there (8x8x1536 -> 512, 3x3: 1,006 vs 389
      GFLOP/s; the ResNet-50 U-Net step 8 % faster); on larger maps, and in float32 (the narrow ``cpu``
      preset's step 5-10 % slower with it), oneDNN's kernel is faster.
    Dilation, groups, channels-first data or another backend take the plain Conv2D path.
    """

    def _tf_plain(self) -> bool:
        return (keras.backend.backend() == "tensorflow" and tuple(self.dilation_rate) == (1, 1)
                and self.groups == 1 and self.data_format == "channels_last")

    def _pointwise(self) -> bool:
        return self._tf_plain() and tuple(self.kernel_size) == (1, 1)

    def _small_map(self, inputs) -> bool:
        kh, kw = self.kernel_size
        h, w = inputs.shape[1], inputs.shape[2]
        return (self._tf_plain() and self.compute_dtype in ("bfloat16", "float16") and kh % 2 == 1 and kw % 2 == 1
                and tuple(self.strides) == (1, 1)
                and self.padding == "same" and h is not None and w is not None and h * w <= SMALL_MAP_PIXELS
                and inputs.shape[3] is not None)

    def convolution_op(self, inputs, kernel):
        if not self._small_map(inputs):
            return super().convolution_op(inputs, kernel)
        import tensorflow as tf

        kh, kw = self.kernel_size

        @tf.custom_gradient
        def conv(x, k):
            def grad(dy):
                dx = tf.raw_ops.Conv2DBackpropInput(input_sizes=tf.shape(x), filter=k, out_backprop=dy,
                                                    strides=[1, 1, 1, 1], padding="SAME")
                return dx, _shifted_matmul_filter_grad(x, dy, kh, kw)

            return tf.nn.conv2d(x, k, 1, "SAME"), grad

        return conv(inputs, tf.convert_to_tensor(kernel))  # a tensor: the gradient flows on to the variable

    def call(self, inputs):
        if not self._pointwise():
            return super().call(inputs)
        import tensorflow as tf

        sh, sw = self.strides
        if sh > 1 or sw > 1:  # 1x1 windows: "same" and "valid" both keep rows/cols 0, s, 2s, ...
            inputs = _subsample(inputs, sh, sw)
        shape = tf.shape(inputs)
        out = tf.matmul(tf.reshape(inputs, [-1, inputs.shape[-1]]), self.kernel[0, 0])
        if self.use_bias:  # on the 2-D product, where TensorFlow fuses it into the matmul kernel
            out = tf.nn.bias_add(out, self.bias)
        out = tf.reshape(out, tf.concat([shape[:-1], [self.filters]], axis=0))
        return out if self.activation is None else self.activation(out)
