"""Helpers for ``binlog`` source tests: MariaDB tables, route configs, a private server.

``PrivateMariaDB`` runs its own ``mariadbd`` (temp datadir, free port, log_bin with
binlog_format=ROW and binlog_row_image=FULL) so tests may stop, restart and purge it
without touching the shared server other engineers' tests use.
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
import warnings
from pathlib import Path
from typing import Optional

import pymysql
import sqlalchemy as sa

from tests.support.route import CUSTOMER_MAPPING, LOOKUPS

CUSTOMER_DDL = """
CREATE TABLE erp_customer (
    cust_no VARCHAR(20) PRIMARY KEY, cust_name VARCHAR(100) NOT NULL, company VARCHAR(4), curr CHAR(3),
    tax_code VARCHAR(8), credit_lim DECIMAL(18,2),
    updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6))
    CHARACTER SET utf8mb4
"""
INSERT_CUSTOMER = ("INSERT INTO erp_customer (cust_no, cust_name, company, curr, tax_code, credit_lim)"
                   " VALUES (%s, %s, '01', 'USD', 'NY', %s)")


def customer_rows(numbers, limit=None):
    return [(f"C-{n:05d}", f"Customer {n}", limit if limit is not None else n) for n in numbers]


def execute(url: str, *statements, many: Optional[tuple] = None) -> None:
    """Run statements in ONE transaction (``many`` = (sql, rows) executed last)."""
    u = sa.engine.make_url(url)
    conn = pymysql.connect(host=u.host, port=u.port or 3306, user=u.username, password=u.password or "",
                           database=u.database, charset="utf8mb4")
    try:
        with conn.cursor() as cur:
            for sql in statements:
                cur.execute(sql)
            if many:
                cur.executemany(*many)
        conn.commit()
    finally:
        conn.close()


def fetch(url: str, sql: str) -> list[tuple]:
    u = sa.engine.make_url(url)
    conn = pymysql.connect(host=u.host, port=u.port or 3306, user=u.username, password=u.password or "",
                           database=u.database, charset="utf8mb4")
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return list(cur.fetchall())
    finally:
        conn.close()


def binlog_config(state_dir, url: str, *, sink: dict, table: str = "erp_customer", mapping: str = "customer",
                  snapshot: str = "initial", every: str = "0.2s", capture: Optional[dict] = None,
                  mappings: Optional[dict] = None, fabric: Optional[dict] = None) -> dict:
    return {
        "state_dir": str(state_dir),
        "fabric": fabric or {},
        "lookups": LOOKUPS,
        "mappings": {"customer": CUSTOMER_MAPPING, **(mappings or {})},
        "sources": {"erp": {"type": "binlog", "url": url, "system": "acme-erp", "snapshot": snapshot}},
        "sinks": {"out": sink},
        "routes": {"customers": {"source": "erp", "sink": "out", "mapping": mapping, "schedule": {"every": every},
                                 "capture": {"table": table, **(capture or {})}}},
    }


def kafka_sink(bootstrap: str, registry_url: str) -> tuple[dict, dict]:
    prefix = f"b{uuid.uuid4().hex[:8]}"
    fabric = {"kafka": {"bootstrap.servers": bootstrap}, "schema_registry": {"url": registry_url},
              "topic_template": prefix + ".{entity}", "create_topics": True, "topic_partitions": 3}
    return {"type": "kafka", "delivery_timeout_s": 30}, fabric


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateMariaDB:
    """A throw-away mariadbd; ``stop``/``start`` keep its data directory."""

    def __init__(self, base: Path, extra: tuple = ()):
        self.base, self.extra = Path(base), extra
        self.datadir, self.port = self.base / "data", _free_port()
        self.socket = self.base / "mysqld.sock"
        # its own temporary directory: in a parallel CI run a bootstrap's temporary table in
        # the shared /tmp was gone before it could remove it, and the install failed
        self.tmpdir = self.base / "tmp"
        self.process: Optional[subprocess.Popen] = None
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        self._install()
        self.start()

    def _install(self) -> None:
        """mariadb-install-db, once more if it fails: the first failure's output becomes a
        test warning, a second failure an error with both."""
        command = ["mariadb-install-db", "--no-defaults", f"--datadir={self.datadir}", f"--tmpdir={self.tmpdir}",
                   "--user=root", "--auth-root-authentication-method=normal", "--skip-test-db"]
        outputs = []
        for _ in range(2):
            done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if done.returncode == 0:
                if outputs:
                    warnings.warn(f"mariadb-install-db failed once, then worked: {outputs[0][-1500:]}")
                return
            outputs.append(f"exit {done.returncode}: {done.stdout}")
            shutil.rmtree(self.datadir, ignore_errors=True)
        raise RuntimeError("mariadb-install-db failed twice:\n" + "\n---\n".join(o[-1500:] for o in outputs))

    @property
    def server_url(self) -> str:
        return f"mysql+pymysql://root@127.0.0.1:{self.port}/"

    def start(self) -> None:
        log = open(self.base / "mariadbd.log", "ab")
        self.process = subprocess.Popen(
            ["mariadbd", "--no-defaults", f"--datadir={self.datadir}", f"--port={self.port}",
             "--bind-address=127.0.0.1", f"--socket={self.socket}", f"--tmpdir={self.tmpdir}", "--user=root",
             "--server-id=1",
             f"--log-bin={self.datadir / 'mariadb-bin'}", "--binlog-format=ROW", "--binlog-row-image=FULL",
             "--binlog-row-metadata=FULL", "--skip-name-resolve", "--innodb-buffer-pool-size=32M",
             "--performance-schema=OFF", *self.extra],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                pymysql.connect(host="127.0.0.1", port=self.port, user="root", connect_timeout=1).close()
                return
            except pymysql.MySQLError:
                if self.process.poll() is not None:
                    raise RuntimeError((self.base / "mariadbd.log").read_text()[-2000:])
                time.sleep(0.2)
        raise RuntimeError("private mariadbd did not start in 60 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(60)
        self.process = None

    def database(self, name: str = "erp") -> str:
        execute(self.server_url, f"CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4")
        return self.server_url + name

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)
