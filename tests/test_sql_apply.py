"""The ``sql_apply`` sink against real SQLite, PostgreSQL and MariaDB: apply-once with the
ledger in the same transaction, conflicts, delete policies, hostile payloads, and the
identifier checks at open. Events are built with the real canonical schema; a trigger on
the target table counts every physical write."""
import datetime as dt
import logging
from decimal import Decimal

import pytest
import sqlalchemy as sa

from adapters.sql_apply.sink import SqlApplySink
from agent.contracts import AdapterContext, ConfigError
from tests.support.inbound import CATALOG, LOOKUPS, REVERSE, T0, create_local, customer, event, queued


def make_sink(url, tmp_path, entities=None, **extra) -> SqlApplySink:
    context = AdapterContext(name="erp_apply", state_dir=tmp_path, schemas=CATALOG,
                             log=logging.getLogger("test.sql_apply"))
    sink = SqlApplySink({"url": url, "entities": entities or REVERSE, "lookups": LOOKUPS, **extra}, context)
    sink.open()
    return sink


def rows(engine, sql):
    with engine.connect() as conn:
        return [tuple(r) for r in conn.exec_driver_sql(sql)]


def test_same_event_three_times_changes_the_row_once(any_db_url, tmp_path):
    engine = sa.create_engine(any_db_url)
    create_local(engine)
    sink = make_sink(any_db_url, tmp_path)
    try:
        created = event(customer("C-1", "Acme"), operation="CREATE")
        renamed = event(customer("C-1", "Acme Renamed", limit="250.50"), before=customer("C-1", "Acme"))
        for attempt in range(3):                      # redelivered: same ids, every time
            report = sink.write(queued([created, renamed]))
            assert report.delivered == {created["metadata"]["event_id"], renamed["metadata"]["event_id"]}
            assert not report.rejected and report.transient_error is None
    finally:
        sink.close()
    assert rows(engine, "SELECT cust_no, cust_name, company, tax_code, credit_lim FROM erp_customer") == [
        ("C-1", "Acme Renamed", "01", "NY", Decimal("250.50"))]
    assert rows(engine, "SELECT cust_name FROM apply_audit ORDER BY n") == [("Acme",), ("Acme Renamed",)]
    assert rows(engine, "SELECT count(*) FROM outpost_applied_events") == [(2,)]


def test_conflict_is_parked_with_both_sides_and_other_keys_flow(any_db_url, tmp_path):
    engine = sa.create_engine(any_db_url)
    create_local(engine, with_audit=False)
    sink = make_sink(any_db_url, tmp_path)
    try:
        sink.write(queued([event(customer("C-1"), operation="CREATE"), event(customer("C-2"), operation="CREATE")]))
        later = (T0 + dt.timedelta(hours=1))
        with engine.begin() as conn:     # a clerk edits C-1 locally after the fabric's version
            conn.execute(sa.text("UPDATE erp_customer SET cust_name='Edited locally', updated_at=:t"
                                 " WHERE cust_no='C-1'"),
                         {"t": later if engine.dialect.name == "postgresql" else later.replace(tzinfo=None)})
        stale = event(customer("C-1", "From CRM", updated_at=T0 + dt.timedelta(minutes=1)), before=customer("C-1"))
        other = event(customer("C-2", "Also from CRM", updated_at=T0 + dt.timedelta(minutes=1)),
                      before=customer("C-2"))
        report = sink.write(queued([stale, other]))
    finally:
        sink.close()
    assert report.delivered == {other["metadata"]["event_id"]}
    reason = report.rejected[stale["metadata"]["event_id"]]
    assert reason.startswith("conflict: Customer erp_customer:") and "later than the event's base" in reason
    lines = {line["column"]: line for line in report.context[stale["metadata"]["event_id"]]["conflict"]["side_by_side"]}
    assert lines["cust_name"]["local"] == "Edited locally" and lines["cust_name"]["after"] == "From CRM", "side by side"
    assert rows(engine, "SELECT cust_no, cust_name FROM erp_customer ORDER BY cust_no") == [
        ("C-1", "Edited locally"), ("C-2", "Also from CRM")]


@pytest.mark.parametrize("policy", ["soft", "hard", "ignore"])
def test_delete_policies(sqlite_url, tmp_path, policy):
    engine = sa.create_engine(sqlite_url)
    create_local(engine, with_audit=False)
    target = {**REVERSE["Customer"]["tables"][0],
              "delete": {"policy": policy, **({"column": "deleted", "value": "Y"} if policy == "soft" else {})}}
    sink = make_sink(sqlite_url, tmp_path, entities={"Customer": {"tables": [target]}})
    try:
        sink.write(queued([event(customer("C-1"), operation="CREATE")]))
        report = sink.write(queued([event(None, before=customer("C-1"), operation="DELETE")]))
        assert len(report.delivered) == 1
    finally:
        sink.close()
    expected = {"soft": [("C-1", "Y")], "hard": [], "ignore": [("C-1", "N")]}[policy]
    assert rows(engine, "SELECT cust_no, deleted FROM erp_customer") == expected


HOSTILE = ["'); DROP TABLE erp_customer; --", "Robert'); DELETE FROM outpost_applied_events;--",
           "x\" OR \"1\"=\"1", "\\'; SELECT pg_sleep(5); --", "ünï' || (SELECT version()) || '"]


def test_hostile_payloads_are_data_never_sql(any_db_url, tmp_path):
    engine = sa.create_engine(any_db_url)
    create_local(engine, with_audit=False)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE UNIQUE INDEX one_name ON erp_customer (cust_name)")
    sink = make_sink(any_db_url, tmp_path)
    try:
        hostile = [event(customer(f"H-{i}", text), operation="CREATE") for i, text in enumerate(HOSTILE)]
        oversized = event(customer("BIG", "x" * 61), operation="CREATE")              # column holds 60
        unknown = event(customer("UNK", "Unknown", company="ZZ99"), operation="CREATE")
        key_attack = event(customer("K';DROP TABLE t;--", "Key attack"), operation="CREATE")
        duplicate_name = event(customer("DUP", HOSTILE[0]), operation="CREATE")       # violates one_name
        batch = hostile + [oversized, unknown, key_attack, duplicate_name]
        report = sink.write(queued(batch))
    finally:
        sink.close()
    ids = {e["metadata"]["event_id"]: e for e in batch}
    assert "at most 60 characters" in report.rejected[oversized["metadata"]["event_id"]]
    assert "unknown legal_entity code 'ZZ99'" in report.rejected[unknown["metadata"]["event_id"]]
    assert report.rejected[duplicate_name["metadata"]["event_id"]].startswith("constraint:")
    assert report.delivered == set(ids) - set(report.rejected) and len(report.rejected) == 3
    stored = dict(rows(engine, "SELECT cust_no, cust_name FROM erp_customer"))
    assert stored == {**{f"H-{i}": text for i, text in enumerate(HOSTILE)},
                      "K';DROP TABLE t;--": "Key attack"}, "stored verbatim, as values"
    assert rows(engine, "SELECT count(*) FROM outpost_applied_events") == [(len(HOSTILE) + 1,)]


def test_identifiers_are_checked_against_the_reflected_schema(sqlite_url, tmp_path):
    engine = sa.create_engine(sqlite_url)
    create_local(engine, with_audit=False)
    target = {**REVERSE["Customer"]["tables"][0]}
    target["columns"] = {**target["columns"], "cust_name; DROP TABLE erp_customer": "name"}
    with pytest.raises(ConfigError, match=r"not found in erp_customer"):
        make_sink(sqlite_url, tmp_path, entities={"Customer": {"tables": [target]}})
    with pytest.raises(ConfigError, match=r"table nope not found"):
        make_sink(sqlite_url, tmp_path, entities={"Customer": {"tables": [{**target, "table": "nope"}]}})
    with pytest.raises(ConfigError, match=r"'no_such_field' is not a field of Customer"):
        make_sink(sqlite_url, tmp_path, entities={"Customer": {"tables": [
            {**REVERSE["Customer"]["tables"][0], "columns": {"cust_no": "customer_number",
                                                             "status": "no_such_field"}}]}})
    assert rows(engine, "SELECT count(*) FROM erp_customer") == [(0,)]


def test_check_explains_privileges(sqlite_url, tmp_path):
    create_local(sa.create_engine(sqlite_url), with_audit=False)
    sink = make_sink(sqlite_url, tmp_path, marker={"enabled": True})
    try:
        advice = sink.check()
    finally:
        sink.close()
    assert any("SELECT, INSERT, UPDATE on erp_customer" in line for line in advice)
    assert any("outpost_apply_marker" in line for line in advice)
    assert any("CREATE TABLE" in line for line in advice)


PROCEDURES = {
    "postgres": ["CREATE PROCEDURE {apply}(no TEXT, name TEXT, company TEXT) LANGUAGE sql AS $$"
                 " INSERT INTO erp_customer (cust_no, cust_name, company) VALUES (no, name, company)"
                 " ON CONFLICT (cust_no) DO UPDATE SET cust_name = excluded.cust_name $$",
                 "CREATE PROCEDURE sp_delete_customer(no TEXT, name TEXT, company TEXT) LANGUAGE sql AS $$"
                 " DELETE FROM erp_customer WHERE cust_no = no $$"],
    "mariadb": ["CREATE PROCEDURE {apply}(no VARCHAR(20), name VARCHAR(60), company VARCHAR(4))"
                " INSERT INTO erp_customer (cust_no, cust_name, company) VALUES (no, name, company)"
                " ON DUPLICATE KEY UPDATE cust_name = VALUES(cust_name)",
                "CREATE PROCEDURE sp_delete_customer(no VARCHAR(20), name VARCHAR(60), company VARCHAR(4))"
                " DELETE FROM erp_customer WHERE cust_no = no"]}


@pytest.mark.parametrize("apply", ["sp_apply_customer", "sp_apply%customer"], ids=["plain name", "a % in the name"])
@pytest.mark.parametrize("server", ["postgres", "mariadb"])
def test_stored_procedure_target(request, tmp_path, server, apply):
    """A % in a procedure's name used to reach the database doubled ("sp_apply%%customer"):
    the dialect's quoting doubles it for the driver's format string, and ``sa.text`` again."""
    url = request.getfixturevalue({"postgres": "pg_url", "mariadb": "mariadb_url"}[server])
    engine = sa.create_engine(url)
    create_local(engine, with_audit=False)
    quoted = engine.dialect.identifier_preparer.quote(apply)     # %% for exec_driver_sql's format string
    with engine.begin() as conn:
        for ddl in PROCEDURES[server]:
            conn.exec_driver_sql(ddl.replace("{apply}", quoted))
    entities = {"Customer": {"procedure": {"name": apply, "delete_name": "sp_delete_customer",
                                           "args": ["customer_number", "name",
                                                    {"field": "legal_entity", "lookup": "legal_entity"}]}}}
    sink = make_sink(url, tmp_path, entities=entities)
    try:
        hostile = "x'); DROP TABLE erp_customer; --"
        sink.write(queued([event(customer("C-1", hostile), operation="CREATE"),
                           event(customer("C-2", "Two"), operation="CREATE")]))
        report = sink.write(queued([event(None, before=customer("C-2", "Two"), operation="DELETE")]))
        assert len(report.delivered) == 1
    finally:
        sink.close()
    assert rows(engine, "SELECT cust_no, cust_name, company FROM erp_customer") == [("C-1", hostile, "01")]


def test_before_image_conflict_mode(any_db_url, tmp_path):
    engine = sa.create_engine(any_db_url)
    create_local(engine, with_audit=False)
    target = {**REVERSE["Customer"]["tables"][0], "conflict": {"mode": "before_image"}}
    sink = make_sink(any_db_url, tmp_path, entities={"Customer": {"tables": [target]}})
    try:
        base = customer("C-1", limit="10.00")
        sink.write(queued([event(base, operation="CREATE")]))
        fine = event(customer("C-1", limit="20.00"), before=base)
        assert sink.write(queued([fine])).delivered == {fine["metadata"]["event_id"]}
        with engine.begin() as conn:          # the same row changed locally (no timestamp kept)
            conn.exec_driver_sql("UPDATE erp_customer SET credit_lim = 99.99 WHERE cust_no = 'C-1'")
        stale = event(customer("C-1", limit="30.00"), before=customer("C-1", limit="20.00"))
        report = sink.write(queued([stale]))
    finally:
        sink.close()
    assert "differs from the event's before image in credit_lim" in report.rejected[stale["metadata"]["event_id"]]
    assert rows(engine, "SELECT credit_lim FROM erp_customer")[0][0] in (Decimal("99.99"), 99.99)


def test_merge_for_sql_server_and_oracle_quotes_identifiers_and_binds_values():
    """SQL Server and Oracle cannot run here: only the generated statement is checked."""
    from sqlalchemy.dialects import mssql, oracle

    from adapters.sql_apply import statements
    table = sa.Table("erp customer", sa.MetaData(), sa.Column("cust no", sa.String(20), primary_key=True),
                     sa.Column("name", sa.String(60)), schema="dbo")
    for dialect, head in ((mssql.dialect(), "MERGE INTO dbo.[erp customer] WITH (HOLDLOCK) AS t"),
                          (oracle.dialect(), 'MERGE INTO dbo."erp customer" t')):
        stmt, params = statements.upsert(dialect, table, ["cust no"], ["cust no", "name"])
        text = str(stmt)
        assert text.startswith(head) and ":p0" in text and ":p1" in text, text
        assert params({"cust no": "x'; --", "name": "n"}) == {"p0": "x'; --", "p1": "n"}
    call = statements.procedure_call(mssql.dialect(), "dbo", "sp apply", 2)
    assert str(call) == "EXEC dbo.[sp apply] :a0, :a1"


def test_ledger_in_its_own_schema(pg_url, tmp_path):
    engine = sa.create_engine(pg_url)
    create_local(engine, with_audit=False)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE SCHEMA outpost")
    sink = make_sink(pg_url, tmp_path, ledger={"schema": "outpost"}, marker={"enabled": True, "schema": "outpost"})
    try:
        assert len(sink.write(queued([event(customer("C-1"), operation="CREATE")])).delivered) == 1
    finally:
        sink.close()
    assert rows(engine, "SELECT count(*) FROM outpost.outpost_applied_events") == [(1,)]
    assert rows(engine, "SELECT count(*) FROM outpost.outpost_apply_marker") == [(1,)]
    assert not sa.inspect(engine).has_table("outpost_applied_events"), "nothing in the default schema"


def test_check_constraint_violation_is_parked_not_retried_forever(any_db_url, tmp_path):
    engine = sa.create_engine(any_db_url)
    create_local(engine, with_audit=False)
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE erp_customer ADD CONSTRAINT limit_ok CHECK (credit_lim < 1000000)"
                             if engine.dialect.name != "sqlite" else "DROP TABLE erp_customer")
    if engine.dialect.name == "sqlite":     # SQLite cannot add a CHECK to an existing table
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE erp_customer (cust_no VARCHAR(20) PRIMARY KEY, cust_name VARCHAR(60),"
                                 " company VARCHAR(4), curr VARCHAR(3), tax_code VARCHAR(8), credit_lim NUMERIC(18,2)"
                                 " CHECK (credit_lim < 1000000), status VARCHAR(10), updated_at DATETIME, deleted CHAR(1))")
    sink = make_sink(any_db_url, tmp_path)
    try:
        bad = event(customer("C-BIG", limit="5000000.00"), operation="CREATE")    # the gates allow it
        good = event(customer("C-OK"), operation="CREATE")
        report = sink.write(queued([bad, good]))
    finally:
        sink.close()
    assert report.transient_error is None and report.delivered == {good["metadata"]["event_id"]}
    assert report.rejected[bad["metadata"]["event_id"]].startswith("constraint:")


TIMESHEETS = {"Timesheet": {"tables": [{"table": "timesheets", "key": "entry_id", "columns": {
    "entry_id": "entry_id", "employee": "employee_id", "hours": "hours", "billable": "billable",
    "attempts": {"const": 3}}}]}}


def test_a_boolean_column_takes_canonical_booleans_on_every_database(any_db_url, tmp_path):
    """MariaDB and MySQL store BOOLEAN as TINYINT(1), which reflection reports as an integer:
    every Timesheet was parked there ("column billable holds whole numbers, the event has bool
    True"). A TINYINT(1) takes a yes/no as it is and a small whole number as an integer
    column does (``attempts`` here)."""
    engine = sa.create_engine(any_db_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE timesheets (entry_id VARCHAR(20) PRIMARY KEY, employee VARCHAR(20),"
                             " hours NUMERIC(9,2), billable BOOLEAN, attempts "
                             f"{'TINYINT(1)' if engine.dialect.name == 'mysql' else 'SMALLINT'})")
    sink = make_sink(any_db_url, tmp_path, entities=TIMESHEETS)
    try:
        entries = [{"entry_id": f"T-{i}", "project_code": "P-1", "employee_id": "E-7", "work_date": dt.date(2026, 11, 2),
                    "hours": Decimal("7.50"), "billable": i % 2 == 0, "bill_rate": None, "currency": None,
                    "description": None} for i in range(4)]
        report = sink.write(queued([event(e, operation="CREATE", entity="Timesheet") for e in entries],
                                   entity="Timesheet"))
        assert len(report.delivered) == 4 and not report.rejected, report
    finally:
        sink.close()
    stored = rows(engine, "SELECT entry_id, billable, attempts FROM timesheets ORDER BY entry_id")
    assert [(k, bool(b), a) for k, b, a in stored] == [(f"T-{i}", i % 2 == 0, 3) for i in range(4)]


def test_a_conflict_is_found_when_the_key_column_is_fixed_width_char(any_db_url, tmp_path):
    """Legacy keys are often CHAR(n). PostgreSQL gives them back blank-padded ('C-1      …'),
    so the prefetched local row was filed under the padded key, the event's key 'C-1' found
    nothing, and the conflict check was skipped: a stale change overwrote a local edit."""
    from tests.support.inbound import LOCAL_DDL
    engine = sa.create_engine(any_db_url)
    ts = {"postgresql": "TIMESTAMPTZ", "sqlite": "DATETIME", "mysql": "DATETIME(6)"}[engine.dialect.name]
    with engine.begin() as conn:
        conn.exec_driver_sql(LOCAL_DDL["default"].format(ts=ts).replace("cust_no VARCHAR(20)", "cust_no CHAR(20)"))
    sink = make_sink(any_db_url, tmp_path)
    try:
        sink.write(queued([event(customer("C-1"), operation="CREATE")]))
        later = T0 + dt.timedelta(hours=1)
        with engine.begin() as conn:     # a clerk edits C-1 locally after the fabric's version
            conn.execute(sa.text("UPDATE erp_customer SET cust_name='Edited locally', updated_at=:t"
                                 " WHERE cust_no='C-1'"),
                         {"t": later if engine.dialect.name == "postgresql" else later.replace(tzinfo=None)})
        stale = event(customer("C-1", "From CRM", updated_at=T0 + dt.timedelta(minutes=1)), before=customer("C-1"))
        report = sink.write(queued([stale]))
    finally:
        sink.close()
    assert not report.delivered and "later than the event's base" in report.rejected[stale["metadata"]["event_id"]]
    assert [(k.strip(), n) for k, n in rows(engine, "SELECT cust_no, cust_name FROM erp_customer")] == [
        ("C-1", "Edited locally")]


DISCOUNTS = {"Customer": {"tables": [{"table": "erp_discount", "key": "cust_no",
                                      "columns": {"cust_no": "customer_number", "Discount %": "credit_limit"}}]}}
SURROGATE = {"mysql": ", row_id INT AUTO_INCREMENT, KEY (row_id)", "postgresql": ", row_id INT GENERATED ALWAYS AS IDENTITY",
             "sqlite": ""}


def test_a_legacy_column_named_with_a_percent_sign_is_written(any_db_url, tmp_path):
    """Tables migrated from Access carry names such as "Discount %". The drivers read the
    statement as a format string, so a % in a name must reach them doubled once: SQLAlchemy's
    ON DUPLICATE KEY UPDATE doubled it twice in ``VALUES(...)`` (MariaDB: "Unknown column
    'Discount %%'"), an error retried for ever. With a surrogate AUTO_INCREMENT column the
    upsert goes as parameters, where that statement is used."""
    engine = sa.create_engine(any_db_url)
    name = engine.dialect.name
    quoted = "`Discount %%`" if name == "mysql" else '"Discount %%"' if name == "postgresql" else '"Discount %"'
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE erp_discount (cust_no VARCHAR(20) PRIMARY KEY, {quoted} NUMERIC(5,2)"
                             f"{SURROGATE[name]})")
    sink = make_sink(any_db_url, tmp_path, entities=DISCOUNTS)
    try:
        for i, limit in enumerate(("12.50", "7.25", "7.30")):
            report = sink.write(queued([event(customer(f"C-{k}", limit=limit), operation="CREATE" if i == 0 else "UPDATE")
                                        for k in range(3)]))
            assert len(report.delivered) == 3 and report.transient_error is None, report
    finally:
        sink.close()
    assert rows(engine, f"SELECT cust_no, {quoted} FROM erp_discount ORDER BY cust_no") == [
        (f"C-{k}", Decimal("7.30") if name != "sqlite" else 7.3) for k in range(3)]     # SQLite: REAL
