"""Precision policy choice: flags read from cpuinfo, and the auto rule per CPU and backbone."""

import pytest

from pipeline import precision


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor : 0\nflags : fpu avx2 avx512f avx512_bf16 sse\n\nprocessor : 1\nflags : amx_bf16\n")
    assert precision.cpu_bf16_flags(str(info)) == ["avx512_bf16"]  # the first CPU's line
    assert precision.cpu_bf16_flags(str(tmp_path / "missing")) == []


@pytest.mark.parametrize("flags, backbone, expected", [
    (["amx_bf16", "avx512_bf16"], "resnet50", "mixed_bfloat16"),
    (["amx_bf16", "avx512_bf16"], "resnet18ish", "float32"),
    (["avx512_bf16"], "resnet50", "mixed_bfloat16"),
    (["avx512_bf16"], "resnet18ish", "float32"),
    (["avx512_bf16"], None, "float32"),
    ([], "resnet50", "float32"),
])
def test_auto_rule_on_cpus(monkeypatch, flags, backbone, expected):
    monkeypatch.setattr(precision, "_cuda_capability", lambda: None)
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: flags)
    policy, reason = precision.resolve_precision("auto", backbone)
    assert policy == expected and reason
    assert precision.resolve_precision("float32", backbone) == ("float32", "requested")


def test_auto_rule_on_gpus_and_bad_choice(monkeypatch):
    monkeypatch.setattr(precision, "_cuda_capability", lambda: (8, 0))
    assert precision.resolve_precision("auto")[0] == "mixed_float16"
    monkeypatch.setattr(precision, "_cuda_capability", lambda: (6, 1))
    assert precision.resolve_precision("auto")[0] == "float32"
    with pytest.raises(ValueError, match="precision must be one of"):
        precision.resolve_precision("fp8")
