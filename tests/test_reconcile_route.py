"""Reconciliation end to end on SQLite, PostgreSQL and MariaDB with a real broker: a day of
invoices with rows rejected by mapping and by the filter, rows captured during a broker
outage and rows hard-deleted at the source ties out with every difference explained; a
change polling cannot see stays unexplained and makes ``outpost reconcile`` fail."""
from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from agent import config as config_module, ledger
from agent.runtime import Agent
from tests.support.route import INVOICE_MAPPING, LOOKUPS, decode_messages

STAMP = {"sqlite": "TIMESTAMP", "postgresql": "TIMESTAMP", "mysql": "DATETIME(6)"}
NOW = {"sqlite": "strftime('%Y-%m-%d %H:%M:%f', 'now')", "postgresql": "clock_timestamp()", "mysql": "NOW(6)"}
DDL = """CREATE TABLE erp_invoice (inv_no VARCHAR(20) PRIMARY KEY, cust_no VARCHAR(20), company VARCHAR(4),
    curr VARCHAR(3), tax_code VARCHAR(8), inv_date DATE, net NUMERIC(18,2), tax NUMERIC(18,2), gross NUMERIC(18,2),
    status VARCHAR(20), updated_at {stamp})"""
INSERT = ("INSERT INTO erp_invoice VALUES (:no, 'C-1', :co, 'USD', 'NY', '2026-12-01', :net, :tax, :gross, :status,"
          " {now})")


def document(tmp_path, url, broker, registry, prefix) -> dict:
    return {"state_dir": str(tmp_path / "state"), "lookups": LOOKUPS, "mappings": {"invoice": INVOICE_MAPPING},
            "fabric": {"kafka": {"bootstrap.servers": broker.bootstrap}, "schema_registry": {"url": registry.url},
                       "topic_template": prefix + ".{entity}", "create_topics": True, "topic_partitions": 1},
            "sources": {"erp": {"type": "sql_poll", "url": url, "lag_seconds": 0, "system": "acme-erp"}},
            "sinks": {"fabric": {"type": "kafka", "delivery_timeout_s": 20}},
            "routes": {"invoices": {"source": "erp", "sink": "fabric", "mapping": "invoice",
                                    "schedule": {"every": "1h"}, "filter": "status != 'draft'",
                                    "capture": {"table": "erp_invoice", "cursor": "updated_at"},
                                    "reconcile": {"window": "day", "deletes": "report", "chunk_rows": 6,
                                                  "rows_per_query": 3}}}}


def write(engine, rows) -> None:
    dialect = engine.dialect.name
    with engine.begin() as conn:
        conn.execute(sa.text(INSERT.format(now=NOW[dialect])), rows)


def invoice(n: int, company: str = "01", status: str = "open") -> dict:
    net, cent = Decimal(n) * Decimal("100.10"), Decimal("0.01")
    tax = (net * Decimal("0.19")).quantize(cent)
    # bound as text: every engine reads its exact digits (SQLite's driver refuses a Decimal)
    return {"no": f"INV-{n:03d}", "co": company, "net": str(net), "tax": str(tax), "gross": str(net + tax),
            "status": status}


def test_a_day_reconciles_with_every_difference_explained(tmp_path, any_db_url, broker, registry):
    engine = sa.create_engine(any_db_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(DDL.format(stamp=STAMP[engine.dialect.name]))
    prefix = f"r{uuid.uuid4().hex[:8]}"
    cfg = config_module.parse(document(tmp_path, any_db_url, broker, registry, prefix))
    agent = Agent(cfg, drain_timeout=10)
    agent.build()
    try:
        # 17 good invoices, 2 with an unknown legal entity (parked), 1 draft (left out by the filter)
        write(engine, [invoice(n) for n in range(1, 18)] + [invoice(18, "99"), invoice(19, "99"),
                                                           invoice(20, status="draft")])
        time.sleep(1.05)          # the signpost is the database clock in whole seconds
        agent.run_pass()
        assert agent.deliver_all()
        conn = agent.queue._conn()
        today = dt.datetime.now(dt.timezone.utc).date().isoformat()
        assert ledger.published_totals(conn, "invoices", today)[0] == 17
        with broker.outage():     # captured while the fabric is away: still queued
            write(engine, [invoice(n) for n in (21, 22, 23)])
            time.sleep(1.05)
            agent.run_pass()
            with engine.begin() as db:      # hard deletes, invisible to polling
                db.execute(sa.text("DELETE FROM erp_invoice WHERE inv_no IN ('INV-004', 'INV-011')"))
                # changed after the day closed (stamped tomorrow: not polled yet either)
                tomorrow = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) + dt.timedelta(days=1)
                db.execute(sa.text("UPDATE erp_invoice SET net = net + 1, updated_at = :at WHERE inv_no = 'INV-007'"),
                           {"at": tomorrow})
            from agent.reconcile_run import reconcile_route
            outcome = reconcile_route(cfg, agent.catalog, agent.queue, "invoices", today)
        assert (outcome["source_count"], outcome["published_count"]) == (20, 17)
        # source today: 1..23 but the two deleted and the one moved to tomorrow; published: 1..17
        expected_net = (sum(range(18, 24)) - 4 - 11 - 7) * Decimal("100.10")
        assert outcome["sum_differences"]["net_amount"] == expected_net == Decimal("10110.10")
        assert outcome["published_sums"]["net_amount"] == sum(range(1, 18)) * Decimal("100.10")
        causes = {x["cause"]: sorted(x["keys"]) for x in outcome["explanations"]}
        assert causes == {"still_queued": ["INV-021", "INV-022", "INV-023"], "parked": ["INV-018", "INV-019"],
                          "rejected_by_filter": ["INV-020"], "deleted_at_source": ["INV-004", "INV-011"],
                          "changed_after_window": ["INV-007"]}
        parked = next(x for x in outcome["explanations"] if x["cause"] == "parked")
        assert parked["exception_ids"] == sorted(i["id"] for i in agent.queue.exceptions("open", "invoices"))
        assert outcome["differing_key_count"] == 9 and outcome["unexplained_key_count"] == 0
        assert outcome["tied_out"] is True
        search = outcome["delete_search"]
        assert sorted(k.key for k in search.deleted) == ["INV-004", "INV-011"]
        assert search.ranges > 3 and search.differing_ranges >= 2        # 17 keys in ranges of 6, halved to 3
        # the result is queued like any event: it reaches its own topic once the broker is back
        assert agent.deliver_all()
        events = decode_messages(broker.consume(f"{prefix}.reconciliation", expected=1, timeout=20), registry)
        assert [e["after"]["reconciliation_id"] for e in events] == [f"invoices/{today}"]
        assert events[0]["after"]["tied_out"] is True and events[0]["after"]["source_count"] == 20
        assert agent.queue.status_of("invoices")["reconcile"]["tied_out"] is True
        # publishing the deletes takes the keys out of the ledger once the fabric has them
        reconcile_route(cfg, agent.catalog, agent.queue, "invoices", today, deletes="publish", publish=False)
        assert agent.deliver_all()
        assert set(ledger.published_keys(conn, "invoices", today)) & {"INV-004", "INV-011"} == set()
        again = reconcile_route(cfg, agent.catalog, agent.queue, "invoices", "all", publish=False)
        assert {x["cause"]: x["keys"] for x in again["explanations"]} == {
            "parked": ["INV-018", "INV-019"], "rejected_by_filter": ["INV-020"], "not_yet_captured": ["INV-007"]}
        assert again["published_count"] == 18 and again["delete_search"].deleted == []
    finally:
        agent.stop()
        engine.dispose()


def test_an_unseen_change_is_unexplained_and_the_command_fails(tmp_path, sqlite_url, broker, registry):
    engine = sa.create_engine(sqlite_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(DDL.format(stamp=STAMP["sqlite"]))
    write(engine, [invoice(n) for n in range(1, 6)])
    doc = document(tmp_path, sqlite_url, broker, registry, f"r{uuid.uuid4().hex[:8]}")
    agent = Agent(config_module.parse(doc), drain_timeout=10)
    agent.build()
    try:
        time.sleep(1.05)
        agent.run_pass()
        assert agent.deliver_all()
    finally:
        agent.stop()
    path = tmp_path / "outpost.yaml"
    path.write_text(yaml.safe_dump(doc))
    outpost = [str(Path(sys.executable).with_name("outpost")), "reconcile", "-c", str(path), "invoices",
               "--window", "all", "--no-publish"]
    tied = subprocess.run(outpost, capture_output=True, text=True, timeout=60)
    assert tied.returncode == 0, tied.stdout + tied.stderr
    assert "TIED OUT" in tied.stdout and "net_amount" in tied.stdout
    with engine.begin() as conn:       # an amount changed without touching updated_at: polling cannot see it
        conn.exec_driver_sql("UPDATE erp_invoice SET net = net + 0.01 WHERE inv_no = 'INV-002'")
    failed = subprocess.run(outpost, capture_output=True, text=True, timeout=60)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "UNEXPLAINED: 1" in failed.stdout and "INV-002" in failed.stdout
    assert "0.01" in failed.stdout and "NOT TIED OUT" in failed.stdout
    bad = subprocess.run(outpost[:-3] + ["--window", "2026-13-01"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "YYYY-MM-DD" in bad.stderr
    engine.dispose()


@pytest.mark.parametrize("reconcile, problem", [
    ({"cron": "every night"}, "routes.invoices.reconcile.cron"),
    ({"zone": "Mars/Olympus"}, "routes.invoices.reconcile.zone"),
    ({"window": "week"}, "routes.invoices.reconcile.window"),
    ({"deletes": "yes please"}, "routes.invoices.reconcile.deletes"),
    ({"chunk_rows": 0}, "routes.invoices.reconcile.chunk_rows"),
])
def test_bad_reconcile_options_name_their_key_path(tmp_path, reconcile, problem):
    doc = document(tmp_path, "sqlite:///x.db", type("B", (), {"bootstrap": "127.0.0.1:1"}),
                   type("R", (), {"url": "http://127.0.0.1:1"}), "p")
    doc["routes"]["invoices"]["reconcile"] = reconcile
    doc["objectives"] = {"Invoise": {"within": "60s", "target": 0.99}}
    with pytest.raises(config_module.ConfigError) as err:
        config_module.parse(doc)
    assert any(p.startswith(problem) for p in err.value.problems), err.value.problems
    assert any(p.startswith("objectives.Invoise") for p in err.value.problems), err.value.problems
