"""Retrying an exception-queue entry: re-queue a parked event, or map a rejected record
again with today's config (master data fixed, lookups added)."""
from __future__ import annotations

import datetime as dt
from typing import Optional

from .contracts import SourceRecord
from .queue import DurableQueue
from .translate import IF_PUBLISHED, Translator

__all__ = ["retry_exception"]


def retry_exception(queue: DurableQueue, item: dict, translator: Optional[Translator]) -> tuple[bool, str]:
    """Re-queue a parked event; a mapping failure is mapped again with today's config
    (fixed master data, lookups). Returns (requeued, what happened)."""
    if item["stage"] == "file":   # no event was ever built: the fix is a corrected file
        return False, "a rejected file is retried by dropping the corrected file into the inbox again"
    if item["stage"] != "mapping":
        return queue.requeue_exception(item["id"]), "re-queued for delivery"
    if translator is None:
        return False, f"route {item['route']} is no longer configured"
    raw = item["context"]["record"]
    record = SourceRecord(object=raw["object"], operation=raw["operation"], position=raw["position"],
                          after=raw["after"], before=raw["before"],
                          occurred_at=dt.datetime.fromisoformat(raw["occurred_at"]) if raw["occurred_at"] else None)
    getattr(translator, "refresh_lookups", lambda: None)()   # reference data as it is now (SQL lookups)
    events, failures = translator.translate([record])
    if failures:
        queue.refresh_exception(item["id"], failures[0]["reason"], failures[0]["context"])
        return False, f"still failing: {failures[0]['reason']}"
    if not events:
        queue.discard_exception(item["id"])
        return True, "no longer matches the route's filter: discarded, nothing to publish"
    events[0].pop(IF_PUBLISHED, None)     # a parked row's earlier version may have been published
    return queue.requeue_exception(item["id"], events[0]), "mapped again and queued for delivery"
