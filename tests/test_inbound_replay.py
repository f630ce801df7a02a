"""Fixing and replaying inbound events (issue 10, defects 1 and 2): a retried parked event
never moves a row backwards, and a discarded event stays discarded through a
consumer-group reset.

Real agent process (``tests/support/agent_process.py``), real ``outpost queue`` commands,
real tansu broker (offsets reset as ``kafka-consumer-groups --reset-offsets`` would),
real PostgreSQL and MariaDB with legacy-looking tables (uppercase names, a trigger-kept
row version). The schema registry is the HTTP double of ``tests/support/registry_double.py``
(no registry server can run here).
"""
import copy
import datetime as dt

import sqlalchemy as sa

from tests.support.agent_process import AgentProcess, open_exceptions, outpost, queue_depth, wait_for
from tests.support.inbound import (INVOICE_REVERSE, REVERSE, T0, create_invoices, create_local, customer, event,
                                   FabricProducer, inbound_config, invoice, new_topic, rows, write_config)


def at(minutes: int) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


def invoice_event(no: str, minute: int, operation: str = "UPDATE", **changes) -> dict:
    return event(invoice(no, **changes), operation=operation, entity="Invoice", occurred_at=at(minute))


def config(tmp_path, url, broker, registry, topics: list, reverse: dict) -> dict:
    document = inbound_config(tmp_path / "state", url, broker.bootstrap, registry.url, topics[0], reverse=reverse)
    document["sources"]["fabric_in"]["topics"] = topics
    return document


def test_a_retried_parked_event_never_moves_the_row_backwards(tmp_path, server_url, broker, registry):
    """Defect 1: v1 created, v2 parked (unknown legal entity), v3 applied (PAID); after the
    code is added and v2 retried, the row held v2. Conflict mode none (the default)."""
    engine = sa.create_engine(server_url)
    create_invoices(engine)
    topic = new_topic(broker, "inv")
    v1 = invoice_event("INV-1", 1, "CREATE")
    v2 = invoice_event("INV-1", 2, company="DE01", net="200.00")
    v3 = invoice_event("INV-1", 3, status="PAID")
    FabricProducer(broker.bootstrap, registry.url, topic, entity="Invoice").send([v1, v2, v3])
    document = config(tmp_path, server_url, broker, registry, [topic], INVOICE_REVERSE)
    path = write_config(tmp_path / "outpost.yaml", document)
    state = tmp_path / "state"
    with AgentProcess(path, tmp_path / "agent.log") as agent:
        assert agent.until(lambda: rows(engine, "SELECT count(*) FROM outpost_applied_events") == [(2,)]
                           and len(open_exceptions(state)) == 1), agent.log()[-3000:]
        assert agent.terminate() == 0
    (parked,) = open_exceptions(state)
    assert "unknown legal_entity code 'DE01'" in parked["reason"]
    document["sinks"]["erp_apply"]["lookups"]["legal_entity"]["03"] = "DE01"      # master data fixed
    write_config(path, document)
    with AgentProcess(path, tmp_path / "agent.log") as agent:
        retried = outpost("queue", "retry", parked["id"], "-c", path)
        assert retried.returncode == 0, retried.stdout + retried.stderr
        assert agent.until(lambda: queue_depth(state) == 0 and len(open_exceptions(state)) == 1
                           and open_exceptions(state)[0]["id"] != parked["id"]), agent.log()[-3000:]
        (stale,) = open_exceptions(state)
    assert invoice_rows(engine, "STATUS", "COMPANY", "NET") == [("PAID", "01", 100)], "v3 stays"
    assert stale["event_id"] == v2["metadata"]["event_id"] and stale["reason"].startswith("stale:"), stale["reason"]
    assert v3["metadata"]["event_id"] in stale["reason"], "names what was applied instead"
    discarded = outpost("queue", "discard", stale["id"], "-c", path)
    assert discarded.returncode == 0 and "discarded" in discarded.stdout, "a stale event can be discarded"


def test_discarded_events_stay_discarded_after_a_consumer_group_reset(tmp_path, server_url, broker, registry):
    """Defect 2: after ``queue discard`` and a consumer-group reset, a discarded conflict came
    back open, and a discarded invoice (unknown code, code added later) was applied."""
    engine = sa.create_engine(server_url)
    create_local(engine, with_audit=False)
    create_invoices(engine)
    customers, invoices = new_topic(broker, "cus"), new_topic(broker, "inv")
    base = customer("C-1", "From CRM")
    FabricProducer(broker.bootstrap, registry.url, customers).send([event(base, operation="CREATE")])
    FabricProducer(broker.bootstrap, registry.url, invoices, entity="Invoice").send(
        [invoice_event("INV-9", 1, "CREATE", company="DE01")])
    reverse = {**copy.deepcopy(REVERSE), **INVOICE_REVERSE}
    document = config(tmp_path, server_url, broker, registry, [customers, invoices], reverse)
    path = write_config(tmp_path / "outpost.yaml", document)
    state = tmp_path / "state"
    ts = "updated_at = '2026-11-01 10:00:00'"
    with AgentProcess(path, tmp_path / "agent.log") as agent:
        assert agent.until(lambda: rows(engine, "SELECT cust_name FROM erp_customer") == [("From CRM",)]
                           and len(open_exceptions(state)) == 1), agent.log()[-3000:]
        with engine.begin() as conn:            # a clerk edits C-1 after the fabric's version
            conn.exec_driver_sql(f"UPDATE erp_customer SET cust_name = 'Edited locally', {ts}")
        FabricProducer(broker.bootstrap, registry.url, customers).send(
            [event(customer("C-1", "Renamed in CRM", updated_at=at(5)), before=base)])
        assert agent.until(lambda: len(open_exceptions(state)) == 2), agent.log()[-3000:]
        assert agent.terminate() == 0
    parked = open_exceptions(state)
    assert sorted(p["reason"].split(":")[0] for p in parked) == ["conflict", "gate"], "unknown code DE01"
    assert any("unknown legal_entity code 'DE01'" in p["reason"] for p in parked)
    discarded = outpost("queue", "discard", *[p["id"] for p in parked], "-c", path)
    assert discarded.returncode == 0, discarded.stdout + discarded.stderr
    document["sinks"]["erp_apply"]["lookups"]["legal_entity"]["03"] = "DE01"      # the code exists now
    write_config(path, document)
    group = document["sources"]["fabric_in"]["group_id"]
    for topic in (customers, invoices):
        broker.reset_group(group, topic)
    # after the replayed messages, one new event per topic: once both are applied, every
    # replayed message before them (one partition each) has been consumed
    FabricProducer(broker.bootstrap, registry.url, customers).send([event(customer("C-2"), operation="CREATE")])
    FabricProducer(broker.bootstrap, registry.url, invoices, entity="Invoice").send(
        [invoice_event("INV-10", 9, "CREATE")])
    with AgentProcess(path, tmp_path / "agent.log") as agent:
        assert agent.until(lambda: rows(engine, "SELECT count(*) FROM outpost_applied_events") == [(3,)]
                           and queue_depth(state) == 0), agent.log()[-3000:]
        wait_for(lambda: open_exceptions(state) or queue_depth(state), timeout=3)
        assert open_exceptions(state) == [] and queue_depth(state) == 0, "nothing discarded came back"
    assert rows(engine, "SELECT cust_no, cust_name FROM erp_customer ORDER BY cust_no") == [
        ("C-1", "Edited locally"), ("C-2", "Acme")]
    assert invoice_rows(engine, "INVNO") == [("INV-10",)], "the discarded invoice was not applied"


def invoice_rows(engine, *columns) -> list:
    table = sa.Table("INVOICE", sa.MetaData(), autoload_with=engine)
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.select(*[table.c[c] for c in columns]).order_by(table.c.INVNO))]
