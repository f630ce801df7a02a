"""Bidirectional MariaDB table without echo (issue 10, defect 9): the binlog source captures
the table an inbound ``sql_apply`` sink writes. Only genuine local changes may come out;
the rows Outpost applied must not come back as new changes.

The marker-row technique: the applier's transaction writes ``outpost_apply_marker`` first
(``marker.enabled``); the binlog source, given ``echo_marker_table``, sees that row in the
same transaction and drops the transaction's changes.

Real agent process (``tests/support/agent_process.py``), real MariaDB binlog (ROW, FULL),
real tansu broker; outbound events land in Avro files (the ``avro_files`` sink). The schema
registry is the HTTP double of ``tests/support/registry_double.py`` (no registry server can
run here).
"""
from pathlib import Path

import fastavro
import pymysql

from tests.support.agent_process import AgentProcess, queue_depth, route_status
from tests.support.binlog import CUSTOMER_DDL, execute, fetch
from tests.support.inbound import (LOOKUPS, TANSU_CONSUMER, FabricProducer, customer, event, new_topic,
                                   write_config)
from tests.support.route import CUSTOMER_MAPPING

REVERSE = {"Customer": {"tables": [{"table": "erp_customer", "key": "cust_no", "columns": {
    "cust_no": "customer_number", "cust_name": "name", "company": {"field": "legal_entity", "lookup": "legal_entity"},
    "curr": "currency", "tax_code": {"field": "tax_jurisdiction", "lookup": "tax_jurisdiction"},
    "credit_lim": "credit_limit"}}]}}


def config(tmp_path, url, broker, registry, topic, marker: bool) -> dict:
    capture = {"table": "erp_customer", **({"echo_marker_table": "outpost_apply_marker"} if marker else {})}
    return {
        "state_dir": str(tmp_path / "state"),
        "fabric": {"kafka": {"bootstrap.servers": broker.bootstrap}, "schema_registry": {"url": registry.url}},
        "lookups": LOOKUPS, "mappings": {"customer": CUSTOMER_MAPPING},
        "sources": {"erp": {"type": "binlog", "url": url, "system": "acme-erp", "snapshot": "none"},
                    "fabric_in": {"type": "kafka", "topics": [topic], "group_id": topic, "poll_timeout_s": 0.5,
                                  "consumer": TANSU_CONSUMER}},
        "sinks": {"files": {"type": "avro_files", "directory": str(tmp_path / "outbox"), "rotate_seconds": "1s"},
                  "erp_apply": {"type": "sql_apply", "url": url, "entities": REVERSE, "lookups": LOOKUPS,
                                "marker": {"enabled": True}}},
        "routes": {"customers": {"source": "erp", "sink": "files", "mapping": "customer",
                                 "schedule": {"every": "0.2s"}, "capture": capture},
                   "inbound": {"source": "fabric_in", "sink": "erp_apply", "schedule": {"every": "0.2s"}}},
    }


def applied(url) -> int:
    try:
        return fetch(url, "SELECT count(*) FROM outpost_applied_events")[0][0]
    except pymysql.err.ProgrammingError:      # the applier creates its tables when it first opens
        return -1


def published(outbox: Path) -> list[tuple]:
    found = []
    for path in sorted(outbox.rglob("*.avro")):
        with path.open("rb") as f:
            found += [(r["key"], r["after"]["name"]) for r in fastavro.reader(f)]
    return found


def test_applied_rows_never_come_back_from_the_binlog_only_local_changes_do(tmp_path, mariadb_url, broker,
                                                                           registry):
    """Without ``echo_marker_table`` 20 of these 21 applied changes came back as new ones."""
    execute(mariadb_url, CUSTOMER_DDL)
    topic = new_topic(broker, "binecho")
    path = write_config(tmp_path / "outpost.yaml", config(tmp_path, mariadb_url, broker, registry, topic, True))
    state = tmp_path / "state"
    with AgentProcess(path, tmp_path / "agent.log") as agent:
        assert agent.until(lambda: route_status(state, "customers").get("capture_state") == "ok"), agent.log()[-3000:]
        created = [customer(f"F-{n:02d}", f"From CRM {n}") for n in range(7)]
        fabric = FabricProducer(broker.bootstrap, registry.url, topic)
        fabric.send([event(c, operation="CREATE") for c in created])
        fabric.send([event(customer(c["customer_number"], c["name"] + " renamed"), before=c) for c in created])
        fabric.send([event(customer(c["customer_number"], c["name"] + " again"), before=c) for c in created])
        assert agent.until(lambda: applied(mariadb_url) == 21), \
            agent.log()[-3000:]
        execute(mariadb_url, "UPDATE erp_customer SET cust_name = 'Edited at the branch' WHERE cust_no = 'F-03'")
        assert agent.until(lambda: route_status(state, "customers").get("captured_total", 0) >= 1), \
            agent.log()[-3000:]
        assert agent.until(lambda: queue_depth(state) == 0)
        captured = route_status(state, "customers")
        assert agent.terminate() == 0
    assert captured["captured_total"] == 1, f"{captured['captured_total'] - 1} of 21 applied changes came back"
    assert published(tmp_path / "outbox") == [("F-03", "Edited at the branch")]
    assert captured["progress"]["own_changes_skipped"] == 21


def test_the_echo_flag_lasts_one_transaction():
    from adapters.binlog.positions import TxnTracker
    tracker = TxnTracker("bin.000001", 4)
    tracker.begin("0-1-1")
    tracker.echo = True
    assert tracker.row() == 0 and tracker.row() == 1, "its rows are still counted: positions do not move"
    tracker.commit(200)
    assert tracker.echo is False and tracker.rows == 0
    tracker.echo = True
    tracker.begin("0-1-2")
    assert tracker.echo is False, "a new transaction starts as a genuine change"
