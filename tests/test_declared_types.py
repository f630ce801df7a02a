"""Values are read by the column's declared type, on every source path (issue 12, defects 1-3).

Real SQLite, PostgreSQL and MariaDB (binlog on the shared server: log_bin, ROW, FULL).
A double is the decimal it stands for, rounded to the column's declared scale, then
half-even to the schema's; a zone-aware column (MariaDB TIMESTAMP, PostgreSQL timestamptz)
is an instant whatever the session's zone and the mapping's ``source_timezone``.
"""
from __future__ import annotations

import datetime as dt
from decimal import Decimal

import sqlalchemy as sa

from adapters.binlog.source import BinlogSource
from adapters.sql_poll.source import SqlPollSource
from agent.config import MappingConfig
from agent.contracts import AdapterContext
from agent.mapping import EntityMapping
from agent.schemas import SchemaCatalog
from agent.translate import Translator
from tests.support.binlog import execute

CATALOG = SchemaCatalog.load()
UTC = dt.timezone.utc
# 1234.56789012 is the ERP's usual case; the others are half-way cases (as decimals) whose
# doubles lie on either side of the tie: 2.675 is 2.67499999..., -0.005 is -0.00500000000000000044
AMOUNTS = {1: "1234.56789012", 2: "2.675", 3: "0.125", 4: "-0.005", 5: "0.10000000"}
EXPECTED = {1: Decimal("1234.57"), 2: Decimal("2.68"), 3: Decimal("0.12"), 4: Decimal("0.00"), 5: Decimal("0.10")}
DOUBLE = {"sqlite": "REAL", "postgresql": "DOUBLE PRECISION", "mysql": "DOUBLE(24,8)"}


def customer_mapping(stamp: str = "stamp", zone: str = "Europe/Paris") -> EntityMapping:
    config = MappingConfig.model_validate({"entity": "Customer", "source_timezone": zone, "fields": {
        "customer_number": {"expr": "text(rowid)"}, "name": {"const": "n"}, "legal_entity": {"const": "US01"},
        "currency": {"const": "EUR"}, "tax_jurisdiction": {"const": "US-NY"}, "credit_limit": "credit_limit",
        "updated_at": stamp}})
    return EntityMapping("customer", config, CATALOG.entity("Customer"), {})


def published(records, mapping=None) -> list[dict]:
    translator = Translator("customers", "out", "erp", mapping or customer_mapping())
    events, failures = translator.translate(records)
    assert failures == [], [f["reason"] for f in failures]
    return [CATALOG.entity("Customer").decode(e["body"]) for e in events]


def poll(url: str, tmp_path, table: str = "llx_societe") -> list:
    source = SqlPollSource({"url": url, "table": table, "mode": "snapshot_only", "lag_seconds": 0},
                           AdapterContext("erp", tmp_path, None))
    try:
        return [r for batch in source.batches(None) for r in batch.records]
    finally:
        source.close()


def test_double_amounts_are_rounded_half_even_by_sql_poll(any_db_url, tmp_path):
    """Defect 1: SQLAlchemy hands a MariaDB double(24,8) over as Decimal('1234.56789012'),
    and the decimal rule refused it ('more than 2 decimal places') instead of rounding it."""
    engine = sa.create_engine(any_db_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE llx_societe (rowid INTEGER PRIMARY KEY, "
                             f"credit_limit {DOUBLE[engine.dialect.name]}, stamp DATE)")
        conn.execute(sa.text("INSERT INTO llx_societe VALUES (:id, :amount, NULL)"),
                     [{"id": i, "amount": float(text)} for i, text in AMOUNTS.items()])
    engine.dispose()
    events = published(poll(any_db_url, tmp_path))
    assert {int(e["key"]): e["after"]["credit_limit"] for e in events} == EXPECTED


def test_double_amounts_agree_on_sql_poll_binlog_snapshot_and_stream(tmp_path, mariadb_url):
    """Defect 2: -0.005 in a double(24,8) gave 0.00 by the snapshot and -0.01 by the
    stream, so the next unchanged UPDATE of the row was rejected as negative."""
    values = ", ".join(f"({i}, {text}, 0)" for i, text in AMOUNTS.items())
    execute(mariadb_url, "CREATE TABLE llx_societe (rowid INT PRIMARY KEY, credit_limit DOUBLE(24,8), "
                         "touched INT, stamp DATE)", f"INSERT INTO llx_societe (rowid, credit_limit, touched) VALUES {values}")
    source = BinlogSource({"url": mariadb_url, "table": "llx_societe", "snapshot": "initial"},
                          AdapterContext("erp", tmp_path / "state", None))
    try:
        snapshot, checkpoint = [], None
        for batch in source.batches(None):
            snapshot, checkpoint = snapshot + batch.records, batch.checkpoint
        execute(mariadb_url, "UPDATE llx_societe SET touched = 1")      # amounts unchanged
        stream = [r for batch in source.batches(checkpoint) for r in batch.records]
    finally:
        source.close()
    assert [r.operation for r in snapshot] == ["snapshot"] * 5 and [r.operation for r in stream] == ["update"] * 5
    by_path = {"sql_poll": published(poll(mariadb_url, tmp_path)), "snapshot": published(snapshot),
               "stream": published(stream)}
    for path, events in by_path.items():
        assert {int(e["key"]): e["after"]["credit_limit"] for e in events} == EXPECTED, path
    assert {int(e["key"]): e["before"]["credit_limit"] for e in by_path["stream"]} == EXPECTED


ZONE_AWARE = {"postgresql": "TIMESTAMPTZ", "mysql": "TIMESTAMP(6) NULL"}
NAIVE = {"sqlite": "TIMESTAMP", "postgresql": "TIMESTAMP", "mysql": "DATETIME(6)"}
# the session of the capture is in a zone of its own, neither UTC nor the mapping's
SESSION = {"postgresql": "?options=-c%20timezone%3DAmerica/New_York",
           "mysql": "?init_command=SET%20time_zone%3D%27-05:00%27"}


def test_zone_aware_timestamps_are_never_shifted_by_the_mapping_zone(any_db_url, tmp_path):
    """Defect 3: with source_timezone Europe/Paris (meant for DATETIME columns) a MariaDB
    TIMESTAMP came out one hour early. A zone-aware column is an instant; only naive ones
    take the mapping's zone."""
    engine = sa.create_engine(any_db_url)
    dialect = engine.dialect.name
    aware = ZONE_AWARE.get(dialect)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE llx_societe (rowid INTEGER PRIMARY KEY, credit_limit NUMERIC(10,2), "
                             f"wall {NAIVE[dialect]}" + (f", instant {aware}" if aware else "") + ")")
        if dialect == "mysql":
            conn.exec_driver_sql("SET time_zone = '+00:00'")
        columns = "rowid, wall" + (", instant" if aware else "")
        stamps = "'2026-01-15 10:00:00'" + (", '2026-01-15 10:00:00+00'" if dialect == "postgresql" else
                                            ", '2026-01-15 10:00:00'" if aware else "")
        conn.exec_driver_sql(f"INSERT INTO llx_societe ({columns}) VALUES (1, {stamps})")
    engine.dispose()
    records = poll(any_db_url + SESSION.get(dialect, ""), tmp_path)
    (wall,) = published(records, customer_mapping("wall"))
    assert wall["after"]["updated_at"] == dt.datetime(2026, 1, 15, 9, 0, tzinfo=UTC), "naive: Paris wall time"
    if aware:
        (instant,) = published(records, customer_mapping("instant"))
        assert instant["after"]["updated_at"] == dt.datetime(2026, 1, 15, 10, 0, tzinfo=UTC), "aware: the instant"
