"""Benchmark suite: speed, memory and accuracy of the pipeline against naive seed-001-style baselines.

Run ``python -m benchmarks`` (full) or ``python -m benchmarks --quick`` (seconds, a smoke run).
On a GPU machine without TensorFlow, ``python -m benchmarks.keras_gpu`` measures the same model on
Keras's JAX backend.
Each workload runs in its own child process so its peak RSS is its own.
"""
