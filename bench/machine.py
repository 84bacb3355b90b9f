"""The machine line every benchmark table starts with: CPU model, the SIMD features that change kernel choice, cores."""
from __future__ import annotations

import os
import platform
from pathlib import Path

FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16")


def describe_cpu() -> str:
    """E.g. ``AMD EPYC (avx2, no avx512f ...), 2 cores``: CPUs differ between machines, so every table says which."""
    model, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
            if flags and model:
                break
    features = ", ".join(f if f in flags else f"no {f}" for f in FLAGS)
    return f"{model} ({features}), {os.cpu_count()} cores"
