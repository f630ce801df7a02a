"""The event ids the queue has taken, and how long it remembers them (delivery invariant 4).

A trigger records the 16-byte key of every event that enters the outbox in the current
*generation*, a table ``seen_<n>``. An operator's discards go to ``refused``, for good.
Capture skips any id in the view ``seen_ids``, which joins ``refused`` and every
generation.

Why generations, and not a ``delivered`` table with an age index: writing each id at
settle time cost two random B-tree inserts per event (the id and its age), and pruning
cost two deletes more. On the 2-core machine the stage bench's peek + settle went from
17–18 to 9–10 µs per event (docs/benchmarks.md, "Queue schema 3"). Now each id is written once, when its event is
captured, in key order within one batch. Settling deletes the outbox row and nothing
else. Forgetting a whole generation takes one ``DROP TABLE``.

The prune pass (``prune``, on a timer) closes the current generation once it is
``retention / 2`` old and opens the next one. Once every event of a closed generation has
left the queue (delivered or parked), the pass notes when it saw that. It drops the
generation ``retention`` after that moment. So an id is remembered for at least
``retention`` after its event was delivered, and for at most about 1.5 × ``retention``
(plus one prune interval).
"""
from __future__ import annotations

from typing import Optional

__all__ = ["DDL", "ensure", "open_generation", "prune", "SEEN"]

SEEN = "seen_ids"       # the view capture consults: every generation and the refused ids

DDL = """
CREATE TABLE IF NOT EXISTS id_generations (gen INTEGER PRIMARY KEY, opened_at REAL NOT NULL,
    first_seq INTEGER NOT NULL, drained_at REAL);
CREATE TABLE IF NOT EXISTS refused (id16 BLOB PRIMARY KEY) WITHOUT ROWID;
"""


def _next_seq(db) -> int:
    """The seq the next outbox row will get (AUTOINCREMENT never gives one twice)."""
    row = db.execute("SELECT seq FROM sqlite_sequence WHERE name='outbox'").fetchone()
    return (row[0] if row else 0) + 1


def open_generation(db, now: float, first_seq: Optional[int] = None) -> int:
    """Start recording new ids in a fresh generation; its events are those from ``first_seq``."""
    first_seq = _next_seq(db) if first_seq is None else first_seq
    gen = db.execute("INSERT INTO id_generations (opened_at, first_seq) VALUES (?,?)", (now, first_seq)).lastrowid
    db.execute(f"CREATE TABLE seen_{gen} (id16 BLOB PRIMARY KEY) WITHOUT ROWID")
    _rebuild(db)
    return gen


def ensure(db, now: float) -> None:
    """A queue always has a current generation (a new queue gets its first one here)."""
    if db.execute("SELECT 1 FROM id_generations").fetchone() is None:
        open_generation(db, now)


def _rebuild(db) -> None:
    """The view over every generation, and the trigger writing into the newest."""
    gens = [gen for (gen,) in db.execute("SELECT gen FROM id_generations ORDER BY gen")]
    db.execute(f"DROP VIEW IF EXISTS {SEEN}")
    db.execute(f"CREATE VIEW {SEEN} AS SELECT id16 FROM refused"
               + "".join(f" UNION ALL SELECT id16 FROM seen_{gen}" for gen in gens))
    db.execute("DROP TRIGGER IF EXISTS remember_ids")
    db.execute(f"CREATE TRIGGER remember_ids AFTER INSERT ON outbox BEGIN"
               f" INSERT OR IGNORE INTO seen_{gens[-1]} VALUES (new.id16); END")


def prune(db, now: float, retention: float) -> int:
    """Close the current generation when it is due, note the closed ones that have drained,
    drop those drained ``retention`` ago. Returns how many ids were forgotten."""
    (current_opened_at,) = db.execute("SELECT max(opened_at) FROM id_generations").fetchone()
    if current_opened_at <= now - retention / 2:
        open_generation(db, now)
    oldest_queued = db.execute("SELECT min(seq) FROM outbox").fetchone()[0]
    gens = db.execute("SELECT gen, first_seq, drained_at FROM id_generations ORDER BY gen").fetchall()
    forgotten, dropped = 0, False
    for (gen, _, drained_at), (_, next_first_seq, _) in zip(gens, gens[1:]):     # the closed ones
        if drained_at is None:
            if oldest_queued is None or oldest_queued >= next_first_seq:
                db.execute("UPDATE id_generations SET drained_at=? WHERE gen=?", (now, gen))
        elif drained_at <= now - retention:
            forgotten += db.execute(f"SELECT count(*) FROM seen_{gen}").fetchone()[0]
            db.execute("DELETE FROM id_generations WHERE gen=?", (gen,))
            db.execute(f"DROP TABLE seen_{gen}")
            dropped = True
    if dropped:
        _rebuild(db)
    return forgotten
