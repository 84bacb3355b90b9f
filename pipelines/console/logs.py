"""The quiet console and the per-stage log files.

The console gets the progress display, our own warnings and errors, and a known library warning that matters to the
user once, in our words (:mod:`pipelines.console.reworded`). Everything else (Ray's, MLflow's, DeepSpeed's and
transformers' own logs, worker output Ray forwards to the driver, anything printed) goes to the log file of the
stage that runs: ``<workdir>/logs/<stage>.log``. ``-v`` shows it all on the console as well.

A log file takes over file descriptors 1 and 2 (so C extensions and child processes land there too) and
``sys.stdout`` / ``sys.stderr`` (Ray prints forwarded worker lines to whatever they are at the time); the console
keeps a duplicate of the original descriptors. Library loggers that write to the standard streams themselves (Ray's,
MLflow's) propagate to the root logger while a log file is open, so their records carry their level and name there.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from pipelines.console.display import Display
from pipelines.console.reworded import Reworder
from pipelines.redact import RedactFilter

OURS = ("pipelines", "evaluation", "chex_model", "preprocessing", "infra", "__main__")
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_name(stage: str) -> str:
    """``train:detection`` -> ``train-detection.log`` (a name every shell and file system takes as it is)."""
    return stage.replace(":", "-").replace("/", "-") + ".log"


class ConsoleFilter(logging.Filter):
    """Our records from ``ours``; a library's from ``others`` (None: only as our rewording, once); everything when
    verbose. A record marked ``console=False`` is for the log file only."""

    def __init__(self, ours: int, others: int | None, verbose: bool, reworder: Reworder) -> None:
        super().__init__()
        self.ours, self.others, self.verbose, self.reworder = ours, others, verbose, reworder

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "console", True):
            return False
        if self.verbose:
            return record.levelno >= logging.INFO
        if record.name.split(".")[0] in OURS:
            return record.levelno >= self.ours
        self.reworder.check(record)
        return self.others is not None and record.levelno >= self.others


def _duplicate(stream: TextIO, fd: int) -> TextIO:
    """A console stream that outlives redirection of ``fd``: a duplicate of it when ``stream`` writes to it, else
    ``stream`` itself (a test's capture object)."""
    try:
        if stream.fileno() == fd:
            stream.flush()
            return open(os.dup(fd), "w", buffering=1, encoding=getattr(stream, "encoding", None) or "utf-8",
                        errors="replace")
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        pass
    return stream


class Session:
    """One command's console: ``out`` (display, results), ``err`` (our warnings), the display, and the log files."""

    def __init__(self, verbose: bool, ours: int, others: int | None) -> None:
        self.verbose = verbose
        self.out, self.err = _duplicate(sys.stdout, 1), _duplicate(sys.stderr, 2)
        self.reworder = Reworder(self.err)
        self.console = logging.StreamHandler(self.err)
        self.console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.console.addFilter(ConsoleFilter(ours, others, verbose, self.reworder))
        self.console.addFilter(RedactFilter())
        self.display = Display(self.out)
        self.files: list[logging.Handler] = []
        self.log_dir: Path | None = None

    @contextlib.contextmanager
    def log_to(self, path: Path) -> Iterator[Path]:
        """While the block runs, library logs and all output of this process go to ``path`` (appended)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", buffering=1, encoding="utf-8", errors="replace") as f:
            f.write(f"===== {time.strftime('%Y-%m-%d %H:%M:%S')} =====\n")
            handler = logging.StreamHandler(f)
            handler.setFormatter(logging.Formatter(FILE_FORMAT))
            handler.addFilter(RedactFilter())
            root = logging.getLogger()
            outer = self.files[-1] if self.files else None
            if outer is not None:
                root.removeHandler(outer)
            root.addHandler(handler)
            self.files.append(handler)
            try:
                with contextlib.nullcontext() if self.verbose else self._redirected(f):
                    yield path
            finally:
                self.files.pop()
                root.removeHandler(handler)
                if outer is not None:
                    root.addHandler(outer)

    @contextlib.contextmanager
    def _redirected(self, f: TextIO) -> Iterator[None]:
        """fds 1 and 2 and ``sys.stdout`` / ``sys.stderr`` to ``f``; loggers with their own console handlers adopted.
        ``sys.stdout`` / ``sys.stderr`` become routers that outlive ``f``: a handler a library creates meanwhile
        keeps a stream that stays valid after the file is closed."""
        for s in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                s.flush()
        saved = os.dup(1), os.dup(2)
        streams = sys.stdout, sys.stderr
        if not isinstance(sys.stdout, _Router):
            sys.stdout, sys.stderr = _Router(sys.stdout, 1), _Router(sys.stderr, 2)
        targets = sys.stdout.target, sys.stderr.target
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        sys.stdout.target = sys.stderr.target = f
        adopted = _adopt_console_loggers(streams, self.console)
        try:
            yield
        finally:
            for logger, handler, propagate in adopted:
                logger.addHandler(handler)
                logger.propagate = propagate
            sys.stdout.target, sys.stderr.target = targets
            if not isinstance(streams[0], _Router):
                sys.stdout, sys.stderr = streams
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


class _Router(io.TextIOBase):
    """``sys.stdout`` / ``sys.stderr`` during a redirection: writes go to the current target."""

    def __init__(self, target: TextIO, fd: int) -> None:
        self.target, self.fd = target, fd

    def write(self, s: str) -> int:
        return self.target.write(s)

    def flush(self) -> None:
        self.target.flush()

    def fileno(self) -> int:
        return self.fd

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:
        return "utf-8"


def _adopt_console_loggers(streams: tuple[TextIO, TextIO], keep: logging.Handler
                           ) -> list[tuple[logging.Logger, logging.Handler, bool]]:
    """Detach handlers that write to the standard streams from every logger (Ray and MLflow install their own) and
    let those loggers propagate to the root, whose handler is the log file; returns what to restore."""
    std = {id(s) for s in (*streams, sys.__stdout__, sys.__stderr__)}
    adopted = []
    loggers = [logging.getLogger()] + [lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    for logger in loggers:
        for h in list(logger.handlers):
            if (h is not keep and isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
                    and id(getattr(h, "stream", None)) in std):
                adopted.append((logger, h, logger.propagate))
                logger.removeHandler(h)
                logger.propagate = True
    return adopted


@contextlib.contextmanager
def console_session(verbose: bool = False, ours: int = logging.INFO, others: int | None = logging.WARNING
                    ) -> Iterator[Session]:
    """The console of one command: root logging at INFO into the console filter (and the log files a pipeline run
    opens), warnings captured into logging, and the progress display. ``ours`` / ``others``: the levels from which
    our records and libraries' are shown (``others`` None: never, they belong in the log files)."""
    root = logging.getLogger()
    saved = root.level
    session = Session(verbose, ours, others)
    root.setLevel(logging.INFO)
    root.addHandler(session.console)
    logging.captureWarnings(True)
    try:
        with session.display:
            yield session
    finally:
        logging.captureWarnings(False)
        root.removeHandler(session.console)
        root.setLevel(saved)
        for s in (session.out, session.err):
            if s not in (sys.stdout, sys.stderr):
                s.close()
