"""A PostgreSQL database for log-based capture tests: a dedicated LOGIN REPLICATION role that
owns a fresh database (so ``publication.autocreate.mode=filtered`` can create the
publication), and a config for ``debezium`` routes to the real broker. At the end every
replication slot and publication of that database is dropped, then the database and the
role, so the shared server keeps no WAL pinned.

``AgentProcess`` is the agent as a real process (``outpost run``), for SIGKILL and SIGTERM
tests of debezium routes; ``kill_at_write`` lands the SIGKILL exactly on a write to a given
file (strace fault injection), e.g. in the middle of the engine's offset flush.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import psycopg
import pytest

ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
ROOT = Path(__file__).resolve().parent.parent.parent


class PgReplicationDb:
    def __init__(self, port: int = 5432, admin: str = ADMIN):
        suffix = uuid.uuid4().hex[:8]
        self.name, self.user, self.password, self.port = f"outpost_dbz_{suffix}", f"outpost_dbz_{suffix}", \
            uuid.uuid4().hex, port
        self.admin = admin
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {self.user} LOGIN REPLICATION PASSWORD '{self.password}'")
            conn.execute(f"CREATE DATABASE {self.name} OWNER {self.user}")

    def connect(self, **kw) -> psycopg.Connection:
        return psycopg.connect(host="127.0.0.1", port=self.port, user=self.user, password=self.password,
                               dbname=self.name, autocommit=True, **kw)

    def execute(self, *statements: str, params=None) -> None:
        with self.connect() as conn:
            for statement in statements:
                conn.execute(statement, params)

    def insert_customers(self, numbers, limit: str = "1000.00") -> None:
        """Rows of ``tests.support.route.CUSTOMER_DDL``'s table, one transaction."""
        with self.connect() as conn, conn.transaction():
            conn.cursor().executemany(
                "INSERT INTO erp_customer (cust_no, cust_name, company, curr, tax_code, credit_lim)"
                " VALUES (%s, %s, '01', 'USD', 'NY', %s)", [(f"C-{n:05d}", f"Customer {n}", limit) for n in numbers])

    def slots(self) -> list[str]:
        with psycopg.connect(self.admin, autocommit=True) as conn:
            return [r[0] for r in conn.execute("SELECT slot_name FROM pg_replication_slots WHERE database = %s",
                                               (self.name,))]

    def source(self, **extra) -> dict:
        return {"type": "debezium", "connector": "postgres", "hostname": "127.0.0.1", "port": self.port,
                "user": self.user, "password": self.password, "database": self.name, **extra}

    def drop(self) -> None:
        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
                         " WHERE database = %s AND active_pid IS NOT NULL", (self.name,))
            deadline = time.monotonic() + 10
            while self.slots() and time.monotonic() < deadline:
                for slot in self.slots():
                    try:
                        conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                    except psycopg.Error:
                        time.sleep(0.2)   # its walsender is still exiting
            conn.execute(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")
            conn.execute(f"DROP ROLE IF EXISTS {self.user}")


@pytest.fixture
def pg_repl() -> Iterator[PgReplicationDb]:
    db = PgReplicationDb()
    try:
        yield db
    finally:
        db.drop()


def debezium_config(state_dir, db: PgReplicationDb, bootstrap: str, registry_url: str, routes: dict,
                    mappings: dict, lookups: dict, source_extra=None) -> dict:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    return {
        "state_dir": str(state_dir),
        "fabric": {"kafka": {"bootstrap.servers": bootstrap}, "schema_registry": {"url": registry_url},
                   "topic_template": prefix + ".{entity}", "create_topics": True, "topic_partitions": 3},
        "lookups": lookups,
        "mappings": mappings,
        "sources": {"erp": db.source(**(source_extra or {}))},
        "sinks": {"fabric": {"type": "kafka", "delivery_timeout_s": 30}},
        "routes": routes,
    }


def slot_active(db: PgReplicationDb) -> bool:
    """A walsender streams the database's slot: the engine is connected and streaming."""
    with psycopg.connect(db.admin, autocommit=True) as conn:
        return bool(conn.execute("SELECT 1 FROM pg_replication_slots WHERE database = %s AND active",
                                 (db.name,)).fetchone())


def slot_pid(db: PgReplicationDb):
    """The walsender's pid of the database's active slot (a new one after each engine start), or None."""
    with psycopg.connect(db.admin, autocommit=True) as conn:
        row = conn.execute("SELECT active_pid FROM pg_replication_slots WHERE database = %s AND active",
                           (db.name,)).fetchone()
    return row[0] if row else None


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


class AgentProcess:
    """``outpost run -c CONFIG`` with cwd = ``workdir`` (stdout/stderr appended to files there)."""

    def __init__(self, workdir: Path, config_path: Path):
        self.cwd, self.config_path = workdir, config_path
        self.process = None

    def start(self):
        with open(self.cwd / "agent.stdout", "ab") as out, open(self.cwd / "agent.stderr", "ab") as err:
            self.process = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "-c", str(self.config_path)],
                                            cwd=self.cwd, stdout=out, stderr=err,
                                            env={**os.environ, "PYTHONPATH": str(ROOT)})

    def kill(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop_if_running(self):
        """Teardown (``request.addfinalizer``): a failed test must not leave an agent behind."""
        if self.process is not None and self.process.poll() is None:
            self.kill()

    def kill_at_write(self, path: Path, timeout: float) -> bool:
        """SIGKILL the agent when one of its threads next calls write(2) on ``path``.

        strace injects the signal at the syscall's entry, so the file stays as the writer left
        it just before: a store rewritten in place is truncated and not yet written (torn). If
        no write comes within ``timeout`` the agent is killed anyway. Returns whether the kill
        landed on the write. Needs ``strace`` (and ptrace rights over the agent)."""
        tracer = subprocess.Popen([shutil.which("strace") or "strace", "-qq", "-f", "-p", str(self.process.pid),
                                   "-e", "trace=write", "-e", "inject=write:signal=SIGKILL", "-P", str(path),
                                   "-o", os.devnull], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            self.process.wait(timeout)
            landed = self.process.returncode == -signal.SIGKILL
        except subprocess.TimeoutExpired:
            landed = False
            self.kill()
        try:
            tracer.wait(10)
        except subprocess.TimeoutExpired:
            tracer.kill()
            tracer.wait(10)
        return landed

    def stderr(self, tail: int = 3000) -> str:
        return (self.cwd / "agent.stderr").read_text(errors="replace")[-tail:]
