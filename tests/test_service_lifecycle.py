"""Graceful shutdown of the agent process: SIGTERM during a busy stream loses nothing and,
unlike a crash, publishes nothing twice; a stop is bounded by ``shutdown_timeout`` even
when the broker cannot acknowledge the in-flight batch.

Real processes, PostgreSQL, SQLite queue and tansu broker; the schema registry is the
HTTP double of ``tests/support/registry_double.py`` (no registry server can run here).
"""
import signal
import time

import pytest
import yaml

from tests.support.agent_process import AgentProcess, queue_depth
from tests.support.harness import Change, kafka_changes
from tests.support.recovery import RecoveryContract
from tests.support.route import create_tables, decode_messages, insert_customers, route_config, write_stream

ROWS = 1500
STOP_BOUND_S = 5

pytestmark = pytest.mark.slow


def _document(tmp_path, pg_url, broker, registry, **kw) -> dict:
    document = route_config(tmp_path / "state", pg_url, broker.bootstrap, registry.url, every="0.2s", lag=0.3, **kw)
    document["shutdown_timeout"] = f"{STOP_BOUND_S}s"
    return document


def _topic(document) -> str:
    return document["fabric"]["topic_template"].format(entity="customer")


def _terminate(agent) -> tuple[int, float]:
    started = time.monotonic()
    code = agent.terminate()
    return code, time.monotonic() - started


class TestSigtermDuringABusyStream(RecoveryContract):
    """The recovery contract with graceful stops instead of kills (sql_poll -> kafka): SIGTERM
    every 1.2 s during a busy stream loses nothing and, unlike a crash, publishes nothing
    twice; each stop ends within the shutdown bound."""

    route = ("sql_poll", "kafka")
    interrupt_with, exact = signal.SIGTERM, True
    kill_every = (1.2, 1.2)
    stop_within = STOP_BOUND_S + 3

    def prepare(self, request, tmp_path):
        self.broker, self.registry = request.getfixturevalue("broker"), request.getfixturevalue("registry")
        url = request.getfixturevalue("pg_url")
        self.engine = create_tables(url)
        request.addfinalizer(self.engine.dispose)
        document = _document(tmp_path, url, self.broker, self.registry)
        self.topic = _topic(document)
        return document

    def write(self):
        write_stream(self.engine, ROWS, lambda numbers: self.expected.extend(Change(f"C-{n:05d}", f"{n}.00")
                                                                             for n in numbers))

    def landed(self):
        return kafka_changes(self.broker, self.registry, self.topic)

    def check(self, landed):
        log = self.agent.log()
        assert log.count("agent stopped") == self.interruptions + 1 and "shutdown bound reached" not in log


def test_stop_is_bounded_when_the_broker_cannot_acknowledge(tmp_path, pg_url, broker, registry, request):
    engine = create_tables(pg_url)
    insert_customers(engine, range(1, 11))
    document = _document(tmp_path, pg_url, broker, registry, delivery_timeout=60)
    topic, config_path = _topic(document), tmp_path / "outpost.yaml"
    config_path.write_text(yaml.safe_dump(document))
    agent = AgentProcess(config_path, tmp_path / "agent.log")
    request.addfinalizer(lambda: agent.alive() and agent.kill())
    agent.start()
    deadline = time.monotonic() + 60
    while len(broker.consume(topic, timeout=5)) < 10 and time.monotonic() < deadline:
        time.sleep(0.5)
    with broker.outage():
        insert_customers(engine, range(11, 41))
        time.sleep(3)                      # captured; the batch now waits for acks that cannot come
        assert queue_depth(tmp_path / "state") == 30
        code, took = _terminate(agent)
        assert code == 0 and took < STOP_BOUND_S + 4, f"stop took {took:.1f}s with a 5s bound"
        print(f"bounded stop with the broker frozen: {took:.2f}s")
        assert "shutdown bound reached" in agent.log()
        assert queue_depth(tmp_path / "state") == 30, "the unacknowledged batch stays queued"
        # restarted while the broker is still away: SIGTERM during the start-up drain
        before = len(agent.log())
        agent.start()
        # its signal handler is set before the delivery process starts the drain; a SIGTERM
        # earlier, during the interpreter's start on a loaded machine, would end it with -15
        assert agent.until(lambda: "delivery process started" in agent.log()[before:], 60), agent.log(3000)
        time.sleep(2)
        code, took = _terminate(agent)
        assert code == 0 and took < STOP_BOUND_S + 4, f"stop during the start-up drain took {took:.1f}s"
        print(f"stop during the start-up drain: {took:.2f}s")
        assert "shutdown bound reached" in agent.log()[before:]
        assert queue_depth(tmp_path / "state") == 30
    agent.start()
    deadline = time.monotonic() + 90
    while queue_depth(tmp_path / "state") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert agent.terminate() == 0
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
