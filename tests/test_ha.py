"""An active/passive pair on one source: two real agent processes, each with its own state
directory, on one PostgreSQL (sql_poll) or MariaDB (binlog) source, the real tansu broker
coordinating them (group membership, transactional fencing, the compacted control topic).
An independent consumer (read_committed, as librdkafka's default) checks the topic: every
change is there, none under two event ids, and a fenced agent published nothing.

The registry is the HTTP double of tests/support/registry_double.py (no registry server
can run here). The lease is 2 s so that a handover takes a few seconds.
"""
import random
import threading
import time
from collections import defaultdict

import pytest
import yaml

from tests.support.agent_process import AgentProcess, outpost, queue_depth, route_status, wait_for
from tests.support.route import create_tables, decode_messages, route_config

pytestmark = pytest.mark.slow

LEASE = "1s"


def _pair(tmp_path, document) -> list:
    document["ha"] = {"group": f"pair-{tmp_path.name[-12:]}".replace("_", "-"), "lease": LEASE}
    document["shutdown_timeout"] = "5s"
    agents = []
    for name in ("a", "b"):
        doc = {**document, "state_dir": str(tmp_path / f"state-{name}")}
        path = tmp_path / f"outpost-{name}.yaml"
        path.write_text(yaml.safe_dump(doc))
        agents.append(AgentProcess(path, tmp_path / f"agent-{name}.log"))
    return agents


def _pg_pair(tmp_path, pg_url, broker, registry):
    """Two agents on one PostgreSQL sql_poll route, started: (engine, topic, agents)."""
    engine = create_tables(pg_url)
    document = route_config(tmp_path / "unused", pg_url, broker.bootstrap, registry.url, every="0.2s", lag=0.3)
    agents = _pair(tmp_path, document)
    for agent in agents:
        agent.start()
    return engine, document["fabric"]["topic_template"].format(entity="customer"), agents


def _state(agent):
    return agent.config_path.parent / f"state-{agent.config_path.stem[-1]}"


def _role(agent) -> str:
    return route_status(_state(agent), "(ha)").get("role", "")


def _active(agents):
    found = [a for a in agents if a.alive() and _role(a) == "active"]
    return found[0] if len(found) == 1 else None


def _active_and_other(agents):
    """Once one agent holds the role: (the active one, the other one)."""
    assert wait_for(lambda: _active(agents) is not None, 30), [a.log()[-2000:] for a in agents]
    active = _active(agents)
    return active, next(a for a in agents if a is not active)


def _until_topic_has(broker, topic, keys, timeout=90) -> bool:
    return wait_for(lambda: {m.key().decode() for m in broker.consume(topic, timeout=30)} >= keys, timeout)


def _pg_writer(engine, rows: int, done: threading.Event):
    import sqlalchemy as sa
    with engine.connect() as conn:
        for start in range(1, rows + 1, 20):
            with conn.begin():
                conn.execute(sa.text("INSERT INTO erp_customer (cust_no, cust_name, company, curr, tax_code,"
                                     " credit_lim) VALUES (:no, :name, '01', 'USD', 'NY', :lim)"),
                             [{"no": f"C-{n:05d}", "name": f"Customer {n}", "lim": n}
                              for n in range(start, min(start + 20, rows + 1))])
            time.sleep(0.05)
    done.set()


def _check_topic(broker, registry, topic, expected_keys):
    events = decode_messages(broker.consume(topic, timeout=60), registry)
    ids_per_change = defaultdict(set)
    for event in events:
        ids_per_change[(event["_key"], event["metadata"]["source"]["position"])].add(event["metadata"]["event_id"])
    assert {key for key, _ in ids_per_change} == expected_keys, "every change reached the fabric"
    assert all(len(ids) == 1 for ids in ids_per_change.values()), "no change under two event ids"
    return events


def _handovers(agents, count, rng, until_done):
    """SIGKILL the active at random moments; the killed one comes back as the passive."""
    handovers = 0
    while handovers < count or not until_done.is_set():
        assert wait_for(lambda: _active(agents) is not None, 30), [a.log()[-2000:] for a in agents]
        time.sleep(rng.uniform(0.2, 1.0))
        victim = _active(agents)
        if victim is None:
            continue
        victim.kill()
        survivor = next(a for a in agents if a is not victim)
        assert wait_for(lambda: _role(survivor) == "active", 20), survivor.log()[-3000:]
        victim.start()
        handovers += 1
    return handovers


def test_sigkilled_actives_hand_over_and_nothing_is_lost_or_split(tmp_path, pg_url, broker, registry):
    rng = random.Random(int(time.time()))
    engine, topic, agents = _pg_pair(tmp_path, pg_url, broker, registry)
    done = threading.Event()
    rows = 1500
    threading.Thread(target=_pg_writer, args=(engine, rows, done), daemon=True).start()
    try:
        handovers = _handovers(agents, 35, rng, done)
        expected = {f"C-{n:05d}" for n in range(1, rows + 1)}
        assert _until_topic_has(broker, topic, expected, 120), \
            [a.log()[-3000:] for a in agents]
    finally:
        for agent in agents:
            agent.kill()
    assert handovers >= 35
    _check_topic(broker, registry, topic, expected)


def test_a_paused_active_is_fenced_and_publishes_nothing_after_it_thaws(tmp_path, pg_url, broker, registry):
    import os
    import signal

    import psutil
    from tests.support.route import insert_customers
    engine, topic, agents = _pg_pair(tmp_path, pg_url, broker, registry)
    try:
        paused, other = _active_and_other(agents)
        insert_customers(engine, range(1, 51))
        assert wait_for(lambda: len(broker.consume(topic, timeout=10)) >= 50, 60), paused.log()[-3000:]
        # a paused VM, with changes captured and not yet published: the delivery process
        # stops first, the rows are captured into the queue, then the agent stops too
        delivery = [child.pid for child in psutil.Process(paused.process.pid).children()]
        frozen_at = time.time()
        for pid in delivery:
            os.kill(pid, signal.SIGSTOP)
        insert_customers(engine, range(51, 101))
        assert wait_for(lambda: queue_depth(_state(paused)) >= 50, 30), paused.log()[-3000:]
        frozen = delivery + [paused.process.pid]
        os.kill(paused.process.pid, signal.SIGSTOP)
        assert wait_for(lambda: _role(other) == "active", 30), other.log()[-3000:]
        insert_customers(engine, range(101, 121))
        assert wait_for(lambda: len({m.key() for m in broker.consume(topic, timeout=10)}) >= 120, 60), \
            other.log()[-3000:]
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
        insert_customers(engine, range(121, 151))
        assert wait_for(lambda: _role(paused) == "passive", 30), paused.log()[-3000:]
        expected = {f"C-{n:05d}" for n in range(1, 151)}
        assert _until_topic_has(broker, topic, expected)
        time.sleep(3)
    finally:
        for agent in agents:
            if agent.alive():
                agent.process.send_signal(signal.SIGCONT)
                agent.kill()
    events = _check_topic(broker, registry, topic, {f"C-{n:05d}" for n in range(1, 151)})
    paused_id = [e for e in events if e["_headers"].get("outpost_agent", "").endswith(_state(paused).name)]
    assert paused_id, "the first active published the first rows"
    late = [e for e in paused_id if e["_timestamp"] >= frozen_at]
    assert late == [], f"{len(late)} event(s) produced by the fenced agent after its pause were committed"


def test_handover_on_request_moves_the_role_and_loses_nothing(tmp_path, pg_url, broker, registry):
    from tests.support.route import insert_customers
    engine, topic, agents = _pg_pair(tmp_path, pg_url, broker, registry)
    try:
        first, second = _active_and_other(agents)
        insert_customers(engine, range(1, 41))
        request = outpost("ha", "handover", "-c", first.config_path)
        assert request.returncode == 0, request.stderr
        assert wait_for(lambda: _role(second) == "active", 30), second.log()[-3000:]
        insert_customers(engine, range(41, 81))
        refused = outpost("ha", "handover", "-c", first.config_path)
        assert refused.returncode != 0 and "not active" in refused.stderr
        expected = {f"C-{n:05d}" for n in range(1, 81)}
        assert _until_topic_has(broker, topic, expected)
    finally:
        for agent in agents:
            agent.kill()
    _check_topic(broker, registry, topic, expected)
    status = outpost("status", "-c", second.config_path)
    assert "this agent is ACTIVE" in status.stdout and "handover" in status.stdout, status.stdout


def test_a_binlog_pair_hands_over_from_the_fabric_checkpoint(tmp_path, mariadb_url, broker, registry):
    """The same on MariaDB's binlog: the new active resumes reading the server's log where
    the fabric's checkpoint says, inside transactions included."""
    from tests.support.binlog import CUSTOMER_DDL, INSERT_CUSTOMER, binlog_config, customer_rows, execute, kafka_sink
    rng = random.Random(int(time.time()))
    execute(mariadb_url, CUSTOMER_DDL)
    sink, fabric = kafka_sink(broker.bootstrap, registry.url)
    document = binlog_config(tmp_path / "unused", mariadb_url, sink=sink, fabric=fabric, snapshot="initial",
                             capture={"batch_size": 15})
    topic = fabric["topic_template"].format(entity="customer")
    agents = _pair(tmp_path, document)
    for agent in agents:
        agent.start()
    done = threading.Event()
    rows = 600

    def writer():
        for start in range(1, rows + 1, 30):
            execute(mariadb_url, many=(INSERT_CUSTOMER, customer_rows(range(start, start + 30))))
            time.sleep(0.1)
        done.set()

    threading.Thread(target=writer, daemon=True).start()
    try:
        handovers = _handovers(agents, 15, rng, done)
        expected = {f"C-{n:05d}" for n in range(1, rows + 1)}
        assert _until_topic_has(broker, topic, expected, 120), \
            [a.log()[-3000:] for a in agents]
    finally:
        for agent in agents:
            agent.kill()
    assert handovers >= 15
    _check_topic(broker, registry, topic, expected)


def test_an_inbound_pair_applies_each_event_once_and_never_moves_a_row_backwards(tmp_path, pg_url, broker,
                                                                               registry):
    """Issue 15, item 5: two agents applying the fabric's updates to one local PostgreSQL
    table, the active SIGKILLed at random moments. The audit trigger records every write:
    per key the written versions only go forward (an event queued by a killed agent and
    applied after its successor applied a newer one would show as a step back) and none is
    written twice; the last version of every key arrives."""
    import datetime as dt

    import sqlalchemy as sa
    from tests.support.inbound import T0, FabricProducer, create_local, customer, event, inbound_config, new_topic, rows
    rng = random.Random(int(time.time()))
    engine = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    create_local(engine, with_audit=True)
    topic = new_topic(broker, "hain")
    fabric = FabricProducer(broker.bootstrap, registry.url, topic)
    agents = _pair(tmp_path, inbound_config(tmp_path / "unused", pg_url, broker.bootstrap, registry.url, topic))
    for agent in agents:
        agent.start()
    keys, versions, done = [f"C-{n}" for n in range(10)], 40, threading.Event()

    def writer():
        for v in range(1, versions + 1):
            fabric.send([event(customer(key, f"v{v:03d}"), operation="CREATE" if v == 1 else "UPDATE",
                               occurred_at=T0 + dt.timedelta(seconds=v)) for key in keys])
            time.sleep(0.15)
        done.set()

    threading.Thread(target=writer, daemon=True).start()
    last = f"v{versions:03d}"
    try:
        handovers = _handovers(agents, 6, rng, done)
        assert wait_for(lambda: rows(engine, f"SELECT count(*) FROM erp_customer WHERE cust_name = '{last}'") == [(len(keys),)], 90), [a.log()[-3000:] for a in agents]
    finally:
        for agent in agents:
            agent.kill()
    assert handovers >= 6
    written = defaultdict(list)
    for cust_no, name in rows(engine, "SELECT cust_no, cust_name FROM apply_audit ORDER BY n"):
        written[cust_no].append(name)
    for key in keys:
        assert written[key] == sorted(set(written[key])), f"{key}: versions written out of order or twice: {written[key]}"
        assert written[key][-1] == last
