"""Which autocast dtype a training run uses, decided by a rule on the hardware, not by a timing.

`train.dtype=auto` used to time a bf16 and an fp32 matmul at start-up and pick the faster: on a shared CPU
that probe flipped between runs (one `make run` pretrained in fp32 and fine-tuned in bf16). The choice is now a
pure function of the device and the CPU's flags, so the same machine always makes the same choice, and the
run records which one and why.

On CPUs with AMX (`amx_bf16`) the rule is bf16 autocast: there, at `small`'s 10-minute budget, it trained 1,896
steps against fp32's 1,435 and reached 1.302 vs 1.322 whole-val bits/byte (`benchmarks/dtype_quality.py --minutes
10`; at equal steps its quality cost was +0.0007 — benchmarks/RESULTS.md). With AVX-512 BF16 but no AMX the gain
is not measured, so fp32 stays; without native bf16 the CPU emulates it hundreds of times slower, so fp32 is
right there regardless.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from homegrown.errors import HomegrownError

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
    """The rule: explicit `fp32`/`bf16` as asked; `auto` = bf16 on CUDA and on AMX CPUs, fp32 on other CPUs (see
    the module docstring)."""
    if requested == "fp32":
        return DtypeChoice(None, "train.dtype=fp32")
    if requested == "bf16":
        return DtypeChoice(torch.bfloat16, "train.dtype=bf16")
    if requested != "auto":
        raise HomegrownError(f"train.dtype must be auto, bf16 or fp32, not {requested!r}")
    if device_type == "cuda":
        return DtypeChoice(torch.bfloat16, "auto: bf16 on CUDA")
    if "amx_bf16" in flags:
        return DtypeChoice(torch.bfloat16, "auto: bf16 — this CPU has AMX (amx_bf16): at the 10-minute budget bf16 "
                                           "autocast bought 1.32x the steps and 0.019 fewer bits/byte than fp32")
    if "avx512_bf16" in flags:
        return DtypeChoice(None, "auto: fp32 — this CPU has AVX-512 BF16 but no AMX, where bf16 autocast's gain is "
                                 "not measured")
    return DtypeChoice(None, f"auto: fp32 — this CPU has no native bf16 ({reported_flags(flags)}), bf16 would be "
                             "emulated")


def run_dtype(requested: str, device: torch.device) -> DtypeChoice:
    """`choose_dtype` for this machine."""
    return choose_dtype(requested, device.type, cpu_flags() if device.type == "cpu" else frozenset())
