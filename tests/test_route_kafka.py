"""The core route end to end: PostgreSQL -> sql_poll -> queue -> kafka sink -> tansu.

Real PostgreSQL, real tansu broker, real SQLite queue. The schema registry is the small
HTTP double of ``tests/support/registry_double.py`` (no registry server can run here),
reached by the agent through the real confluent-kafka client.
"""
import time
from collections import defaultdict
from decimal import Decimal

import sqlalchemy as sa

from agent import config as config_module
from agent.retry import retry_exception
from agent.runtime import Agent, make_translator
from tests.support.route import create_tables, decode_messages, insert_customers, route_config


def _agent(tmp_path, pg_url, broker, registry, **kw):
    cfg = config_module.parse(route_config(tmp_path / "state", pg_url, broker.bootstrap, registry.url, **kw))
    agent = Agent(cfg, drain_timeout=10)
    agent.build()
    agent.start(capture=False)      # delivery threads only; tests drive capture passes
    return agent, cfg


def _wait_drained(agent, timeout=30):
    deadline = time.monotonic() + timeout
    while agent.queue.depth() and time.monotonic() < deadline:
        time.sleep(0.1)
    return agent.queue.depth() == 0


def test_changes_reach_the_broker_as_framed_canonical_events(tmp_path, pg_url, broker, registry):
    engine = create_tables(pg_url)
    insert_customers(engine, range(1, 51), limit=Decimal("1234.56"))
    agent, cfg = _agent(tmp_path, pg_url, broker, registry, lag=0)
    try:
        assert agent.run_pass() == 50
        assert _wait_drained(agent)
        topic = cfg.fabric.topic_template.format(entity="customer")
        events = decode_messages(broker.consume(topic, expected=50, timeout=30), registry)
    finally:
        agent.stop()
    assert len(events) == 50
    first = events[0]
    assert first["_headers"]["entity"] == "Customer" and first["_headers"]["event_id"] == first["metadata"]["event_id"]
    assert first["_key"] == first["key"] == first["after"]["customer_number"]
    assert first["after"]["credit_limit"] == Decimal("1234.56")
    assert first["after"]["legal_entity"] == "US01"
    assert first["metadata"]["source"] == {"system": "acme-erp", "object": "erp_customer",
                                           "position": first["metadata"]["source"]["position"]}
    assert len({e["metadata"]["event_id"] for e in events}) == 50
    assert f"{topic}-value" in registry.subjects


def _stream_through_outage(tmp_path, pg_url, broker, registry, delivery_timeout, outage_seconds):
    """20 customers captured, then 3 rounds of updates of all of them while the broker is frozen."""
    engine = create_tables(pg_url)
    insert_customers(engine, range(1, 21))
    agent, cfg = _agent(tmp_path, pg_url, broker, registry, lag=0, delivery_timeout=delivery_timeout)
    topic = cfg.fabric.topic_template.format(entity="customer")
    try:
        agent.run_pass()
        assert _wait_drained(agent)
        with broker.outage():
            for round_number in range(1, 4):
                with engine.begin() as conn:
                    conn.execute(sa.text("UPDATE erp_customer SET credit_lim = :lim, updated_at = clock_timestamp()"),
                                 {"lim": Decimal(1000 + round_number)})
                assert agent.run_pass() == 20, "capture goes on while the fabric is down"
            time.sleep(outage_seconds)
            status = agent.queue.status()["customers"]
            assert status["queue_depth"] >= 40 and status["oldest_queued_age_s"] > 0
            assert status["sink_error"], "status must say why events are waiting"
            assert not agent.deliveries["fabric"].connected
        assert _wait_drained(agent, timeout=90)
        assert agent.queue.status()["customers"]["sink_error"] is None
        return decode_messages(broker.consume(topic, timeout=30), registry)
    finally:
        agent.stop()


def _assert_complete_and_ordered(events):
    first_seen = {}
    for e in events:
        first_seen.setdefault(e["metadata"]["event_id"], e)
    assert len(first_seen) == 80, "20 snapshot rows + 3 x 20 updates, nothing lost"
    per_key = defaultdict(list)
    for e in first_seen.values():
        per_key[e["key"]].append(e["after"]["credit_limit"])
    for key, limits in per_key.items():
        assert limits == [Decimal("1000.00"), Decimal("1001.00"), Decimal("1002.00"), Decimal("1003.00")], key


def test_short_broker_outage_delivers_everything_once_in_key_order(tmp_path, pg_url, broker, registry):
    # the outage is shorter than the delivery timeout: librdkafka's own idempotent
    # retries carry the batch through, so nothing is sent twice
    events = _stream_through_outage(tmp_path, pg_url, broker, registry, delivery_timeout=60, outage_seconds=7)
    assert len(events) == 80
    _assert_complete_and_ordered(events)


def test_long_broker_outage_loses_nothing_and_repeats_only_same_ids(tmp_path, pg_url, broker, registry):
    # longer than the delivery timeout: timed-out batches are sent again later; what the
    # frozen broker had already received may then appear twice, always under one event id
    events = _stream_through_outage(tmp_path, pg_url, broker, registry, delivery_timeout=2, outage_seconds=7)
    _assert_complete_and_ordered(events)


def test_registry_rejection_parks_one_entity_and_the_rest_flows(tmp_path, pg_url, broker, registry):
    engine = create_tables(pg_url)
    insert_customers(engine, range(1, 6))
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO erp_invoice (inv_no, cust_no, company, curr, tax_code, inv_date, net, tax,"
                             " gross, status) VALUES ('INV-1', 'C-00001', '01', 'USD', 'NY', '2026-11-02', 100.00,"
                             " 8.88, 108.88, 'open')"))
    agent, cfg = _agent(tmp_path, pg_url, broker, registry, invoices=True, lag=0)
    invoice_topic = cfg.fabric.topic_template.format(entity="invoice")
    customer_topic = cfg.fabric.topic_template.format(entity="customer")
    registry.reject_subjects.add(f"{invoice_topic}-value")
    try:
        agent.run_pass()
        assert _wait_drained(agent)
        assert len(broker.consume(customer_topic, expected=5, timeout=30)) == 5
        (parked,) = agent.queue.exceptions()
        assert parked["route"] == "invoices" and parked["stage"] == "publish" and parked["key"] == "INV-1"
        assert "409" in parked["reason"] or "incompatible" in parked["reason"].lower()
        # the fabric team fixes the subject; the operator retries
        registry.reject_subjects.clear()
        item = agent.queue.exception(parked["id"])
        assert retry_exception(agent.queue, item, make_translator(cfg, agent.catalog, "invoices"))[0]
        agent.deliveries["fabric"].wakeup.set()
        assert _wait_drained(agent)
        (invoice,) = decode_messages(broker.consume(invoice_topic, expected=1, timeout=30), registry)
    finally:
        agent.stop()
    assert invoice["after"]["total_amount"] == Decimal("108.88")
    assert invoice["metadata"]["event_id"] == item["event_id"], "the retried event keeps its identity"


def test_bad_rows_go_to_the_exception_queue_and_can_be_retried_after_fixing_master_data(
        tmp_path, pg_url, broker, registry):
    engine = create_tables(pg_url)
    insert_customers(engine, range(1, 4))
    insert_customers(engine, range(4, 6), company="07")          # unknown legal entity
    agent, cfg = _agent(tmp_path, pg_url, broker, registry, lag=0)
    topic = cfg.fabric.topic_template.format(entity="customer")
    try:
        assert agent.run_pass() == 3
        assert _wait_drained(agent)
        parked = agent.queue.exceptions()
        assert sorted(p["reason"] for p in parked) == ["legal_entity: unknown legal_entity code '07'"] * 2
        context = agent.queue.exception(parked[0]["id"])["context"]
        assert context["record"]["after"]["company"] == "07" and context["mapping"]["entity"] == "Customer"
        # master data fixed: the new code is added to the lookup table
        fixed = config_module.parse({**route_config(tmp_path / "state", pg_url, broker.bootstrap, registry.url),
                                     "lookups": {"legal_entity": {"01": "US01", "07": "DE01"},
                                                 "tax_jurisdiction": {"NY": "US-NY"}}})
        translator = make_translator(fixed, agent.catalog, "customers")
        for p in parked:
            assert retry_exception(agent.queue, agent.queue.exception(p["id"]), translator)[0]
        agent.deliveries["fabric"].wakeup.set()
        assert _wait_drained(agent)
        events = decode_messages(broker.consume(topic, expected=5, timeout=30), registry)
        assert agent.queue.count_exceptions() == 0 and agent.queue.count_exceptions("retried") == 2
    finally:
        agent.stop()
    assert sorted(e["key"] for e in events) == [f"C-0000{n}" for n in range(1, 6)]
    assert {e["after"]["legal_entity"] for e in events if e["key"] >= "C-00004"} == {"DE01"}
