"""The machine line every benchmark table starts with: CPU model, the SIMD features that change kernel choice, cores."""
from __future__ import annotations

import os
import platform
from pathlib import Path

FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16")


def cpu_info() -> dict[str, str]:
    """The first processor's /proc/cpuinfo fields (empty where there is none)."""
    out: dict[str, str] = {}
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if not line.strip():
                break
            key, _, value = line.partition(":")
            out[key.strip()] = value.strip()
    return out


def read_bandwidth_gbs(gigabytes: float = 1.0, repeats: int = 5) -> float:
    """Memory read bandwidth as this process sees it (median GB/s of summing a buffer far larger than the caches):
    the floor a memory-bound decoding step is compared with."""
    import statistics
    import time

    import torch

    buf = torch.ones(int(gigabytes * 1e9 / 4))
    buf.sum()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        buf.sum()
        times.append(time.perf_counter() - t)
    return gigabytes / statistics.median(times)


def describe_cpu() -> str:
    """E.g. ``AMD EPYC (avx2, no avx512f ...), 2 cores``: CPUs differ between machines, so every table says which."""
    info = cpu_info()
    model, flags = info.get("model name") or platform.processor() or platform.machine(), set(info.get("flags", "").split())
    features = ", ".join(f if f in flags else f"no {f}" for f in FLAGS)
    return f"{model} ({features}), {os.cpu_count()} cores"
