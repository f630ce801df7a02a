"""Reconciliation, pure: windows, the comparison of the two sides, explanations, the result.

The source side comes from an aggregate query on the source (``adapters.sql_poll.reconcile``),
the published side from Outpost's own ledger of what the fabric acknowledged
(``agent.ledger``); ``agent.reconcile_run`` does that I/O and hands both here. When the
totals differ, both sides are compared key by key and every differing key is given the
first cause Outpost knows for it (``CAUSES``, in that order); what none explains is
*unexplained*, and ``outpost reconcile`` exits non-zero for it.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Mapping, Optional
from zoneinfo import ZoneInfo

from .contracts import AMOUNTS

__all__ = ["Window", "Side", "Evidence", "CAUSES", "differing_keys", "explain", "result", "render", "KEY_LIST_LIMIT"]

KEY_LIST_LIMIT = 100          # keys listed per result and per cause; the counts are always whole
SUM_SCALE = Decimal("0.000001")   # the Reconciliation schema's decimal(38,6)

# cause -> what it means, in the order a key is given its cause
CAUSES = {
    "still_queued": "captured, waiting in the local queue for the fabric",
    "parked": "in the exception queue (rejected by mapping, validation or the sink)",
    "discarded": "rejected, then discarded by an operator (`outpost queue discard`)",
    "rejected_by_filter": "left out by the route's filter",
    "changed_after_window": "published in this window, changed at the source since (now in a later one)",
    "deleted_at_source": "published, then deleted at the source (a hard delete polling cannot see)",
    "not_yet_captured": "changed at the source after the route's last poll",
}


@dataclass(frozen=True)
class Window:
    """A business day in ``zone`` (start inclusive, end exclusive, both aware UTC), or everything."""

    label: str
    start: Optional[dt.datetime] = None
    end: Optional[dt.datetime] = None

    @classmethod
    def parse(cls, text: str, zone: str = "UTC", today: Optional[dt.date] = None) -> "Window":
        """``YYYY-MM-DD``, ``yesterday`` (the usual scheduled run) or ``all``; ValueError saying what is expected."""
        tz = ZoneInfo(zone)
        if text == "all":
            return cls("all")
        if text == "yesterday":
            day = (today or dt.datetime.now(tz).date()) - dt.timedelta(days=1)
        else:
            try:
                day = dt.date.fromisoformat(text)
            except ValueError:
                raise ValueError(f"window: expected YYYY-MM-DD, 'yesterday' or 'all', found {text!r}") from None
        start = dt.datetime.combine(day, dt.time(), tz)
        return cls(day.isoformat(), start.astimezone(dt.timezone.utc),
                   dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tz).astimezone(dt.timezone.utc))

    @property
    def ledger_window(self) -> Optional[str]:
        return None if self.label == "all" else self.label

    def contains(self, moment: Optional[dt.datetime]) -> Optional[bool]:
        if self.start is None:
            return True
        return None if moment is None else self.start <= moment < self.end


@dataclass(frozen=True)
class Side:
    count: int
    sums: Mapping[str, Decimal]


@dataclass
class Evidence:
    """What Outpost knows about keys, gathered by ``agent.reconcile_run``."""

    still_queued: set = field(default_factory=set)
    parked: dict = field(default_factory=dict)          # key -> exception ids
    discarded: dict = field(default_factory=dict)       # key -> exception ids
    rejected_by_filter: set = field(default_factory=set)
    changed_after_window: set = field(default_factory=set)
    deleted_at_source: set = field(default_factory=set)
    not_yet_captured: set = field(default_factory=set)


def differing_keys(source: Mapping[str, Mapping[str, Decimal]], published: Mapping[str, Mapping[str, Decimal]],
                   fields) -> list[str]:
    """Keys on one side only, or whose money fields differ (compared exactly)."""
    def same(a, b):
        return all(a.get(f, Decimal(0)) == b.get(f, Decimal(0)) for f in fields)
    return sorted(k for k in set(source) | set(published)
                  if k not in source or k not in published or not same(source[k], published[k]))


def explain(keys: list[str], evidence: Evidence) -> tuple[list[dict], list[str]]:
    """(explanations in the schema's shape, unexplained keys): each key gets its first known cause."""
    found: dict[str, list[str]] = {cause: [] for cause in CAUSES}
    unexplained = []
    for key in keys:
        cause = next((c for c in CAUSES if key in getattr(evidence, c)), None)
        (found[cause] if cause else unexplained).append(key)
    explanations = [{"cause": cause, "key_count": len(ks), "keys": ks[:KEY_LIST_LIMIT],
                     "exception_ids": sorted(i for k in ks for i in getattr(evidence, cause).get(k, ()))
                     if cause in ("parked", "discarded") else []} for cause, ks in found.items() if ks]
    return explanations, unexplained


def _exact(sums: Mapping[str, Decimal], fields) -> dict[str, Decimal]:
    return {f: Decimal(sums.get(f, 0)).quantize(SUM_SCALE, context=AMOUNTS) for f in fields}


def result(route: str, entity: str, window: Window, source: Side, published: Side, keys: list[str],
           explanations: list[dict], unexplained: list[str], ran_at: dt.datetime,
           up_to_position: Optional[str] = None) -> dict:
    """The Reconciliation payload (``avro/Reconciliation.avsc``)."""
    fields = sorted(set(source.sums) | set(published.sums))
    src, pub = _exact(source.sums, fields), _exact(published.sums, fields)
    totals_differ = source.count != published.count or src != pub
    return {"reconciliation_id": f"{route}/{window.label}", "route": route, "entity": entity, "window": window.label,
            "window_start": window.start, "window_end": window.end, "up_to_position": up_to_position,
            "source_count": source.count, "source_sums": src, "published_count": published.count,
            "published_sums": pub, "count_difference": source.count - published.count,
            "sum_differences": {f: AMOUNTS.subtract(src[f], pub[f]) for f in fields},
            "differing_keys": keys[:KEY_LIST_LIMIT],
            "differing_key_count": len(keys), "explanations": explanations,
            # totals that differ although no key does: nothing can explain that
            "unexplained_key_count": len(unexplained) if keys or not totals_differ else max(1, len(unexplained)),
            "tied_out": not unexplained and (bool(keys) or not totals_differ), "ran_at": ran_at}


def render(r: dict) -> str:
    """The result as the table ``outpost reconcile`` prints."""
    def num(value) -> str:
        if not isinstance(value, Decimal):
            return str(value)
        if value == value.to_integral():
            return f"{value.normalize(AMOUNTS):f}"
        cents = value.quantize(Decimal("0.01"), context=AMOUNTS)
        return f"{cents if value == cents else value:f}"
    rows = [("", "source", "published", "difference"),
            ("rows", str(r["source_count"]), str(r["published_count"]), str(r["count_difference"]))]
    rows += [(f, num(r["source_sums"][f]), num(r["published_sums"][f]), num(r["sum_differences"][f]))
             for f in sorted(r["source_sums"])]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [f"reconcile {r['route']} ({r['entity']}), window {r['window']}"]
    lines += ["  " + row[0].ljust(widths[0]) + "".join("  " + v.rjust(w) for v, w in zip(row[1:], widths[1:]))
              for row in rows]
    if r["differing_key_count"]:
        shown = ", ".join(r["differing_keys"][:10]) + (" ..." if r["differing_key_count"] > 10 else "")
        lines.append(f"  differing keys: {r['differing_key_count']} ({shown})")
    for x in r["explanations"]:
        ids = f", exception ids {', '.join(map(str, x['exception_ids']))}" if x["exception_ids"] else ""
        lines.append(f"    {x['cause']}: {x['key_count']} ({', '.join(x['keys'][:10])}{ids}) - {CAUSES[x['cause']]}")
    if r["unexplained_key_count"]:
        lines.append(f"  UNEXPLAINED: {r['unexplained_key_count']} difference(s)")
    verdict = "TIED OUT" if r["tied_out"] and not r["differing_key_count"] else \
        "TIED OUT (every difference explained)" if r["tied_out"] else "NOT TIED OUT"
    lines.append(f"  {verdict}")
    return "\n".join(lines)
