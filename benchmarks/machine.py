"""What machine a figure was measured on."""

from __future__ import annotations

import os
import platform
import subprocess


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def gpu_name() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().replace("\n", ", ") if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def isa_level(flags: set) -> str:
    """The widest matrix-math extension: amx, avx512bf16, avx512, avx2 or base (names results files apart)."""
    for flag, name in (("amx_bf16", "amx"), ("avx512_bf16", "avx512bf16"), ("avx512f", "avx512"), ("avx2", "avx2")):
        if flag in flags:
            return name
    return "base"


def describe() -> dict:
    import numpy as np

    try:
        import tensorflow as tf

        tf_version = tf.__version__
    except ImportError:  # pragma: no cover
        tf_version = "absent"
    from pipeline.images import png_decoder

    flags = cpu_flags()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cpu_bf16": bool(flags & {"avx512_bf16", "amx_bf16"}),
        "cpu_avx512": "avx512f" in flags,
        "cpu_isa": isa_level(flags),
        "gpu": gpu_name() or "none",
        "tensorflow": tf_version,
        "png_decoder": png_decoder(),
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def slug(info: dict) -> str:
    """File-name stem: GPU name, or CPU model plus its ISA level (one CPU model name covers several)."""
    name = info["gpu"] if info["gpu"] != "none" else f"{info['cpu']}-{info.get('cpu_isa', '')}"
    return "".join(c if c.isalnum() else "-" for c in f"{name}-{info['cores']}c").strip("-").lower()
