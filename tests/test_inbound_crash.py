"""Inbound crash consistency: the agent runs as a real process and is killed with SIGKILL.

Real tansu broker, real PostgreSQL target with an audit trigger that records every write
that commits; the schema registry is the HTTP double of ``tests/support/registry_double.py``
(no registry server can run here). Auto commit of stored offsets is set to 10 minutes,
so at every kill the broker still holds the old committed offsets: everything queued,
or queued and applied, since the last start is delivered again after the restart
(the "queued but offset not moved upstream" window, made as wide as possible).
"""
import os
import random
import time
import uuid
import yaml

import pytest
import sqlalchemy as sa

from tests.support.inbound import FabricProducer, create_local, customer, event, inbound_config
from tests.support.agent_process import AgentProcess

pytestmark = pytest.mark.slow
NEVER_COMMIT = {"auto.commit.interval.ms": 600000}


def scalar(engine, sql, **params):
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(sql), params).scalar()
    except sa.exc.ProgrammingError:
        return None


def wait_for(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate():
        time.sleep(0.2)
    return predicate()


def setup(tmp_path, pg_url, broker, registry, partitions=1):
    engine = sa.create_engine(pg_url)
    create_local(engine)
    topic = f"crash{uuid.uuid4().hex[:8]}.customer"
    broker.create_topic(topic, partitions=partitions)
    path = tmp_path / "outpost.yaml"
    path.write_text(yaml.safe_dump(inbound_config(tmp_path / "state", pg_url, broker.bootstrap, registry.url, topic,
                                                  consumer=NEVER_COMMIT)))
    return engine, FabricProducer(broker.bootstrap, registry.url, topic), AgentProcess(path, tmp_path / "agent.log")


def test_sigkill_between_apply_and_commit_then_redelivery_applies_once(tmp_path, pg_url, broker, registry):
    engine, fabric, agent = setup(tmp_path, pg_url, broker, registry)
    v1 = customer("C-1", "Before crash")
    fabric.send([event(v1, operation="CREATE")])
    agent.start()
    try:
        assert wait_for(lambda: scalar(engine, "SELECT count(*) FROM outpost_applied_events") == 1)
        with engine.connect() as blocker:
            blocker.exec_driver_sql("BEGIN")
            # Readers pass, writers wait: the applier upserts the row, then blocks on its
            # ledger insert, inside its transaction, before the commit.
            blocker.exec_driver_sql("LOCK TABLE outpost_applied_events IN EXCLUSIVE MODE")
            fabric.send([event(customer("C-1", "After crash"), before=v1)])
            assert wait_for(lambda: scalar(engine, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type="
                                           "'Lock' AND query LIKE 'INSERT INTO outpost_applied_events%'") == 1)
            agent.kill()
            blocker.exec_driver_sql("ROLLBACK")
        assert wait_for(lambda: scalar(engine, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE "
                                       "'INSERT INTO outpost_applied_events%' AND state <> 'idle'") == 0)
        assert scalar(engine, "SELECT cust_name FROM erp_customer") == "Before crash", "rolled back"
        agent.start()
        assert wait_for(lambda: scalar(engine, "SELECT count(*) FROM outpost_applied_events") == 2)
        time.sleep(2)   # the restart re-read both messages from the old committed offset
    finally:
        assert agent.terminate() == 0, (tmp_path / "agent.log").read_text()[-3000:]
    assert scalar(engine, "SELECT cust_name FROM erp_customer") == "After crash"
    with engine.connect() as conn:
        writes = [r[0] for r in conn.exec_driver_sql("SELECT cust_name FROM apply_audit ORDER BY n")]
    assert writes == ["Before crash", "After crash"], "each event changed the row once"


def test_sigkill_at_random_points_applies_every_event_once_in_key_order(tmp_path, pg_url, broker, registry):
    seed = int(os.environ.get("OUTPOST_CRASH_SEED", time.time()))
    rng = random.Random(seed)
    engine, fabric, agent = setup(tmp_path, pg_url, broker, registry, partitions=3)
    keys, rounds = [f"K-{n:03d}" for n in range(20)], 10
    versions = {k: [customer(k, f"{k} v{r}") for r in range(rounds)] for k in keys}
    stream = [event(versions[k][r], before=versions[k][r - 1] if r else None,
                    operation="UPDATE" if r else "CREATE") for r in range(rounds) for k in keys]
    agent.start()
    try:
        for start in range(0, len(stream), 50):          # the fabric publishes while we kill
            fabric.send(stream[start:start + 50])
            time.sleep(rng.uniform(0.5, 2.5))
            agent.kill()
            agent.start()
        assert wait_for(lambda: scalar(engine, "SELECT count(*) FROM outpost_applied_events") == len(stream),
                        timeout=90), f"seed {seed}"
    finally:
        assert agent.terminate() == 0, (tmp_path / "agent.log").read_text()[-3000:]
    with engine.connect() as conn:
        writes = [tuple(r) for r in conn.exec_driver_sql("SELECT cust_no, cust_name FROM apply_audit ORDER BY n")]
    assert len(writes) == len(stream), f"every event changed the row exactly once (seed {seed})"
    for k in keys:
        assert [name for key, name in writes if key == k] == [f"{k} v{r}" for r in range(rounds)], f"seed {seed}"
