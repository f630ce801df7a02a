"""Inbound end to end: tansu -> kafka source -> local queue -> sql_apply -> local database.

Real tansu broker, real SQLite queue, real PostgreSQL / MariaDB / SQLite targets. The schema
registry is the HTTP double of ``tests/support/registry_double.py`` (no registry server
can run here); the producer frames events the Confluent way with the ids it hands out.
"""
import base64
import time
import uuid
from decimal import Decimal
from pathlib import Path

import sqlalchemy as sa

from agent import config as config_module
from agent.retry import retry_exception
from agent.runtime import Agent, make_translator
from tests.support.inbound import (CUSTOMER, FabricProducer, create_local, customer, event, inbound_config)


def wait_for(predicate, timeout=40.0, every=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return predicate()


def count(engine, sql) -> int:
    try:
        with engine.connect() as conn:
            return conn.exec_driver_sql(sql).scalar()
    except sa.exc.SQLAlchemyError:
        return -1


def start_agent(document) -> Agent:
    agent = Agent(config_module.parse(document), drain_timeout=5)
    agent.start()
    return agent


def test_events_apply_once_in_order_and_poison_is_parked_with_its_origin(tmp_path, any_db_url, broker, registry):
    engine = sa.create_engine(any_db_url)
    create_local(engine)
    topic = f"in{uuid.uuid4().hex[:8]}.customer"
    broker.create_topic(topic, partitions=3)
    fabric = FabricProducer(broker.bootstrap, registry.url, topic)
    first = event(customer("C-1", "Acme"), operation="CREATE", correlation_id="deal-42")
    other = event(customer("C-2", "Globex"), operation="CREATE")
    update = event(customer("C-1", "Acme Holdings", limit="999.99"), before=customer("C-1", "Acme"))
    fabric.send([first, other, update, update, update])                     # redelivered 3 times
    truncated = fabric.frame(CUSTOMER.encode(other)[:-7])
    fabric.send([], raw=[b"not avro at all", fabric.frame(b"\x02xx", schema_id=9999), truncated])
    document = inbound_config(tmp_path / "state", any_db_url, broker.bootstrap, registry.url, topic)
    document["sources"]["fabric_in"]["dead_letter_topic"] = f"{topic}.dlq"
    agent = start_agent(document)
    try:
        assert wait_for(lambda: count(engine, "SELECT count(*) FROM outpost_applied_events") == 3
                        and agent.queue.count_exceptions() == 3 and agent.queue.depth() == 0)
        parked = [agent.queue.exception(x["id"]) for x in agent.queue.exceptions()]
        status = agent.queue.status()["inbound"]
    finally:
        agent.stop()
    with engine.connect() as conn:
        stored = [(no, name, Decimal(str(limit))) for no, name, limit in conn.exec_driver_sql(
            "SELECT cust_no, cust_name, credit_lim FROM erp_customer ORDER BY cust_no")]
        assert stored == [("C-1", "Acme Holdings", Decimal("999.99")), ("C-2", "Globex", Decimal("100"))]
        writes = [tuple(r) for r in conn.exec_driver_sql("SELECT cust_no, cust_name FROM apply_audit ORDER BY n")]
        ledger = dict(tuple(r) for r in conn.exec_driver_sql("SELECT event_id, correlation_id FROM outpost_applied_events"))
    assert sorted(writes) == [("C-1", "Acme"), ("C-1", "Acme Holdings"), ("C-2", "Globex")], "each change once"
    assert writes.index(("C-1", "Acme")) < writes.index(("C-1", "Acme Holdings")), "in key order"
    assert ledger[first["metadata"]["event_id"]] == "deal-42", "correlation id propagated"
    assert status["queue_depth"] == 0 and status["open_exceptions"] == 3
    for item in parked:
        context = item["context"]
        assert context["topic"] == topic and isinstance(context["partition"], int) and context["offset"] >= 0
        assert context["error"].startswith(f"{topic}[") and base64.b64decode(context["raw"])
    dead = broker.consume(f"{topic}.dlq", expected=3, timeout=20)
    assert sorted(m.value() for m in dead) == sorted(base64.b64decode(i["context"]["raw"]) for i in parked)
    assert all(dict(m.headers())["outpost.origin"].decode().startswith(f"{topic}:") for m in dead)
    errors = sorted(item["context"]["error"] for item in parked)
    assert any("not Confluent-framed" in e for e in errors)
    assert any("schema id 9999 is unknown" in e for e in errors)
    assert any("does not decode as Customer" in e or "left after decoding" in e for e in errors)
    # a poison message stays poison on retry: it is refreshed, not re-queued
    translator = make_translator(agent.config, agent.catalog, "inbound")
    ok, what = retry_exception(agent.queue.__class__(Path(agent.config.state_dir)), parked[0], translator)
    assert not ok and "still failing" in what


def test_local_database_down_keeps_consuming_then_applies_in_order(tmp_path, broker, registry):
    share = tmp_path / "erp-share"
    share.mkdir()
    url = f"sqlite:///{share / 'erp.db'}"
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    create_local(engine)
    topic = f"in{uuid.uuid4().hex[:8]}.customer"
    broker.create_topic(topic, partitions=1)
    fabric = FabricProducer(broker.bootstrap, registry.url, topic)
    agent = start_agent(inbound_config(tmp_path / "state", url, broker.bootstrap, registry.url, topic))
    try:
        fabric.send([event(customer("C-1", "v0"), operation="CREATE")])
        assert wait_for(lambda: count(engine, "SELECT count(*) FROM outpost_applied_events") == 1)
        share.rename(tmp_path / "erp-share-unmounted")                  # the database goes away
        versions = [customer("C-1", f"v{n}") for n in range(0, 11)]
        fabric.send([event(versions[n], before=versions[n - 1]) for n in range(1, 11)])
        assert wait_for(lambda: agent.queue.depth() == 10), "consumption goes on into the local queue"
        time.sleep(1.5)
        status = agent.queue.status()["inbound"]
        assert status["queue_depth"] == 10 and status["oldest_queued_age_s"] > 1
        assert "unable to open" in (status.get("sink_error") or ""), status
        (tmp_path / "erp-share-unmounted").rename(share)                 # back
        assert wait_for(lambda: agent.queue.depth() == 0, timeout=60)
        status = agent.queue.status()["inbound"]
    finally:
        agent.stop()
    assert status["sink_error"] is None
    with engine.connect() as conn:
        names = [r[0] for r in conn.exec_driver_sql("SELECT cust_name FROM apply_audit ORDER BY n")]
    assert names == [f"v{n}" for n in range(0, 11)], "every change applied once, in order"


def test_unknown_code_is_parked_then_retried_after_the_lookup_is_fixed(tmp_path, sqlite_url, broker, registry):
    engine = sa.create_engine(sqlite_url)
    create_local(engine, with_audit=False)
    topic = f"in{uuid.uuid4().hex[:8]}.customer"
    broker.create_topic(topic, partitions=1)
    FabricProducer(broker.bootstrap, registry.url, topic).send(
        [event(customer("C-7", "New entity", company="DE01"), operation="CREATE"),
         event(customer("C-8", "Known entity"), operation="CREATE")])
    document = inbound_config(tmp_path / "state", sqlite_url, broker.bootstrap, registry.url, topic)
    agent = start_agent(document)
    try:
        assert wait_for(lambda: agent.queue.count_exceptions() == 1 and agent.queue.depth() == 0
                        and count(engine, "SELECT count(*) FROM erp_customer") == 1)
        (parked,) = agent.queue.exceptions()
        assert parked["stage"] == "publish" and parked["key"] == "C-7"
        assert "unknown legal_entity code 'DE01'" in parked["reason"]
    finally:
        agent.stop()
    # master data fixed: the site's legal entity 03 is DE01; restart, then `outpost queue retry`
    document["sinks"]["erp_apply"]["lookups"]["legal_entity"]["03"] = "DE01"
    agent = start_agent(document)
    try:
        item = agent.queue.exception(parked["id"])
        assert retry_exception(agent.queue, item, make_translator(agent.config, agent.catalog, "inbound"))[0]
        agent.deliveries["erp_apply"].wakeup.set()
        assert wait_for(lambda: count(engine, "SELECT count(*) FROM erp_customer WHERE company='03'") == 1)
    finally:
        agent.stop()


def test_only_canonical_event_sources_may_omit_the_mapping(tmp_path, sqlite_url):
    document = inbound_config(tmp_path / "state", sqlite_url, "127.0.0.1:1", "http://127.0.0.1:1", "t.customer")
    assert config_module.parse(document).routes["inbound"].mapping is None
    document["sources"]["erp"] = {"type": "sql_poll", "url": sqlite_url, "table": "erp_customer",
                                  "cursor": "updated_at"}
    document["routes"]["outbound"] = {"source": "erp", "sink": "erp_apply"}
    try:
        config_module.parse(document)
    except config_module.ConfigError as exc:
        assert any(p.startswith("routes.outbound.mapping: expected one of") for p in exc.problems), exc.problems
    else:
        raise AssertionError("a sql_poll route without mapping must be refused")
