"""Logging setup: human-readable or JSON lines, and secrets redacted from every line."""
from __future__ import annotations

import json
import logging
import logging.handlers
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Optional

REDACTED = "***"

# ``--log-level`` given on the command line: wins over the config's log.level in every
# ``setup`` of this process (agent/cli.py sets it).
LEVEL_OVERRIDE: Optional[str] = None

# C0 and C1 controls, DEL and the Unicode line breaks: a file or table name carrying them
# could forge a log line ("\n... ERROR outpost.agent: ...") or drive the operator's terminal
# (ANSI escapes). Text output shows them escaped; JSON lines escape them by themselves.
_CONTROLS = {code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7f, 0xa0))}
_CONTROLS.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t", 0x2028: "\\u2028", 0x2029: "\\u2029"})


def escape_controls(text: str) -> str:
    """``text`` with every control character written as an escape, on one line."""
    return text.translate(_CONTROLS)


class RedactingFilter(logging.Filter):
    """Replaces every known secret value in the formatted message (and its arguments)."""

    def __init__(self, secrets: Iterable[str]):
        super().__init__()
        # longest first, so a secret containing another is replaced whole
        self.secrets = sorted({s for s in secrets if s and len(s) >= 3}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            record.msg = self.redact(record.getMessage())
            record.args = None
            if record.exc_info:
                record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
                record.exc_info = None
            elif record.exc_text:       # formatted in another process (the delivery process)
                record.exc_text = self.redact(record.exc_text)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        # UTC with milliseconds and the zone: lines from several hosts sort and join as they happened
        ts = datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds")
        entry = {"ts": ts.replace("+00:00", "Z"), "level": record.levelname,
                 "logger": record.name, "message": record.getMessage()}
        for attr in ("event_id", "correlation_id", "route"):
            if hasattr(record, attr):
                entry[attr] = getattr(record, attr)
        if record.exc_text or record.exc_info:
            entry["exception"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """Human-readable, one record a line: a line about an event ends with its event and
    correlation ids; control characters are escaped and traceback lines indented, so no
    text that came from outside can start a line of its own."""

    def __init__(self):
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        ids = " ".join(f"{attr}={getattr(record, attr)}" for attr in ("event_id", "correlation_id")
                       if getattr(record, attr, None))
        return escape_controls(f"{line} [{ids}]" if ids else line)

    def formatException(self, exc_info) -> str:
        return _indented(super().formatException(exc_info))

    def formatStack(self, stack_info: str) -> str:
        return _indented(stack_info)

    def format(self, record: logging.LogRecord) -> str:
        # exc_text may come ready-made (the redacting filter formats it): indent it too
        if record.exc_text and not record.exc_text.startswith(_INDENT):
            record.exc_text = _indented(record.exc_text)
        return super().format(record)


_INDENT = "    | "


def _indented(text: str) -> str:
    return "\n".join(_INDENT + escape_controls(line) for line in text.splitlines())


class EventLogHandler(logging.Handler):
    """Windows Event Log (Application) under an event source registered at install time.

    Not ``logging.handlers.NTEventLogHandler``: that one registers the source itself on
    every start, which needs administrator rights the service account should not have."""

    def __init__(self, source: str):
        super().__init__()
        import win32evtlog
        import win32evtlogutil
        self.source, self._report = source, win32evtlogutil.ReportEvent
        self._types = {logging.ERROR: win32evtlog.EVENTLOG_ERROR_TYPE,
                       logging.WARNING: win32evtlog.EVENTLOG_WARNING_TYPE}
        self._info = win32evtlog.EVENTLOG_INFORMATION_TYPE

    def emit(self, record: logging.LogRecord) -> None:
        try:
            kind = self._types.get(min(record.levelno, logging.ERROR), self._info)
            self._report(self.source, 1, eventType=kind, strings=[self.format(record)])   # id 1: "%1"
        except Exception:
            self.handleError(record)


def setup(level: str = "INFO", fmt: str = "text", file: Optional[str] = None, secrets: Iterable[str] = (),
          event_log: Optional[str] = None) -> None:
    """``file``: rotated at 20 MB, 5 kept. ``event_log``: also send warnings and errors to the
    Windows Event Log under that source name (needs pywin32)."""
    handler: logging.Handler
    level = LEVEL_OVERRIDE or level
    if file:
        Path(file).parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(file, maxBytes=20 << 20, backupCount=5, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RedactingFilter(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    if event_log:
        windows = EventLogHandler(event_log)
        windows.setLevel(logging.WARNING)
        windows.setFormatter(TextFormatter())
        windows.addFilter(RedactingFilter(secrets))
        root.addHandler(windows)
    root.setLevel(level)
    for noisy in ("apscheduler", "httpx", "httpx2", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    # A polling pass that catches up on a large table outlasts many ticks by design (one
    # pass at a time, coalesced); APScheduler would warn "maximum number of running
    # instances" at every tick it skips.
    logging.getLogger("apscheduler.scheduler").setLevel(logging.ERROR)
