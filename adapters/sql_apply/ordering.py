"""Which of two changes of one entity key is newer, so that applying never moves a row
backwards (a parked event retried after a newer one was applied, a replay after the
ledger forgot the ids). Pure code, no I/O.

A change is ordered by the first of these that both changes carry:

1. ``metadata.version``: the entity's row version at its source;
2. ``metadata.occurred_at``: when the change happened at the source;
3. ``metadata.captured_at``: when it was captured (always present).

Equal stamps are not "older": an event is refused only when it is strictly older than
the one applied last for its key (kept in the ledger's keys table).
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Mapping, Optional

__all__ = ["Stamp", "micros"]

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_ORDER = (("version", "version"), ("occurred_us", "occurred_at"), ("captured_us", "captured_at"))


def micros(value: Optional[dt.datetime]) -> Optional[int]:
    """Microseconds since 1970 (UTC): exact on every database, unlike DATETIME(0)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return (value - _EPOCH) // dt.timedelta(microseconds=1)


@dataclass(frozen=True)
class Stamp:
    event_id: str
    version: Optional[int] = None
    occurred_us: Optional[int] = None
    captured_us: Optional[int] = None

    @classmethod
    def of(cls, event_id: str, metadata: Optional[Mapping[str, Any]]) -> "Stamp":
        metadata = metadata or {}
        return cls(event_id, metadata.get("version"), micros(metadata.get("occurred_at")),
                   micros(metadata.get("captured_at")))

    def older_than(self, other: "Stamp") -> Optional[str]:
        """Why this change is older than ``other``; None if it is not (or cannot be told)."""
        for attribute, label in _ORDER:
            mine, theirs = getattr(self, attribute), getattr(other, attribute)
            if mine is not None and theirs is not None:
                return f"{label} {self.show(attribute)} < {other.show(attribute)}" if mine < theirs else None
        return None

    def show(self, attribute: str) -> str:
        value = getattr(self, attribute)
        if value is None or attribute == "version":
            return str(value)
        return (_EPOCH + dt.timedelta(microseconds=value)).isoformat()

    def describe(self) -> dict:
        """For the exception queue: what this change says about its place in the key's history."""
        return {"event_id": self.event_id, **{label: self.show(attribute) for attribute, label in _ORDER
                                              if getattr(self, attribute) is not None}}
