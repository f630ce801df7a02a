"""Reference lookups read from the source database (issue 12, build item 3), on SQLite,
PostgreSQL and MariaDB: cached, refreshed without a restart, a missing reference parked
with the reference named and resolved by ``outpost queue retry`` (a real CLI process)."""
from __future__ import annotations

import time

import pytest
import sqlalchemy as sa
import yaml

from agent import config as config_module
from agent.contracts import TransientError
from agent.runtime import Agent
from tests.support.agent_process import outpost

NOW = {"sqlite": "strftime('%Y-%m-%d %H:%M:%f', 'now')", "postgresql": "clock_timestamp()", "mysql": "NOW(6)"}
STAMP = {"sqlite": "TIMESTAMP", "postgresql": "TIMESTAMP", "mysql": "DATETIME(6)"}


def document(tmp_path, url: str) -> dict:
    return {
        "state_dir": str(tmp_path / "state"),
        "lookups": {
            "customer_code": {"sql": "SELECT rowid, code_client FROM llx_societe", "refresh": "0.5s"},
            # a time entry finds its project through its task
            "task_project": {"sql": "SELECT t.rowid, p.ref FROM llx_projet_task t JOIN llx_projet p "
                                    "ON p.rowid = t.fk_projet", "source": "erp", "refresh": "0.5s"}},
        "mappings": {"invoice": {"entity": "Invoice", "fields": {
            "invoice_number": "ref", "customer_number": {"column": "fk_soc", "lookup": "customer_code"},
            "legal_entity": {"const": "US01"}, "currency": {"const": "EUR"}, "tax_jurisdiction": {"const": "US-NY"},
            "invoice_date": {"const": "2026-01-05"}, "net_amount": {"const": "1.00"},
            "tax_amount": {"const": "0.00"}, "total_amount": {"const": "1.00"},
            "status": {"expr": "coalesce(lookup('task_project', fk_task), 'no project')"}}}},
        "sources": {"erp": {"type": "sql_poll", "url": url, "lag_seconds": 0}},
        "sinks": {"out": {"type": "avro_files", "directory": str(tmp_path / "out")}},
        "routes": {"invoices": {"source": "erp", "sink": "out", "mapping": "invoice", "schedule": {"every": "1h"},
                                "capture": {"table": "llx_facture", "cursor": "tms"}}},
    }


def test_a_lookup_from_the_source_database_is_refreshed_and_retry_resolves_the_parked_row(any_db_url, tmp_path):
    engine = sa.create_engine(any_db_url)
    now = NOW[engine.dialect.name]
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE llx_societe (rowid INTEGER PRIMARY KEY, code_client VARCHAR(20))")
        conn.exec_driver_sql("CREATE TABLE llx_projet (rowid INTEGER PRIMARY KEY, ref VARCHAR(20))")
        conn.exec_driver_sql("CREATE TABLE llx_projet_task (rowid INTEGER PRIMARY KEY, fk_projet INTEGER)")
        conn.exec_driver_sql(f"CREATE TABLE llx_facture (rowid INTEGER PRIMARY KEY, ref VARCHAR(20), fk_soc INTEGER, "
                             f"fk_task INTEGER, tms {STAMP[engine.dialect.name]})")
        conn.exec_driver_sql("INSERT INTO llx_societe VALUES (1, 'CU2601-0001')")
        conn.exec_driver_sql("INSERT INTO llx_projet VALUES (5, 'PJ2601-0005')")
        conn.exec_driver_sql("INSERT INTO llx_projet_task VALUES (50, 5)")
        conn.exec_driver_sql(f"INSERT INTO llx_facture VALUES (1, 'FA1', 1, 50, {now})")
        conn.exec_driver_sql(f"INSERT INTO llx_facture VALUES (2, 'FA2', 2, NULL, {now})")   # customer 2: not yet
    (tmp_path / "outpost.yaml").write_text(yaml.safe_dump(document(tmp_path, any_db_url)))
    agent = Agent(config_module.load(tmp_path / "outpost.yaml"))
    agent.build()
    try:
        time.sleep(1.05)        # the signpost is the database clock in whole seconds (MariaDB, SQLite)
        agent.run_pass()
        ((key, fingerprint, body),) = agent.queue._conn().execute(
            "SELECT key, schema_fingerprint, body FROM outbox").fetchall()
        after = agent.catalog.by_fingerprint(fingerprint).decode(body)["after"]
        assert key == "FA1" and after["customer_number"] == "CU2601-0001" and after["status"] == "PJ2601-0005"
        (parked,) = agent.queue.exceptions()
        assert "customer_number: unknown customer_code code 2" in parked["reason"]

        with engine.begin() as conn:         # the master data is fixed in the ERP
            conn.exec_driver_sql("INSERT INTO llx_societe VALUES (2, 'CU2601-0002')")
            conn.exec_driver_sql(f"INSERT INTO llx_facture VALUES (3, 'FA3', 2, NULL, {now})")
        time.sleep(1.05)
        agent.run_pass()                     # the lookup is read again: the new row maps
        keys = [k for (k,) in agent.queue._conn().execute("SELECT key FROM outbox ORDER BY seq")]
        assert keys == ["FA1", "FA3"], (keys, agent.queue.exceptions(), agent.queue.status())
        assert len(agent.queue.exceptions()) == 1
    finally:
        agent.stop()
        engine.dispose()
    retried = outpost("queue", "retry", "--all", "-c", tmp_path / "outpost.yaml")
    assert retried.returncode == 0 and "mapped again and queued" in retried.stdout, retried


def test_a_lookup_never_read_makes_the_pass_wait_instead_of_parking_rows(tmp_path):
    url = f"sqlite:///{tmp_path / 'erp.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE llx_facture (rowid INTEGER PRIMARY KEY, ref TEXT, fk_soc INTEGER, "
                             "fk_task INTEGER, tms TIMESTAMP)")
        conn.exec_driver_sql("INSERT INTO llx_facture VALUES (1, 'FA1', 1, NULL, '2026-01-01 10:00:00')")
    engine.dispose()
    agent = Agent(config_module.parse(document(tmp_path, url)))      # llx_societe does not exist
    agent.build()
    try:
        agent.run_pass()
        status = agent.queue.status()["invoices"]
        assert agent.queue.exceptions() == [] and agent.queue.depth() == 0
        assert "cannot read its codes" in status["source_error"] and "no such table" in status["source_error"]
        assert status["capture_state"].startswith("retrying")
    finally:
        agent.stop()
    with pytest.raises(TransientError):
        from agent.lookups import SqlLookupTable
        SqlLookupTable("t", url, "SELECT 1, 2 FROM nowhere", 60).refresh()
