"""Progress of long work (a snapshot, a big file): rows done of an estimated total, the
rate, the time left, for the log (every ``LOG_EVERY`` seconds), ``status`` and the page.

Sources report ``{"phase": ..., "rows": N, "total": estimate or None, "done": bool}`` with
each batch (``SourceBatch.progress``); ``ProgressWatch`` adds the rate and ETA measured
here, so every adapter gets the same numbers without measuring time itself. Pure apart
from the clock it is given.
"""
from __future__ import annotations

from typing import Optional

__all__ = ["ProgressWatch", "describe", "LOG_EVERY"]

LOG_EVERY = 10.0     # seconds between progress lines: a 300k-row snapshot said nothing for 58 s


class ProgressWatch:
    """One route's long work: when it began, and when it was last logged."""

    def __init__(self):
        self._phase: Optional[str] = None
        self._began: tuple[float, int] = (0.0, 0)     # (time, rows) when this phase was first seen
        self._logged_at: float = 0.0

    def enrich(self, progress: dict, now: float) -> dict:
        """``progress`` with ``rate_per_s``, ``eta_s`` and ``percent`` (when it has rows)."""
        rows = progress.get("rows")
        if not isinstance(rows, (int, float)):
            return progress
        if progress.get("phase") != self._phase or rows < self._began[1]:
            self._phase, self._began, self._logged_at = progress.get("phase"), (now, rows), now
        elapsed, done_here = now - self._began[0], rows - self._began[1]
        rate = done_here / elapsed if elapsed > 0 and done_here > 0 else None
        total = progress.get("total")
        enriched = {**progress, "rate_per_s": None if rate is None else round(rate, 1)}
        if isinstance(total, (int, float)) and total > 0:
            # an estimate (table statistics) can be below what was read: never past 100 %
            enriched["percent"] = round(min(100.0, 100.0 * rows / total), 1)
            if rate and not progress.get("done"):
                enriched["eta_s"] = round(max(0.0, total - rows) / rate, 1)
        return enriched

    def due(self, progress: dict, now: float) -> bool:
        """Whether to log this progress now: every LOG_EVERY seconds, and when it finishes."""
        if progress.get("done") or now - self._logged_at >= LOG_EVERY:
            self._logged_at = now
            return "rows" in progress
        return False


def describe(progress: Optional[dict]) -> Optional[str]:
    """'snapshot: 120,000 of ~300,000 rows (40.0 %), 5,100 rows/s, about 35s left'."""
    if not progress or not isinstance(progress.get("rows"), (int, float)):
        return None
    total = progress.get("total")
    text = f"{progress.get('phase') or 'reading'}: {progress['rows']:,}"
    text += f" of ~{total:,} rows" if isinstance(total, (int, float)) and total else " rows"
    if progress.get("percent") is not None:
        text += f" ({progress['percent']:.1f} %)"
    if progress.get("done"):
        return text + ", done"
    if progress.get("rate_per_s"):
        text += f", {progress['rate_per_s']:,.0f} rows/s"
    if progress.get("eta_s") is not None:
        seconds = progress["eta_s"]
        text += f", about {seconds:.0f}s left" if seconds < 120 else f", about {seconds / 60:.0f} min left"
    return text
