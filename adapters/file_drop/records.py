"""What a file route last published per business key: so a corrected file publishes only
what changed, each change as an update of the earlier row.

One SQLite file per route in the agent's state directory (``file_drop/records-<route>.db``):
key -> digest of the canonical image it last published, and the row it came from (the
before image of a correction). Entries are written only after the batch that published
them is durable; a crash in between leaves them out, and the rows are then published again
under the same event ids (identity by route, key and content), which the queue and the
fabric's consumers drop as repeats. The rows are customer data: the file lives in the
private state directory, like the queue.
"""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Optional

from agent.jsontext import dumps
from agent.sql_in import rows_in

_DDL = "CREATE TABLE IF NOT EXISTS records (key TEXT PRIMARY KEY, digest TEXT NOT NULL, row TEXT NOT NULL)"


class RecordLedger:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._conn: Optional[sqlite3.Connection] = None
        self.pending: dict[str, tuple[str, dict]] = {}     # published in the batch in flight
        # what the table held for the keys of the last prefetch(): key -> (digest, row text) or None
        self._known: dict[str, Optional[tuple[str, str]]] = {}

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute(_DDL)
        return self._conn

    def prefetch(self, keys) -> None:
        """Read what the table holds for these keys in a few queries instead of one per key
        (``last`` then answers from it); forgets the previous prefetch. Kept exact by
        ``settle``, the only writer of the table."""
        wanted = list(dict.fromkeys(k for k in keys if k not in self.pending))
        known: dict[str, Optional[tuple[str, str]]] = dict.fromkeys(wanted)
        for key, digest, row in rows_in(self._db(), "SELECT key, digest, row FROM records WHERE key IN ({})", wanted):
            known[key] = (digest, row)
        self._known = known

    def last(self, key: str) -> Optional[tuple[str, dict]]:
        """(digest, row) last published for ``key`` (this batch included), or None."""
        if key in self.pending:
            return self.pending[key]
        if key in self._known:
            found = self._known[key]
        else:
            found = self._db().execute("SELECT digest, row FROM records WHERE key=?", (key,)).fetchone()
        return (found[0], json.loads(found[1])) if found else None

    def note(self, key: str, digest: str, row: dict) -> None:
        self.pending[key] = (digest, row)

    def settle(self) -> None:
        """The batch is durable: remember what it published."""
        if not self.pending:
            return
        db = self._db()
        rows = [(k, d, dumps(r)) for k, (d, r) in self.pending.items()]      # = json.dumps(r, default=str)
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT INTO records VALUES (?, ?, ?) ON CONFLICT(key) DO UPDATE SET digest=excluded.digest,"
                       " row=excluded.row", rows)
        db.execute("COMMIT")
        known = self._known
        for key, digest, row in rows:      # the prefetch stays what the table now holds
            if key in known:
                known[key] = (digest, row)
        self.pending.clear()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        self.pending.clear()
        self._known = {}
        if conn is not None:
            conn.close()
