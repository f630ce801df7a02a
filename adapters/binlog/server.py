"""SQL side of the ``binlog`` source: one control connection (pymysql) for server state,
table metadata and primary-key chunk reads. Errors become Outpost's exception kinds."""
from __future__ import annotations

import datetime as dt
import struct
from contextlib import contextmanager
from decimal import Decimal
from typing import Any, Optional, Sequence

import pymysql
import sqlalchemy as sa

from agent.contracts import ConfigError, TransientError, approximate

# Retrying cannot fix these: wrong credentials or missing privileges.
CONFIG_ERRORS = {1044, 1045, 1142, 1143, 1227, 1370, 1698}
_VARIABLES = ("log_bin", "binlog_format", "binlog_row_image", "binlog_row_metadata", "expire_logs_days",
              "binlog_expire_logs_seconds", "gtid_mode", "server_id", "version")


def connection_settings(url: str, connect_timeout: float) -> dict:
    """pymysql keyword arguments from a SQLAlchemy-style URL."""
    u = sa.engine.make_url(url)
    return {"host": u.host or "127.0.0.1", "port": int(u.port or 3306), "user": u.username or "root",
            "password": str(u.password or ""), "connect_timeout": connect_timeout, "charset": "utf8mb4"}


def quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def keyset_after(columns: Sequence[str], count: int) -> str:
    """(a, b) > (%s, %s) as an OR/AND chain that every MySQL/MariaDB version can range-scan."""
    q = [quote(c) for c in columns[:count]]
    cond = f"{q[-1]} > %s"
    for col in reversed(q[:-1]):
        cond = f"({col} > %s OR ({col} = %s AND {cond}))"
    return cond


def keyset_args(values: Sequence[Any]) -> list:
    args: list = [values[-1]]
    for v in reversed(values[:-1]):
        args = [v, v] + args
    return args


class Server:
    """Control connection. ``describe`` says why an operation failed, without secrets."""

    def __init__(self, settings: dict, where: str):
        self.settings, self.where = settings, where
        self._conn: Optional[pymysql.connections.Connection] = None

    @contextmanager
    def _errors(self, doing: str):
        try:
            yield
        except pymysql.MySQLError as exc:
            self.close()
            code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
            message = str(exc.args[1] if len(exc.args) > 1 else exc)
            text = f"binlog {self.where}: cannot {doing}: ({code}) {message}"
            if code in CONFIG_ERRORS:
                raise ConfigError([text + " - fix the user or its grants (see docs/binlog.md)"]) from None
            raise TransientError(text) from None

    def _cursor(self):
        if self._conn is None:
            self._conn = pymysql.connect(**self.settings, autocommit=True)
            with self._conn.cursor() as cur:
                # TIMESTAMP columns come back in UTC (their storage zone) rather than the
                # server's zone; DATETIME columns are unaffected (naive wall time).
                cur.execute("SET time_zone = '+00:00'")
        return self._conn.cursor()

    def query(self, sql: str, args: Any = None, doing: str = "query the server") -> list[tuple]:
        with self._errors(doing):
            with self._cursor() as cur:
                cur.execute(sql, args)
                return list(cur.fetchall())

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    # -- server state --

    def master_status(self) -> tuple[str, int]:
        try:
            rows = self.query("SHOW MASTER STATUS", doing="read the binlog position (SHOW MASTER STATUS)")
        except TransientError as exc:
            if "(1064)" not in str(exc):
                raise
            # MySQL 8.4 removed SHOW MASTER STATUS (untested here: only MariaDB runs on this machine)
            rows = self.query("SHOW BINARY LOG STATUS", doing="read the binlog position (SHOW BINARY LOG STATUS)")
        if not rows:
            raise ConfigError([f"binlog {self.where}: the binary log is off: set log_bin, binlog_format=ROW and "
                               "binlog_row_image=FULL in my.cnf and restart the server (see docs/binlog.md)"])
        return rows[0][0], int(rows[0][1])

    def binary_logs(self) -> list[tuple[str, int]]:
        return [(r[0], int(r[1])) for r in self.query("SHOW BINARY LOGS", doing="list binlogs (SHOW BINARY LOGS)")]

    def variables(self) -> dict:
        marks = ",".join(["%s"] * len(_VARIABLES))
        rows = self.query(f"SHOW GLOBAL VARIABLES WHERE Variable_name IN ({marks})", _VARIABLES,
                          doing="read server variables")
        return {r[0].lower(): r[1] for r in rows}

    def grants(self) -> list[str]:
        return [r[0] for r in self.query("SHOW GRANTS FOR CURRENT_USER()", doing="read the grants")]

    # -- the table --

    def columns(self, schema: str, table: str) -> list[tuple[str, str, bool]]:
        """(name, data type, is primary key) in table order; [] if the table does not exist."""
        rows = self.query("SELECT column_name, data_type, column_key FROM information_schema.columns"
                          " WHERE table_schema=%s AND table_name=%s ORDER BY ordinal_position",
                          (schema, table), doing="read the table definition")
        return [(r[0], r[1].lower(), r[2] == "PRI") for r in rows]

    def approximate_columns(self, schema: str, table: str) -> dict[str, tuple[Optional[int], bool]]:
        """Binary floating-point columns: name -> (declared scale or None, single precision)."""
        rows = self.query("SELECT column_name, numeric_scale, data_type FROM information_schema.columns"
                          " WHERE table_schema=%s AND table_name=%s AND data_type IN ('double', 'float', 'real')",
                          (schema, table), doing="read the table definition")
        return {r[0]: (None if r[1] is None else int(r[1]), r[2].lower() == "float") for r in rows}

    def primary_key(self, schema: str, table: str) -> list[str]:
        rows = self.query("SELECT column_name FROM information_schema.key_column_usage WHERE table_schema=%s"
                          " AND table_name=%s AND constraint_name='PRIMARY' ORDER BY ordinal_position",
                          (schema, table), doing="read the primary key")
        return [r[0] for r in rows]

    def chunk(self, schema: str, table: str, columns: Sequence[str], pk: Sequence[str],
              after: Optional[Sequence[Any]], limit: int) -> list[dict]:
        """The next ``limit`` rows in primary-key order after ``after`` (None = from the start)."""
        sql = f"SELECT {', '.join(quote(c) for c in columns)} FROM {quote(schema)}.{quote(table)}"
        args: list = []
        if after is not None:
            sql += f" WHERE {keyset_after(pk, len(pk))}"
            args = keyset_args(list(after))
        sql += f" ORDER BY {', '.join(quote(c) for c in pk)} LIMIT {int(limit)}"
        rows = self.query(sql, args, doing=f"read a snapshot chunk of {schema}.{table}")
        return [dict(zip(columns, r)) for r in rows]


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def exact_doubles(row: dict, columns: dict[str, tuple[Optional[int], bool]]) -> dict:
    """Double and float columns as ``Approximate``, rounded to their declared scale: the
    stream decodes the stored binary value (-0.005 in a double(24,8) is
    -0.0050000000000000044), the snapshot reads the server's text of it (-0.00500000);
    rounded to the declared scale first, both are the same decimal. A FLOAT holds single
    precision: its shortest single-precision text, as the server prints it."""
    for name, (scale, single) in columns.items():
        value = row.get(name)
        if isinstance(value, float) and single:
            value = _float32_text(value)
        row[name] = approximate(value, scale)
    return row


def _float32_text(value: float) -> Any:
    if value != value or value in (float("inf"), float("-inf")):
        return value
    packed = struct.pack("<f", value)
    for digits in range(6, 10):
        text = f"{value:.{digits}g}"
        if struct.pack("<f", float(text)) == packed:
            return Decimal(text)
    return value


def utc_timestamps(row: dict, timestamp_columns: Sequence[str], date_columns: Sequence[str] = ()) -> dict:
    """TIMESTAMP values are UTC instants: make them aware so no source zone is applied to them.

    Zero dates ('0000-00-00', invalid in strict mode but common in legacy data) become
    NULL on both paths: the binlog decoder gives None (or epoch 0 for a zero TIMESTAMP,
    which is not a valid TIMESTAMP value), the SQL driver gives the raw text.
    """
    for name in timestamp_columns:
        v = row.get(name)
        if isinstance(v, dt.datetime):
            v = v if v.tzinfo else v.replace(tzinfo=dt.timezone.utc)
            row[name] = None if v == _EPOCH else v
    for name in date_columns:
        if isinstance(row.get(name), str):
            row[name] = None
    return row
