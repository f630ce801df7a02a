"""Inbound crash consistency: the SIGKILL recovery contract (tests/support/recovery.py) over
kafka -> sql_apply, the agent a real process killed with SIGKILL.

Real tansu broker, real PostgreSQL target with an audit trigger that records every write
that commits; the schema registry is the HTTP double of ``tests/support/registry_double.py``
(no registry server can run here). Auto commit of stored offsets is set to 10 minutes,
so at every kill the broker still holds the old committed offsets: everything queued,
or queued and applied, since the last start is delivered again after the restart
(the "queued but offset not moved upstream" window, made as wide as possible).
"""
import time
import uuid

import sqlalchemy as sa

from tests.support.harness import Change
from tests.support.inbound import FabricProducer, create_local, customer, event, inbound_config
from tests.support.recovery import RecoveryContract

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
    document = inbound_config(tmp_path / "state", pg_url, broker.bootstrap, registry.url, topic, consumer=NEVER_COMMIT)
    return engine, FabricProducer(broker.bootstrap, registry.url, topic), document


class _Inbound(RecoveryContract):
    """kafka -> sql_apply through a real agent process; the audit trigger lists every write."""

    route = ("kafka", "sql_apply")
    exact = True            # apply-once: a redelivered event must not write again
    partitions = 1

    def prepare(self, request, tmp_path):
        self.engine, self.fabric, document = setup(tmp_path, *map(request.getfixturevalue, ("pg_url", "broker",
                                                                                            "registry")),
                                                   partitions=self.partitions)
        request.addfinalizer(self.engine.dispose)
        return document

    def landed(self):
        with self.engine.connect() as conn:
            return [Change(key, name) for key, name in
                    conn.exec_driver_sql("SELECT cust_no, cust_name FROM apply_audit ORDER BY n")]

    def check(self, landed):
        assert scalar(self.engine, "SELECT count(*) FROM outpost_applied_events") == len(self.expected), \
            "every event recorded as applied, once"


class TestSigkillBetweenApplyAndCommit(_Inbound):
    """Killed inside the apply transaction; the redelivery after the restart applies once."""

    grace = 2.0             # the restart re-reads both messages from the old committed offset

    def run(self):
        engine, fabric, agent = self.engine, self.fabric, self.agent
        v1 = customer("C-1", "Before crash")
        fabric.send([event(v1, operation="CREATE")])
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
        self.expected = [Change("C-1", "Before crash"), Change("C-1", "After crash")]
        self.start_agent()

    def check(self, landed):
        super().check(landed)
        assert scalar(self.engine, "SELECT cust_name FROM erp_customer") == "After crash"


class TestSigkillAtRandomPoints(_Inbound):
    """Killed at random points while the fabric publishes: every event applied once, in key order."""

    partitions = 3

    def run(self):
        keys, rounds = [f"K-{n:03d}" for n in range(20)], 10
        versions = {k: [customer(k, f"{k} v{r}") for r in range(rounds)] for k in keys}
        stream = [event(versions[k][r], before=versions[k][r - 1] if r else None,
                        operation="UPDATE" if r else "CREATE") for r in range(rounds) for k in keys]
        for start in range(0, len(stream), 50):          # the fabric publishes while we kill
            self.fabric.send(stream[start:start + 50])
            self.expected += [Change(e["key"], e["after"]["name"]) for e in stream[start:start + 50]]
            time.sleep(self.rng.uniform(0.5, 2.5))
            self.agent.kill()
            self.start_agent()
