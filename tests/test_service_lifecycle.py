"""Graceful shutdown of the agent process: SIGTERM during a busy stream loses nothing and,
unlike a crash, publishes nothing twice; a stop is bounded by ``shutdown_timeout`` even
when the broker cannot acknowledge the in-flight batch.

Real processes, PostgreSQL, SQLite queue and tansu broker; the schema registry is the
HTTP double of ``tests/support/registry_double.py`` (no registry server can run here).
"""
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from tests.support.route import create_tables, decode_messages, insert_customers, route_config

ROOT = Path(__file__).resolve().parent.parent
ROWS = 1500

pytestmark = pytest.mark.slow


class AgentProcess:
    def __init__(self, config_path: Path, log_path: Path):
        self.config_path, self.log_path, self.process = config_path, log_path, None

    def start(self):
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "-c", str(self.config_path)],
                                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                            env={**os.environ, "PYTHONPATH": str(ROOT)})

    def terminate(self, timeout: float = 60) -> tuple[int, float]:
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        return code, time.monotonic() - started

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def queue_depth(state_dir: Path) -> int:
    if not (state_dir / "queue.db").exists():
        return 0
    with sqlite3.connect(state_dir / "queue.db", timeout=10) as db:
        return db.execute("SELECT count(*) FROM outbox").fetchone()[0]


def write_stream(engine, rows: int, done: threading.Event):
    with engine.connect() as conn:
        for start in range(1, rows + 1, 25):
            with conn.begin():
                conn.execute(sa.text("INSERT INTO erp_customer (cust_no, cust_name, company, curr, tax_code,"
                                     " credit_lim) VALUES (:no, :name, '01', 'USD', 'NY', :lim)"),
                             [{"no": f"C-{n:05d}", "name": f"Customer {n}", "lim": n}
                              for n in range(start, min(start + 25, rows + 1))])
            time.sleep(0.02)
    done.set()


def _config(tmp_path, pg_url, broker, registry, **kw):
    document = route_config(tmp_path / "state", pg_url, broker.bootstrap, registry.url, every="0.2s", lag=0.3, **kw)
    document["shutdown_timeout"] = "5s"
    path = tmp_path / "outpost.yaml"
    path.write_text(yaml.safe_dump(document))
    return path, document["fabric"]["topic_template"].format(entity="customer")


def test_sigterm_during_a_busy_stream_loses_nothing_and_sends_nothing_twice(tmp_path, pg_url, broker, registry):
    engine = create_tables(pg_url)
    config_path, topic = _config(tmp_path, pg_url, broker, registry)
    agent = AgentProcess(config_path, tmp_path / "agent.log")
    done = threading.Event()
    writer = threading.Thread(target=write_stream, args=(engine, ROWS, done), daemon=True)
    agent.start()
    writer.start()
    stops = 0
    while not done.is_set() or stops < 3:
        time.sleep(1.2)
        code, took = agent.terminate()
        assert code == 0, agent.log()[-3000:]
        assert took < 5 + 3, f"graceful stop took {took:.1f}s, bound is 5s"
        print(f"graceful stop during the stream: {took:.2f}s")
        stops += 1
        agent.start()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        time.sleep(1)
        if queue_depth(tmp_path / "state") == 0 and len(broker.consume(topic, timeout=30)) >= ROWS:
            break
    assert agent.terminate()[0] == 0
    log = agent.log()
    assert log.count("agent stopped") == stops + 1 and "shutdown bound reached" not in log

    events = decode_messages(broker.consume(topic, timeout=60), registry)
    keys = Counter(e["key"] for e in events)
    ids = Counter(e["metadata"]["event_id"] for e in events)
    assert set(keys) == {f"C-{n:05d}" for n in range(1, ROWS + 1)}, "every row arrived"
    assert max(ids.values()) == 1 and len(ids) == ROWS, "a graceful stop publishes nothing twice"


def test_stop_is_bounded_when_the_broker_cannot_acknowledge(tmp_path, pg_url, broker, registry):
    engine = create_tables(pg_url)
    insert_customers(engine, range(1, 11))
    config_path, topic = _config(tmp_path, pg_url, broker, registry, delivery_timeout=60)
    agent = AgentProcess(config_path, tmp_path / "agent.log")
    agent.start()
    deadline = time.monotonic() + 60
    while len(broker.consume(topic, timeout=5)) < 10 and time.monotonic() < deadline:
        time.sleep(0.5)
    with broker.outage():
        insert_customers(engine, range(11, 41))
        time.sleep(3)                      # captured; the batch now waits for acks that cannot come
        assert queue_depth(tmp_path / "state") == 30
        code, took = agent.terminate()
        assert code == 0 and took < 5 + 4, f"stop took {took:.1f}s with a 5s bound"
        print(f"bounded stop with the broker frozen: {took:.2f}s")
        assert "shutdown bound reached" in agent.log()
        assert queue_depth(tmp_path / "state") == 30, "the unacknowledged batch stays queued"
        # restarted while the broker is still away: SIGTERM during the start-up drain
        before = len(agent.log())
        agent.start()
        time.sleep(3)
        code, took = agent.terminate()
        assert code == 0 and took < 5 + 4, f"stop during the start-up drain took {took:.1f}s"
        print(f"stop during the start-up drain: {took:.2f}s")
        assert "shutdown bound reached" in agent.log()[before:]
        assert queue_depth(tmp_path / "state") == 30
    agent.start()
    deadline = time.monotonic() + 90
    while queue_depth(tmp_path / "state") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert agent.terminate()[0] == 0
    events = decode_messages(broker.consume(topic, timeout=30), registry)
    assert {e["key"] for e in events} == {f"C-{n:05d}" for n in range(1, 41)}


def test_lifecycle_moves_only_forward(tmp_path):
    """An agent starts once; a stop is possible from any state, and only once takes effect."""
    import pytest
    from agent.config import parse
    from agent.contracts import OutpostError
    from agent.runtime import Agent, State
    document = {"state_dir": str(tmp_path / "state"), "routes": {}}
    agent = Agent(parse(document))
    agent.start(capture=False)
    assert agent.state == State.RUNNING
    with pytest.raises(OutpostError, match="starts once"):
        agent.start()
    assert agent.stop() and agent.state == State.STOPPED
    assert agent.stop(), "a second stop is a no-op"
    with pytest.raises(OutpostError, match="stopped"):
        agent.start()
    unstarted = Agent(parse(document))
    assert unstarted.stop() and unstarted.state == State.STOPPED
