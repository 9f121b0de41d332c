"""Logging and progress lines for long loops (epoch, batch, images/s) that land in rule logs."""

from __future__ import annotations

import logging
import sys
import time

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(log_file: str | None = None, level: int = logging.INFO) -> logging.Logger:
    """Send the ``featdyn`` logger (and warnings) to ``log_file`` or stderr; return it."""
    handler: logging.Handler
    handler = logging.FileHandler(log_file, mode="a") if log_file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%H:%M:%S"))
    root = logging.getLogger("featdyn")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    logging.captureWarnings(True)
    warn_logger = logging.getLogger("py.warnings")
    warn_logger.handlers[:] = [handler]
    return root


class Progress:
    """Rate-limited progress reporting: at most one line every ``every_s`` seconds, plus the last.

    Reports the step, the total, items per second since the start, and any extra fields.
    """

    def __init__(self, logger: logging.Logger, what: str, total: int, unit: str = "img",
                 every_s: float = 5.0) -> None:
        self.logger, self.what, self.total, self.unit, self.every_s = logger, what, total, unit, every_s
        self.start = time.perf_counter()
        self.last = self.start
        self.items = 0

    def update(self, step: int, items: int, **fields: float | str) -> None:
        """Record that ``items`` more were processed at step ``step`` (1-based)."""
        self.items += items
        now = time.perf_counter()
        if now - self.last >= self.every_s or step == self.total:
            self.last = now
            rate = self.items / max(now - self.start, 1e-9)
            extra = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                             for k, v in fields.items())
            self.logger.info("%s %d/%d %s %.1f %s/s", self.what, step, self.total, extra, rate, self.unit)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def job_setup(log_file: str, threads: int | None = None, name: str = "featdyn") -> logging.Logger:
    """Start a workflow job: stderr and the ``featdyn`` logger go to ``log_file``; torch (if it is
    imported) uses ``threads`` threads. Returns the job's logger."""
    sys.stderr = open(log_file, "a", buffering=1)  # noqa: SIM115 - lives as long as the job
    setup_logging(None)
    if threads is not None and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(max(1, int(threads)))
    return logging.getLogger(f"featdyn.{name}")
