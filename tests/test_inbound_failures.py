"""Inbound events that cannot be applied as they are: each is parked with a reason that
says what is wrong, and everything else keeps flowing (issue 10, defects 3, 5 and the
dead-letter copies of defect 8).

Real agent process (``tests/support/agent_process.py``), real tansu broker (and its
dead-letter topic), real PostgreSQL and MariaDB targets. The schema registry is the HTTP double of
``tests/support/registry_double.py`` (no registry server can run here).
"""
import copy
import io
import json
from decimal import Decimal

import fastavro
import sqlalchemy as sa
from confluent_kafka.schema_registry import Schema

from tests.support.agent_process import AgentProcess, open_exceptions, queue_depth, route_status
from tests.support.inbound import (CUSTOMER, REVERSE, create_local, customer, event, FabricProducer, inbound_config,
                                   new_topic, rows, write_config)


def agent_for(tmp_path, url, broker, registry, topic, reverse=None, **extra) -> AgentProcess:
    document = inbound_config(tmp_path / "state", url, broker.bootstrap, registry.url, topic,
                              reverse=reverse, **extra)
    return AgentProcess(write_config(tmp_path / "outpost.yaml", document), tmp_path / "agent.log")


def with_columns(**columns) -> dict:
    reverse = copy.deepcopy(REVERSE)
    reverse["Customer"]["tables"][0]["columns"].update(columns)
    return reverse


def test_a_value_that_fails_its_conversion_is_parked_and_the_next_event_applies(tmp_path, server_url, broker,
                                                                               registry):
    """Defect 3: ``convert: [int]`` on 'SOC-17' used to raise out of the sink and hold the queue."""
    engine = sa.create_engine(server_url)
    create_local(engine, with_audit=False)
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE erp_customer ADD COLUMN soc_no INTEGER")
    topic = new_topic(broker, "conv")
    bad, good = event(customer("SOC-17"), operation="CREATE"), event(customer("42"), operation="CREATE")
    FabricProducer(broker.bootstrap, registry.url, topic).send([bad, good])
    with agent_for(tmp_path, server_url, broker, registry, topic,
               reverse=with_columns(soc_no={"field": "customer_number", "convert": ["int"]})) as agent:
        assert agent.until(lambda: rows(engine, "SELECT cust_no, soc_no FROM erp_customer") == [("42", 42)]
                           and queue_depth(tmp_path / "state") == 0), agent.log()[-3000:]
        (parked,) = open_exceptions(tmp_path / "state")
    assert parked["stage"] == "publish" and parked["event_id"] == bad["metadata"]["event_id"]
    assert "column soc_no" in parked["reason"] and "'SOC-17'" in parked["reason"], parked["reason"]


# Amounts whose double reads back from MariaDB (SQLAlchemy's DOUBLE, 10 decimals) with noise
# such as 2040563.5700000001: a before-image comparison on them must still see equality.
AMOUNTS = ["2040563.57", "1234567.89", "0.10", "0.30", "99999999.99", "12.34", "7.05", "3.3"]


def test_double_columns_take_exact_decimals_and_compare_at_the_schema_scale(tmp_path, server_url, broker, registry):
    """Defect 5: PostgreSQL double precision was treated as numeric(53,0) (every non-integer
    amount parked); MariaDB DOUBLE read back 2040563.5700000001, so before_image reported
    false conflicts."""
    assert any("%.10f" % float(a) != a + "0" * (10 - len(a.split(".")[1])) for a in AMOUNTS), "noisy on read-back"
    engine = sa.create_engine(server_url)
    create_local(engine, with_audit=False)
    double = "DOUBLE PRECISION" if engine.dialect.name == "postgresql" else "DOUBLE"
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE erp_customer DROP COLUMN credit_lim")
        conn.exec_driver_sql(f"ALTER TABLE erp_customer ADD COLUMN credit_lim {double}")
    reverse = copy.deepcopy(REVERSE)
    reverse["Customer"]["tables"][0]["conflict"] = {"mode": "before_image"}
    topic = new_topic(broker, "dbl")
    firsts = [customer(f"C-{i}", limit=a) for i, a in enumerate(AMOUNTS)]
    seconds = [customer(f"C-{i}", limit=str(Decimal(a) + Decimal("1000.01"))) for i, a in enumerate(AMOUNTS)]
    fabric = FabricProducer(broker.bootstrap, registry.url, topic)
    fabric.send([event(c, operation="CREATE") for c in firsts])
    with agent_for(tmp_path, server_url, broker, registry, topic, reverse=reverse) as agent:
        assert agent.until(lambda: rows(engine, "SELECT count(*) FROM outpost_applied_events") == [(8,)]
                           or open_exceptions(tmp_path / "state")), agent.log()[-3000:]
        # in their own batches: the updates are compared with what the database reads back
        fabric.send([event(after, before=before) for before, after in zip(firsts, seconds)])
        assert agent.until(lambda: rows(engine, "SELECT count(*) FROM outpost_applied_events") == [(16,)]
                           or open_exceptions(tmp_path / "state")), agent.log()[-3000:]
        parked = open_exceptions(tmp_path / "state")
    assert [p["reason"] for p in parked] == []
    stored = dict(rows(engine, "SELECT cust_no, credit_lim FROM erp_customer"))
    assert {k: round(Decimal(repr(float(v))), 2) for k, v in stored.items()} == {
        c["customer_number"]: c["credit_limit"] for c in seconds}


def test_every_rejected_message_is_dead_lettered_with_its_reason(tmp_path, pg_url, broker, registry):
    """Defect 8: dead-letter copies carried no header naming the error, and messages refused
    after decoding (text for a decimal, an amount beyond the schema's precision, a key that
    is not the image's) were not copied at all; 1e16 was reported as "more than 2 decimal
    places" and oversized values were shown rounded."""
    engine = sa.create_engine(pg_url)
    create_local(engine, with_audit=False)
    topic = new_topic(broker, "dlq")
    fabric = FabricProducer(broker.bootstrap, registry.url, topic)
    as_text = copy.deepcopy(CUSTOMER.schema)        # a producer whose schema has text for the amount
    next(f for f in next(t for t in as_text["fields"][2]["type"] if t != "null")["fields"]
         if f["name"] == "credit_limit")["type"] = ["null", "string"]
    text_id = fabric.registry.register_schema(f"{topic}-text-value", Schema(json.dumps(as_text), "AVRO"))
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(as_text),
                               event({**customer("C-TXT"), "credit_limit": "500.00"}, operation="CREATE"))
    wider = copy.deepcopy(CUSTOMER.schema)          # ... and one whose amounts are decimal(20,2)
    next(f for f in next(t for t in wider["fields"][2]["type"] if t != "null")["fields"]
         if f["name"] == "credit_limit")["type"] = ["null", {"type": "bytes", "logicalType": "decimal",
                                                             "precision": 20, "scale": 2}]
    wider_id = fabric.registry.register_schema(f"{topic}-wide-value", Schema(json.dumps(wider), "AVRO"))
    big = io.BytesIO()
    fastavro.schemaless_writer(big, fastavro.parse_schema(wider),
                               event(customer("C-BIG", limit="10000000000000000.00"), operation="CREATE"))
    mismatched = event(customer("C-KEY"), operation="CREATE")
    mismatched["key"] = "C-OTHER"
    fabric.send([mismatched, event(customer("C-OK"), operation="CREATE")],
                raw=[b"not avro at all", fabric.frame(out.getvalue(), text_id),
                     fabric.frame(big.getvalue(), wider_id)])
    document = inbound_config(tmp_path / "state", pg_url, broker.bootstrap, registry.url, topic)
    document["sources"]["fabric_in"]["dead_letter_topic"] = f"{topic}.dlq"
    path = write_config(tmp_path / "outpost.yaml", document)
    with AgentProcess(path, tmp_path / "agent.log") as agent:
        assert agent.until(lambda: len(open_exceptions(tmp_path / "state")) == 4
                           and rows(engine, "SELECT cust_no FROM erp_customer") == [("C-OK",)]), agent.log()[-3000:]
        dead = broker.consume(f"{topic}.dlq", expected=4, timeout=30)
    parked = {p["context"]["offset"]: p for p in open_exceptions(tmp_path / "state")}
    assert len(dead) == 4 and len(parked) == 4
    for message in dead:
        headers = dict(message.headers())
        entry = parked[int(headers["outpost.origin"].decode().rsplit(":", 1)[1])]
        assert headers["outpost.error"].decode() == entry["reason"], "the copy says why, as the exception queue does"
    reasons = sorted(p["reason"] for p in parked.values())
    assert any("10000000000000000.00 does not fit decimal(18,2): 17 integer digits (at most 16)" in r
               for r in reasons), reasons
    assert any("got text or raw bytes" in r and "credit_limit" in r for r in reasons), reasons
    assert any("key 'C-OTHER' differs from customer_number 'C-KEY'" in r for r in reasons), reasons
    assert any("not Confluent-framed" in r for r in reasons), reasons


def lock_table(engine):
    """Another session holds a table lock: writers wait (MariaDB LOCK TABLES, PostgreSQL LOCK TABLE)."""
    conn = engine.connect()
    if engine.dialect.name == "postgresql":
        conn.exec_driver_sql("BEGIN")
        conn.exec_driver_sql("LOCK TABLE erp_customer IN ACCESS EXCLUSIVE MODE")
    else:
        conn.exec_driver_sql("LOCK TABLES erp_customer WRITE")
    return conn


def restarted_behind_a_lock(tmp_path, url, broker, registry, lock_wait: str, shown: str) -> str:
    """One event applied, three more queued while another session locks the table, then a
    SIGKILL and a restart with that backlog: the sink error status shows once it contains
    ``shown`` (returned); after the lock goes, all four rows are there."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    create_local(engine, with_audit=False)
    topic = new_topic(broker, "lock")
    fabric = FabricProducer(broker.bootstrap, registry.url, topic)
    agent = agent_for(tmp_path, url, broker, registry, topic, sink_extra={"lock_wait": lock_wait})
    state = tmp_path / "state"
    with agent:
        fabric.send([event(customer("C-0"), operation="CREATE")])
        assert agent.until(lambda: rows(engine, "SELECT count(*) FROM erp_customer") == [(1,)]), agent.log()[-3000:]
        locker = lock_table(engine)
        try:
            fabric.send([event(customer(f"C-{n}"), operation="CREATE") for n in range(1, 4)])
            assert agent.until(lambda: queue_depth(state) == 3), agent.log()[-3000:]
            agent.kill()
            agent.start()                        # restarts with a backlog, the table still locked
            assert agent.until(lambda: shown in (route_status(state, "inbound").get("sink_error") or ""),
                               timeout=30), (route_status(state, "inbound"), agent.log()[-3000:])
            error = route_status(state, "inbound")["sink_error"]
        finally:
            locker.close()                       # the lock goes with the session
        assert agent.until(lambda: rows(engine, "SELECT count(*) FROM erp_customer") == [(4,)], timeout=60), \
            agent.log()[-3000:]
    return error


def test_an_apply_blocked_by_a_table_lock_is_shown_in_status_on_every_dialect(tmp_path, server_url, broker,
                                                                              registry):
    """A MariaDB LOCK TABLES block was silent in status (only the queue grew) when the agent
    started with a backlog: the lock wait was unbounded (lock_wait_timeout is a day) and the
    start-up drain runs before the stall watch. The lock wait is now bounded by the sink."""
    error = restarted_behind_a_lock(tmp_path, server_url, broker, registry, "3s", "lock")
    assert "waited 3s for a lock another session holds" in error, error


def test_a_write_blocked_during_the_start_up_drain_is_shown_in_status(tmp_path, pg_url, broker, registry):
    """The stall watch started with the delivery loop, after the start-up drain: a write that
    blocked in the drain (a table lock, a sink's long wait) was silent in status however
    long it lasted. The watch now starts with the first watched call, whoever makes it, and
    a sink's open (which may read the locked table) is watched as well."""
    restarted_behind_a_lock(tmp_path, pg_url, broker, registry, "120s", "no acknowledgement")
