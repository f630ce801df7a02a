"""Live reload proven in a running ``outpost run`` process (issue 12, build item 6).

Real agent process (tests/support/agent_process.py) with its delivery process, a real
SQLite 'ERP', the avro_files sink. After a lookup is fixed, the next row maps without a
restart; an invalid file is refused with every problem listed and the agent keeps running
on the config it has; a schedule change takes effect; nothing queued is lost or doubled.
"""
from __future__ import annotations

import signal
import sqlite3
import time

import pytest
import yaml

from tests.support.agent_process import AgentProcess, outpost, route_status, wait_for
from tests.test_file_drop_agent import published

pytestmark = pytest.mark.slow

FACTURE = "CREATE TABLE llx_facture (rowid INTEGER PRIMARY KEY, ref TEXT, fk_statut INTEGER, total_ht TEXT, tms TIMESTAMP)"


def document(tmp_path, statuses: dict, every: str = "0.2s") -> dict:
    return {
        "state_dir": str(tmp_path / "state"),
        "lookups": {"invoice_status": statuses},
        "mappings": {"invoice": {"entity": "Invoice", "fields": {
            "invoice_number": "ref", "customer_number": {"const": "CU-1"}, "legal_entity": {"const": "US01"},
            "currency": {"const": "EUR"}, "tax_jurisdiction": {"const": "US-NY"},
            "invoice_date": {"const": "2026-01-05"}, "net_amount": "total_ht", "tax_amount": {"const": "0.00"},
            "total_amount": "total_ht", "status": {"column": "fk_statut", "lookup": "invoice_status"}}}},
        "sources": {"erp": {"type": "sql_poll", "url": f"sqlite:///{tmp_path / 'erp.db'}", "lag_seconds": 0}},
        "sinks": {"out": {"type": "avro_files", "directory": str(tmp_path / "out"), "rotate_seconds": 0.5}},
        "routes": {"invoices": {"source": "erp", "sink": "out", "mapping": "invoice", "schedule": {"every": every},
                                "capture": {"table": "llx_facture", "cursor": "tms"}}},
    }


def write(path, text_or_document) -> None:
    path.write_text(text_or_document if isinstance(text_or_document, str) else yaml.safe_dump(text_or_document))


def insert(tmp_path, rowid: int, status: int) -> None:
    time.sleep(1.05)      # SQLite's clock (the signpost) is in whole seconds
    with sqlite3.connect(tmp_path / "erp.db") as db:
        db.execute("INSERT INTO llx_facture VALUES (?, ?, ?, '10.00', strftime('%Y-%m-%d %H:%M:%f', 'now'))",
                   (rowid, f"FA{rowid}", status))


def open_exceptions(state_dir) -> int:
    with sqlite3.connect(f"file:{state_dir / 'queue.db'}?mode=ro", uri=True) as db:
        return db.execute("SELECT count(*) FROM exceptions WHERE status='open'").fetchone()[0]


def captured(state_dir) -> int:
    return route_status(state_dir, "invoices").get("captured_total", 0)


def test_reload_applies_a_fixed_lookup_refuses_a_broken_file_and_reschedules(tmp_path):
    with sqlite3.connect(tmp_path / "erp.db") as db:
        db.execute(FACTURE)
    state = tmp_path / "state"
    config = tmp_path / "outpost.yaml"
    write(config, document(tmp_path, {0: "draft", 1: "validated"}))
    insert(tmp_path, 1, 1)
    insert(tmp_path, 2, 2)                       # status 2 is not in the lookup yet
    with AgentProcess(config, tmp_path / "agent.log") as agent:
        assert agent.until(lambda: captured(state) == 1 and open_exceptions(state) == 1, 60), agent.log()

        # an invalid file: refused, every problem listed, the agent runs on
        broken = document(tmp_path, {0: "draft", 1: "validated", 2: "paid"})
        broken["routes"]["invoices"]["filter"] = "fk_statut =="
        broken["mappings"]["invoice"]["fields"]["net_amount"] = {"expr": "total_ht.real"}
        write(config, broken)
        agent.process.send_signal(signal.SIGHUP)
        assert agent.wait_for_log("reload refused", 30), agent.log()
        assert "routes.invoices.filter" in agent.log() and "mappings.invoice.fields.net_amount.expr" in agent.log()
        refused = outpost("reload", "-c", config)
        assert refused.returncode == 2 and "routes.invoices.filter" in refused.stderr
        insert(tmp_path, 3, 2)                   # the running config still lacks code 2
        assert agent.until(lambda: open_exceptions(state) == 2, 30), agent.log()

        # the fixed file: the next row with code 2 maps, without a restart
        write(config, document(tmp_path, {0: "draft", 1: "validated", 2: "paid"}))
        done = outpost("reload", "-c", config)
        assert done.returncode == 0 and done.stdout.startswith("reload done: applied to 1 route(s)"), done
        insert(tmp_path, 4, 2)
        assert agent.until(lambda: captured(state) == 2, 30), agent.log()
        assert open_exceptions(state) == 2
        retried = outpost("queue", "retry", "--all", "-c", config)
        assert retried.returncode == 0 and retried.stdout.count("mapped again and queued") == 2, retried

        # a schedule change takes effect: once an hour, the next row waits
        write(config, document(tmp_path, {0: "draft", 1: "validated", 2: "paid"}, every="1h"))
        rescheduled = outpost("reload", "-c", config)
        assert rescheduled.returncode == 0 and "rescheduled invoices" in rescheduled.stdout, rescheduled
        before = captured(state)
        insert(tmp_path, 5, 1)
        assert not wait_for(lambda: captured(state) > before, 3), "captured although the route now runs hourly"
        assert agent.terminate() == 0
    events = published(tmp_path / "out")
    assert sorted((e["key"], e["after"]["status"]) for e in events) == [
        ("FA1", "validated"), ("FA2", "paid"), ("FA3", "paid"), ("FA4", "paid")]
    assert len({e["metadata"]["event_id"] for e in events}) == 4
