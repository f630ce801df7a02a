"""SQL of the applier, by dialect, through SQLAlchemy Core: identifiers come from reflected
``Table`` objects (quoted by the dialect), every value is a bound parameter.

- PostgreSQL, SQLite: ``INSERT ... ON CONFLICT (key) DO UPDATE`` (tested);
- MariaDB / MySQL: ``INSERT ... ON DUPLICATE KEY UPDATE`` (tested);
- SQL Server, Oracle: ``MERGE`` (written to the documented syntax, UNTESTED here).
"""
from __future__ import annotations

import datetime as dt
import json
import re
from decimal import Decimal
from typing import Callable, Optional

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite

__all__ = ["bookkeeping_tables", "upsert", "update_then_insert", "delete", "soft_delete", "procedure_call", "select_by_keys",
           "rows_by_keys", "insert_rows", "batch_fits"]


def bookkeeping_tables(ledger, marker) -> tuple[sa.MetaData, sa.Table, sa.Table, sa.Table, Optional[sa.Table]]:
    """The applied-events ledger, the applied row versions (echo prevention), the last
    applied change per entity key (never moving a row backwards) and the optional marker
    table, all in ``ledger.schema``/``marker.schema``."""
    metadata = sa.MetaData()
    events = sa.Table(
        ledger.table, metadata,
        sa.Column("event_id", sa.String(64), primary_key=True),
        sa.Column("entity", sa.String(64), nullable=False),
        sa.Column("entity_key", sa.String(255), nullable=False),
        sa.Column("correlation_id", sa.String(64)),
        sa.Column("applied_at", sa.DateTime(), nullable=False),
        sa.Index(f"{ledger.table}_by_age", "applied_at"),
        schema=ledger.schema_)
    rows = sa.Table(
        ledger.rows_table, metadata,
        sa.Column("object", sa.String(200), primary_key=True),
        sa.Column("position", sa.String(500), primary_key=True),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("applied_at", sa.DateTime(), nullable=False),
        sa.Index(f"{ledger.rows_table}_by_age", "applied_at"),
        schema=ledger.schema_)
    keys = sa.Table(
        ledger.keys_table, metadata,
        sa.Column("entity", sa.String(64), primary_key=True),
        sa.Column("entity_key", sa.String(255), primary_key=True),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("version", sa.BigInteger),
        sa.Column("occurred_us", sa.BigInteger),       # microseconds since 1970, UTC: exact everywhere
        sa.Column("captured_us", sa.BigInteger),
        sa.Column("applied_at", sa.DateTime(), nullable=False),
        schema=ledger.schema_)
    mark = None
    if marker.enabled:
        mark = sa.Table(
            marker.table, metadata,
            sa.Column("applier", sa.String(100), primary_key=True),
            sa.Column("txn_id", sa.String(64), nullable=False),
            sa.Column("applied_at", sa.DateTime(), nullable=False),
            schema=marker.schema_)
    return metadata, events, rows, keys, mark


def upsert(dialect: sa.Dialect, table: sa.Table, key: list[str], columns: list[str]
           ) -> tuple[sa.Executable, Callable[[dict], dict]]:
    """Insert-or-update by ``key``; returns the statement and how to turn a row dict
    (column -> value) into its parameters. Suited to ``executemany``."""
    rest = [c for c in columns if c not in key]
    name = dialect.name
    if name in ("postgresql", "sqlite"):
        module = postgresql if name == "postgresql" else sqlite
        stmt = module.insert(table)
        if rest:
            stmt = stmt.on_conflict_do_update(index_elements=[table.c[k] for k in key],
                                              set_={c: stmt.excluded[c] for c in rest})
        else:
            stmt = stmt.on_conflict_do_nothing(index_elements=[table.c[k] for k in key])
        return stmt, _identity
    if name in ("mysql", "mariadb"):
        # VALUES(col) as a function of the column: ``stmt.inserted[c]`` doubles a % in the
        # name twice (SQLAlchemy 2.0), so MariaDB looked for a column "Discount %%"
        update = {c: sa.func.values(table.c[c]) for c in (rest or key[:1])}
        return mysql.insert(table).on_duplicate_key_update(update), _identity
    return _merge(dialect, table, key, columns)


def update_then_insert(table: sa.Table, key: list[str], columns: list[str]) -> tuple:
    """For MySQL/MariaDB tables with another unique key: ON DUPLICATE KEY UPDATE would fire on
    *any* unique key and overwrite a different row, so update by the mapped key, and insert
    only when no row matched (a violation of the other key then fails, as it must)."""
    rest = [c for c in columns if c not in key] or key[:1]
    update = (sa.update(table).where(*[table.c[k] == sa.bindparam(f"k{i}") for i, k in enumerate(key)])
              .values({c: sa.bindparam(f"v_{c}") for c in rest}))
    return (update, lambda row: {**{f"k{i}": row[k] for i, k in enumerate(key)},
                                 **{f"v_{c}": row[c] for c in rest}}), sa.insert(table)


def _identity(row: dict) -> dict:
    return row


def _merge(dialect: sa.Dialect, table: sa.Table, key: list[str], columns: list[str]):
    """SQL Server / Oracle MERGE (UNTESTED here). Identifiers are quoted by the dialect from
    the reflected table; values are the bound parameters p0..pn."""
    q = dialect.identifier_preparer
    target = q.format_table(table)
    names = {c: f"p{i}" for i, c in enumerate(columns)}
    source = ", ".join(f":{names[c]} AS {q.quote(c)}" for c in columns)
    on = " AND ".join(f"t.{q.quote(k)} = s.{q.quote(k)}" for k in key)
    sets = ", ".join(f"t.{q.quote(c)} = s.{q.quote(c)}" for c in columns if c not in key)
    cols = ", ".join(q.quote(c) for c in columns)
    vals = ", ".join(f"s.{q.quote(c)}" for c in columns)
    matched = f" WHEN MATCHED THEN UPDATE SET {sets}" if sets else ""
    if dialect.name == "oracle":
        sql = (f"MERGE INTO {target} t USING (SELECT {source} FROM dual) s ON ({on}){matched}"
               f" WHEN NOT MATCHED THEN INSERT ({cols}) VALUES ({vals})")
    else:
        sql = (f"MERGE INTO {target} WITH (HOLDLOCK) AS t USING (SELECT {source}) AS s ON ({on}){matched}"
               f" WHEN NOT MATCHED THEN INSERT ({cols}) VALUES ({vals});")
    return sa.text(sql), lambda row: {names[c]: row[c] for c in columns}


def delete(table: sa.Table, key: list[str]) -> tuple[sa.Executable, Callable[[dict], dict]]:
    stmt = sa.delete(table).where(*[table.c[k] == sa.bindparam(f"k{i}") for i, k in enumerate(key)])
    return stmt, lambda row: {f"k{i}": row[k] for i, k in enumerate(key)}


def soft_delete(table: sa.Table, key: list[str], column: str) -> tuple[sa.Executable, Callable[[dict], dict]]:
    stmt = (sa.update(table).where(*[table.c[k] == sa.bindparam(f"k{i}") for i, k in enumerate(key)])
            .values({column: sa.bindparam("soft_value")}))
    return stmt, lambda row: {**{f"k{i}": row[k] for i, k in enumerate(key)}, "soft_value": row[column]}


def procedure_call(dialect: sa.Dialect, schema: Optional[str], name: str, arity: int) -> sa.TextClause:
    """CALL / EXEC of a configured procedure, its name quoted by the dialect."""
    q = dialect.identifier_preparer
    # For a driver that reads a format string the dialect's quoting doubles a % in a name,
    # and compiling ``sa.text`` doubles it again: undo the first, or "%" arrives as "%%"
    doubled = q.quote("%").count("%") == 2
    qualified = ".".join(q.quote(part).replace("%%", "%") if doubled else q.quote(part)
                         for part in ([schema] if schema else []) + [name])
    binds = ", ".join(f":a{i}" for i in range(arity))
    if dialect.name == "mssql":
        return sa.text(f"EXEC {qualified} {binds}")
    if dialect.name == "oracle":
        return sa.text(f"BEGIN {qualified}({binds}); END;")
    return sa.text(f"CALL {qualified}({binds})")


def select_by_keys(table: sa.Table, key: list[str], columns: list[str], keys: list[tuple],
                   lock: bool) -> sa.Select:
    """The current local rows of ``keys`` (locked when conflicts are checked, so nothing
    changes between the check and the write)."""
    if len(key) == 1:
        where = table.c[key[0]].in_([k[0] for k in keys])
    else:
        where = sa.tuple_(*[table.c[k] for k in key]).in_(keys)
    stmt = sa.select(*[table.c[c] for c in dict.fromkeys(key + columns)]).where(where)
    return stmt.with_for_update() if lock else stmt


_CHUNK = 500


def _array_of(column_type) -> postgresql.ARRAY:
    """The array type of a parameter carrying a column's values: without the column's length
    or precision, because an explicit cast to ``varchar(20)[]`` (or ``numeric(18,2)[]``)
    cuts or rounds silently where an assignment refuses; the column's own rules then apply
    when the value is compared or stored, as with a single bound parameter."""
    if isinstance(column_type, sa.String):
        return postgresql.ARRAY(sa.String())
    if isinstance(column_type, sa.Numeric) and not isinstance(column_type, sa.Float):
        return postgresql.ARRAY(sa.Numeric(asdecimal=True))
    return postgresql.ARRAY(column_type)


def rows_by_keys(conn, table: sa.Table, key: list[str], columns: list[str], keys, lock: bool) -> list:
    """The rows of ``table`` whose ``key`` columns hold one of ``keys`` (tuples), as mappings.

    On PostgreSQL the keys go as one array parameter per key column, joined through
    ``unnest``: one statement text whatever the batch size (so psycopg's prepared statement
    is reused), and an index probe per key whatever the planner believes about the table.
    An ``IN (...)`` list there becomes, once the statement is prepared, a generic plan that
    on a table not yet analyzed probes the index by its leading column only and compares
    every row of it with every key of the list (measured: 110 ms per 500 keys at 10k rows
    of the keys ledger, growing with the table). Elsewhere, and for key columns that arrays
    cannot carry (``arrays_fit``): ``IN`` lists of 500."""
    keys = list(dict.fromkeys(keys))
    if not keys:
        return []
    if conn.dialect.name == "postgresql" and arrays_fit(table, key):
        wanted = sa.func.unnest(*[sa.bindparam(f"keys{i}", [k[i] for k in keys],
                                               type_=_array_of(table.c[name].type))
                                  for i, name in enumerate(key)]).table_valued(
            *[f"k{i}" for i in range(len(key))]).render_derived(name="wanted")
        stmt = (sa.select(*[table.c[c] for c in dict.fromkeys(key + columns)])
                .select_from(wanted.join(table, sa.and_(*[table.c[name] == wanted.c[f"k{i}"]
                                                          for i, name in enumerate(key)]))))
        return list(conn.execute(stmt.with_for_update(of=table) if lock else stmt).mappings())
    found = []
    for start in range(0, len(keys), _CHUNK):
        found += conn.execute(select_by_keys(table, key, columns, keys[start:start + _CHUNK], lock)).mappings()
    return found


_PLAIN_TYPES = (sa.String, sa.Integer, sa.Numeric, sa.DateTime, sa.Date, sa.Boolean)
# ... and what PostgreSQL calls them: an enum or citext is a String to SQLAlchemy, but
# PostgreSQL will not assign a varchar to an enum, and compares citext = varchar as text
# (case-sensitively: a key look-up would miss the local row)
_PLAIN_NAMES = frozenset({"VARCHAR", "CHAR", "TEXT", "SMALLINT", "INTEGER", "BIGINT", "NUMERIC", "DECIMAL", "REAL",
                          "FLOAT", "DOUBLE PRECISION", "TIMESTAMP", "TIMESTAMP WITHOUT TIME ZONE",
                          "TIMESTAMP WITH TIME ZONE", "DATE", "BOOLEAN"})
_POSTGRESQL = postgresql.dialect()


def _plain(column_type) -> bool:
    if not isinstance(column_type, _PLAIN_TYPES):
        return False
    name = column_type.compile(dialect=_POSTGRESQL)
    return re.sub(r"\(.*?\)", "", name).strip().upper() in _PLAIN_NAMES


def arrays_fit(table: sa.Table, columns) -> bool:
    """Whether ``columns`` can travel as typed arrays: plain types only. A domain, an enum,
    citext, a type reflection does not know (NullType) keeps one bound parameter per row,
    where PostgreSQL infers the type from the column."""
    return all(_plain(table.c[c].type) for c in columns)


def _has_json_table(dialect: sa.Dialect) -> bool:
    """MariaDB 10.6+. MySQL 8 has JSON_TABLE too, but how it converts JSON null and numbers
    is untested here: it keeps executemany."""
    return bool(dialect.is_mariadb) and tuple(dialect.server_version_info or ()) >= (10, 6)


def batch_fits(conn, table: sa.Table, columns) -> bool:
    """Whether rows of ``columns`` can go to ``table`` as one statement carrying the whole
    batch in one parameter per column (PostgreSQL: typed arrays through ``unnest``) or in
    one parameter (MariaDB 10.6+: a JSON document through ``JSON_TABLE``).
    Else one bound parameter per value, sent with ``executemany``."""
    name = conn.dialect.name
    if name == "postgresql":
        return arrays_fit(table, columns)
    if name in ("mysql", "mariadb") and _has_json_table(conn.dialect):
        # INSERT ... SELECT holds a table's AUTO-INC lock to the end of the statement (lock
        # mode 1, MariaDB's default): the local application's own inserts would wait for it.
        # (Reflection marks an AUTO_INCREMENT column True; ``autoincrement_column`` names a
        # primary key column only, and a surrogate counter beside a natural key is common.)
        return (not any(column.autoincrement is True for column in table.columns)
                and all(isinstance(table.c[c].type, _PLAIN_TYPES + (sa.Float,)) for c in columns))
    return False


def insert_rows(conn, table: sa.Table, rows: list[dict], key: Optional[list[str]] = None) -> None:
    """``rows`` (dicts with the same columns) into ``table``; with ``key``, an upsert by it
    (a key that repeats ends as its last row, as one upsert per row would). Where
    ``batch_fits``, one statement per batch: PostgreSQL's executemany would send and the
    server execute one INSERT per row, and PyMySQL's escapes every value in Python (about
    a fifth of the applier's CPU on MariaDB: docs/benchmarks.md)."""
    if not rows:
        return
    columns = list(rows[0])
    if batch_fits(conn, table, columns):
        if conn.dialect.name == "postgresql":
            return _unnest_insert(conn, table, rows, columns, key)
        if _json_table_insert(conn, table, rows, columns, key):
            return
    if key:
        stmt, params = upsert(conn.dialect, table, key, columns)
        conn.execute(stmt, [params(r) for r in rows])
    else:
        conn.execute(sa.insert(table), rows)


def _unnest_insert(conn, table: sa.Table, rows: list[dict], columns: list[str], key: Optional[list[str]]) -> None:
    """``INSERT ... SELECT FROM unnest(...)``: the values as one array parameter per column."""
    if key:     # one statement may not touch a row twice ("cannot affect row a second time")
        rows = list({tuple(r[k] for k in key): r for r in rows}.values())
    batch = sa.func.unnest(*[sa.bindparam(f"c{i}", [r[c] for r in rows], type_=_array_of(table.c[c].type))
                             for i, c in enumerate(columns)]).table_valued(
        *[f"c{i}" for i in range(len(columns))]).render_derived(name="batch")
    stmt = postgresql.insert(table).from_select(columns, sa.select(*batch.c))
    if key:
        rest = [c for c in columns if c not in key]
        stmt = (stmt.on_conflict_do_update(index_elements=[table.c[k] for k in key],
                                           set_={c: stmt.excluded[c] for c in rest}) if rest
                else stmt.on_conflict_do_nothing(index_elements=[table.c[k] for k in key]))
    conn.execute(stmt)


# -- MariaDB: the batch as one JSON document -----------------------------------------------
#
# Every value travels as the text PyMySQL would have put in its literal, and every column
# of the JSON_TABLE is LONGTEXT: the assignment to the real column then converts (and
# refuses: too long, out of range, in strict mode) exactly as it does a bound parameter.
# A typed JSON_TABLE column would convert first, by its own rules and with a warning only
# (MariaDB 10.11: a long text cut, an out-of-range number clamped to its type's limit, a
# bad date made 0000-00-00).

# A document travels as hex, twice its size: the statement stays under 1 MB, as PyMySQL's
# executemany keeps its own (max_stmt_length), for a server's max_allowed_packet may be that small.
_DOCUMENT_BYTES = 480_000


def _text(value):
    """json.dumps's ``default``: the text of a value JSON has no type for, as PyMySQL's literal has it."""
    kind = type(value)
    if kind is Decimal:
        return format(value, "f")
    if kind is dt.datetime:
        return value.replace(tzinfo=None).isoformat(" ")     # PyMySQL leaves the zone out too
    if kind is dt.date:
        return value.isoformat()
    raise _NotText


class _NotText(Exception):
    pass


def _json_documents(rows: list[dict], columns: list[str]) -> Optional[list[bytes]]:
    """The rows as JSON arrays, in documents of at most about ``_DOCUMENT_BYTES``; None when
    a value has a type without a text here (the batch then goes as parameters). Numbers go
    as JSON numbers, whose text JSON_TABLE keeps as written; a yes/no as 1 or 0, as PyMySQL
    writes it (JSON's true would arrive as the text 'true')."""
    values = []
    for row in rows:
        image = [row[c] for c in columns]
        if True in image or False in image:       # == also finds 1, 0 and Decimal(1): then look closer
            image = [int(v) if type(v) is bool else v for v in image]
        values.append(image)
    return _documents(values)


def _documents(values: list) -> Optional[list[bytes]]:
    """In UTF-8: PyMySQL sends bytes as a hex literal (``bytes.hex``), where a text goes
    through ``str.translate`` character by character (2 us per row of 200 characters)."""
    try:
        document = json.dumps(values, default=_text, ensure_ascii=False).encode()
    except _NotText:
        return None
    if len(document) <= _DOCUMENT_BYTES or len(values) == 1:
        return [document]
    half = len(values) // 2
    first, second = _documents(values[:half]), _documents(values[half:])
    return first + second if first is not None and second is not None else None


def _json_table_insert(conn, table: sa.Table, rows: list[dict], columns: list[str], key: Optional[list[str]]) -> bool:
    """``INSERT ... SELECT FROM JSON_TABLE(%s, ...)`` in the rows' order, an upsert by ``key``
    (ON DUPLICATE KEY UPDATE, as ``upsert``) when given; False when the rows cannot go so."""
    documents = _json_documents(rows, columns)
    if documents is None:
        return False
    # the dialect's quoting doubles a % in a name, as PyMySQL's format string needs
    preparer = conn.dialect.identifier_preparer
    quote = preparer.quote
    shape = ", ".join(f"c{i} LONGTEXT CHARACTER SET utf8mb4 PATH '$[{i}]'" for i in range(len(columns)))
    statement = (f"INSERT INTO {preparer.format_table(table)} ({', '.join(quote(c) for c in columns)})"
                 f" SELECT {', '.join(f'batch.c{i}' for i in range(len(columns)))} FROM JSON_TABLE("
                 f"CONVERT(%s USING utf8mb4), '$[*]' COLUMNS (n FOR ORDINALITY, {shape})) AS batch ORDER BY batch.n")
    if key:
        rest = [c for c in columns if c not in key] or key[:1]
        statement += " ON DUPLICATE KEY UPDATE " + ", ".join(f"{quote(c)} = VALUES({quote(c)})" for c in rest)
    for document in documents:
        conn.exec_driver_sql(statement, (document,))
    return True
