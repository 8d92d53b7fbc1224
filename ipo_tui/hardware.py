"""What this machine computes natively, read at run time: choices follow the hardware, never a
constant measured on one machine.

CPU flags come from /proc/cpuinfo (Linux); elsewhere the set is empty and every choice takes its
safe side (fp32, llama.cpp's defaults).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from ipo_tui.errors import IpoError

AMX = frozenset({"amx_tile", "amx_int8", "amx_bf16"})
NATIVE_BF16 = ("amx_bf16", "avx512_bf16")  # instructions that compute bf16 dot products in hardware
SHOWN = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")  # the flags a figure's machine is named by


@functools.cache
def cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def has_amx() -> bool:
    return bool(AMX & cpu_flags())


def cpu_bf16() -> str | None:
    """The flag through which this CPU computes bf16 natively, or None (then bf16 is emulated, ~10x slower)."""
    return next((flag for flag in NATIVE_BF16 if flag in cpu_flags()), None)


def describe_cpu() -> str:
    """One line naming the CPU and its relevant flags, for records and benchmark output."""
    name = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    flags = " ".join(flag for flag in SHOWN if flag in cpu_flags()) or "no avx2"
    return f"{name or 'CPU'}, {os.cpu_count()} cores, {flags}"


def training_dtype(requested: str | None, cuda: bool, cuda_bf16: bool) -> tuple[str, str]:
    """(dtype, why) for LoRA training: bf16 where the hardware computes it, else fp16 on a GPU, fp32 on a CPU.
    `requested` (fp32, bf16, fp16, or None/auto) overrides."""
    if requested not in (None, "auto"):
        if requested not in ("fp32", "bf16", "fp16"):
            raise IpoError(f"--dtype {requested}: choose auto, fp32, bf16 or fp16")
        if requested == "fp16" and not cuda:
            raise IpoError("--dtype fp16 trains on a GPU only; on a CPU choose bf16 or fp32")
        return requested, "asked for with --dtype"
    if cuda:
        return ("bf16", "the GPU computes bf16") if cuda_bf16 else ("fp16", "the GPU lacks bf16; fp16 mixed precision")
    flag = cpu_bf16()
    if flag:
        return "bf16", f"the CPU computes bf16 natively ({flag})"
    return "fp32", "the CPU has no native bf16 (no avx512_bf16 or amx_bf16): bf16 would be emulated, far slower"
