"""sql_poll's positions and keyset: checkpoint values, position text (event ids derive from
it), the keyset predicate per dialect, and the PostgreSQL plan it must get (real server)."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from adapters.sql_poll.keyset import keyset_after
from adapters.sql_poll.source import SqlPollSource, align_clock, decode_value, encode_value, row_position
from agent.contracts import AdapterContext
from tests.support.route import create_tables

T0 = datetime(2024, 3, 1, 10, 0, 0)


def test_checkpoint_values_round_trip():
    values = [1, "A-1", Decimal("10.50"), T0, datetime(2024, 1, 1, tzinfo=timezone.utc),
              T0.date(), True, None, b"\x00\xff"]
    for v in values:
        back = decode_value(json.loads(json.dumps(encode_value(v))))
        assert back == v and type(back) is type(v)


def test_positions_are_stable_and_zone_independent():
    berlin = datetime(2024, 1, 1, 11, tzinfo=ZoneInfo("Europe/Berlin"))
    utc = datetime(2024, 1, 1, 10, tzinfo=timezone.utc)
    assert row_position([42, "X"], berlin) == row_position([42, "X"], utc) == \
        '[42, "X"]@2024-01-01T10:00:00+00:00'
    assert row_position([Decimal("7.0")], None) == '["7.0"]'


def test_align_clock():
    berlin, noon = ZoneInfo("Europe/Berlin"), datetime(2024, 1, 1, 12)

    def align(now, utc, aware):
        return align_clock(now, clock_is_utc=utc, column_aware=aware, zone=berlin)

    assert align(noon.replace(tzinfo=berlin), False, False) == noon     # psycopg, naive column
    assert align(noon.replace(tzinfo=berlin), False, True) == noon.replace(tzinfo=berlin)
    assert align(datetime(2024, 1, 1, 11), True, False) == noon         # SQLite's clock is UTC
    assert align(noon, False, False) == noon                            # MariaDB: session wall time


def test_keyset_without_row_values_is_a_chain_led_by_a_range_bound():
    a, b, c = sa.column("a"), sa.column("b"), sa.column("c")
    sql = str(keyset_after([(a, 1), (b, 2), (c, 3)]).compile(dialect=postgresql.dialect()))
    assert sql.startswith("a >=") and "a =" in sql and "c >" in sql
    assert sql.count("OR") == 2 and sql.count("AND") == 3


def test_keyset_with_row_values_is_one_comparison():
    a, b = sa.column("a"), sa.column("b")
    sql = str(keyset_after([(a, 1), (b, 2)], row_values=True).compile(dialect=postgresql.dialect()))
    assert sql.startswith("(a, b) > (") and "OR" not in sql and sql.count("%(param_") == 2


def test_catching_up_pages_by_an_index_range_on_postgres(pg_url):
    """The OR/AND keyset could not bound an index scan: every page deep into a big table
    cost PostgreSQL tens of milliseconds. The plan must start the index range at the
    checkpoint (an Index Cond on the row value), however far in the position is."""
    engine = create_tables(pg_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE INDEX erp_customer_keyset ON erp_customer (updated_at, cust_no)")
        conn.exec_driver_sql("INSERT INTO erp_customer (cust_no, cust_name, updated_at) SELECT 'C-' || g, 'n', "
                             "now() - interval '1 day' + g * interval '1 ms' FROM generate_series(1, 50000) g")
        conn.exec_driver_sql("ANALYZE erp_customer")
    source = SqlPollSource({"url": pg_url, "table": "erp_customer", "cursor": "updated_at", "snapshot": "none",
                            "lag_seconds": 0, "batch_size": 500}, AdapterContext("erp", Path("."), None))
    statements = []

    def seen(conn, cursor, sql, params, *_):
        statements.append((sql, params))

    with engine.connect() as conn:
        middle = conn.execute(sa.text("SELECT now() - interval '1 day' + 25000 * interval '1 ms'")).scalar()
    checkpoint = {"v": 1, "phase": "incremental", "cursor": encode_value(middle), "pk": [encode_value("C-25000")]}
    sa.event.listen(sa.Engine, "before_cursor_execute", seen)
    try:
        batch = next(source.batches(checkpoint))
    finally:
        sa.event.remove(sa.Engine, "before_cursor_execute", seen)
        source.close()
    assert len(batch.records) == 500
    page_sql, params = next((sql, p) for sql, p in statements if "ORDER BY" in sql and "erp_customer" in sql)
    with engine.connect() as conn:
        plan = "\n".join(row[0] for row in conn.exec_driver_sql("EXPLAIN " + page_sql, params))
    index_cond = next(line for line in plan.splitlines() if "Index Cond:" in line)
    assert "Index Scan using erp_customer_keyset" in plan, plan
    assert "ROW(updated_at, cust_no) > ROW(" in index_cond, plan
    assert "Filter:" not in plan, "the position bounds the scan; nothing is read and thrown away"


@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(st.integers(), st.text(), st.booleans(), st.decimals(allow_nan=False),
                          st.datetimes(timezones=st.none() | st.just(timezone.utc)), st.uuids()),
                min_size=1, max_size=3),
       st.none() | st.datetimes())
def test_positions_are_exactly_what_json_dumps_gave(key, cursor):
    """Event ids derive from positions: the fast text must equal the released one."""
    from adapters.sql_poll.keyset import plain as _plain
    released = json.dumps([_plain(v) for v in key])
    released = released if cursor is None else f"{released}@{_plain(cursor)}"
    assert row_position(key, cursor) == released
