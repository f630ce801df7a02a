"""Canonical event envelopes and their deterministic identities (pure code)."""
from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from typing import Optional

from .contracts import SourceRecord, TerminalError

# Fixed namespace: the same source change must get the same id on every machine and
# every run, so that re-capture after a crash collapses onto the queued event.
EVENT_NAMESPACE = uuid.UUID("6f0c2a52-8d1e-4c55-9a43-0b9e1d7c3f21")
_NAMESPACE_BYTES = EVENT_NAMESPACE.bytes

_OPERATION_SYMBOLS = {"create": "CREATE", "update": "UPDATE", "delete": "DELETE", "snapshot": "SNAPSHOT"}


def event_id(system: str, obj: str, position: str) -> str:
    """Derived from the source identity and position only, never from capture time.

    The operation is deliberately left out: a row version seen by the initial snapshot
    and again by incremental capture is one change and must keep one id.

    This is ``str(uuid.uuid5(EVENT_NAMESPACE, name))`` computed without building UUID
    objects, which cost a third of the time on the capture hot path.
    """
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + f"{system}\x1f{obj}\x1f{position}".encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50      # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80      # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def envelope(record: SourceRecord, *, system: str, key: str, before: Optional[dict], after: Optional[dict],
             schema_version: int, captured_at: dt.datetime, correlation_id: Optional[str] = None,
             causation_id: Optional[str] = None) -> dict:
    """The Avro-ready event: metadata plus before/after images of the canonical entity."""
    if record.occurred_at is not None and record.occurred_at.tzinfo is None:
        # fastavro would silently read a naive datetime as local time
        raise TerminalError(f"source gave a naive occurred_at ({record.occurred_at}); sources must give UTC")
    identity = event_id(system, record.object, record.position)
    return {
        "metadata": {
            "event_id": identity,
            # A captured change starts a chain: its id is the correlation id the fabric
            # propagates; inbound commands bring their own.
            "correlation_id": correlation_id or identity,
            "causation_id": causation_id,
            "source": {"system": system, "object": record.object, "position": record.position},
            "operation": _OPERATION_SYMBOLS[record.operation],
            "occurred_at": record.occurred_at,
            "captured_at": captured_at,
            "schema_version": schema_version,
        },
        "key": key,
        "before": before,
        "after": after,
    }
