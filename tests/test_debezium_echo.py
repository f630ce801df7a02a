"""Bidirectional sync without echo, Debezium flavour: the same PostgreSQL table is captured
by the debezium source and applied to by sql_apply (kafka source -> sql_apply). The applier
writes the marker row first in each apply transaction; the debezium source drops every
change of such a transaction. Only genuine local changes may reach the fabric.

Real PostgreSQL (logical replication), real JVM, real tansu broker; the registry is the
HTTP double of ``tests/support/registry_double.py`` (no registry server can run here).
"""
import time
import uuid

from agent import config as config_module
from agent.runtime import Agent
from tests.support.debezium_pg import debezium_config, pg_repl  # noqa: F401  (fixture)
from tests.support.inbound import TANSU_CONSUMER, FabricProducer, customer, event
from tests.support.route import CUSTOMER_MAPPING, LOOKUPS, decode_messages
from tests.test_inbound_echo import REVERSE


def _config(tmp_path, db, broker, registry, prefix, echo_filter=True):
    url = f"postgresql+psycopg://{db.user}:{db.password}@127.0.0.1:{db.port}/{db.name}"
    capture = {"table": "erp_customer", "snapshot": "none", "pass_seconds": 2}
    if echo_filter:
        capture["echo_marker_table"] = "public.outpost_apply_marker"
    document = debezium_config(tmp_path / "state", db, broker.bootstrap, registry.url, {
        "customers": {"source": "erp", "sink": "fabric", "mapping": "customer", "schedule": {"every": "0.2s"},
                      "capture": capture},
        "inbound": {"source": "fabric_in", "sink": "erp_apply", "schedule": {"every": "0.2s"}},
    }, {"customer": CUSTOMER_MAPPING}, LOOKUPS)
    document["fabric"]["topic_template"] = prefix + ".{entity}"
    document["sources"]["fabric_in"] = {"type": "kafka", "topics": [f"{prefix}-in.customer"], "group_id": prefix,
                                        "poll_timeout_s": 0.5, "consumer": TANSU_CONSUMER}
    document["sinks"]["erp_apply"] = {"type": "sql_apply", "url": url, "entities": REVERSE, "lookups": LOOKUPS,
                                      "marker": {"enabled": True}}
    return document


def _wait(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate():
        time.sleep(0.3)
    return predicate()


def _count(db, sql):
    with db.connect() as conn:
        return conn.execute(sql).fetchone()[0]


def test_applied_changes_never_come_back_through_debezium(tmp_path, pg_repl, broker, registry):  # noqa: F811
    pg_repl.execute(
        "CREATE TABLE erp_customer (cust_no TEXT PRIMARY KEY, cust_name TEXT NOT NULL, company TEXT, curr TEXT,"
        " tax_code TEXT, credit_lim NUMERIC(18,2), updated_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp())",
        "ALTER TABLE erp_customer REPLICA IDENTITY FULL")
    prefix = f"dbzecho{uuid.uuid4().hex[:8]}"
    broker.create_topic(f"{prefix}-in.customer", partitions=1)
    broker.create_topic(f"{prefix}.customer", partitions=1)
    agent = Agent(config_module.parse(_config(tmp_path, pg_repl, broker, registry, prefix)), drain_timeout=5)
    agent.build()
    agent.deliveries["erp_apply"].sink.open()     # creates the ledger and marker tables before capture starts
    agent.start()
    try:
        assert _wait(lambda: agent.queue.status().get("customers", {}).get("health", {}).get("state") == "streaming")
        pg_repl.execute("INSERT INTO erp_customer (cust_no, cust_name, company, curr, tax_code, credit_lim)"
                        " VALUES ('C-00001', 'Local one', '01', 'USD', 'NY', 10.00)")
        FabricProducer(broker.bootstrap, registry.url, f"{prefix}-in.customer").send(
            [event(customer("F-1", "From CRM 1"), operation="CREATE"),
             event(customer("F-2", "From CRM 2"), operation="CREATE")])
        assert _wait(lambda: _count(pg_repl, "SELECT count(*) FROM outpost_applied_events") == 2)
        pg_repl.execute("UPDATE erp_customer SET cust_name = 'Edited at the branch', updated_at = clock_timestamp()"
                        " WHERE cust_no = 'F-1'")
        assert _wait(lambda: len(broker.consume(f"{prefix}.customer", timeout=5)) >= 2)
        time.sleep(3)                                   # room for any echo to arrive
        published = decode_messages(broker.consume(f"{prefix}.customer", timeout=10), registry)
    finally:
        agent.stop()
    assert [(e["key"], e["after"]["name"]) for e in published] == [
        ("C-00001", "Local one"), ("F-1", "Edited at the branch")], "no echo of the two applied changes"
    assert _count(pg_repl, "SELECT count(*) FROM erp_customer") == 3
