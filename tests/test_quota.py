"""The queue quota limits what waits to be delivered, and never freezes an empty queue; the
route's stored capture state says "paused" (or "retrying") only while it is so.

Real parts: PostgreSQL as the ERP, the tansu broker (frozen with SIGSTOP for the outage),
the agent as a real process; the registry is the HTTP double (no registry server can run
here). The capture-state tests run an in-process agent over a real SQLite table.
"""
import sqlite3
import time

import pytest
import yaml

from agent.config import parse
from agent.contracts import DeliveryReport
from agent.queue import dedup_key
from agent.runtime import Agent
from tests.support.agent_process import AgentProcess, queue_depth, route_status, wait_for
from tests.support.route import create_tables, decode_messages, insert_customers, route_config


@pytest.mark.slow
def test_a_small_quota_pauses_capture_only_while_events_wait(tmp_path, pg_url, broker, registry):
    engine = create_tables(pg_url)
    document = route_config(tmp_path / "state", pg_url, broker.bootstrap, registry.url, delivery_timeout=5)
    document["queue"] = {"max_bytes": "512KiB"}
    config = tmp_path / "outpost.yaml"
    config.write_text(yaml.safe_dump(document))
    topic = document["fabric"]["topic_template"].format(entity="customer")
    with AgentProcess(config, tmp_path / "agent.log") as agent:
        # enough delivered ids that their dedup entries alone outgrow the quota
        for start in range(1, 6001, 1000):
            insert_customers(engine, range(start, start + 1000))
        assert wait_for(lambda: _status(tmp_path).get("published_total", 0) >= 6000, 120), agent.log()
        with broker.outage():
            insert_customers(engine, range(6001, 9001))
            assert wait_for(lambda: "paused: queue quota reached" in str(_status(tmp_path).get("capture_state")),
                            60), agent.log()
            assert queue_depth(tmp_path / "state") > 0, "paused with something waiting"
        insert_customers(engine, range(9001, 9011))
        assert wait_for(lambda: _status(tmp_path).get("published_total", 0) >= 9010, 120), \
            (agent.log()[-3000:], _status(tmp_path))
    keys = {event["_key"] for event in decode_messages(broker.consume(topic, expected=9010, timeout=120), registry)}
    assert keys == {f"C-{n:05d}" for n in range(1, 9011)}


def deliver_now(queue, event_ids) -> None:
    queue.commit_capture("r", [{"event_id": i, "route": "r", "sink": "files", "entity": "Customer", "key": i,
                                "operation": "create", "schema_fingerprint": "fp", "body": b"x",
                                "correlation_id": i, "occurred_at": None} for i in event_ids], [], None)
    batch = queue.peek("files", len(event_ids))
    queue.settle("files", batch, DeliveryReport(delivered={e.event_id for e in batch}))


def _status(tmp_path) -> dict:
    return route_status(tmp_path / "state", "customers")


def test_the_agent_forgets_old_delivered_ids_with_nothing_to_deliver(tmp_path):
    database = tmp_path / "erp.db"
    with sqlite3.connect(database) as db:
        db.execute("CREATE TABLE cust (id INTEGER PRIMARY KEY, updated_at DATETIME)")
    config = parse({"state_dir": str(tmp_path / "state"), "queue": {"dedup_retention": "1h", "prune_every": "0.2s"},
                    "mappings": {"c": {"entity": "Customer", "fields": {
                        "customer_number": "id", "name": "id", "legal_entity": "id", "currency": "id",
                        "tax_jurisdiction": "id", "updated_at": "updated_at"}}},
                    "sources": {"db": {"type": "sql_poll", "url": f"sqlite:///{database}"}},
                    "sinks": {"files": {"type": "avro_files", "directory": "outbox"}},
                    "routes": {"r": {"source": "db", "sink": "files", "mapping": "c",
                                     "capture": {"table": "cust", "cursor": "updated_at"}}}})
    agent = Agent(config)
    agent.build()
    queue = agent.queue
    deliver_now(queue, [f"old-{n}" for n in range(1000)])
    queue.prune(now=time.time() + 1800)         # half the retention: the next generation opens
    deliver_now(queue, ["recent"])
    with sqlite3.connect(tmp_path / "state" / "queue.db") as db:   # the old one drained two hours ago
        db.execute("UPDATE id_generations SET drained_at = ? WHERE drained_at IS NOT NULL", (time.time() - 7200,))
    agent.start()
    try:
        def left():
            with sqlite3.connect(tmp_path / "state" / "queue.db") as db:
                return [r[0] for r in db.execute("SELECT id16 FROM seen_ids")]
        assert wait_for(lambda: left() == [dedup_key("recent")], 10), len(left())
    finally:
        agent.stop()


def test_a_resumed_pass_no_longer_says_paused_while_it_runs(tmp_path):
    """The pause is over as soon as a pass gets past the quota: a long pass (a big snapshot,
    a streaming source) must not keep showing "paused" until it ends. A real sql_poll
    snapshot of a SQLite table into real outbox files; the route's source is wrapped only to
    read the stored status while its pass is under way."""
    agent, _ = _sqlite_route(tmp_path, rows=1000, quota="4KB")
    try:
        assert agent.run_pass() == 250, "the first chunk, then the quota"
        agent.run_pass()
        assert agent.queue.status_of("r")["capture_state"].startswith("paused: queue quota reached")
        assert agent.deliver_all() and not agent.queue.over_quota()
        during = _states_during_next_pass(agent)
    finally:
        agent.stop(timeout=10)
    assert during and not any(state.startswith("paused") for state in during), during


def test_a_route_back_from_a_source_outage_says_so_at_its_first_commit(tmp_path):
    """The same for "retrying": once the source answers and a batch is committed, a long
    pass must not go on showing the outage until it ends. The source table is renamed away
    and back (the SELECT fails for real); the source is wrapped only to read the status."""
    agent, database = _sqlite_route(tmp_path, rows=1, cursor="id")
    try:
        agent.run_pass()                           # the snapshot: polling by id from now on
        with sqlite3.connect(database) as db:
            db.execute("ALTER TABLE cust RENAME TO cust_away")
        agent.run_pass()
        assert agent.queue.status_of("r")["capture_state"].startswith("retrying")
        with sqlite3.connect(database) as db:
            db.execute("ALTER TABLE cust_away RENAME TO cust")
            db.executemany("INSERT INTO cust VALUES (?, 'EUR', '2026-01-01 10:00:00')", [(n,) for n in range(1, 1001)])
        agent.captures["r"]._retry_at = 0.0        # the backoff's wait, skipped
        during = _states_during_next_pass(agent)
    finally:
        agent.stop(timeout=10)
    assert len(during) > 1 and not any(state.startswith("retrying") for state in during[1:]), during


def _sqlite_route(tmp_path, rows: int, quota: str = "1GB", cursor: str = "updated_at"):
    """An in-process agent: sql_poll over a SQLite table of ``rows`` rows (250-row snapshot
    chunks and pages) into avro_files."""
    database = tmp_path / "erp.db"
    with sqlite3.connect(database) as db:
        db.execute("CREATE TABLE cust (id INTEGER PRIMARY KEY, curr TEXT, updated_at DATETIME)")
        db.executemany("INSERT INTO cust VALUES (?, 'EUR', '2026-01-01 10:00:00')", [(n,) for n in range(rows)])
    agent = Agent(parse({"state_dir": str(tmp_path / "state"), "queue": {"max_bytes": quota},
                         "delivery_process": False,
                         "mappings": {"c": {"entity": "Customer", "fields": {
                             "customer_number": "id", "name": "id", "legal_entity": "id", "currency": "curr",
                             "tax_jurisdiction": "id", "updated_at": "updated_at"}}},
                         "sources": {"db": {"type": "sql_poll", "url": f"sqlite:///{database}", "lag_seconds": 0}},
                         "sinks": {"files": {"type": "avro_files", "directory": str(tmp_path / "outbox")}},
                         "routes": {"r": {"source": "db", "sink": "files", "mapping": "c", "capture": {
                             "table": "cust", "cursor": cursor, "snapshot_chunk": 250, "batch_size": 250}}}}))
    agent.build()
    return agent, database


def _states_during_next_pass(agent) -> list[str]:
    """The route's stored capture state as each batch of its next pass is handed out."""
    capture, during = agent.captures["r"], []
    real_batches = capture.source.batches

    def watched(checkpoint):
        for batch in real_batches(checkpoint):
            during.append(agent.queue.status_of("r")["capture_state"])
            yield batch
    capture.source.batches = watched
    agent.run_pass()
    return during
