#!/usr/bin/env python
"""Hard-delete search cost on a 1M-row table: source queries and time, nothing changed vs 0.1 % deleted.

Run:  .venv/bin/python bench/bench_reconcile.py [--rows 1000000] [--db postgres mariadb sqlite]

A fresh database per engine with a 1M-row ``erp_invoice`` (integer primary key), and a
state directory whose ledger holds the 1M published keys, written directly as capture
and settle would have written them (what is measured is the comparison, not the capture).
The real ``sql_poll`` reconciler and ``agent.reconcile_deletes.find_hard_deletes`` then run
twice: with nothing changed, and after 0.1 % of the rows (spread at random) were deleted.
The pacing (``max_queries_per_second``) is lifted, so the time is the work itself.
"""
from __future__ import annotations

import argparse
import random
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402

from adapters.sql_poll.source import SqlPollSource  # noqa: E402
from agent.contracts import AdapterContext  # noqa: E402
from agent.queue import DurableQueue  # noqa: E402
from agent.reconcile_deletes import find_hard_deletes, published_primary_keys  # noqa: E402

SERVERS = {"postgres": "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
           "mariadb": "mysql+pymysql://root@127.0.0.1:3306/"}
FILL = {"postgres": "INSERT INTO erp_invoice SELECT g, g * 0.01, timestamp '2026-12-01' + g * interval '1 ms'"
                    " FROM generate_series(1, {rows}) g",
        "mariadb": "INSERT INTO erp_invoice SELECT seq, seq * 0.01, TIMESTAMP '2026-12-01 00:00:00' + INTERVAL seq * 1000"
                   " MICROSECOND FROM seq_1_to_{rows}"}


def fresh_database(kind: str, directory: Path) -> tuple[str, callable]:
    if kind == "sqlite":
        return f"sqlite:///{directory / 'legacy.db'}", lambda: None
    name = "outpost_b_" + uuid.uuid4().hex[:8]
    admin = sa.create_engine(SERVERS[kind], isolation_level="AUTOCOMMIT")
    quote = '"' if kind == "postgres" else "`"
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {quote}{name}{quote}")

    def drop():
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE {quote}{name}{quote}" + (" WITH (FORCE)" if kind == "postgres"
                                                                          else ""))
    return sa.engine.make_url(SERVERS[kind]).set(database=name).render_as_string(hide_password=False), drop


def fill(kind: str, url: str, rows: int) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE erp_invoice (inv_id BIGINT PRIMARY KEY, net NUMERIC(18,2),"
                             " updated_at TIMESTAMP NULL)")
        if kind == "sqlite":
            conn.exec_driver_sql(f"WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < {rows})"
                                 " INSERT INTO erp_invoice SELECT n, n * 0.01, datetime('2026-12-01') FROM g")
        else:
            conn.exec_driver_sql(FILL[kind].format(rows=rows))
    engine.dispose()


def fill_ledger(state: Path, rows: int) -> None:
    DurableQueue(state).close()
    conn = sqlite3.connect(state / "queue.db")
    conn.executemany("INSERT INTO ledger_keys VALUES ('invoices', ?, '2026-12-01', '{}', ?, 0)",
                     ((f"INV-{n}", f"[{n}]@2026-12-01T00:00:00") for n in range(1, rows + 1)))
    conn.commit()
    conn.close()


def search(url: str, state: Path, chunk_rows: int, rows_per_query: int) -> tuple:
    source = SqlPollSource({"url": url, "table": "erp_invoice", "cursor": "updated_at", "lag_seconds": 0},
                           AdapterContext("erp", state, None))
    reconciler = source.reconciler(rows_per_query)
    conn = sqlite3.connect(state / "queue.db")
    began = time.perf_counter()
    published = published_primary_keys(conn, "invoices")
    loaded = time.perf_counter() - began
    found = find_hard_deletes(published, reconciler, hash_key=reconciler.hash_key, chunk_rows=chunk_rows,
                              rows_per_query=rows_per_query, max_queries_per_second=1e9)
    took = time.perf_counter() - began
    reconciler.close()
    source.close()
    return found, took, loaded


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--db", nargs="+", default=["postgres", "mariadb", "sqlite"])
    parser.add_argument("--chunk-rows", type=int, default=20_000)
    parser.add_argument("--rows-per-query", type=int, default=5_000)
    args = parser.parse_args()
    for kind in args.db:
        with tempfile.TemporaryDirectory() as tmp:
            url, drop = fresh_database(kind, Path(tmp))
            try:
                fill(kind, url, args.rows)
                state = Path(tmp) / "state"
                fill_ledger(state, args.rows)
                found, took, loaded = search(url, state, args.chunk_rows, args.rows_per_query)
                print(f"{kind}: nothing changed: {found.source_queries} source queries, {found.ranges} ranges, "
                      f"{len(found.deleted)} deletes, {took:.2f} s (of which {loaded:.2f} s reading the ledger)")
                gone = random.Random(14).sample(range(1, args.rows + 1), args.rows // 1000)
                engine = sa.create_engine(url)
                with engine.begin() as conn:
                    for start in range(0, len(gone), 500):
                        conn.execute(sa.text("DELETE FROM erp_invoice WHERE inv_id IN :ids")
                                     .bindparams(sa.bindparam("ids", expanding=True)), {"ids": gone[start:start + 500]})
                engine.dispose()
                found, took, loaded = search(url, state, args.chunk_rows, args.rows_per_query)
                assert sorted(k.pk for k in found.deleted) == sorted(gone), "every deleted row found, nothing else"
                print(f"{kind}: 0.1% deleted ({len(gone)} rows): {found.source_queries} source queries, "
                      f"{found.ranges} ranges ({found.differing_ranges} differed), {len(found.deleted)} deletes found,"
                      f" {took:.2f} s")
            finally:
                drop()


if __name__ == "__main__":
    main()
