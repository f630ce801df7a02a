"""The sql_poll source against SQLite, PostgreSQL and MariaDB (real engines)."""
from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from adapters.sql_poll.source import SqlPollSource
from agent.contracts import AdapterContext, ConfigError, TransientError

T0 = datetime(2024, 3, 1, 10, 0, 0)
# MariaDB's plain DATETIME drops fractional seconds; (6) keeps them like the other engines.
TS = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


@pytest.fixture
def make_source(tmp_path):
    """Opened sources with no lag (tests that need one say so); closed after the test."""
    opened = []

    def make(url, **options):
        opened.append(SqlPollSource({"url": url, "lag_seconds": 0, **options},
                                    AdapterContext("legacy", tmp_path, None)))
        opened[-1].open()
        return opened[-1]

    yield make
    for src in opened:
        src.close()


@pytest.fixture
def engines():
    made = []
    yield lambda url: made.append(sa.create_engine(url)) or made[-1]
    for e in made:
        e.dispose()


def run(src, checkpoint):
    """[(records, checkpoint)] per batch; checkpoints go through JSON like the real queue."""
    return [(b.records, json.loads(json.dumps(b.checkpoint))) for b in src.batches(checkpoint)]


def positions(batches):
    return [r.position for recs, _ in batches for r in recs]


def orders_table(engine, *, rows=20, shared=12):
    """20 orders; the first `shared` (scattered ids) share T0, the rest one minute apart."""
    md = sa.MetaData()
    t = sa.Table("orders", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                 sa.Column("updated_at", TS, nullable=False),
                 sa.Column("amount", sa.Numeric(14, 2), nullable=False),
                 sa.Column("deleted", sa.Boolean, nullable=False, default=False),
                 sa.Column("note", sa.String(40)))
    md.create_all(engine)
    ids = [(i * 7) % rows + 1 for i in range(rows)]      # shuffled so time order != pk order
    data = [{"id": ids[i], "updated_at": T0 if i < shared else T0 + timedelta(minutes=i),
             "amount": Decimal(f"{i}.{i:02d}"), "deleted": False, "note": f"n{i}"}
            for i in range(rows)]
    with engine.begin() as conn:
        conn.execute(t.insert(), data)
    return t


def assert_resumable(src, full):
    """Restarting from any checkpoint yields exactly the rest: no duplicate, no gap."""
    all_pos = positions(full)
    for i, (_, cp) in enumerate(full):
        done = positions(full[: i + 1])
        assert done + positions(run(src, cp)) == all_pos, f"resume from batch {i}: {cp}"


# ---- all three engines --------------------------------------------------------------

def test_snapshot_then_incremental_captures_each_row_once(any_db_url, make_source, engines):
    eng = engines(any_db_url)
    t = orders_table(eng)
    src = make_source(any_db_url, table="orders", cursor="updated_at",
                      batch_size=3, snapshot_chunk=4)

    first = run(src, None)
    snap = [r for recs, _ in first for r in recs]
    assert [r.operation for r in snap] == ["snapshot"] * 20
    assert [r.after["id"] for r in snap] == list(range(1, 21))   # chunked by pk
    assert len(set(r.position for r in snap)) == 20
    assert first[-1][1]["phase"] == "incremental"
    assert_resumable(src, first)

    # Changes after the snapshot come back as updates, once each.
    with eng.begin() as conn:
        conn.execute(t.update().where(t.c.id.in_([2, 5, 11]))
                     .values(note="changed", updated_at=sa.func.current_timestamp()))
        conn.execute(t.insert().values(id=21, updated_at=sa.func.current_timestamp(),
                                       amount=Decimal("1.00"), deleted=False))
    later = run(src, first[-1][1])
    recs = [r for rs, _ in later for r in rs]
    assert sorted(r.after["id"] for r in recs) == [2, 5, 11, 21]
    assert {r.operation for r in recs} == {"update"}
    assert not set(r.position for r in recs) & set(r.position for r in snap)
    assert run(src, later[-1][1]) == []          # caught up: nothing repeats


def test_keyset_pages_through_shared_cursor_values(any_db_url, make_source, engines):
    orders_table(engines(any_db_url))
    src = make_source(any_db_url, table="orders", cursor="updated_at", batch_size=3)
    start = {"v": 1, "phase": "incremental", "cursor": None, "pk": None}   # from the beginning
    full = run(src, start)
    recs = [r for rs, _ in full for r in rs]
    assert len(full) == 7 and len(recs) == 20
    keys = [(r.after["updated_at"], r.after["id"]) for r in recs]
    assert keys == sorted(keys) and len(set(keys)) == 20
    assert all(r.operation == "update" for r in recs)
    assert_resumable(src, full)


def test_same_row_version_has_same_position_in_snapshot_and_polling(any_db_url, make_source, engines):
    orders_table(engines(any_db_url))
    snap = make_source(any_db_url, table="orders", cursor="updated_at")
    poll = make_source(any_db_url, table="orders", cursor="updated_at")
    a = positions(run(snap, None))
    b = positions(run(poll, {"v": 1, "phase": "incremental", "cursor": None, "pk": None}))
    assert sorted(a) == sorted(b)


def test_soft_delete_yields_delete_records(any_db_url, make_source, engines):
    eng = engines(any_db_url)
    t = orders_table(eng, rows=5, shared=2)
    with eng.begin() as conn:
        conn.execute(t.update().where(t.c.id == 3).values(deleted=True))
    src = make_source(any_db_url, table="orders", cursor="updated_at",
                      soft_delete={"column": "deleted", "value": True})
    first = run(src, None)
    by_id = {(r.after or r.before)["id"]: r for rs, _ in first for r in rs}
    assert by_id[3].operation == "delete" and by_id[3].after is None
    assert by_id[3].before["id"] == 3
    assert {by_id[i].operation for i in (1, 2, 4, 5)} == {"snapshot"}

    with eng.begin() as conn:
        conn.execute(t.update().where(t.c.id == 4)
                     .values(deleted=True, updated_at=sa.func.current_timestamp()))
    [(recs, _)] = run(src, first[-1][1])
    assert [(r.operation, r.before["id"], r.after) for r in recs] == [("delete", 4, None)]


def test_decimal_amounts_stay_decimal(any_db_url, make_source, engines):
    eng = engines(any_db_url)
    t = orders_table(eng, rows=1, shared=1)
    amounts = [Decimal("123456789012.34"), Decimal("0.10"), Decimal("-5.05")]
    with eng.begin() as conn:
        conn.execute(t.insert(), [{"id": 100 + i, "updated_at": T0, "amount": a, "deleted": False}
                                  for i, a in enumerate(amounts)])
    src = make_source(any_db_url, table="orders", cursor="updated_at")
    got = [r.after["amount"] for rs, _ in run(src, None) for r in rs if r.after["id"] >= 100]
    assert all(type(a) is Decimal for a in got)
    assert got == amounts and [str(a) for a in got] == [str(a) for a in amounts]


def test_composite_primary_key_keyset(any_db_url, make_source, engines):
    eng = engines(any_db_url)
    md = sa.MetaData()
    t = sa.Table("invoice_line", md, sa.Column("company", sa.String(10), primary_key=True),
                 sa.Column("invoice_no", sa.Integer, primary_key=True, autoincrement=False),
                 sa.Column("updated_at", TS, nullable=False), sa.Column("qty", sa.Integer))
    md.create_all(eng)
    keys = [(c, n) for c in ("ACME", "BETA", "ZED") for n in (3, 1, 2, 10)]
    with eng.begin() as conn:
        conn.execute(t.insert(), [{"company": c, "invoice_no": n, "updated_at": T0, "qty": n}
                                  for c, n in keys])
    src = make_source(any_db_url, table="invoice_line", cursor="updated_at",
                      batch_size=2, snapshot_chunk=5)
    full = run(src, None)
    got = [(r.after["company"], r.after["invoice_no"]) for rs, _ in full for r in rs]
    assert got == sorted(keys)
    assert_resumable(src, full)
    poll = run(src, {"v": 1, "phase": "incremental", "cursor": None, "pk": None})
    assert [(r.after["company"], r.after["invoice_no"]) for rs, _ in poll for r in rs] == sorted(keys)
    assert_resumable(src, poll)


def test_integer_cursor(any_db_url, make_source, engines):
    eng = engines(any_db_url)
    md = sa.MetaData()
    t = sa.Table("ledger", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                 sa.Column("version", sa.BigInteger, nullable=False))
    md.create_all(eng)
    with eng.begin() as conn:
        conn.execute(t.insert(), [{"id": i, "version": i // 3} for i in range(1, 11)])
    src = make_source(any_db_url, table="ledger", cursor="version", batch_size=4, snapshot="none")
    first = run(src, None)
    assert first[0][0] == [] and first[0][1]["cursor"] == {"t": "int", "v": 3}
    # The start is inclusive, so rows holding the maximum at that moment are emitted once.
    assert [r.after["id"] for rs, _ in first for r in rs] == [9, 10]
    with eng.begin() as conn:
        conn.execute(t.insert(), [{"id": 11, "version": 4}, {"id": 12, "version": 4}])
    recs = [r for rs, _ in run(src, first[-1][1]) for r in rs]
    assert [r.after["id"] for r in recs] == [11, 12]
    assert all(r.occurred_at is None for r in recs)


# ---- PostgreSQL: commits out of cursor order ------------------------------------------

def _out_of_order(pg_url, make_source, engines, lag):
    eng = engines(pg_url)
    with eng.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE job (id int PRIMARY KEY, updated_at timestamptz NOT NULL)")
        conn.exec_driver_sql("INSERT INTO job VALUES (0, now() - interval '1 minute')")
    src = make_source(pg_url, table="job", cursor="updated_at", lag_seconds=lag)
    first = run(src, None)
    seen = [r for rs, _ in first for r in rs]
    cp = first[-1][1]
    slow = eng.connect()                    # a long write transaction: now() = its start time
    slow.exec_driver_sql("INSERT INTO job VALUES (1, now())")
    time.sleep(0.2)
    with eng.begin() as conn:               # a later row that commits first
        conn.exec_driver_sql("INSERT INTO job VALUES (2, now())")
    time.sleep(0.2)
    for rs, cp in run(src, cp):             # poll while the slow transaction is still open
        seen += rs
    slow.commit()
    slow.close()
    time.sleep(lag + 0.3)
    for rs, cp in run(src, cp):
        seen += rs
    return [r.after["id"] for r in seen], seen


def test_pg_rows_committed_out_of_order_are_caught(pg_url, make_source, engines):
    ids, seen = _out_of_order(pg_url, make_source, engines, lag=1.0)
    assert ids == [0, 1, 2]
    assert len({r.position for r in seen}) == 3
    assert all(r.occurred_at.tzinfo is timezone.utc for r in seen)


def test_pg_without_lag_the_late_commit_is_lost(pg_url, make_source, engines):
    # Why lag_seconds exists: with no lag the later row moves the checkpoint past the slow one.
    ids, _ = _out_of_order(pg_url, make_source, engines, lag=0)
    assert ids == [0, 2]


def test_pg_naive_column_follows_the_session_zone(pg_url, make_source, engines):
    # now() into a naive column writes the session's wall time; the signpost must match it,
    # not UTC, or a Tokyo session would read nine hours into the future.
    url = pg_url + "?options=-c%20TimeZone%3DAsia/Tokyo"
    with engines(url).begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (id int PRIMARY KEY, updated_at timestamp NOT NULL)")
        conn.exec_driver_sql("INSERT INTO t VALUES (1, now() - interval '10 seconds')")
    src = make_source(url, table="t", cursor="updated_at", lag_seconds=3, snapshot="none",
                      source_timezone="Asia/Tokyo")
    cp = run(src, None)[-1][1]
    with engines(url).begin() as conn:
        conn.exec_driver_sql("INSERT INTO t VALUES (2, now())")
    assert run(src, cp) == []                   # inside the lag: not yet
    time.sleep(3.2)
    [(recs, _)] = run(src, cp)
    assert [r.after["id"] for r in recs] == [2]
    age = datetime.now(timezone.utc) - recs[0].occurred_at
    assert timedelta(seconds=3) < age < timedelta(seconds=10)


# ---- configuration and connectivity -------------------------------------------------

def test_bad_config_lists_every_problem(sqlite_url, make_source, engines):
    orders_table(engines(sqlite_url), rows=1)
    with pytest.raises(ConfigError) as e:
        make_source(sqlite_url, table="nope", cursor="updated_at")
    assert "'nope'" in str(e.value)
    with pytest.raises(ConfigError) as e:
        make_source(sqlite_url, table="orders", cursor="changed_on", columns=["id", "ghost"],
                    soft_delete={"column": "gone", "not_null": True})
    assert len(e.value.problems) == 3
    assert all(n in str(e.value) for n in ("changed_on", "ghost", "gone"))
    with pytest.raises(ConfigError, match="timestamp or an integer"):
        make_source(sqlite_url, table="orders", cursor="note")
    with pytest.raises(ConfigError) as e:
        make_source(sqlite_url, table="orders", cursor="updated_at", bogus=1, lag_seconds=-1)
    assert len(e.value.problems) == 2 and "bogus" in str(e.value) and "lag_seconds" in str(e.value)
    with pytest.raises(ConfigError, match="'cursor'"):
        make_source(sqlite_url, table="orders")


def test_table_without_primary_key(sqlite_url, make_source, engines):
    with engines(sqlite_url).begin() as conn:
        conn.exec_driver_sql("CREATE TABLE heap (code TEXT, updated_at DATETIME)")
    with pytest.raises(ConfigError, match="no primary key"):
        make_source(sqlite_url, table="heap", cursor="updated_at")
    src = make_source(sqlite_url, table="heap", cursor="updated_at", primary_key="code")
    assert run(src, None)[-1][1]["phase"] == "incremental"


@pytest.mark.parametrize("url", ["postgresql+psycopg://outpost:s3cretpw@127.0.0.1:1/erp",
                                 "mysql+pymysql://outpost:s3cretpw@127.0.0.1:1/erp"])
def test_unreachable_database_is_transient_without_password(url, tmp_path):
    src = SqlPollSource({"url": url, "table": "orders", "cursor": "updated_at"},
                        AdapterContext("legacy", tmp_path, None))
    with pytest.raises(TransientError) as e:
        src.open()
    assert "s3cretpw" not in str(e.value) and "127.0.0.1" in str(e.value)
    problems = src.check()
    assert problems and not any("s3cretpw" in p for p in problems)
    src.close()
    src.close()


def test_check_warns_without_cursor_index(any_db_url, engines, tmp_path):
    eng = engines(any_db_url)
    t = orders_table(eng, rows=1)
    src = SqlPollSource({"url": any_db_url, "table": "orders", "cursor": "updated_at"},
                        AdapterContext("legacy", tmp_path, None))
    # (on MariaDB check also warns that no ON UPDATE keeps the cursor current: not this test's subject)
    [warning] = [w for w in src.check() if "ON UPDATE" not in w]
    assert warning.startswith("warning:") and "updated_at" in warning
    sa.Index("ix_orders_updated", t.c.updated_at, t.c.id).create(eng)
    if eng.dialect.name == "postgresql":      # a table never analysed is warned of too (test_sql_poll_fetch)
        with eng.begin() as conn:
            conn.exec_driver_sql("ANALYZE orders")
    assert [w for w in src.check() if "ON UPDATE" not in w] == []


# ---- SQLite specifics and pure helpers ----------------------------------------------

def test_sqlite_text_timestamps_in_mixed_formats_tie(sqlite_url, make_source, engines):
    with engines(sqlite_url).begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, updated_at DATETIME)")
        conn.exec_driver_sql("INSERT INTO t VALUES (1, '2024-01-01 10:00:00'), "
                             "(2, '2024-01-01 10:00:00.000000'), (3, '2024-01-01T10:00:00'), "
                             "(4, '2024-01-01 09:59:59.5')")
    src = make_source(sqlite_url, table="t", cursor="updated_at", batch_size=1,
                      source_timezone="Europe/Berlin")
    full = run(src, {"v": 1, "phase": "incremental", "cursor": None, "pk": None})
    assert [r.after["id"] for rs, _ in full for r in rs] == [4, 1, 2, 3]
    assert_resumable(src, full)
    assert full[1][0][0].occurred_at == datetime(2024, 1, 1, 9, 0, tzinfo=timezone.utc)


def test_snapshot_only_mode(sqlite_url, make_source, engines):
    orders_table(engines(sqlite_url), rows=5)
    src = make_source(sqlite_url, table="orders", mode="snapshot_only", snapshot_chunk=2)
    full = run(src, None)
    assert full[-1][1]["phase"] == "done" and len(positions(full)) == 5
    assert positions(full)[0] == "[1]"
    assert run(src, full[-1][1]) == []
