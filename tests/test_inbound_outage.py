"""The local database server stops during an inbound stream: consumption goes on into the
local queue, status shows the backlog, and applying resumes in order when it is back.

A PRIVATE PostgreSQL 15 server (initdb in a temp dir, its own port; the shared server is
never touched) is stopped and started; real tansu broker; the registry is the HTTP double
of ``tests/support/registry_double.py`` (no registry server can run here).
"""
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from agent import config as config_module
from agent.runtime import Agent
from tests.support.inbound import FabricProducer, create_local, customer, event, inbound_config

PG_BIN = Path("/usr/lib/postgresql/15/bin")
pytestmark = pytest.mark.skipif(not (PG_BIN / "initdb").exists() or not shutil.which("runuser"),
                                reason="needs PostgreSQL 15 binaries and runuser")


class PrivatePostgres:
    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="outpost-pg-"))
        shutil.chown(self.dir, "postgres", "postgres")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._as_postgres([str(PG_BIN / "initdb"), "-D", str(self.dir / "data"), "-A", "trust", "-U", "postgres"])
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, argv):
        subprocess.run(["runuser", "-u", "postgres", "--", *argv], check=True, capture_output=True, timeout=120)

    def start(self):
        self._as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.dir / "data"), "-l", str(self.dir / "log"), "-w",
                           "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off",
                           "start"])

    def stop(self):
        self._as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop"])

    def destroy(self):
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass                                    # already stopped
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def private_pg():
    server = PrivatePostgres()
    server.start()
    try:
        yield server
    finally:
        server.destroy()


def wait_for(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate():
        time.sleep(0.2)
    return predicate()


def test_server_stopped_during_a_stream_then_everything_applies_in_order(tmp_path, private_pg, broker, registry):
    engine = sa.create_engine(private_pg.url, poolclass=sa.pool.NullPool)
    create_local(engine)
    topic = f"outage{uuid.uuid4().hex[:8]}.customer"
    broker.create_topic(topic, partitions=1)
    fabric = FabricProducer(broker.bootstrap, registry.url, topic)
    versions = [customer("C-1", f"v{n}") for n in range(11)]
    agent = Agent(config_module.parse(inbound_config(tmp_path / "state", private_pg.url, broker.bootstrap,
                                                     registry.url, topic)), drain_timeout=5)
    agent.start()
    try:
        fabric.send([event(versions[0], operation="CREATE")])
        assert wait_for(lambda: agent.queue.status().get("inbound", {}).get("published_total") == 1)
        private_pg.stop()
        fabric.send([event(versions[n], before=versions[n - 1]) for n in range(1, 11)])
        assert wait_for(lambda: agent.queue.depth() == 10), "consumption goes on while the database is down"
        assert wait_for(lambda: agent.queue.status()["inbound"].get("sink_error"))
        status = agent.queue.status()["inbound"]
        assert status["queue_depth"] == 10 and status["oldest_queued_age_s"] > 0
        assert "127.0.0.1" in status["sink_error"] and "connect" in status["sink_error"].lower()
        private_pg.start()
        assert wait_for(lambda: agent.queue.depth() == 0, timeout=90), "applies once the server is back"
        assert agent.queue.status()["inbound"]["sink_error"] is None
    finally:
        agent.stop()
    with engine.connect() as conn:
        names = [r[0] for r in conn.exec_driver_sql("SELECT cust_name FROM apply_audit ORDER BY n")]
    assert names == [f"v{n}" for n in range(11)], "every change once, in order"
