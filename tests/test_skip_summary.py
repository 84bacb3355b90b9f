"""`make test` ends with what it did not cover: the skipped tests counted by reason (tests/conftest.py)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SAMPLE = '''
import pytest

@pytest.mark.parametrize("k", [1, 2])
def test_needs_widget(k):
    pytest.skip("no widget here")

@pytest.mark.skip(reason="no gadget here")
def test_needs_gadget():
    pass

def test_runs():
    assert True

@pytest.mark.slow
def test_slow():
    pass
'''


def test_run_ends_with_skips_counted_by_reason(tmp_path):
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    slow: slow\n")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-ra", "-m", "not slow", "-p", "tests.conftest",
                          "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.strip().splitlines()
    head = next(i for i, line in enumerate(lines) if "not covered: 3 skipped, 1 deselected" in line)
    assert [line.strip() for line in lines[head + 1:-1]] == ["2 skipped: no widget here", "1 skipped: no gadget here"]
    assert lines[-1].startswith("1 passed, 3 skipped, 1 deselected in ")  # pytest's own last line follows
    assert head > next(i for i, line in enumerate(lines) if "short test summary info" in line)
