"""The prepared GPU script runs its CPU fallback end to end (no GPU is lent to CI): every path it times on a GPU
runs here on the tiny preset, DeepSpeed ZeRO-2 included, and the table it prints holds each row once."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_script_runs_its_cpu_fallback() -> None:
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    env = {**os.environ, "PYTHON": sys.executable, "REPEATS": "1"}
    out = subprocess.run(["bash", str(ROOT / "bench/gpu.sh")], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    table = out.stdout
    assert "no GPU: the CPU fallback (tiny preset)" in table
    for row in ("text query, 1 prompt x 20 tokens", "full report, 29 x 20 tokens", "detect train step, ZeRO-2 fp32",
                "generate train step, ZeRO-2 fp32"):
        line = next(x for x in table.splitlines() if x.startswith(row))
        ms = float(re.search(r"([\d.]+)ms", line).group(1))
        assert 0 < ms < 60_000, line
