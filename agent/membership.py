"""Which keys a filtered route has published: what decides a conditional delete.

A route with a ``filter`` publishes a row that stops matching as a delete, but a polling
source has no before image to tell whether the row matched before. So the route records
the keys it published (table ``published_keys`` in the state directory's ``queue.db``,
beside the queue; its own short connections, as ``agent.snapshots`` does) and a
conditional delete (``translate.IF_PUBLISHED``) is kept only for a key recorded there.

Never loses a delete: keys are added *before* the batch commits and removed only *after*
it committed, so a crash in between leaves a key recorded too long (at worst one delete
more for a key consumers may not hold), never too short.
"""
from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Iterable

from .sql_in import rows_in
from .translate import IF_PUBLISHED

__all__ = ["PublishedKeys"]

_DDL = ("CREATE TABLE IF NOT EXISTS published_keys (route TEXT NOT NULL, key TEXT NOT NULL,"
        " PRIMARY KEY (route, key)) WITHOUT ROWID")


class PublishedKeys:
    def __init__(self, state_dir: Path, route: str):
        self.path, self.route = Path(state_dir) / "queue.db", route

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute(_DDL)
        return conn

    def screen(self, events: list[dict]) -> list[dict]:
        """Before the commit: record the keys about to be published, drop the conditional
        deletes of keys never published, and strip the marker."""
        final = {}
        for event in events:      # the last event of a key in the batch decides
            final[event["key"]] = event
        joining = [k for k, e in final.items() if e["operation"] != "delete"]
        asked = {e["key"] for e in events if e.get(IF_PUBLISHED)}
        with closing(self._connect()) as conn:
            known = {k for (k,) in rows_in(conn, "SELECT key FROM published_keys WHERE route=? AND key IN ({})",
                                           sorted(asked), (self.route,))}
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT OR IGNORE INTO published_keys VALUES (?, ?)", [(self.route, k) for k in joining])
            conn.execute("COMMIT")
        seen_in_batch = set()
        kept = []
        for event in events:
            if event.pop(IF_PUBLISHED, False) and event["key"] not in known and event["key"] not in seen_in_batch:
                continue
            seen_in_batch.add(event["key"])
            kept.append(event)
        return kept

    def settle(self, events: Iterable[dict]) -> None:
        """After the commit: forget the keys whose last event was a delete."""
        final = {}
        for event in events:
            final[event["key"]] = event["operation"]
        gone = [(self.route, k) for k, operation in final.items() if operation == "delete"]
        if gone:
            with closing(self._connect()) as conn:
                conn.executemany("DELETE FROM published_keys WHERE route=? AND key=?", gone)
