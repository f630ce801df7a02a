"""Progress of a file being read: rows, rows per second and % of bytes, for ``status``
(through ``context.report_progress``) and, every ``log_every`` seconds, the log."""
from __future__ import annotations

import logging
import time


class Progress:
    """Rows read, rows/s and % of bytes, for ``status`` and (every few seconds) the log."""

    def __init__(self, name: str, phase: str, size: int, log: logging.Logger, log_every: float, report):
        self.name, self.phase, self.size = name, phase, size
        self.log, self.log_every, self.report = log, log_every, report
        self.started = self._last_log = time.monotonic()
        self._last_report = float("-inf")   # status shows the file from its first rows on
        self.rows = 0
        self.bytes = 0

    def snapshot(self) -> dict:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        return {"file": self.name, "phase": self.phase, "rows_read": self.rows,
                "rows_per_s": round(self.rows / elapsed, 1),
                "bytes_pct": round(100.0 * self.bytes / self.size, 1) if self.size else 100.0}

    def tick(self, rows: int, bytes_read: int, push: bool = True) -> None:
        self.rows, self.bytes = rows, bytes_read
        now = time.monotonic()
        if now - self._last_log >= self.log_every:
            self._last_log = now
            p = self.snapshot()
            self.log.info("file %s (%s): %d rows read, %.0f rows/s, %.1f%% of bytes", self.name, self.phase,
                          p["rows_read"], p["rows_per_s"], p["bytes_pct"])
        if push and now - self._last_report >= 1.0:
            self._last_report = now
            self.report(self.snapshot())
