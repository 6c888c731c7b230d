"""What a person reads while a job runs: moaa's own lines on the console, everything else in the run folder.

A job started from the command line (``moaa.core.config.parse_cli``) calls ``setup``; from then on

- moaa's lines go to the console as they are: each stage's start and end, warnings that need the user, the
  final table; one live progress line per running stage (``Progress``: rows or steps done of total, tokens/s,
  elapsed, ETA), redrawn in place in a terminal and printed every ``MOAA_PROGRESS_S`` seconds (default 60)
  elsewhere (CI, ``> log``), never Ray Data's operator dumps;
- Ray's, Ray Data's, Ray Train's, transformers' and vLLM's logs go to ``<run>/logs/<time>-<job>/``:
  ``driver.log`` (this process: Python loggers, warnings, the native lines Ray's core worker writes to file
  descriptor 2) and ``ray/`` (Ray's session logs: every engine actor's and training worker's output; a link
  while the job runs, copied there when it ends if the job started that Ray itself, a link to a cluster's,
  which hold every job's). One printed line says where. ``verbose=true`` (or ``--verbose``) leaves every log
  on the console, as Ray prints it.

An error that ends the job is still printed in full (Python's tracebacks go to the console's stderr, and a
remote task's error is raised in the driver with its traceback), followed by the line saying where the logs
are. Nothing is written until the job has work to do (``start_ray``): a rerun of finished work writes none.
Library calls (tests, notebooks) that never call ``setup`` print as before.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass

# Loggers whose console output is moved to driver.log (their records still reach the file).
NOISY_LOGGERS = (
    "ray",
    "ray.data",
    "ray.train",
    "ray.tune",
    "ray.util",
    "vllm",
    "transformers",
    "datasets",
    "huggingface_hub",
    "torch",
    "py.warnings",
    "urllib3",
    "botocore",
    "filelock",
)
DEFAULT_PROGRESS_S = 60.0


@dataclass
class _State:
    quiet: bool = False  # setup() ran without verbose: logs go to the run folder
    log_dir: str | None = None  # <run>/logs/<time>-<job> (created when Ray starts)
    started: bool = False  # ray_started() ran: the log folder exists
    handler: logging.Handler | None = None  # driver.log


_state = _State()


def log_root(runs_dir: str, run_id: str) -> str:
    """Where a run's logs go: ``<run>/logs`` for a local run folder; for one in object storage (which cannot
    be appended to), this machine's ``$MOAA_CACHE/logs/<run_id>`` (default ``~/.cache/moaa``)."""
    if "://" in runs_dir:
        cache = os.environ.get("MOAA_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "moaa")
        return os.path.join(cache, "logs", run_id)
    return os.path.join(os.path.abspath(runs_dir), run_id, "logs")


class _LazyFileHandler(logging.FileHandler):
    """Appends to driver.log, creating its folder on the first record (so a job with nothing to do writes
    nothing unless something is logged)."""

    def emit(self, record: logging.LogRecord) -> None:
        os.makedirs(os.path.dirname(self.baseFilename), exist_ok=True)
        super().emit(record)


def setup(runs_dir: str, run_id: str, job: str, verbose: bool) -> None:
    """Quiet the console for a command-line job (see the module docstring); with ``verbose``, nothing is
    changed and Ray prints as it does."""
    if verbose or _state.quiet:
        return
    stamp = time.strftime("%Y%m%d-%H%M%S")
    _state.log_dir = os.path.join(log_root(runs_dir, run_id), f"{stamp}-{job.removeprefix('jobs.')}")
    _state.quiet = True
    # Progress bars of model conversion and saving (huggingface_hub, transformers) are not moaa's lines.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    import ray  # noqa: F401  (importing it attaches Ray's console handler, quieted below)

    _state.handler = _LazyFileHandler(os.path.join(_state.log_dir, "driver.log"), delay=True)
    _state.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    _state.handler.setLevel(logging.INFO)  # Ray Data's DEBUG records already go to Ray's ray-data.log
    logging.captureWarnings(True)
    _to_file(NOISY_LOGGERS)


def _to_file(names: tuple[str, ...]) -> None:
    """The loggers' records go to driver.log; their console handlers print nothing."""
    for name in names:
        logger = logging.getLogger(name)
        if _state.handler not in logger.handlers:
            logger.addHandler(_state.handler)
        logger.propagate = False
        for h in logger.handlers:
            if h is not _state.handler and not isinstance(h, logging.FileHandler):
                h.setLevel(logging.CRITICAL + 1)


def _quiet_ray_data() -> None:
    """Ray Data configures its loggers when imported (a console handler at INFO), and its progress manager
    logs an operator table every few seconds when stdout is not a terminal: both off the console."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    _to_file(("ray.data", "ray"))


def start_ray(address: str | None) -> None:
    """Start (or connect to) Ray for a job, once per process. When quiet, worker and actor output stays in
    Ray's session logs, which ``_ray_started`` links into the run folder."""
    import ray

    if not ray.is_initialized():
        # a Ray started here holds only this job's processes: its session logs are copied at exit
        own = address is None and not os.environ.get("RAY_ADDRESS")
        ray.init(address=address, log_to_driver=not _state.quiet)
        _ray_started(own)


def _ray_started(own: bool) -> None:
    """Called right after ``ray.init`` (work is about to be done): create the log folder, point file
    descriptor 2 (where Ray's core worker writes its native log lines) at driver.log while Python's
    ``sys.stderr`` stays on the terminal, link Ray's session logs, and say where they are."""
    if not _state.quiet or _state.started:
        return
    import ray

    _state.started = True
    _quiet_ray_data()
    os.makedirs(_state.log_dir, exist_ok=True)
    driver_log = os.path.join(_state.log_dir, "driver.log")
    sys.stdout.flush()
    sys.stderr.flush()
    terminal = os.dup(2)
    log_fd = os.open(driver_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    sys.stderr = os.fdopen(terminal, "w", buffering=1)
    session = _session_logs(ray)
    link = os.path.join(_state.log_dir, "ray")
    if session and not os.path.lexists(link):
        os.symlink(session, link)
        if own:  # a cluster's session logs hold every job's: they stay linked, not copied
            atexit.register(_copy_session_logs, session, link)
    print(f"[moaa] logs (Ray, Ray Data, Ray Train, vLLM): {_state.log_dir}  (verbose=true shows them here)")


def _session_logs(ray) -> str | None:
    try:
        return ray._private.worker._global_node.get_logs_dir_path()
    except AttributeError:  # connected to a cluster through Ray Client: its logs stay on the cluster
        return None


def _copy_session_logs(session: str, link: str) -> None:
    """At exit: the link to Ray's session logs becomes a copy, so the run folder keeps them after Ray's
    temp folder is cleaned (a local Ray's session holds only this job's processes)."""
    try:
        os.unlink(link)
        shutil.copytree(session, link, symlinks=True, ignore_dangling_symlinks=True, dirs_exist_ok=True)
    except OSError:
        pass


def where_logs() -> str | None:
    """The log folder, once it exists (printed again after an error that ends the job)."""
    return _state.log_dir if _state.started else None


def _fmt_s(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Progress:
    """One progress line for a running stage: ``[stage] 12/24 rows, 1/2 shards, 451 tok/s, 0:32, ETA 0:20``.

    In a terminal it is redrawn in place (at most 5 times a second) and erased by ``close``; elsewhere a
    line is printed every ``MOAA_PROGRESS_S`` seconds (default 60), and none for a stage that ends sooner.
    ``start()`` adds a clock that redraws it while nothing new arrives (a long first batch, a slow step)."""

    def __init__(self, label: str, total: int, unit: str = "rows"):
        self.label, self.total, self.unit = label, max(total, 0), unit
        self.t0 = self.last = time.time()
        self.tty = sys.stdout.isatty()
        self.interval = 0.2 if self.tty else float(os.environ.get("MOAA_PROGRESS_S", DEFAULT_PROGRESS_S))
        self.drawn = False
        self.done, self.extra, self.tokens = 0, "", None
        self._lock = threading.Lock()
        self._stop: threading.Event | None = None

    def line(self, done: int, extra: str = "", tokens: int | None = None) -> str:
        elapsed = time.time() - self.t0
        parts = [f"[{self.label}] {done}/{self.total} {self.unit}"]
        if extra:
            parts.append(extra)
        if tokens and elapsed > 0:
            parts.append(f"{tokens / elapsed:.0f} tok/s")
        parts.append(_fmt_s(elapsed))
        if 0 < done < self.total:
            parts.append(f"ETA {_fmt_s(elapsed / done * (self.total - done))}")
        return ", ".join(parts)

    def update(self, done: int, extra: str = "", tokens: int | None = None) -> None:
        self.done, self.extra, self.tokens = done, extra, tokens
        self._draw()

    def _draw(self) -> None:
        with self._lock:
            now = time.time()
            if self._stop is not None and self._stop.is_set():
                return
            if now - self.last < self.interval or (not self.tty and self.done >= self.total > 0):
                return  # a log file gets no 100% line: the stage's end line follows at once
            self.last = now
            text = self.line(self.done, self.extra, self.tokens)
            if self.tty:
                sys.stdout.write("\r\x1b[2K" + text)
                sys.stdout.flush()
                self.drawn = True
            else:
                print(text, flush=True)

    def start(self) -> Progress:
        self._stop = threading.Event()

        def tick() -> None:
            while not self._stop.wait(min(self.interval, 1.0)):
                self._draw()

        threading.Thread(target=tick, daemon=True).start()
        return self

    def close(self) -> None:
        if self._stop is not None:
            self._stop.set()
        with self._lock:
            if self.drawn:
                sys.stdout.write("\r\x1b[2K")
                sys.stdout.flush()
                self.drawn = False
