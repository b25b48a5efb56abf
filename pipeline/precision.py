"""Choosing the numeric precision policy (float32, mixed bfloat16 or mixed float16).

``auto`` picks mixed_float16 on CUDA GPUs with compute capability >= 7; on CPUs, mixed_bfloat16 where
the CPU has AMX tiles (``amx_bf16``), and, where it has only the AVX-512 bf16 dot product
(``avx512_bf16``), for wide models alone. Measured on a 2-core AVX-512-bf16 CPU (no AMX): bf16
convolutions ran about 2x float32; the ResNet-50 U-Net trained 1.6x faster in bf16 (21.1 vs 12.9
images/s), while the narrow ``cpu`` preset was no faster (63-95 vs 106-125 images/s in interleaved
runs), its 24-channel convolutions saving less than the casts cost. float32 everywhere else. Heads,
SoftArgMax and losses are float32 regardless (their layers pin ``dtype="float32"``).
"""

from __future__ import annotations

from pathlib import Path

PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")


def cpu_bf16_flags(cpuinfo: str = "/proc/cpuinfo") -> list[str]:
    """The bf16-related CPU flags present (empty when unknown)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return []
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return sorted(flags & {"amx_bf16", "avx512_bf16"})


def _cuda_capability() -> tuple[int, int] | None:
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        cc = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        if cc:
            return tuple(cc)
    return None


# Backbones whose convolutions are wide enough for AVX-512 bf16 (without AMX) to pay off.
WIDE_BACKBONES = ("resnet50",)


def resolve_precision(choice: str = "auto", backbone: str | None = None) -> tuple[str, str]:
    """Return (policy name, reason). ``backbone`` lets ``auto`` weigh bf16 on CPUs without AMX."""
    if choice not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}. Received: precision={choice!r}")
    if choice != "auto":
        return choice, "requested"
    cc = _cuda_capability()
    if cc is not None:
        if cc >= (7, 0):
            return "mixed_float16", f"CUDA GPU with compute capability {cc[0]}.{cc[1]}"
        return "float32", f"CUDA GPU with compute capability {cc[0]}.{cc[1]} (< 7.0)"
    flags = cpu_bf16_flags()
    if "amx_bf16" in flags:
        return "mixed_bfloat16", "CPU has amx_bf16"
    if flags and backbone in WIDE_BACKBONES:
        return "mixed_bfloat16", f"CPU has {', '.join(flags)} and the {backbone} backbone is wide"
    if flags:
        return "float32", (f"CPU has {', '.join(flags)} but no AMX: bf16 is slower than float32 for the narrow "
                           f"{backbone or 'given'} backbone")
    return "float32", "no GPU and no amx_bf16/avx512_bf16 CPU flags"


def apply_precision(choice: str = "auto", backbone: str | None = None) -> tuple[str, str]:
    """Resolve and set the global Keras dtype policy; returns (policy name, reason)."""
    import keras

    policy, reason = resolve_precision(choice, backbone)
    keras.mixed_precision.set_global_policy(policy)
    return policy, reason
