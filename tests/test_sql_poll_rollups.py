"""Roll-ups of child tables on SQLite, PostgreSQL and MariaDB (issue 12, build item 4): a
contract's value is the sum of its lines, recomputed and published again when a line
changes although the contract row itself did not."""
from __future__ import annotations

import json
import time
from decimal import Decimal

import sqlalchemy as sa

from adapters.sql_poll.source import SqlPollSource
from agent.config import MappingConfig
from agent.contracts import AdapterContext
from agent.mapping import EntityMapping
from agent.schemas import SchemaCatalog
from agent.translate import Translator

CATALOG = SchemaCatalog.load()
NOW = {"sqlite": "strftime('%Y-%m-%d %H:%M:%f', 'now')", "postgresql": "clock_timestamp()", "mysql": "NOW(6)"}
STAMP = {"sqlite": "TIMESTAMP", "postgresql": "TIMESTAMP", "mysql": "DATETIME(6)"}
CONTRACT = MappingConfig.model_validate({"entity": "Contract", "fields": {
    "contract_number": "ref", "customer_number": {"const": "CU-1"}, "legal_entity": {"const": "US01"},
    "currency": {"const": "EUR"}, "billing_type": {"expr": "concat(text(lines), ' line(s)')"},
    "total_value": "value", "start_date": {"const": "2026-01-01"}}})


def values_of(records) -> list[tuple]:
    translator = Translator("contracts", "out", "erp", EntityMapping("c", CONTRACT, CATALOG.entity("Contract"), {}))
    events, failures = translator.translate(records)
    assert failures == []
    decoded = [CATALOG.entity("Contract").decode(e["body"])["after"] for e in events]
    return [(c["contract_number"], c["total_value"], c["billing_type"]) for c in decoded]


def test_a_contract_is_published_again_with_its_new_total_when_a_line_changes(any_db_url, tmp_path):
    engine = sa.create_engine(any_db_url)
    dialect = engine.dialect.name
    now, stamp = NOW[dialect], STAMP[dialect]

    def sql(*statements):
        time.sleep(0.01)
        with engine.begin() as conn:
            for statement in statements:
                conn.exec_driver_sql(statement.replace("NOW", now))

    sql(f"CREATE TABLE llx_contrat (rowid INTEGER PRIMARY KEY, ref VARCHAR(20), tms {stamp})",
        f"CREATE TABLE llx_contratdet (rowid INTEGER PRIMARY KEY, fk_contrat INTEGER, total_ht NUMERIC(12,2), "
        f"tms {stamp})",
        "INSERT INTO llx_contrat VALUES (1, 'CT-1', NOW)", "INSERT INTO llx_contrat VALUES (2, 'CT-2', NOW)",
        "INSERT INTO llx_contratdet VALUES (10, 1, 10.00, NOW)", "INSERT INTO llx_contratdet VALUES (11, 1, 5.50, NOW)")
    source = SqlPollSource({"url": any_db_url, "table": "llx_contrat", "cursor": "tms", "lag_seconds": 0,
                            "rollups": {"value": {"table": "llx_contratdet", "key": "fk_contrat", "sum": "total_ht",
                                                  "cursor": "tms"},
                                        "lines": {"table": "llx_contratdet", "key": "fk_contrat", "count": True}}},
                           AdapterContext("erp", tmp_path, None))

    def capture(checkpoint):
        time.sleep(1.05)       # the signpost is the database clock in whole seconds (MariaDB, SQLite)
        batches = [(b.records, json.loads(json.dumps(b.checkpoint))) for b in source.batches(checkpoint)]
        return [r for records, _ in batches for r in records], (batches[-1][1] if batches else checkpoint)

    try:
        records, checkpoint = capture(None)
        assert values_of(records) == [("CT-1", Decimal("15.50"), "2 line(s)"), ("CT-2", Decimal("0.00"), "0 line(s)")]
        sql("INSERT INTO llx_contratdet VALUES (12, 1, 4.50, NOW)")          # a new line; the contract row is as it was
        records, checkpoint = capture(checkpoint)
        assert values_of(records) == [("CT-1", Decimal("20.00"), "3 line(s)")]
        assert records[0].operation == "update" and "+llx_contratdet@" in records[0].position
        sql("UPDATE llx_contratdet SET total_ht = 6.50, tms = NOW WHERE rowid = 11",
            "INSERT INTO llx_contratdet VALUES (13, 2, 1.00, NOW)")
        records, checkpoint = capture(checkpoint)
        assert sorted(values_of(records)) == [("CT-1", Decimal("21.00"), "3 line(s)"),
                                              ("CT-2", Decimal("1.00"), "1 line(s)")]
        again, _ = capture(checkpoint)
        assert again == [], "caught up: a child change is published once"
        positions = [r.position for r in records]
        assert len(set(positions)) == 2
    finally:
        source.close()
        engine.dispose()
