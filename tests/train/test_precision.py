"""train.dtype=auto is a rule on the device and the CPU's flags (homegrown.train.precision), never a timing."""

import pytest
import torch

from homegrown.errors import HomegrownError
from homegrown.train.precision import choose_dtype, cpu_flags, reported_flags

AVX2_ONLY = frozenset({"sse4_2", "avx", "avx2", "fma"})
SAPPHIRE_RAPIDS = AVX2_ONLY | {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}


def test_auto_is_bf16_only_on_cpus_with_amx_where_its_budget_gain_was_measured():
    amx = choose_dtype("auto", "cpu", SAPPHIRE_RAPIDS)
    assert amx.autocast == torch.bfloat16 and "AMX" in amx.reason and "1.32x the steps" in amx.reason
    for flags in (frozenset(), AVX2_ONLY, AVX2_ONLY | {"avx512_bf16"}):
        assert choose_dtype("auto", "cpu", flags).autocast is None
    no_amx = choose_dtype("auto", "cpu", AVX2_ONLY | {"avx512_bf16"})
    assert "no AMX" in no_amx.reason and "not measured" in no_amx.reason and no_amx.name == "fp32"
    emulated = choose_dtype("auto", "cpu", AVX2_ONLY)
    assert "no native bf16" in emulated.reason and "avx2" in emulated.reason


def test_explicit_choices_and_cuda():
    assert choose_dtype("bf16", "cpu", AVX2_ONLY).autocast == torch.bfloat16
    assert choose_dtype("fp32", "cuda", frozenset()).autocast is None
    assert choose_dtype("auto", "cuda", frozenset()).name == "bf16"
    with pytest.raises(HomegrownError, match="auto, bf16 or fp32"):
        choose_dtype("fp16", "cpu", AVX2_ONLY)


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx avx2 avx512f avx512_bf16\n\n"
                    "processor\t: 1\nflags\t\t: fpu avx avx2 avx512f avx512_bf16\n")
    flags = cpu_flags(info)
    assert {"avx2", "avx512_bf16"} <= flags and "amx_bf16" not in flags
    assert reported_flags(flags) == "avx2 avx512f avx512_bf16"
    assert cpu_flags(tmp_path / "missing") == frozenset()
    assert reported_flags(frozenset()).startswith("none of avx2/")
