"""What the Kafka client (librdkafka) logs, made readable for an operator.

During a broker outage librdkafka repeats the same error for every connection attempt
(~35 identical lines every 11 s, more with SASL failing), and some of its words mislead:
a frozen broker yields "probably due to broker version < 0.10". ``CollapseRepeats``, a
filter on the client's logger, lets the first line of a kind through with what to check,
holds back the same line for ``window`` seconds, and says how many it held back on the
next one it lets through. Lines of a kind are the same text with the numbers masked.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from typing import Callable, Optional

__all__ = ["CollapseRepeats", "advice", "attach"]

_NUMBERS = re.compile(r"\d+")

# (what librdkafka says, what the operator should check); the first match wins
_ADVICE = (
    ("probably due to broker version < 0.10",
     "the broker closed the connection without answering: it is frozen or overloaded, or "
     "fabric.kafka security.protocol does not match its listener (TLS or SASL expected), not an old broker"),
    ("SASL authentication", "the broker refused the credentials: check sasl.username, sasl.password and "
                            "sasl.mechanism(s) in fabric.kafka"),
    ("Authentication failed", "the broker refused the credentials: check sasl.username, sasl.password and "
                              "sasl.mechanism(s) in fabric.kafka"),
    ("certificate verify failed", "TLS: the broker's certificate is not trusted; set ssl.ca.location in "
                                  "fabric.kafka to the CA that signed it"),
    ("SSL handshake failed", "TLS handshake failed: check security.protocol and ssl.* in fabric.kafka against "
                             "the broker's listener"),
    ("Failed to resolve", "the broker's host name does not resolve: check fabric.kafka bootstrap.servers and DNS"),
    ("Connection refused", "nothing listens there: check that the broker runs and fabric.kafka "
                           "bootstrap.servers (host and port)"),
    ("timed out", "no answer in time: check the network path (firewall) to the broker and that it is not "
                  "frozen"),
)


def advice(message: str) -> Optional[str]:
    """What to check for a client error line, or None when there is nothing to add."""
    for words, hint in _ADVICE:
        if words.lower() in message.lower():
            return hint
    return None


class CollapseRepeats(logging.Filter):
    def __init__(self, window: float = 60.0, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.window, self.clock = window, clock
        self._lock = threading.Lock()
        self._seen: dict[str, list] = {}     # kind -> [first shown at, held back since]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        kind = _NUMBERS.sub("N", message)
        now = self.clock()
        with self._lock:
            seen = self._seen.get(kind)
            if seen is not None and now - seen[0] < self.window:
                seen[1] += 1
                return False
            held = seen[1] if seen else 0
            self._seen[kind] = [now, 0]
            if len(self._seen) > 1000:        # kinds with an address or a name that changes: forget the oldest
                self._seen.pop(next(iter(self._seen)))
        hint = advice(message)
        record.msg = message + (f" ({held} more like it in the last {self.window:.0f}s)" if held else "") \
            + (f"; hint: {hint}" if hint else "")
        record.args = None
        return True


def attach(logger: logging.Logger) -> logging.Logger:
    """``logger`` with one ``CollapseRepeats`` (however many clients share it)."""
    if not any(isinstance(f, CollapseRepeats) for f in logger.filters):
        logger.addFilter(CollapseRepeats())
    return logger
