"""The retry policy every capture and delivery loop shares.

Nothing but a stop request ends a loop: an unreachable source or sink, a full disk under
the local queue, or an error nobody foresaw is retried with capped exponential backoff
(tenacity's wait strategy) and shown in ``status`` with the time of the next attempt. The
cap is what bounds recovery: once the other side is back, work resumes within one cap.
"""
from __future__ import annotations

import time
from typing import Optional

from tenacity import wait_exponential, wait_random

__all__ = ["Backoff", "RETRY_CAP_S"]

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
