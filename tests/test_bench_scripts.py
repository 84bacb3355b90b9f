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


def test_ingest_scale_plans_each_source_of_a_tiny_metadata_tree(tmp_path) -> None:
    """bench/ingest_scale.py writes a metadata-only tree at 0.2% of the releases and plans every source in its own
    process: records read are the tables' rows (754 MIMIC images, 36 VinDr, 224 NIH), planned ones the rendered
    sample (the MIMIC JPGs actually on disk)."""
    out = subprocess.run([sys.executable, str(ROOT / "bench/ingest_scale.py"), "--raw", str(tmp_path / "raw"),
                          "--scale", "0.002", "--studies", "3", "--image-scale", "0.05"],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {line[:26].strip(): line[26:].split() for line in out.stdout.splitlines()
            if line[:26].strip() in ("mimic_cxr (jpg + reports)", "vindr_cxr", "nih_cxr", "all sources")}
    jpgs = len(list((tmp_path / "raw").rglob("*.jpg")))
    read = {k: int(v[1].replace(",", "")) for k, v in rows.items()}
    assert read == {"mimic_cxr (jpg + reports)": 754, "vindr_cxr": 36, "nih_cxr": 224, "all sources": read["all sources"]}
    assert read["all sources"] > 754 + 36 + 224          # plus the MS-CXR images
    assert int(rows["mimic_cxr (jpg + reports)"][2]) == jpgs > 0
    for v in rows.values():
        assert float(v[4]) < 60 and float(v[5].replace(",", "")) > 100   # seconds, peak RSS in MB (imports alone > 100)
    assert "target (all sources < 120 s and < 4 GB driver RSS): met" in out.stdout
