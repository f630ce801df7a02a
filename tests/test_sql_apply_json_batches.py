"""On MariaDB 10.6+ the applier sends a batch as one ``INSERT ... SELECT FROM
JSON_TABLE(...)`` whose one parameter is the whole batch as a JSON document, instead of
PyMySQL's executemany, which escapes every value in Python. These tests hold it to what
executemany stores and refuses, on the real server: the same rows, byte for byte, for every
value type the reverse mapping hands on; the same refusals in strict mode; the last row of a
repeated key; the rows' order across documents."""
import datetime as dt
from decimal import Decimal

import pytest
import sqlalchemy as sa

from adapters.sql_apply import statements as sql

NAMES = ["k", "txt", "amount", "whole", "big", "ratio", "at", "at_tz", "day", "yes", "flag"]
DDL = ("CREATE TABLE {t} (k VARCHAR(20) PRIMARY KEY, txt VARCHAR(200), amount DECIMAL(18,2), whole INT,"
       " big BIGINT, ratio DOUBLE, at DATETIME(6), at_tz DATETIME(6), day DATE, yes BOOLEAN, flag CHAR(1))")

TRICKY_TEXT = ["plain", "é😀 ünïcode", "it's \"quoted\"", "back\\slash \\n", "line\nbreak\r\ttab", "nul\x00byte",
               "\x1a ctrl-z", "'; DROP TABLE t; --", "null", "true", "", "%s %(x)s", "\u2028sep", "[1,2]"]


def _rows() -> list[dict]:
    rows = []
    for i, text in enumerate(TRICKY_TEXT):
        rows.append({"k": f"K-{i:03d}", "txt": text, "amount": Decimal(f"{i}.{i % 10}5") * (-1 if i % 3 else 1),
                     "whole": i - 7, "big": 9223372036854775807 - i, "ratio": 0.1 * i if i % 2 else 1e-07,
                     "at": dt.datetime(2026, 11, 1, 8, 30, i, i * 1000 if i % 2 else 0),
                     "at_tz": dt.datetime(2026, 11, 1, 8, 30, tzinfo=dt.timezone.utc),
                     "day": dt.date(2026, 1, 1) + dt.timedelta(days=i), "yes": bool(i % 2),
                     "flag": "Y" if i % 2 else "N"})
    rows.append({name: None for name in NAMES} | {"k": "K-NULLS"})
    return rows


def _second() -> list[dict]:
    return [{**r, "txt": r["txt"] and f"{r['txt']} (2)"} for r in _rows()]


def _table(conn, name: str) -> sa.Table:
    conn.exec_driver_sql(DDL.format(t=name))
    return sa.Table(name, sa.MetaData(), autoload_with=conn)


def _stored(conn, table: sa.Table) -> list[tuple]:
    return [tuple(r) for r in conn.execute(sa.select(table).order_by(table.c.k))]


def _as_parameters(monkeypatch):
    monkeypatch.setattr(sql, "_has_json_table", lambda dialect: False)


def test_a_batch_sent_as_one_document_stores_what_executemany_stores(mariadb_url, monkeypatch):
    engine = sa.create_engine(mariadb_url)
    with engine.begin() as conn:
        batched, many = _table(conn, "by_document"), _table(conn, "by_parameters")
        assert sql.batch_fits(conn, batched, NAMES)
        sql.insert_rows(conn, batched, _rows())
        sql.insert_rows(conn, batched, _second(), key=["k"])
        with monkeypatch.context() as m:
            _as_parameters(m)
            assert not sql.batch_fits(conn, many, NAMES)
            sql.insert_rows(conn, many, _rows())
            sql.insert_rows(conn, many, _second(), key=["k"])
        stored = _stored(conn, batched)
        assert stored == _stored(conn, many)
    assert len(stored) == len(TRICKY_TEXT) + 1
    by_key = {row[0]: row for row in stored}
    assert by_key["K-005"][1] == f"{TRICKY_TEXT[5]} (2)" and "\x00" in by_key["K-005"][1]
    assert by_key["K-002"][2] == Decimal("-2.25") and by_key["K-001"][4] == 9223372036854775806
    assert by_key["K-NULLS"][1:] == (None,) * (len(NAMES) - 1)
    assert [row[9] for row in stored[:3]] == [0, 1, 0]        # yes/no as 1/0, never the text 'true'


@pytest.mark.parametrize("column, value", [("txt", "x" * 201), ("amount", Decimal("12345678901234567.00")),
                                           ("whole", 2 ** 40), ("day", "not a date")],
                         ids=["too long", "out of range", "int overflow", "bad date"])
def test_a_value_the_column_refuses_is_refused_as_a_parameter_is(mariadb_url, monkeypatch, column, value):
    """Strict mode refuses it; a typed JSON_TABLE column would have cut, clamped or zeroed it."""
    engine = sa.create_engine(mariadb_url)
    with engine.begin() as conn:
        table = _table(conn, "t")
    bad = [_rows()[0], {**_rows()[1], column: value}]
    refusals = []
    for as_parameters in (False, True):
        with monkeypatch.context() as m:
            if as_parameters:
                _as_parameters(m)
            with pytest.raises(sa.exc.DBAPIError) as refused:
                with engine.begin() as conn:
                    sql.insert_rows(conn, table, bad, key=["k"])
            refusals.append(refused.value.orig.args[0])
        with engine.connect() as conn:
            assert _stored(conn, table) == []
    assert refusals[0] == refusals[1]


def test_a_key_repeated_in_a_batch_ends_as_its_last_row_across_documents(mariadb_url, monkeypatch):
    monkeypatch.setattr(sql, "_DOCUMENT_BYTES", 300)          # a few rows per document
    engine = sa.create_engine(mariadb_url)
    rows = [{"k": f"K-{i % 7}", "txt": f"version {i}"} for i in range(40)]
    assert len(sql._json_documents(rows, ["k", "txt"])) >= 3
    with engine.begin() as conn:
        table = _table(conn, "t")
        sql.insert_rows(conn, table, rows, key=["k"])
        stored = dict(conn.execute(sa.select(table.c.k, table.c.txt)).all())
    assert stored == {f"K-{k}": f"version {max(i for i in range(40) if i % 7 == k)}" for k in range(7)}


def test_tables_the_batch_statement_would_lock_or_cannot_carry_go_as_parameters(mariadb_url):
    engine = sa.create_engine(mariadb_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE counted (n INT AUTO_INCREMENT PRIMARY KEY, code VARCHAR(10))")
        conn.exec_driver_sql("CREATE TABLE numbered (k VARCHAR(10) PRIMARY KEY, row_id INT AUTO_INCREMENT, KEY (row_id))")
        conn.exec_driver_sql("CREATE TABLE blobs (k VARCHAR(10) PRIMARY KEY, data VARBINARY(10))")
        counted = sa.Table("counted", sa.MetaData(), autoload_with=conn)
        numbered = sa.Table("numbered", sa.MetaData(), autoload_with=conn)
        blobs = sa.Table("blobs", sa.MetaData(), autoload_with=conn)
        # INSERT ... SELECT would hold the AUTO-INC lock against the application's own inserts
        assert not sql.batch_fits(conn, counted, ["code"])
        assert not sql.batch_fits(conn, numbered, ["k"])        # a surrogate counter beside the key
        assert not sql.batch_fits(conn, blobs, ["k", "data"])
        sql.insert_rows(conn, blobs, [{"k": "a", "data": b"\x00\xff'"}], key=["k"])
        assert conn.exec_driver_sql("SELECT data FROM blobs").scalar() == b"\x00\xff'"
        # a value of a type without a text here (a time of day) sends the batch as parameters
        conn.exec_driver_sql("CREATE TABLE plain (k VARCHAR(10) PRIMARY KEY, txt VARCHAR(20))")
        plain = sa.Table("plain", sa.MetaData(), autoload_with=conn)
        assert sql._json_documents([{"k": "a", "txt": dt.time(8, 30)}], ["k", "txt"]) is None
        sql.insert_rows(conn, plain, [{"k": "a", "txt": dt.time(8, 30)}])
        assert conn.exec_driver_sql("SELECT txt FROM plain").scalar() == "08:30:00"


def test_a_percent_sign_in_a_name_is_no_placeholder(mariadb_url):
    """PyMySQL reads the statement as a format string. (SQLAlchemy's own ON DUPLICATE KEY
    UPDATE doubles the % twice in ``VALUES(...)``: executemany fails on such a column.)"""
    engine = sa.create_engine(mariadb_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE shares (k VARCHAR(10) PRIMARY KEY, `share %%` DECIMAL(5,2))")
        table = sa.Table("shares", sa.MetaData(), autoload_with=conn)
        for share in ("12.50", "99.99"):
            sql.insert_rows(conn, table, [{"k": "a", "share %": Decimal(share)}], key=["k"])
        assert conn.exec_driver_sql("SELECT `share %%` FROM shares").all() == [(Decimal("99.99"),)]
