#!/usr/bin/env python
"""PostgreSQL CPU per sql_poll page, by position in a 1M-row table with a backlog.

Run:  .venv/bin/python bench/bench_keyset.py [--rows 1000000] [--pages 20]

A fresh PostgreSQL database with the tests' ``erp_customer`` table, 1M rows whose cursor
(``updated_at``) increases with the key, and the index ``(updated_at, cust_no)`` that
`outpost check` asks for. From three checkpoints (the start, the middle, near the end)
the real ``sql_poll`` source reads ``--pages`` pages of 2,000 rows; the CPU time of the
PostgreSQL backend serving it (user+sys, psutil) is taken per page. With the row-value
keyset the figure is the same at every position; the OR/AND chain it replaced let
PostgreSQL filter the table up to the position (57-101 ms of server CPU per page).
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
import sqlalchemy as sa  # noqa: E402

from adapters.sql_poll.source import SqlPollSource, encode_value  # noqa: E402
from agent.contracts import AdapterContext  # noqa: E402

SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def released_keyset(pairs, row_values=False):
    """The keyset of the previous release: the OR/AND chain alone (for comparison)."""
    expr, value = pairs[-1]
    cond = expr > value
    for expr, value in reversed(pairs[:-1]):
        cond = sa.or_(expr > value, sa.and_(expr == value, cond))
    return cond


def server_ms_per_page(url: str, checkpoint: dict, pages: int, row_values: bool, released: bool) -> float:
    """Backend CPU over ``pages`` pages read from ``checkpoint``, per page (psutil's clock
    tick is 10 ms: a total over many pages, not one page at a time)."""
    source = SqlPollSource({"url": url, "table": "erp_customer", "cursor": "updated_at", "lag_seconds": 0,
                            "batch_size": 2000}, AdapterContext("erp", Path("."), None))
    source.open()
    source._row_values = source._pages.row_values = row_values    # the form released before, for comparison
    with source._engine.connect() as conn:    # the pool's one connection: the pages' backend
        backend = psutil.Process(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar())
    import adapters.sql_poll.keyset as module    # the page shapes (adapters/sql_poll/pages.py) call it there
    current = module.keyset_after
    module.keyset_after = released_keyset if released else current
    try:
        before = sum(backend.cpu_times()[:2])
        batches = source.batches(checkpoint)
        for _ in range(pages):
            assert len(next(batches).records) == 2000
        used = sum(backend.cpu_times()[:2]) - before
        batches.close()
    finally:
        module.keyset_after = current
    source.close()
    return used / pages * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--pages", type=int, default=20)
    a = ap.parse_args()
    from tests.support.route import CUSTOMER_DDL
    name = "outpost_keyset_" + uuid.uuid4().hex[:8]
    admin = sa.create_engine(SERVER, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = sa.engine.make_url(SERVER).set(database=name).render_as_string(hide_password=False)
    engine = sa.create_engine(url)
    base = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(CUSTOMER_DDL)
            conn.exec_driver_sql("CREATE INDEX erp_customer_cursor ON erp_customer (updated_at, cust_no)")
            conn.exec_driver_sql(f"INSERT INTO erp_customer (cust_no, cust_name, company, curr, tax_code, credit_lim,"
                                 f" updated_at) SELECT 'C-' || lpad(g::text, 8, '0'), 'n', '01', 'USD', 'NY', 1,"
                                 f" timestamptz '{base.isoformat()}' + g * interval '1 ms'"
                                 f" FROM generate_series(1, {a.rows}) g")
            conn.exec_driver_sql("ANALYZE erp_customer")
        print(f"{a.rows:,} rows; {a.pages} pages of 2,000 rows from each position")
        for fraction in (0.0, 0.5, 0.9):
            n = int(a.rows * fraction)
            at = base + dt.timedelta(milliseconds=n)
            checkpoint = {"v": 1, "phase": "incremental", "cursor": encode_value(at),
                          "pk": [encode_value(f"C-{n:08d}")]}
            results = []
            for label, row_values, released in (("row value", True, False), ("bounded OR chain", False, False),
                                                ("released OR chain", False, True)):
                ms = server_ms_per_page(url, checkpoint, a.pages, row_values, released)
                results.append(f"{label} {ms:.2f} ms")
            print(f"  from row {n:>9,}: PostgreSQL CPU per page: {', '.join(results)}")
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


if __name__ == "__main__":
    main()
