"""Hard deletes on polling sources: a chunked key-set comparison with hashes per range.

Polling cannot see a row that was deleted; the ledger knows every key the fabric holds
(``ledger_keys``, with the source position, hence the primary key). The published primary
keys are cut, in key order, into ranges of ``chunk_rows``; for each range the source computes
COUNT and the sum of a hash of its keys in one aggregate query (``digest``), compared with
the same over the published keys. Only a range that differs is looked into: halved while it
holds more than ``rows_per_query`` keys and lacks fewer rows than it has pages (a sparse
change), else its source keys are read page by page; text keys missing from a page are
confirmed with a lookup by key (so a database collation that orders text keys otherwise than
Python can never make a present row look deleted). Every source query is paced to at most
``max_queries_per_second``. Progress is not kept between runs: a run over 1M keys with
nothing changed is a few seconds, so an interrupted run simply starts again.

A table where nothing changed costs ``ceil(keys / chunk_rows)`` aggregate queries. Pure
except for the reconciler it is given (``adapters.sql_poll.reconcile.SqlPollReconciler``).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Optional

__all__ = ["PublishedKey", "published_primary_keys", "find_hard_deletes", "DeleteSearch"]


class PublishedKey(NamedTuple):      # a tuple: a million of them are made per run
    pk: Any            # the source primary-key value
    key: str           # the business key the fabric knows
    position: str      # the source position of the newest published version


def primary_key_of(position: str) -> Optional[Any]:
    """The single primary-key value in a sql_poll position ``[pk]@cursor`` (None: composite or other)."""
    head = position.split("@", 1)[0]
    if head[1:-1].isdigit():          # the usual integer key: json.loads was most of the ledger read
        return int(head[1:-1])
    try:
        values = json.loads(head)
    except ValueError:
        return None
    return values[0] if isinstance(values, list) and len(values) == 1 else None


def published_primary_keys(conn, route: str) -> list[PublishedKey]:
    found = []
    for key, position in conn.execute("SELECT key, position FROM ledger_keys WHERE route=?", (route,)):
        pk = primary_key_of(position or "")
        if pk is not None:
            found.append(PublishedKey(pk, key, position))
    found.sort(key=lambda k: k.pk)
    return found


class Pacer:
    """At most ``per_second`` calls per second: the load bound on the source."""

    def __init__(self, per_second: float, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic):
        self.gap, self.sleep, self.clock, self._next = 1.0 / per_second, sleep, clock, 0.0

    def __call__(self) -> None:
        now = self.clock()
        if now < self._next:
            self.sleep(self._next - now)
            now = self._next
        self._next = now + self.gap


@dataclass
class DeleteSearch:
    deleted: list = field(default_factory=list)     # PublishedKey of rows gone at the source
    ranges: int = 0            # ranges hashed
    differing_ranges: int = 0
    source_queries: int = 0


def find_hard_deletes(published: list[PublishedKey], reconciler, *, hash_key: Callable[[Any], int],
                      chunk_rows: int = 20_000, rows_per_query: int = 5_000, max_queries_per_second: float = 20.0,
                      sleep: Callable[[float], None] = time.sleep) -> DeleteSearch:
    pace, search = Pacer(max_queries_per_second, sleep), DeleteSearch()
    before = reconciler.queries
    pending = [published[i:i + chunk_rows] for i in range(0, len(published), chunk_rows)]
    pending.reverse()
    while pending:
        chunk = pending.pop()
        low, high = chunk[0].pk, chunk[-1].pk
        pace()
        search.ranges += 1
        count, hashed = reconciler.digest(low, high)
        if (count, hashed) == (len(chunk), sum(hash_key(k.pk) for k in chunk)):
            continue
        search.differing_ranges += 1
        pages = -(-len(chunk) // rows_per_query)
        # Halve while the range looks sparsely changed; when it lacks about a row per page
        # or more, both halves would differ again: reading its keys is then cheaper.
        if pages > 1 and len(chunk) - count < pages:
            middle = len(chunk) // 2
            pending += [chunk[middle:], chunk[:middle]]      # the lower half next: key order kept
            continue
        for start in range(0, len(chunk), rows_per_query):
            page = chunk[start:start + rows_per_query]
            pace()
            present = reconciler.keys_between(page[0].pk, page[-1].pk)
            search.deleted += _confirmed([k for k in page if k.pk not in present], reconciler, pace)
    search.source_queries = reconciler.queries - before
    return search


def _confirmed(missing: list, reconciler, pace) -> list:
    """Integer keys order alike in Python and SQL; text keys may not (collations), so those
    missing from a range are looked up by key before they are called deleted."""
    if not missing or all(type(k.pk) is int for k in missing):
        return missing
    pace()
    present = reconciler.existing([k.pk for k in missing])
    return [k for k in missing if k.pk not in present]
