"""Lookup tables: code -> canonical value, written in the config or read from a database.

A mapping holds a ``LookupTable`` and reads ``table.codes`` per row; a refresh builds
the new dict and swaps the reference whole, so a row never sees half a table and no lock
is taken on the hot path. A SQL lookup (``{sql: "SELECT rowid, code_client FROM
llx_societe", refresh: 5m}``) is loaded on the first capture pass that needs it and again
when ``refresh`` has passed; a failed reload keeps the codes it has (and says so), a
table never loaded makes the pass wait (TransientError: retried with backoff) rather
than park every row for a missing reference.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Annotated, Any, Mapping, Optional, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Discriminator, Tag

from .contracts import TransientError
from .units import parse_duration

__all__ = ["Lookup", "SqlLookup", "LookupTable", "SqlLookupTable", "Lookups"]

log = logging.getLogger("outpost.lookups")


# ---- as the config writes them ------------------------------------------------------

def _code_text(value):
    """Lookup codes are text; a plain integer key (``0: draft``) is its digits."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


CodeTable = dict[Annotated[str, BeforeValidator(_code_text)], Union[str, int, None]]


class SqlLookup(BaseModel):
    """Codes read from a source database: ``SELECT code, value ...``, cached and re-read."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sql: str
    source: Optional[str] = None       # a source section with a url (the only one, if omitted)
    refresh: Annotated[float, BeforeValidator(parse_duration)] = parse_duration("5m")


# A mapping with a ``sql`` key is read from a database, any other is a table of codes.
# (The tags are in parentheses so that problems can leave them out of the key path.)
Lookup = Annotated[Union[Annotated[CodeTable, Tag("(codes)")], Annotated[SqlLookup, Tag("(sql)")]],
                   Discriminator(lambda v: "(sql)" if isinstance(v, SqlLookup) or (isinstance(v, dict) and "sql" in v)
                                 else "(codes)")]


# ---- as the mappings read them ------------------------------------------------------

class LookupTable:
    """A code table written in the config (never changes)."""

    def __init__(self, name: str, codes: Mapping[str, Any]):
        self.name = name
        self.codes: Mapping[str, Any] = {str(k): v for k, v in codes.items()}

    def refresh(self, now: Optional[float] = None) -> None:
        """Nothing to do for a table written in the config."""


class SqlLookupTable(LookupTable):
    """Codes read by a two-column query (code, value) from a source database."""

    def __init__(self, name: str, url: str, sql: str, every: float, redact=lambda text: text):
        super().__init__(name, {})
        self.url, self.sql, self.every, self.redact = url, sql, every, redact
        self.loaded_at: Optional[float] = None
        self._engine = None
        self._lock = threading.Lock()

    def refresh(self, now: Optional[float] = None) -> None:
        now = time.monotonic() if now is None else now
        if self.loaded_at is not None and now - self.loaded_at < self.every:
            return
        with self._lock:               # routes sharing the table: one query, not one per route
            if self.loaded_at is not None and now - self.loaded_at < self.every:
                return
            try:
                codes = self._query()
            except Exception as exc:   # the database is unreachable, the query is wrong
                problem = self.redact(f"lookup {self.name}: cannot read its codes: {type(exc).__name__}: "
                                      f"{str(exc).splitlines()[0] if str(exc) else ''}")
                if self.loaded_at is None:
                    raise TransientError(problem) from None
                log.warning("%s; keeping the %d code(s) read before", problem, len(self.codes))
                self.loaded_at = now     # try again after another refresh interval
                return
            self.codes, self.loaded_at = codes, now
            log.info("lookup %s: %d code(s) read", self.name, len(codes))

    def _query(self) -> dict:
        import sqlalchemy as sa
        if self._engine is None:
            self._engine = sa.create_engine(self.url, pool_pre_ping=True)
        with self._engine.connect() as conn:
            rows = conn.exec_driver_sql(self.sql).fetchall()
        if rows and len(rows[0]) != 2:
            raise ValueError(f"the query must return two columns (code, value), it returns {len(rows[0])}")
        return {str(code): value for code, value in rows if code is not None}

    def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.dispose()


class Lookups(dict):
    """Every lookup table of a config, by name (shared by the routes of one process)."""

    @classmethod
    def from_config(cls, config) -> "Lookups":
        from .logs import RedactingFilter
        redact = RedactingFilter(config.secrets).redact
        tables = cls()
        for name, spec in config.lookups.items():
            if isinstance(spec, Mapping):
                tables[name] = LookupTable(name, spec)
            else:
                tables[name] = SqlLookupTable(name, config.lookup_url(name), spec.sql, spec.refresh, redact)
        return tables

    def refresh(self, names) -> None:
        for name in names:
            self[name].refresh()

    def close(self) -> None:
        for table in self.values():
            if isinstance(table, SqlLookupTable):
                table.close()
