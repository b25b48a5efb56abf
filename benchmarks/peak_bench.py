"""The machine's own ceiling: raw float32 and bf16 matrix work through TensorFlow, in GFLOP/s.

A training step cannot gain more from bf16 than the hardware's bf16 matrix units give over float32
on plain matrix products and convolutions, so this section states that ratio beside the training
rows, on whatever machine the suite runs (it differs widely: AMX tiles, AVX-512 bf16, none).
"""

from __future__ import annotations

import time

import numpy as np

# (full, quick) problem sizes: a square matrix product, and a 3x3 convolution (batch, side, channels)
SIZES = {"matmul": (2048, 256), "conv": ((16, 32, 256), (2, 16, 32))}


def _gflops(fn, flops: float, repeats: int, min_s: float) -> float:
    """Median GFLOP/s of ``fn`` over ``repeats`` windows of at least ``min_s`` seconds each."""
    fn()  # trace, allocate, pick kernels
    rates = []
    for _ in range(repeats):
        n, t = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            dt = time.perf_counter() - t
            if dt >= min_s:
                break
        rates.append(flops * n / dt / 1e9)
    return float(np.median(rates))


def run(quick: bool = False) -> dict:
    import tensorflow as tf

    q = int(quick)
    repeats, min_s = (2, 0.05) if quick else (5, 1.0)
    n = SIZES["matmul"][q]
    b, side, c = SIZES["conv"][q]
    out = {"matmul_n": n, "conv_shape": [b, side, side, c]}
    rng = np.random.default_rng(0)
    for name, dtype in (("float32", tf.float32), ("bf16", tf.bfloat16)):
        a = tf.constant(rng.standard_normal((n, n)), dtype)
        x = tf.constant(rng.standard_normal((b, side, side, c)), dtype)
        w = tf.constant(rng.standard_normal((3, 3, c, c)) * 0.05, dtype)

        @tf.function
        def matmul():
            return tf.reduce_sum(tf.cast(tf.matmul(a, a), tf.float32))

        @tf.function
        def conv():
            return tf.reduce_sum(tf.cast(tf.nn.conv2d(x, w, 1, "SAME"), tf.float32))

        out[f"matmul_{name}_gflops"] = _gflops(lambda: matmul().numpy(), 2.0 * n ** 3, repeats, min_s)
        out[f"conv3x3_{name}_gflops"] = _gflops(lambda: conv().numpy(), 2.0 * b * side * side * c * c * 9,
                                                repeats, min_s)
    out["matmul_bf16_vs_float32"] = out["matmul_bf16_gflops"] / out["matmul_float32_gflops"]
    out["conv3x3_bf16_vs_float32"] = out["conv3x3_bf16_gflops"] / out["conv3x3_float32_gflops"]
    return out
