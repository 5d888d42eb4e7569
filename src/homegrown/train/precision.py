"""Which autocast dtype a training run uses, decided by a rule on the hardware, not by a timing.

`train.dtype=auto` used to time a bf16 and an fp32 matmul at start-up and pick the faster: on a shared CPU
that probe flipped between runs (one `make run` pretrained in fp32 and fine-tuned in bf16). The choice is now a
pure function of the device and the CPU's flags, so the same machine always makes the same choice, and the
run records which one and why.

On CPUs the rule is fp32 even where bf16 is native (AVX-512 BF16 / AMX). bf16 autocast's quality cost at the
`small` size is measured and small (+0.0007 bits/byte at equal steps, benchmarks/RESULTS.md "Recipe ablations"),
but what it buys in a wall-clock budget with two threads is not yet, and a default should change on a measured
win only. Without native bf16 the CPU emulates it hundreds of times slower, so fp32 is right there regardless.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from homegrown.errors import HomegrownError

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
"""/proc/cpuinfo flags of x86 CPUs that run bf16 matmuls in hardware."""
REPORTED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
"""The flags a run (and a benchmark figure) records: what decides how fast each dtype is here."""


@dataclass(frozen=True)
class DtypeChoice:
    autocast: torch.dtype | None
    """The autocast dtype, or None for plain fp32."""
    reason: str
    """Why, in one line: what the run log and the checkpoint's train_info.json say."""

    @property
    def name(self) -> str:
        return "bf16" if self.autocast == torch.bfloat16 else "fp32"


@functools.cache
def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags (Linux x86); empty where /proc/cpuinfo does not list them."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def reported_flags(flags: frozenset[str]) -> str:
    """The flags that matter for speed, as `avx2 avx512_bf16 amx_bf16` (or `none of avx2/…`)."""
    present = [f for f in REPORTED_FLAGS if f in flags]
    return " ".join(present) if present else f"none of {'/'.join(REPORTED_FLAGS)}"


def choose_dtype(requested: str, device_type: str, flags: frozenset[str]) -> DtypeChoice:
    """The rule: explicit `fp32`/`bf16` as asked; `auto` = bf16 on CUDA, fp32 on CPUs (see the module docstring)."""
    if requested == "fp32":
        return DtypeChoice(None, "train.dtype=fp32")
    if requested == "bf16":
        return DtypeChoice(torch.bfloat16, "train.dtype=bf16")
    if requested != "auto":
        raise HomegrownError(f"train.dtype must be auto, bf16 or fp32, not {requested!r}")
    if device_type == "cuda":
        return DtypeChoice(torch.bfloat16, "auto: bf16 on CUDA")
    native = [f for f in NATIVE_BF16_FLAGS if f in flags]
    if native:
        return DtypeChoice(None, f"auto: fp32 — this CPU has native bf16 ({' '.join(native)}); bf16 autocast's "
                                 "quality cost is small (+0.0007 bits/byte at equal steps) but its gain in a budget "
                                 "is not yet measured")
    return DtypeChoice(None, f"auto: fp32 — this CPU has no native bf16 ({reported_flags(flags)}), bf16 would be "
                             "emulated")


def run_dtype(requested: str, device: torch.device) -> DtypeChoice:
    """`choose_dtype` for this machine."""
    return choose_dtype(requested, device.type, cpu_flags() if device.type == "cpu" else frozenset())
