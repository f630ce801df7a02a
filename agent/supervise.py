"""The wrappers every capture and delivery loop shares: retry with backoff, stall watch.

Nothing but a stop request ends a loop: an unreachable source or sink, a full disk under
the local queue, or an error nobody foresaw is retried with capped exponential backoff
(tenacity's wait strategy) and shown in ``status`` with the time of the next attempt. The
cap is what bounds recovery: once the other side is back, work resumes within one cap.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Optional

from tenacity import wait_exponential, wait_random

__all__ = ["Backoff", "RETRY_CAP_S", "StallWatch"]

# Capture resumes within ~10 s of a source coming back (issue: 40 s with a 60 s cap).
RETRY_CAP_S = 10.0


class _Attempt:
    """The one attribute tenacity's wait strategies read."""

    def __init__(self, attempt_number: int):
        self.attempt_number = attempt_number


class Backoff:
    """Delays for consecutive failures: ``initial``, doubling, plus jitter, at most ``cap``."""

    def __init__(self, initial: float = 1.0, cap: float = RETRY_CAP_S):
        jitter = min(1.0, initial)      # spreads many agents reconnecting to one server
        self._wait = wait_exponential(multiplier=initial, max=cap - jitter) + wait_random(0, jitter)
        self.failures = 0
        self.next_attempt_at: Optional[float] = None     # wall clock, for status

    def failed(self) -> float:
        """One more failure: the delay before the next attempt."""
        self.failures += 1
        delay = self._wait(_Attempt(self.failures))
        self.next_attempt_at = time.time() + delay
        return delay

    def succeeded(self) -> None:
        self.failures, self.next_attempt_at = 0, None


class StallWatch:
    """Says so while one call takes longer than ``after`` seconds: a write waiting for a
    destination that does not answer (librdkafka retries by itself, a table lock holds an
    insert), so that ``status`` shows the wait while it lasts, and for how long.

    ``report(seconds_so_far, what)`` runs on the watch's thread after ``after`` seconds,
    then every ``every`` seconds while the call goes on.
    """

    def __init__(self, after: float, report: Callable[[float, Any], None], stop: threading.Event,
                 name: str, every: float = 5.0):
        self.after, self.report, self.every = after, report, every
        self._stop, self._name = stop, name
        self._current: Optional[tuple[float, Any]] = None
        self._started = threading.Lock()
        self._thread: Optional[threading.Thread] = None

    @contextmanager
    def watching(self, what: Any):
        # Started by the first watched call, whoever makes it: the start-up drain runs
        # before the delivery loop, and a write blocked there must show in status too.
        with self._started:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, args=(self._stop,), name=self._name, daemon=True)
                self._thread.start()
        self._current = (time.monotonic(), what)
        try:
            yield
        finally:
            self._current = None

    def _run(self, stop: threading.Event) -> None:
        reported: Optional[tuple] = None      # (the call, when it was last reported)
        while not stop.wait(1.0):
            current, now = self._current, time.monotonic()
            if current is None or now - current[0] < self.after:
                continue
            if reported is not None and reported[0] is current and now - reported[1] < self.every:
                continue
            reported = (current, now)
            try:
                self.report(now - current[0], current[1])
            except Exception:   # status is best effort (a full disk): keep watching
                pass
