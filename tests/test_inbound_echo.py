"""Bidirectional sync without echo: the same PostgreSQL table is captured (sql_poll ->
kafka sink) and applied to (kafka source -> sql_apply). Only genuine local changes may
reach the fabric; the rows Outpost applied must not come back as new events.

Real PostgreSQL, real tansu broker; the registry is the HTTP double of
``tests/support/registry_double.py`` (no registry server can run here).
"""
import time
import uuid

import pytest
import sqlalchemy as sa

from agent import config as config_module
from agent.runtime import Agent
from tests.support.inbound import TANSU_CONSUMER, FabricProducer, customer, event
from tests.support.route import CUSTOMER_MAPPING, LOOKUPS, create_tables, decode_messages, insert_customers

REVERSE = {"Customer": {"tables": [{
    "table": "erp_customer", "key": "cust_no", "capture_cursor": "updated_at",
    "columns": {"cust_no": "customer_number", "cust_name": "name",
                "company": {"field": "legal_entity", "lookup": "legal_entity"}, "curr": "currency",
                "tax_code": {"field": "tax_jurisdiction", "lookup": "tax_jurisdiction"},
                "credit_lim": "credit_limit",
                "updated_at": {"now": True}}}]}}      # the legacy app stamps every write


def config(tmp_path, pg_url, broker, registry, prefix):
    return {
        "state_dir": str(tmp_path / "state"),
        "fabric": {"kafka": {"bootstrap.servers": broker.bootstrap}, "schema_registry": {"url": registry.url},
                   "topic_template": prefix + ".{entity}", "create_topics": True, "topic_partitions": 1},
        "lookups": LOOKUPS, "mappings": {"customer": CUSTOMER_MAPPING},
        "sources": {"erp": {"type": "sql_poll", "url": pg_url, "lag_seconds": 0.3, "system": "acme-erp"},
                    "fabric_in": {"type": "kafka", "topics": [f"{prefix}-in.customer"], "group_id": prefix,
                                  "poll_timeout_s": 0.5, "consumer": TANSU_CONSUMER}},
        "sinks": {"fabric": {"type": "kafka"},
                  "erp_apply": {"type": "sql_apply", "url": pg_url, "entities": REVERSE, "lookups": LOOKUPS,
                                "marker": {"enabled": True}}},
        "routes": {
            "customers": {"source": "erp", "sink": "fabric", "mapping": "customer", "schedule": {"every": "0.3s"},
                          "capture": {"table": "erp_customer", "cursor": "updated_at",
                                      "skip_applied": "outpost_applied_rows"}},
            "inbound": {"source": "fabric_in", "sink": "erp_apply", "schedule": {"every": "0.2s"}}},
    }


def wait_for(predicate, timeout=40.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate():
        time.sleep(0.3)
    return predicate()


@pytest.mark.parametrize("key_type", ["TEXT", "CHAR(12)"])
def test_applied_rows_never_come_back_only_local_changes_do(tmp_path, pg_url, broker, registry, key_type):
    """A CHAR(n) key comes back blank-padded: the applier once missed the rows it had just
    written (their versions were never recorded), so each of them came back as an echo."""
    engine = create_tables(pg_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"ALTER TABLE erp_customer ALTER COLUMN cust_no TYPE {key_type}")
    insert_customers(engine, [1])                                        # C-00001: a local customer
    prefix = f"echo{uuid.uuid4().hex[:8]}"
    broker.create_topic(f"{prefix}-in.customer", partitions=1)
    fabric = FabricProducer(broker.bootstrap, registry.url, f"{prefix}-in.customer")
    out_topic = f"{prefix}.customer"
    agent = Agent(config_module.parse(config(tmp_path, pg_url, broker, registry, prefix)), drain_timeout=5)
    agent.start()
    try:
        assert wait_for(lambda: len(broker.consume(out_topic, timeout=5)) == 1 if _exists(broker, out_topic)
                        else False), "the local customer is published"
        local = customer("C-00001", "Customer 1", limit="1000.00")
        fabric.send([event(customer("F-1", "From CRM 1"), operation="CREATE"),
                     event(customer("F-2", "From CRM 2"), operation="CREATE"),
                     event(customer("C-00001", "Renamed in CRM", limit="1000.00"), before=local)])
        assert wait_for(lambda: _scalar(engine, "SELECT count(*) FROM outpost_applied_events") == 3)
        time.sleep(3)                                    # several poll cycles past the applied versions
        with engine.begin() as conn:                     # a genuine local change to a fabric-made row
            conn.execute(sa.text("UPDATE erp_customer SET cust_name='Edited at the branch',"
                                 " updated_at=clock_timestamp() WHERE cust_no='F-1'"))
        assert wait_for(lambda: len(broker.consume(out_topic, timeout=5)) >= 2)
        time.sleep(2)
        published = decode_messages(broker.consume(out_topic, timeout=10), registry)
        marker = _scalar(engine, "SELECT count(*) FROM outpost_apply_marker WHERE applier='erp_apply'")
    finally:
        agent.stop()
    assert [(e["key"].rstrip(), e["after"]["name"]) for e in published] == [
        ("C-00001", "Customer 1"), ("F-1", "Edited at the branch")], "no echo of the three applied changes"
    assert _scalar(engine, "SELECT count(*) FROM outpost_applied_rows") == 3
    assert marker == 1, "the Debezium marker row is written by the apply transactions"


def _exists(broker, topic) -> bool:
    return topic in broker.admin.list_topics(timeout=5).topics


def _scalar(engine, sql):
    try:
        with engine.connect() as conn:
            return conn.exec_driver_sql(sql).scalar()
    except sa.exc.ProgrammingError:      # the applier creates its tables when it first opens
        return None
