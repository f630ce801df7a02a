"""PostgreSQL side of the ``debezium`` source, over a plain (non-replication) psycopg session:
column kinds for value conversion, the replication slot guard, ``outpost check`` and
decommissioning. Every statement uses bound parameters (identifiers via ``psycopg.sql``).
"""
from __future__ import annotations

from typing import Optional

from agent.contracts import ConfigError, TransientError

from .events import kind_of
from .spec import SourceOptions, qualified_table, slot_and_publication

__all__ = ["connect", "column_kinds", "slot_state", "check", "drop_slot"]

RESET_HINT = ("recovery: `outpost debezium reset {source}` forgets the stored offsets so the next start "
              "snapshots again (snapshot: initial/when_needed); see docs/debezium.md")


def connect(spec: SourceOptions, timeout: int = 10):
    import psycopg
    try:
        return psycopg.connect(host=spec.hostname, port=spec.port or 5432, user=spec.user, password=spec.password,
                               dbname=spec.database, connect_timeout=timeout, autocommit=True,
                               application_name="outpost-debezium-guard")
    except psycopg.OperationalError as exc:
        text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        if "password authentication failed" in text or ("role" in text and "does not exist" in text):
            raise ConfigError([f"debezium {spec.hostname}/{spec.database}: {text}: fix user/password"]) from None
        raise TransientError(f"debezium: cannot connect to PostgreSQL {spec.hostname}:{spec.port or 5432}/"
                             f"{spec.database}: {text}") from None


def _split(spec: SourceOptions) -> tuple[str, str]:
    schema, _, table = qualified_table(spec).partition(".")
    return schema, table


def column_kinds(conn, spec: SourceOptions) -> dict[str, dict[str, str]]:
    schema, table = _split(spec)
    rows = conn.execute("SELECT column_name, data_type FROM information_schema.columns"
                        " WHERE table_schema = %s AND table_name = %s", (schema, table)).fetchall()
    if not rows:
        raise ConfigError([f"debezium table {schema}.{table} not found in database {spec.database}"])
    return {f"{schema}.{table}": {name: kind for name, kind in ((n, kind_of(t)) for n, t in rows) if kind}}


def slot_state(conn, slot: str) -> Optional[dict]:
    """The slot's activity and the WAL it holds back (pg_current_wal_lsn() - restart_lsn)."""
    row = conn.execute("SELECT active, pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint,"
                       " confirmed_flush_lsn::text, wal_status FROM pg_replication_slots WHERE slot_name = %s",
                       (slot,)).fetchone()
    if row is None:
        return None
    return {"active": row[0], "retained_bytes": int(row[1] or 0), "confirmed_flush_lsn": row[2],
            "wal_status": row[3]}


def check(spec: SourceOptions, source_name: str, offsets_exist: bool) -> list[str]:
    """Problems and ``warning:`` lines for ``outpost check`` (wal_level, privileges, slot...)."""
    problems: list[str] = []
    slot, publication = slot_and_publication(source_name, spec)
    schema, table = _split(spec)
    with connect(spec) as conn:
        wal_level = conn.execute("SHOW wal_level").fetchone()[0]
        if wal_level != "logical":
            problems.append(f"wal_level is {wal_level!r}: set `ALTER SYSTEM SET wal_level = logical` and restart "
                            "PostgreSQL")
        replication, superuser = conn.execute("SELECT rolreplication, rolsuper FROM pg_roles WHERE rolname ="
                                              " current_user").fetchone()
        if not (replication or superuser):
            problems.append(f"role {spec.user!r} lacks the REPLICATION attribute: ALTER ROLE {spec.user} REPLICATION")
        info = conn.execute(
            "SELECT c.relreplident, pg_get_userbyid(c.relowner) = current_user,"
            " EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
            (schema, table)).fetchone()
        if info is None:
            problems.append(f"table {schema}.{table} not found in database {spec.database}")
            return problems
        identity, owner, has_pk = info
        if not has_pk and identity != "f":
            problems.append(f"table {schema}.{table} has no primary key: updates and deletes cannot be captured; "
                            f"add one or ALTER TABLE {schema}.{table} REPLICA IDENTITY FULL")
        elif identity != "f":
            problems.append(f"warning: {schema}.{table} has REPLICA IDENTITY {dict(d='DEFAULT', n='NOTHING', i='INDEX')[identity]}"
                            f": deletes carry only the key, so a delete cannot be mapped to the canonical entity; "
                            f"ALTER TABLE {schema}.{table} REPLICA IDENTITY FULL")
        pub = conn.execute("SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = %s),"
                           " EXISTS (SELECT 1 FROM pg_publication_tables WHERE pubname = %s AND schemaname = %s"
                           " AND tablename = %s)", (publication, publication, schema, table)).fetchone()
        if not pub[0] and not owner and not superuser:
            problems.append(f"publication {publication} does not exist and {spec.user!r} does not own {schema}.{table}, "
                            f"so it cannot create it: as the owner run CREATE PUBLICATION {publication} FOR TABLE "
                            f"{schema}.{table}")
        elif pub[0] and not pub[1]:
            problems.append(f"warning: publication {publication} does not include {schema}.{table}: "
                            f"ALTER PUBLICATION {publication} ADD TABLE {schema}.{table}")
        state = slot_state(conn, slot)
        if state is None and offsets_exist:
            problems.append(f"replication slot {slot} is missing but offsets are stored: the changes in between are "
                            f"lost to log-based capture; " + RESET_HINT.format(source=source_name))
        elif state is not None:
            if state["wal_status"] == "lost":
                problems.append(f"replication slot {slot} lost its WAL (wal_status=lost); "
                                + RESET_HINT.format(source=source_name))
            if state["retained_bytes"] > spec.slot_warn_bytes:
                problems.append(f"warning: replication slot {slot} retains {state['retained_bytes'] / 2**20:.0f} MiB "
                                f"of WAL (above {spec.slot_warn_bytes / 2**20:.0f} MiB): is the agent stopped? "
                                f"Decommissioned agents must run `outpost debezium drop-slot {source_name}`")
    return problems


def drop_slot(spec: SourceOptions, source_name: str) -> list[str]:
    """Drop the route's slot and publication (decommissioning). Returns what was done."""
    from psycopg import sql
    slot, publication = slot_and_publication(source_name, spec)
    done = []
    with connect(spec) as conn:
        state = slot_state(conn, slot)
        if state is not None:
            if state["active"]:
                raise ConfigError([f"replication slot {slot} is in use: stop the agent first"])
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            done.append(f"dropped replication slot {slot} (released {state['retained_bytes']} bytes of WAL)")
        else:
            done.append(f"replication slot {slot}: not found")
        if conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (publication,)).fetchone():
            conn.execute(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(publication)))
            done.append(f"dropped publication {publication}")
        else:
            done.append(f"publication {publication}: not found")
    return done
