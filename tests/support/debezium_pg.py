"""A PostgreSQL database for log-based capture tests: a dedicated LOGIN REPLICATION role that
owns a fresh database (so ``publication.autocreate.mode=filtered`` can create the
publication), and a config for ``debezium`` routes to the real broker. At the end every
replication slot and publication of that database is dropped, then the database and the
role, so the shared server keeps no WAL pinned.
"""
from __future__ import annotations

import time
import uuid
from typing import Callable, Iterator

import psycopg
import pytest

ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


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


def past_snapshot(agent, *routes: str) -> bool:
    """Every route's engine has passed its snapshot phase (taken or skipped): its slot has
    reached a consistent point, so a change written now is streamed. An active slot alone
    is not enough: a slot being created is active while PostgreSQL waits for the running
    transactions of the whole cluster to end (another test's, on a shared server), and a
    change committed meanwhile comes before the slot's start."""
    status = agent.queue.status()
    return all(((status.get(route, {}).get("health") or {}).get("details") or {}).get("snapshot", {}).get("state")
               in ("COMPLETED", "SKIPPED") for route in routes)


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False
