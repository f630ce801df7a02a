"""On-demand snapshot requests, shared by every log-based source (``binlog``, ``debezium``).

``outpost snapshot SOURCE TABLE...`` records one request per table; the running agent's
source for that table picks it up between batches, reads it (chunked, resumably) while
streaming continues, reports progress and finishes it. The requests live in the table
``snapshot_requests`` of the state directory's ``queue.db`` (the agent and the CLI are
separate processes; SQLite WAL lets both use it at once).

API (every function opens its own short connection, so any thread or process may call it)::

    request(state_dir, source, tables) -> [id, ...]   one new request per table ("pending")
    pending(state_dir, source) -> [row, ...]          unfinished requests ("pending"/"running"), oldest first
    progress(state_dir, request_id, **fields)         mark "running" and merge JSON progress fields
    finish(state_dir, request_id, error=None)         "done", or "failed" with the reason
    listing(state_dir, source=None) -> [row, ...]     every request, newest first (CLI, status)

A row is a dict: id, source, table_name, state, requested_at, started_at, finished_at,
progress (dict), error. Table names are matched by the source as written (``table`` or
``schema.table``). The request row is bookkeeping for people: a source that must resume a
snapshot exactly keeps its own progress in its checkpoint (invariant 1), so a crash
between the checkpoint commit and ``progress``/``finish`` loses nothing.
"""
from __future__ import annotations

import json
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Iterable, Optional

__all__ = ["request", "pending", "progress", "finish", "listing"]

_DDL = """
CREATE TABLE IF NOT EXISTS snapshot_requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL, table_name TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    requested_at REAL NOT NULL, started_at REAL, finished_at REAL,
    progress TEXT NOT NULL DEFAULT '{}', error TEXT);
CREATE INDEX IF NOT EXISTS snapshot_requests_open ON snapshot_requests (source, state, id);
"""
_COLUMNS = ("id", "source", "table_name", "state", "requested_at", "started_at", "finished_at", "progress",
            "error")


def _connect(state_dir) -> sqlite3.Connection:
    # Same settings as agent.queue: WAL, synchronous=FULL, a generous busy timeout.
    path = Path(state_dir)
    path.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path / "queue.db", isolation_level=None, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.executescript(_DDL)
    return conn


def _rows(cursor) -> list[dict]:
    out = []
    for row in cursor.fetchall():
        item = dict(zip(_COLUMNS, row))
        item["progress"] = json.loads(item["progress"] or "{}")
        out.append(item)
    return out


def request(state_dir, source: str, tables: Iterable[str]) -> list[int]:
    now = time.time()
    with closing(_connect(state_dir)) as conn:
        conn.execute("BEGIN IMMEDIATE")
        ids = [conn.execute("INSERT INTO snapshot_requests (source, table_name, requested_at) VALUES (?,?,?)",
                            (source, table, now)).lastrowid for table in tables]
        conn.execute("COMMIT")
    return ids


def pending(state_dir, source: str) -> list[dict]:
    with closing(_connect(state_dir)) as conn:
        return _rows(conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM snapshot_requests WHERE source=? AND"
                                  " state IN ('pending', 'running') ORDER BY id", (source,)))


def progress(state_dir, request_id: int, **fields) -> None:
    with closing(_connect(state_dir)) as conn:
        conn.execute("BEGIN IMMEDIATE")
        row = conn.execute("SELECT progress FROM snapshot_requests WHERE id=?", (request_id,)).fetchone()
        if row is not None:
            merged = {**json.loads(row[0] or "{}"), **fields}
            conn.execute("UPDATE snapshot_requests SET state='running', started_at=coalesce(started_at, ?),"
                         " progress=? WHERE id=? AND state IN ('pending', 'running')",
                         (time.time(), json.dumps(merged, default=str), request_id))
        conn.execute("COMMIT")


def finish(state_dir, request_id: int, error: Optional[str] = None) -> None:
    with closing(_connect(state_dir)) as conn:
        conn.execute("UPDATE snapshot_requests SET state=?, finished_at=?, error=? WHERE id=?",
                     ("failed" if error else "done", time.time(), error, request_id))


def listing(state_dir, source: Optional[str] = None) -> list[dict]:
    with closing(_connect(state_dir)) as conn:
        sql = f"SELECT {', '.join(_COLUMNS)} FROM snapshot_requests"
        args: tuple = ()
        if source:
            sql, args = sql + " WHERE source=?", (source,)
        return _rows(conn.execute(sql + " ORDER BY id DESC", args))
