"""The queue's SQLite schema: its tables, the 16-byte id keys, and upgrades of a kept state
directory (``migrate``). ``agent.queue`` is the queue itself."""
from __future__ import annotations

import hashlib
import logging
import sqlite3
import time
from typing import Optional

from . import seen_ids
from .contracts import OutpostError

log = logging.getLogger("outpost.queue")

SCHEMA_VERSION = 3
# Page cache per connection, in KiB: holds the id indexes of a few hundred thousand
# events (SQLite's default, 2 MiB, made every settle read index pages back from the OS).
CACHE_KIB = 8192


def dedup_key(event_id: str) -> bytes:
    """The 128 bits that identify an event in the queue's indexes: a UUID's own bytes (every
    id Outpost makes is one), else the first 16 bytes of the id's SHA-1. A 16-byte key keeps
    the id indexes small (a 36-character text key cost 113 bytes per delivered id)."""
    if len(event_id) == 36 and event_id[8] == event_id[13] == event_id[18] == event_id[23] == "-":
        try:
            return bytes.fromhex(event_id.replace("-", ""))
        except ValueError:
            pass
    return hashlib.sha1(event_id.encode("utf-8")).digest()[:16]


def _to_v2(conn: sqlite3.Connection) -> None:
    """v1 -> v2: 16-byte id keys in the outbox and the delivered ids, and the count of the
    bytes waiting to be delivered (what the quota limits)."""
    conn.create_function("dedup_key", 1, dedup_key, deterministic=True)
    conn.execute("ALTER TABLE outbox RENAME TO outbox_v1")
    conn.execute(_OUTBOX)
    conn.execute(f"INSERT INTO outbox (seq, id16, {', '.join(_STORED)}) "
                 f"SELECT seq, dedup_key(event_id), {', '.join(_STORED)} FROM outbox_v1")
    conn.execute("DROP TABLE outbox_v1")
    conn.execute("ALTER TABLE delivered RENAME TO delivered_v1")
    conn.execute("CREATE TABLE delivered (id16 BLOB PRIMARY KEY, delivered_at REAL NOT NULL) WITHOUT ROWID")
    conn.execute("INSERT OR IGNORE INTO delivered SELECT dedup_key(event_id), delivered_at FROM delivered_v1")
    conn.execute("DROP TABLE delivered_v1")
    conn.execute(_BY_SINK)
    conn.execute("UPDATE counters SET value=(SELECT coalesce(sum(length(body)), 0) FROM outbox)"
                 " WHERE name='pending_bytes'")


def _to_v3(conn: sqlite3.Connection) -> None:
    """v2 -> v3: ids remembered in generations (``agent.seen_ids``) instead of the delivered
    table, and no id index on the outbox. The first generation takes every id v2 held, and
    its events are everything queued; ids discarded by an operator (delivered "at infinity")
    are refused for good."""
    last_seq = conn.execute("SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name='outbox'").fetchone()[0]
    conn.execute("ALTER TABLE outbox RENAME TO outbox_v2")
    conn.execute(_OUTBOX)
    conn.execute(f"INSERT INTO outbox (seq, id16, {', '.join(_STORED)}) SELECT seq, id16, {', '.join(_STORED)}"
                 " FROM outbox_v2")
    conn.execute("DROP TABLE outbox_v2")
    conn.execute(_BY_SINK)
    # the seqs given before stay given (capture marks of HA pairs count on it)
    conn.execute("DELETE FROM sqlite_sequence WHERE name='outbox'")
    conn.execute("INSERT INTO sqlite_sequence VALUES ('outbox', max(?, (SELECT coalesce(max(seq), 0) FROM outbox)))",
                 (last_seq,))
    gen = seen_ids.open_generation(conn, time.time(), first_seq=1)
    conn.execute(f"INSERT OR IGNORE INTO seen_{gen} SELECT id16 FROM outbox")
    conn.execute(f"INSERT OR IGNORE INTO seen_{gen} SELECT id16 FROM delivered WHERE delivered_at < 1e308")
    conn.execute("INSERT OR IGNORE INTO refused SELECT id16 FROM delivered WHERE delivered_at >= 1e308")
    conn.execute("DROP TABLE delivered")


# Upgrades of a kept state directory: MIGRATIONS[n](conn) takes a version-n queue to n+1
# (ALTER TABLE, backfills), each in its own transaction when the queue opens. ``_DDL``
# only creates what is missing. An older agent refuses a newer queue rather than guess.
MIGRATIONS: dict = {1: _to_v2, 2: _to_v3}
_STORED = ("event_id", "route", "sink", "entity", "key", "operation", "schema_fingerprint", "body",
           "correlation_id", "occurred_at", "enqueued_at", "attempts", "last_error")
_OUTBOX = """CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id16 BLOB NOT NULL,
    event_id TEXT NOT NULL,
    route TEXT NOT NULL, sink TEXT NOT NULL, entity TEXT NOT NULL, key TEXT NOT NULL,
    operation TEXT NOT NULL, schema_fingerprint TEXT NOT NULL, body BLOB NOT NULL,
    correlation_id TEXT NOT NULL, occurred_at REAL, enqueued_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT)"""
# (the ids the queue must not take again are agent.seen_ids's)
_BY_SINK = "CREATE INDEX IF NOT EXISTS outbox_by_sink ON outbox (sink, seq)"
_DDL = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
{_OUTBOX};
{_BY_SINK};
{seen_ids.DDL}
CREATE TABLE IF NOT EXISTS checkpoints (route TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS exceptions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    route TEXT NOT NULL, stage TEXT NOT NULL, reason TEXT NOT NULL, context TEXT NOT NULL,
    event_id TEXT, entity TEXT, key TEXT, sink TEXT, operation TEXT, schema_fingerprint TEXT,
    body BLOB, correlation_id TEXT, occurred_at REAL,
    created_at REAL NOT NULL, status TEXT NOT NULL DEFAULT 'open', resolved_at REAL);
CREATE INDEX IF NOT EXISTS exceptions_open ON exceptions (status, id);
CREATE INDEX IF NOT EXISTS exceptions_by_event ON exceptions (event_id);
CREATE TABLE IF NOT EXISTS route_status (route TEXT PRIMARY KEY, value TEXT NOT NULL);
-- The quota counts only what waits to be delivered: the bytes of the queued bodies, kept
-- in the same transaction as every insert into and delete from the outbox.
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO counters VALUES ('pending_bytes', 0);
-- HA pairs: "checkpoint C covers every event of the route up to seq S", one row per
-- capture batch, so the fabric can be told the newest checkpoint it fully received.
CREATE TABLE IF NOT EXISTS capture_marks (route TEXT NOT NULL, seq INTEGER NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (route, seq)) WITHOUT ROWID;
"""


def migrate(conn: sqlite3.Connection, path, migrations: Optional[dict] = None, target: Optional[int] = None) -> int:
    """Bring the queue's schema to ``target`` (this agent's version); returns the version found."""
    migrations = MIGRATIONS if migrations is None else migrations
    target = SCHEMA_VERSION if target is None else target
    found = int(conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0])
    if found > target:
        raise OutpostError(f"{path}: queue schema version {found} is newer than this agent's {target}; "
                           "upgrade the agent (a downgrade cannot read it)")
    for version in range(found, target):
        conn.execute("BEGIN IMMEDIATE")
        try:
            migrations[version](conn)
            conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(version + 1),))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        log.info("queue %s migrated from schema version %d to %d", path, version, version + 1)
    return found
