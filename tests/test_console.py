"""The run's console piece by piece: rate and ETA of a progress row against hand arithmetic, the plain lines (never bar
fragments), the live display on a terminal, per-stage log files catching everything a process and its children
print, our rewording of a library warning (once), the training progress relay through a real Ray queue, and the
evaluation runner reporting under its task."""
from __future__ import annotations

import io
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipelines.console.display import Display
from pipelines.console.rows import Row, clock
from preprocessing.progress import LOGGER, Progress, report, track

REPO = Path(__file__).resolve().parents[1]


def test_row_rate_and_eta_are_the_recent_slope():
    row = Row("train:detection")
    for t, done in ((100.0, 10), (102.0, 20), (104.0, 40)):
        row.update(Progress("t", done, 100, "step"), now=t)
    slope = (40 - 10) / (104.0 - 100.0)  # steps per second over the window
    assert row.rate() == pytest.approx(slope)
    assert row.eta() == pytest.approx((100 - 40) / slope)
    row.update(Progress("t", 5, 100, "step"), now=105.0)  # a new phase restarts the count: no stale slope
    assert row.rate() is None and row.eta() is None
    given = Row("x")
    given.update(Progress("t", 3, 10, "step", {"loss": 1.5}, rate=64.0, rate_unit="samples"), now=1.0)
    assert "64 samples/s" in given.info() and "loss 1.5" in given.info() and "step 3/10" in given.info()
    assert [clock(s) for s in (4.25, 75, 3725)] == ["4.2 s", "1:15", "1:02:05"]


def test_plain_lines_carry_stage_states_heartbeats_and_no_bar_fragments():
    out = io.StringIO()
    with Display(out, live=False, interval=0.2) as display:
        display.stage_started("ingest")
        display.stage_finished("ingest", "skipped")
        display.stage_started("train:detection")
        for step in range(1, 6):
            report(Progress("detection", step, 5, "step", {"loss": 2.0 / step}, rate=10.0, rate_unit="samples"))
            time.sleep(0.12)
        display.stage_finished("train:detection", "done")
        display.stage_started("evaluate")
        for task in ("od_vindr", "rc_cig"):
            list(track(range(3), task, unit="batches", phase="detect"))
        display.stage_finished("evaluate", "done")
        display.stage_started("register")
        display.stage_finished("register", "failed")
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text  # plain lines only
    lines = text.splitlines()
    assert all(re.match(r"^\[[ 0-9.:s]+\] \S+: ", ln) for ln in lines)
    assert any(re.search(r"train:detection: running .* · step \d/5 · loss [0-9.]+ · 10 samples/s", ln) for ln in lines)
    assert re.search(r"train:detection: done in .* · step 5/5 · loss 0.4 · 10 samples/s$", text, re.M)
    assert "ingest: skipped (unchanged)" in text and "evaluate: done in" in text and "· 2 tasks" in text
    assert "register: FAILED" in text
    assert display not in LOGGER.handlers  # the display is gone with the block


def test_live_display_draws_in_place_on_a_terminal():
    out = io.StringIO()
    with Display(out, live=True) as display:
        display.stage_started("ingest")
        for n in range(0, 11, 5):
            report(Progress("ingest", n, 10, "rows", {"rejects": 1}))
        display.stage_finished("ingest", "done")
    text = out.getvalue()
    assert "ingest" in text and "10/10 rows · rejects 1" in text


def run_script(code: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, cwd=REPO, timeout=120)


SESSION = """
    import logging, os, subprocess, sys
    from pathlib import Path
    from pipelines.console.logs import console_session

    logs = Path(sys.argv[1])
    with console_session(verbose=sys.argv[2] == "-v", ours=logging.WARNING, others=None) as s:
        lib = logging.getLogger("ray.fake")  # a library logger with its own console handler, as Ray's
        lib.propagate = False
        lib.addHandler(logging.StreamHandler(sys.stderr))
        with s.log_to(logs / "pipeline.log"):
            logging.getLogger("pipelines.demo").info("our info line")
            with s.log_to(logs / "ingest.log"):
                print("printed by the stage")
                subprocess.run(["echo", "printed by a child process"])
                os.write(2, b"written to fd 2 by C code\\n")
                for _ in range(2):
                    lib.warning("Task was killed due to the node running low on memory")
                late = logging.getLogger("late.lib")  # configured during the stage, as Ray Data's logger is
                late.propagate = False
                late.addHandler(logging.StreamHandler())
                logging.getLogger("pipelines.demo").warning("our warning")
            late.warning("after the stage")
            lib.info("library info after the stage")
    print("console again")
"""


def test_stage_log_files_take_all_output_and_the_console_keeps_ours(tmp_path):
    proc = run_script(SESSION, tmp_path, str(tmp_path / "logs"), "-")
    assert proc.returncode == 0, proc.stderr
    ingest = (tmp_path / "logs" / "ingest.log").read_text()
    for said in ("printed by the stage", "printed by a child process", "written to fd 2 by C code",
                 "WARNING ray.fake: Task was killed", "WARNING pipelines.demo: our warning"):
        assert said in ingest
    pipeline = (tmp_path / "logs" / "pipeline.log").read_text()
    assert "INFO pipelines.demo: our info line" in pipeline and "INFO ray.fake: library info after" in pipeline
    assert "after the stage" in pipeline  # a handler made during the stage writes where output goes now
    assert proc.stdout == "console again\n"
    err = proc.stderr.splitlines()
    assert err.count("WARNING pipelines.demo: our warning") == 1
    reworded = [ln for ln in err if ln.startswith("warning: Ray killed a task or worker for lack of memory")]
    assert len(reworded) == 1 and not any("ray.fake" in ln or "our info" in ln for ln in err)


def test_verbose_shows_library_logs_on_the_console(tmp_path):
    proc = run_script(SESSION, tmp_path, str(tmp_path / "logs"), "-v")
    assert proc.returncode == 0, proc.stderr
    assert "printed by the stage" in proc.stdout and "library info after the stage" in proc.stderr
    assert "our info line" in proc.stderr
    assert "our info line" in (tmp_path / "logs" / "pipeline.log").read_text()  # the files get it all the same


def test_training_progress_reaches_the_display_through_a_ray_queue(ray_local):
    from pipelines.training.progress import SEND_EVERY_S, Sender, relayed

    out = io.StringIO()
    with Display(out, live=False, interval=60) as display:
        display.stage_started("train:detection")
        with relayed("detection", total=3) as queue:
            send = Sender(queue, total=3)
            send(1, 2.5, 32.0)
            send(2, 2.0, 32.0)  # within SEND_EVERY_S of the first: not sent
            send(3, 1.25, 40.0)  # the last step always is
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and (display.running()[1] is None
                                                   or display.running()[1].last.done < 3):
                time.sleep(0.1)
        display.stage_finished("train:detection", "done")
    assert SEND_EVERY_S >= 0.5
    assert re.search(r"train:detection: done in .* · step 3/3 · loss 1.25 · 40 samples/s", out.getvalue())


def test_evaluation_runner_reports_each_phase_under_its_task():
    from evaluation.runner import ModelRunner

    class Model:
        def eval(self):
            return self

    events = []

    class Catch(__import__("logging").Handler):
        def emit(self, record):
            events.append(record.chex_progress)

    runner = ModelRunner(Model(), batch_size=4)
    runner.task = "od_vindr"
    handler = Catch()
    LOGGER.addHandler(handler)
    try:
        slices = list(runner.batches(10, "detect vindr_cxr"))
    finally:
        LOGGER.removeHandler(handler)
    assert [(s.start, s.stop) for s in slices] == [(0, 4), (4, 8), (8, 10)]
    assert {e.task for e in events} == {"od_vindr"} and events[-1].final and events[-1].done == events[-1].total == 3
    assert events[0].fields == {"phase": "detect vindr_cxr"} and events[0].unit == "batches"
