"""The sql_poll page fetch. Pages read on the driver's own cursor (adapters/sql_poll/driver.py),
on real engines: the same values as SQLAlchemy's execute path gives, errors still transient,
no transaction left open, a lost connection replaced. Records: positions and instants from
one conversion of the cursor value."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from adapters.sql_poll.keyset import row_position, row_position_utc, to_utc
from adapters.sql_poll.source import SqlPollSource
from agent.contracts import AdapterContext, TransientError

T0 = datetime(2024, 3, 1, 10, 0, 0, 123456)
TS = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


@pytest.fixture
def table(any_db_url):
    engine = sa.create_engine(any_db_url)
    md = sa.MetaData()
    t = sa.Table("orders", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                 sa.Column("updated_at", TS, nullable=False), sa.Column("amount", sa.Numeric(14, 2)),
                 sa.Column("due", sa.Date), sa.Column("deleted", sa.Boolean),
                 sa.Column("note", sa.String(40)))
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(t.insert(), [{"id": i, "updated_at": T0 + timedelta(seconds=i // 3), "amount": Decimal(f"{i}.05"),
                                   "due": T0.date() + timedelta(days=i), "deleted": i % 2 == 0,
                                   "note": None if i == 3 else f"n{i}"} for i in range(1, 11)])
    yield engine, t
    engine.dispose()


def source(url, tmp_path, **options):
    src = SqlPollSource({"url": url, "table": "orders", "cursor": "updated_at", "lag_seconds": 0,
                         "batch_size": 4, "snapshot_chunk": 3, **options}, AdapterContext("legacy", tmp_path, None))
    src.open()
    return src


def test_pages_bypass_sqlalchemys_execute_and_read_the_same_values(any_db_url, table, tmp_path):
    engine, t = table
    with engine.connect() as conn:   # what SQLAlchemy's own execute path gives, typed by the reflected table
        reflected = sa.Table("orders", sa.MetaData(), autoload_with=conn)
        expected = {r["id"]: dict(r) for r in conn.execute(sa.select(reflected)).mappings()}
    src = source(any_db_url, tmp_path)
    executes, cursor_sql = [], []
    sa.event.listen(src._engine, "before_execute", lambda conn, stmt, *_: executes.append(str(stmt)))
    sa.event.listen(src._engine, "before_cursor_execute", lambda conn, cur, sql, *_: cursor_sql.append(sql))
    try:
        snapshot = [r for b in src.batches(None) for r in b.records]
        polled = [r for b in src.batches({"v": 1, "phase": "incremental", "cursor": None, "pk": None})
                  for r in b.records]
    finally:
        src.close()
    pages = [sql for sql in cursor_sql if "ORDER BY" in sql]
    assert len(pages) >= 4 + 3, cursor_sql          # every chunk and page reached the driver
    assert not [s for s in executes if "ORDER BY" in s], "a page went through Connection.execute"
    for records in (snapshot, polled):
        assert sorted(r.after["id"] for r in records) == list(range(1, 11))
        for r in records:
            got = r.after
            assert got == expected[got["id"]]
            assert {k: type(v) for k, v in got.items()} == {k: type(v) for k, v in expected[got["id"]].items()}
    assert [r.after["id"] for r in polled] == list(range(1, 11))          # (updated_at, id) order


def test_resume_from_each_checkpoint_repeats_nothing(any_db_url, table, tmp_path):
    src = source(any_db_url, tmp_path)
    try:
        start = {"v": 1, "phase": "incremental", "cursor": None, "pk": None}
        full = [(b.records, json.loads(json.dumps(b.checkpoint))) for b in src.batches(start)]
        every = [r.position for recs, _ in full for r in recs]
        assert len(every) == 10 == len(set(every))
        for i, (_, cp) in enumerate(full):
            rest = [r.position for b in src.batches(cp) for r in b.records]
            assert [p for recs, _ in full[:i + 1] for p in (r.position for r in recs)] + rest == every
    finally:
        src.close()


def test_a_failing_page_is_transient_and_names_no_driver_type(any_db_url, table, tmp_path):
    engine, t = table
    src = source(any_db_url, tmp_path)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE orders RENAME TO orders_gone")
        with pytest.raises(TransientError, match="cannot poll"):
            list(src.batches({"v": 1, "phase": "incremental", "cursor": None, "pk": None}))
    finally:
        src.close()


def test_no_transaction_stays_open_between_pages(pg_url, tmp_path):
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE orders (id int PRIMARY KEY, updated_at timestamptz NOT NULL)")
        conn.exec_driver_sql("INSERT INTO orders SELECT g, now() - interval '1 hour' FROM generate_series(1, 10) g")
    src = source(pg_url, tmp_path)
    try:
        batches = src.batches({"v": 1, "phase": "incremental", "cursor": None, "pk": None})
        assert len(next(batches).records) == 4            # the caller holds the batch: no page runs
        with engine.connect() as conn:
            states = conn.exec_driver_sql("SELECT state FROM pg_stat_activity WHERE datname = current_database() "
                                          "AND pid <> pg_backend_pid()").scalars().all()
        assert states and "idle in transaction" not in states, states
        batches.close()
    finally:
        src.close()
        engine.dispose()


def test_a_lost_connection_is_replaced(pg_url, tmp_path):
    engine = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql("CREATE TABLE orders (id int PRIMARY KEY, updated_at timestamptz NOT NULL)")
        conn.exec_driver_sql("INSERT INTO orders SELECT g, now() - interval '1 hour' FROM generate_series(1, 10) g")
    src = source(pg_url, tmp_path)
    start = {"v": 1, "phase": "incremental", "cursor": None, "pk": None}
    try:
        assert len([r for b in src.batches(start) for r in b.records]) == 10
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                 "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        assert len([r for b in src.batches(start) for r in b.records]) == 10
    finally:
        src.close()
        engine.dispose()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.integers(), st.text(), st.decimals(allow_nan=False), st.uuids(),
                          st.datetimes(timezones=st.none() | st.just(timezone.utc))), min_size=1, max_size=3),
       st.none() | st.integers() | st.datetimes(),
       st.sampled_from([None, timezone.utc, ZoneInfo("America/New_York"), ZoneInfo("Asia/Kolkata")]))
def test_one_conversion_gives_the_released_position_and_the_instant(key, cursor, zone):
    """Event ids derive from positions: the capture's form must give row_position's text
    exactly, and the instant to_utc gives for an aware cursor (None otherwise)."""
    if isinstance(cursor, datetime) and zone is not None:
        cursor = cursor.replace(tzinfo=zone)
    position, instant = row_position_utc(key, cursor)
    assert position == row_position(key, cursor)
    aware = isinstance(cursor, datetime) and cursor.tzinfo is not None
    assert instant == (to_utc(cursor, ZoneInfo("Europe/Berlin")) if aware else None)


def test_check_warns_of_a_table_postgresql_never_analysed(pg_url, tmp_path):
    """With the cursor index but no statistics, PostgreSQL sorted every remaining row per page."""
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE orders (id int PRIMARY KEY, updated_at timestamp NOT NULL)")
        conn.exec_driver_sql("CREATE INDEX ON orders (updated_at, id)")
        conn.exec_driver_sql("INSERT INTO orders SELECT g, now() FROM generate_series(1, 100) g")
    src = SqlPollSource({"url": pg_url, "table": "orders", "cursor": "updated_at"}, AdapterContext("legacy", tmp_path, None))
    [warning] = src.check()
    assert warning.startswith("warning: orders has never been analysed") and "ANALYZE orders" in warning
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE orders")
    assert src.check() == []
    engine.dispose()
