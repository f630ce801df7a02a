"""The inbound rules a finance user relies on (issue 10, "Also"): the schema's gates run on
inbound events too, the ``version`` conflict mode compares the event's metadata.version,
a soft-deleted row created again comes back, unknown fields are counted and said, and
``queue show`` puts a conflict's local row and event side by side.

Real agent process (``tests/support/agent_process.py``), real ``outpost`` commands, real
tansu broker, real PostgreSQL. The schema registry is the HTTP double of
``tests/support/registry_double.py`` (no registry server can run here).
"""
import copy
import datetime as dt
import io
import json

import fastavro
import sqlalchemy as sa
from confluent_kafka.schema_registry import Schema

from tests.support.agent_process import AgentProcess, open_exceptions, outpost, queue_depth, route_status
from tests.support.inbound import (CUSTOMER, REVERSE, T0, create_local, customer, event, FabricProducer,
                                   inbound_config, new_topic, rows, write_config)


def run(tmp_path, pg_url, broker, registry, topic, reverse=None):
    document = inbound_config(tmp_path / "state", pg_url, broker.bootstrap, registry.url, topic, reverse=reverse)
    path = write_config(tmp_path / "outpost.yaml", document)
    return path, AgentProcess(path, tmp_path / "agent.log")


def settled(state, applied, engine, parked):
    return (rows(engine, "SELECT count(*) FROM outpost_applied_events") == [(applied,)]
            and len(open_exceptions(state)) == parked and queue_depth(state) == 0)


def test_inbound_events_pass_the_same_gates_as_outbound_rows(tmp_path, pg_url, broker, registry):
    """A credit limit of -500.00 was stored: non_negative, iso4217 and code rules were not run."""
    engine = sa.create_engine(pg_url)
    create_local(engine, with_audit=False)
    topic = new_topic(broker, "gate")
    negative = event(customer("C-NEG", limit="-500.00"), operation="CREATE")
    currency = event({**customer("C-CUR"), "currency": "ZZZ"}, operation="CREATE")
    fine = event(customer("C-OK", limit="0.00"), operation="CREATE")
    FabricProducer(broker.bootstrap, registry.url, topic).send([negative, currency, fine])
    path, agent = run(tmp_path, pg_url, broker, registry, topic)
    with agent:
        assert agent.until(lambda: settled(tmp_path / "state", 1, engine, 2)), agent.log()[-3000:]
    reasons = {p["event_id"]: p["reason"] for p in open_exceptions(tmp_path / "state")}
    assert reasons[negative["metadata"]["event_id"]] == ("gate: Customer C-NEG: credit_limit -500.00: must not be "
                                                         "negative")
    assert "'ZZZ' is not an ISO 4217 currency code" in reasons[currency["metadata"]["event_id"]]
    assert rows(engine, "SELECT cust_no FROM erp_customer") == [("C-OK",)]


def test_version_mode_compares_the_events_metadata_version(tmp_path, pg_url, broker, registry):
    engine = sa.create_engine(pg_url)
    create_local(engine, with_audit=False)
    with engine.begin() as conn:      # a row another applier wrote at source version 5
        conn.exec_driver_sql("ALTER TABLE erp_customer ADD COLUMN src_version BIGINT")
        conn.exec_driver_sql("INSERT INTO erp_customer (cust_no, cust_name, src_version) VALUES ('C-1', 'v5', 5)")
    reverse = copy.deepcopy(REVERSE)
    reverse["Customer"]["tables"][0]["conflict"] = {"mode": "version", "column": "src_version"}
    topic = new_topic(broker, "ver")
    older = event(customer("C-1", "v3"), version=3)
    FabricProducer(broker.bootstrap, registry.url, topic).send(
        [older, event(customer("C-1", "v6"), version=6), event(customer("C-2", "new"), operation="CREATE", version=1)])
    path, agent = run(tmp_path, pg_url, broker, registry, topic, reverse)
    with agent:
        assert agent.until(lambda: settled(tmp_path / "state", 2, engine, 1)), agent.log()[-3000:]
    (parked,) = open_exceptions(tmp_path / "state")
    assert parked["event_id"] == older["metadata"]["event_id"]
    assert "local src_version=5 is newer than the event's version 3" in parked["reason"], parked["reason"]
    assert rows(engine, "SELECT cust_no, cust_name, src_version FROM erp_customer ORDER BY cust_no") == [
        ("C-1", "v6", 6), ("C-2", "new", 1)], "the applied source version is kept in the column"


def test_a_soft_deleted_customer_created_again_comes_back(tmp_path, pg_url, broker, registry):
    engine = sa.create_engine(pg_url)
    create_local(engine, with_audit=False)
    topic = new_topic(broker, "soft")
    later = [T0 + dt.timedelta(minutes=n) for n in range(3)]
    FabricProducer(broker.bootstrap, registry.url, topic).send([
        event(customer("C-1"), operation="CREATE", occurred_at=later[0]),
        event(None, before=customer("C-1"), operation="DELETE", occurred_at=later[1]),
        event(customer("C-1", "Back"), operation="CREATE", occurred_at=later[2])])
    path, agent = run(tmp_path, pg_url, broker, registry, topic)
    with agent:
        assert agent.until(lambda: settled(tmp_path / "state", 3, engine, 0)), agent.log()[-3000:]
    assert rows(engine, "SELECT cust_name, deleted FROM erp_customer") == [("Back", "N")]


def test_unknown_fields_are_counted_and_said_once_per_writer_schema(tmp_path, pg_url, broker, registry):
    engine = sa.create_engine(pg_url)
    create_local(engine, with_audit=False)
    topic = new_topic(broker, "unk")
    fabric = FabricProducer(broker.bootstrap, registry.url, topic)
    writer = copy.deepcopy(CUSTOMER.schema)          # the fabric's newer Customer: one more field
    next(t for t in writer["fields"][2]["type"] if t != "null")["fields"].append(
        {"name": "loyalty_tier", "type": ["null", "string"], "default": None})
    schema_id = fabric.registry.register_schema(f"{topic}-value", Schema(json.dumps(writer), "AVRO"))
    parsed = fastavro.parse_schema(writer)
    for n in range(3):
        out = io.BytesIO()
        fastavro.schemaless_writer(out, parsed, event({**customer(f"C-{n}"), "loyalty_tier": "gold"},
                                                      operation="CREATE"))
        fabric.producer.produce(topic, key=f"C-{n}".encode(), value=fabric.frame(out.getvalue(), schema_id))
    assert fabric.producer.flush(30) == 0
    path, agent = run(tmp_path, pg_url, broker, registry, topic)
    with agent:
        assert agent.until(lambda: settled(tmp_path / "state", 3, engine, 0)), agent.log()[-3000:]
        status = route_status(tmp_path / "state", "inbound")
        shown = outpost("status", "-c", path).stdout
    said = [line for line in agent.log().splitlines() if "loyalty_tier" in line]
    assert len(said) == 1 and f"writer schema {schema_id} (Customer)" in said[0], said
    assert status["health"]["details"]["unknown fields dropped (since start)"] == {
        f"schema {schema_id} (Customer)": {"fields": ["Customer.loyalty_tier"], "events": 3}}
    assert "unknown fields dropped" in shown and "Customer.loyalty_tier" in shown, shown


def test_queue_show_puts_a_conflicts_local_row_and_event_side_by_side(tmp_path, pg_url, broker, registry):
    engine = sa.create_engine(pg_url)
    create_local(engine, with_audit=False)
    with engine.begin() as conn:      # long enough for a name that outgrew the old 4,000-character cut
        conn.exec_driver_sql("ALTER TABLE erp_customer ALTER COLUMN cust_name TYPE VARCHAR(5000)")
    topic = new_topic(broker, "show")
    base = customer("C-1", "From CRM")
    fabric = FabricProducer(broker.bootstrap, registry.url, topic)
    fabric.send([event(base, operation="CREATE")])
    path, agent = run(tmp_path, pg_url, broker, registry, topic)
    with agent:
        assert agent.until(lambda: settled(tmp_path / "state", 1, engine, 0)), agent.log()[-3000:]
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE erp_customer SET cust_name = 'Edited locally', company = '02',"
                                 " updated_at = '2026-11-01 10:00:00+00'")
        fabric.send([event(customer("C-1", "x" * 4500, updated_at=T0 + dt.timedelta(minutes=5)), before=base)])
        assert agent.until(lambda: len(open_exceptions(tmp_path / "state")) == 1), agent.log()[-3000:]
    (parked,) = open_exceptions(tmp_path / "state")
    shown = outpost("queue", "show", parked["id"], "-c", path)
    assert shown.returncode == 0, shown.stderr
    assert len(parked["reason"]) < 300, "the reason says why; the details are in the context"
    table = shown.stdout.split("\nconflict on erp_customer: ", 1)[1].splitlines()
    assert table[1].split() == ["column", "field", "local", "row", "event", "before", "event", "after"]
    cells = {line.split()[1] if line.startswith("!") else line.split()[0]: line for line in table[2:]}
    assert cells["cust_name"].split()[:5] == ["!", "cust_name", "name", "Edited", "locally"]
    assert "x" * 4500 in cells["cust_name"], "nothing cut at 4,000 characters"
    assert cells["company"].split() == ["!", "company", "legal_entity", "02", "01", "(US01)", "01", "(US01)"]
