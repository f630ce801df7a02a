"""systemd notify protocol and watchdog, over a real unix datagram socket.

The agent runs as a real process (PostgreSQL -> sql_poll -> queue -> kafka -> tansu; the
schema registry is the HTTP double of ``tests/support/registry_double.py``) with
``NOTIFY_SOCKET`` pointing at a socket this test reads, as systemd would.
"""
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from agent import config as config_module
from agent.http import StatusServer
from agent.notify import Stall, SystemdNotifier, notify, watchdog_interval
from agent.runtime import Agent
from tests.support.route import create_tables, insert_customers, route_config

ROOT = Path(__file__).resolve().parent.parent


class Listener:
    """A bound AF_UNIX datagram socket collecting what the agent sends."""

    def __init__(self, path: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        while not self._stop.is_set():
            try:
                self.messages.append((time.monotonic(), self.sock.recv(4096).decode()))
            except socket.timeout:
                continue
            except OSError:
                return

    def lines(self):
        return [line for _, m in list(self.messages) for line in m.splitlines()]

    def wait_for(self, line: str, timeout: float = 60) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if line in self.lines():
                return True
            time.sleep(0.1)
        return False

    def count(self, line: str, since: float = 0.0) -> int:
        return sum(1 for t, m in list(self.messages) if t >= since and line in m.splitlines())

    def close(self):
        self._stop.set()
        self.sock.close()
        self._thread.join(2)


def test_notify_sends_one_datagram_to_a_path_and_to_an_abstract_socket(tmp_path):
    listener = Listener(str(tmp_path / "notify.sock"))
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    abstract.bind(f"\0outpost-test-{os.getpid()}")
    abstract.settimeout(5)
    try:
        assert notify("READY=1\nSTATUS=hi", {"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
        assert listener.wait_for("STATUS=hi", 5)
        assert notify("WATCHDOG=1", {"NOTIFY_SOCKET": f"@outpost-test-{os.getpid()}"})
        assert abstract.recv(100) == b"WATCHDOG=1"
        assert not notify("READY=1", {}), "no manager: a no-op"
    finally:
        listener.close()
        abstract.close()
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None   # meant for another pid
    assert watchdog_interval({}) is None


def test_stall_needs_pending_work_and_no_progress_for_longer_than_the_bound():
    stall = Stall(after=10)
    assert not stall.observe(busy=False, counter=0, now=0)
    assert not stall.observe(busy=True, counter=0, now=5)      # work just arrived after idling
    assert not stall.observe(busy=True, counter=0, now=14)
    assert stall.observe(busy=True, counter=0, now=16)
    assert not stall.observe(busy=True, counter=1, now=17), "progress resets it"
    assert not stall.observe(busy=False, counter=1, now=40), "idle is never stuck"


def test_agent_process_sends_ready_watchdog_and_stopping(tmp_path, pg_url, broker, registry):
    engine = create_tables(pg_url)
    insert_customers(engine, range(1, 21))
    config_path = tmp_path / "outpost.yaml"
    config_path.write_text(yaml.safe_dump(route_config(tmp_path / "state", pg_url, broker.bootstrap, registry.url,
                                                       every="0.3s", lag=0)))
    listener = Listener(str(tmp_path / "notify.sock"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
           "WATCHDOG_USEC": "1000000"}
    with open(tmp_path / "agent.log", "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "-c", str(config_path)], cwd=ROOT,
                                   env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        assert listener.wait_for("READY=1"), (tmp_path / "agent.log").read_text()[-2000:]
        ready_at = time.monotonic()
        time.sleep(3)
        assert listener.count("WATCHDOG=1", since=ready_at) >= 4, "every half interval (0.5 s)"
        assert not any(line.startswith("STATUS=stuck") for line in listener.lines())
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        assert listener.wait_for("STOPPING=1", 5)
    finally:
        if process.poll() is None:
            process.kill()
        listener.close()
    lines = listener.lines()
    assert lines.index("READY=1") < lines.index("STOPPING=1")
    assert any(line.startswith("MAINPID=") for line in lines)


@pytest.fixture
def agent(tmp_path, pg_url, broker, registry):
    engine = create_tables(pg_url)
    document = route_config(tmp_path / "state", pg_url, broker.bootstrap, registry.url, lag=0, delivery_timeout=1)
    document["http"] = {"enabled": True, "port": 0}
    cfg = config_module.parse(document)
    agent = Agent(cfg, drain_timeout=10)
    agent.build()
    agent.start(capture=False)
    try:
        yield agent, engine
    finally:
        agent.stop(timeout=10)


def test_watchdog_keeps_going_while_the_broker_is_down(agent, broker, tmp_path):
    agent, engine = agent
    listener = Listener(str(tmp_path / "n.sock"))
    notifier = SystemdNotifier(agent, {"NOTIFY_SOCKET": str(tmp_path / "n.sock"), "WATCHDOG_USEC": "600000"})
    notifier.ready()
    try:
        with broker.outage():
            insert_customers(engine, range(1, 11))
            agent.run_pass()
            settles = agent.queue.observed.settled_batches("fabric")
            frozen_at = time.monotonic()
            time.sleep(9)
            assert agent.queue.depth() == 10, "queued while the fabric is away"
            assert agent.queue.observed.settled_batches("fabric") > settles, "failed attempts are progress too"
            assert listener.count("WATCHDOG=1", since=time.monotonic() - 2) >= 2
            assert listener.count("WATCHDOG=1", since=frozen_at) >= 20
        assert not notifier.stuck
    finally:
        notifier.stopping()
        listener.close()


def test_watchdog_is_withheld_while_delivery_is_stuck_and_resumes(agent, tmp_path):
    """The hang is simulated: the sink's ``write`` is replaced by one that blocks until
    released (nothing real here hangs on demand without also being "broker down")."""
    agent, engine = agent
    delivery = agent.deliveries["fabric"]
    release, real_write = threading.Event(), delivery.sink.write

    def hanging_write(events):
        release.wait(60)
        return real_write(events)

    delivery.sink.write = hanging_write
    listener = Listener(str(tmp_path / "n.sock"))
    notifier = SystemdNotifier(agent, {"NOTIFY_SOCKET": str(tmp_path / "n.sock"), "WATCHDOG_USEC": "400000"},
                               delivery_after=1.5)
    notifier.ready()
    server = StatusServer(agent, notifier=notifier)
    server.start()
    health = f"http://127.0.0.1:{server.port}/healthz"
    try:
        insert_customers(engine, range(1, 6))
        agent.run_pass()
        assert listener.wait_for("STATUS=stuck: sink fabric: events waiting, no batch settled for 2s", 15)
        with pytest.raises(urllib.error.HTTPError) as stuck:
            urllib.request.urlopen(health, timeout=5)
        assert stuck.value.code == 503 and b"stuck" in stuck.value.read(), "liveness fails while stuck"
        time.sleep(0.5)
        silent_from = time.monotonic()
        time.sleep(1.5)
        assert listener.count("WATCHDOG=1", since=silent_from) == 0, "no watchdog while stuck"
        release.set()
        assert listener.wait_for("STATUS=running", 30)
        time.sleep(1.0)
        assert listener.count("WATCHDOG=1", since=time.monotonic() - 1.0) >= 1
        assert agent.queue.depth() == 0
        assert urllib.request.urlopen(health, timeout=5).status == 200
    finally:
        release.set()
        notifier.stopping()
        server.stop()
        listener.close()
