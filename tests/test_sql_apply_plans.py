"""The apply transaction's reads on PostgreSQL cost what the batch costs, not what the tables
hold. psycopg prepares a statement after a few executions and PostgreSQL may then plan it
once for any parameters (a generic plan); on tables nobody has analysed yet (a new
deployment, a first backfill) such a plan of ``entity = $1 AND entity_key IN ($2, ...)``
probed the keys ledger by entity only and compared every row with every key of the list:
110 ms per 500 keys at 10k keys, growing with every key ever applied. Here every statement
is prepared and planned generically from its first execution, and auto_explain reports
what each one read."""
import datetime as dt
import json
from decimal import Decimal
import logging
import time

import pytest
import sqlalchemy as sa

from adapters.sql_apply import statements
from adapters.sql_apply.database import binary_arrays
from adapters.sql_apply.sink import SqlApplySink
from agent.contracts import AdapterContext
from tests.support.inbound import CATALOG, LOOKUPS, REVERSE, T0, create_local, customer, event, queued

FILLED = 20000          # rows already in the ledger tables and the local table
BATCH = 100


def _scans(plan: dict):
    yield plan
    for child in plan.get("Plans", ()):
        yield from _scans(child)


def _rows_read(plan: dict) -> int:
    """Rows a scan node produced or looked at and threw away, over all its loops."""
    return int(plan.get("Actual Rows", 0) * plan.get("Actual Loops", 1) + plan.get("Rows Removed by Filter", 0)
               + plan.get("Rows Removed by Index Recheck", 0))


def test_generic_plans_read_rows_in_proportion_to_the_batch_not_the_tables(pg_url, tmp_path):
    engine = sa.create_engine(pg_url)
    create_local(engine, with_audit=False)
    context = AdapterContext(name="erp_apply", state_dir=tmp_path, schemas=CATALOG, log=logging.getLogger("test"))
    sink = SqlApplySink({"url": pg_url, "entities": REVERSE, "lookups": LOOKUPS}, context)
    sink.open()                                          # creates the ledger tables
    with engine.begin() as conn:                         # never analysed, as on a first day
        conn.exec_driver_sql(f"INSERT INTO outpost_applied_keys (entity, entity_key, event_id, applied_at) SELECT "
                             f"'Customer', 'X-' || i, 'e' || i, now() FROM generate_series(1, {FILLED}) i")
        conn.exec_driver_sql(f"INSERT INTO outpost_applied_events (event_id, entity, entity_key, applied_at) SELECT "
                             f"'e' || i, 'Customer', 'X-' || i, now() FROM generate_series(1, {FILLED}) i")
        conn.exec_driver_sql(f"INSERT INTO erp_customer (cust_no, cust_name) SELECT 'X-' || i, 'old' "
                             f"FROM generate_series(1, {FILLED}) i")
    plans = []

    @sa.event.listens_for(sink._engine, "connect")
    def explain_everything(dbapi_connection, _record):
        dbapi_connection.prepare_threshold = 0           # prepared from the first execution
        with dbapi_connection.cursor() as cur:
            for setting in ("SET plan_cache_mode = force_generic_plan", "LOAD 'auto_explain'",
                            "SET auto_explain.log_min_duration = 0", "SET auto_explain.log_analyze = on",
                            "SET auto_explain.log_format = json", "SET auto_explain.log_level = notice"):
                cur.execute(setting)
        dbapi_connection.commit()
        dbapi_connection.add_notice_handler(
            lambda diag: plans.append(json.loads(diag.message_primary.split("plan:", 1)[1])))

    sink._engine.dispose()
    sink._last_prune = time.time()                       # the hourly prune is not the batch's
    try:
        firsts = [customer(f"C-{i}", f"Customer {i}") for i in range(BATCH)]
        for batch in ([event(c, operation="CREATE") for c in firsts],
                      [event({**c, "name": "renamed", "updated_at": c["updated_at"] + dt.timedelta(seconds=1)},
                             before=c) for c in firsts]):
            report = sink.write(queued(batch))
            assert len(report.delivered) == BATCH, report
    finally:
        sink.close()
    heavy = [(node["Node Type"], node.get("Relation Name") or node.get("Index Name"), _rows_read(node),
              entry["Query Text"][:90])
             for entry in plans for node in _scans(entry["Plan"])
             if "Scan" in node["Node Type"] and _rows_read(node) > 2 * BATCH]
    assert plans and not heavy, heavy
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM erp_customer WHERE cust_name = 'renamed'").scalar() == BATCH


@pytest.mark.parametrize("binary", [True, False], ids=["binary arrays", "text arrays"])
def test_array_parameters_never_cut_a_value_to_the_column_length(pg_url, binary):
    """An explicit cast to varchar(n) truncates silently where an assignment refuses: the
    arrays must carry the values whole, so a key longer than the column matches nothing
    and a ledger id longer than its column is refused, never stored cut. The sink sends
    them in binary (``binary_arrays``); the text format must hold to the same."""
    from adapters.sql_apply import statements as sql
    from adapters.sql_apply.bookkeeping import Bookkeeping
    from adapters.sql_apply.spec import SinkOptions
    engine = sa.create_engine(pg_url)
    if binary:
        binary_arrays(engine)
    create_local(engine, with_audit=False)
    spec = SinkOptions.model_validate({"url": pg_url, "entities": REVERSE, "lookups": LOOKUPS})
    books = Bookkeeping(spec.ledger, spec.marker, "erp_apply")
    table = sa.Table("erp_customer", sa.MetaData(), autoload_with=engine)
    with engine.begin() as conn:
        books.metadata.create_all(conn)
        conn.exec_driver_sql("INSERT INTO erp_customer (cust_no, cust_name) VALUES ('AAAAAAAAAAAAAAAAAAAA', 'x')")
        assert sql.rows_by_keys(conn, table, ["cust_no"], ["cust_name"], [("A" * 20 + "B",)], True) == []
        assert [r["cust_name"] for r in sql.rows_by_keys(conn, table, ["cust_no"], ["cust_name"],
                                                          [("A" * 20,)], True)] == ["x"]
    now = dt.datetime(2026, 11, 1)
    try:
        with engine.begin() as conn:
            sql.insert_rows(conn, books.ledger, [{"event_id": "e" * 65, "entity": "Customer", "entity_key": "C-1",
                                                  "correlation_id": "", "applied_at": now}])
    except sa.exc.DataError:
        pass
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM outpost_applied_events").scalar() == 0


ENUM_AND_DOMAIN = ("CREATE TYPE customer_status AS ENUM ('active', 'closed')",
                   "CREATE DOMAIN credit AS NUMERIC(18,2) CHECK (VALUE >= 0)")


@pytest.mark.parametrize("status, credit", [("customer_status", "NUMERIC(18,2)"), ("VARCHAR(10)", "credit")],
                         ids=["enum column", "domain column"])
def test_columns_of_types_arrays_cannot_carry_are_upserted_row_by_row(pg_url, tmp_path, status, credit):
    """A legacy table with an enum or a domain column: such a column keeps one bound row per
    execution, where PostgreSQL infers each parameter's type from its column. (An enum went
    into the unnest arrays as varchar[], and PostgreSQL refused every upsert of the table,
    'column "status" is of type customer_status but expression is of type character
    varying', as a transient error retried for ever.) A value the type refuses is parked."""
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        for ddl in ENUM_AND_DOMAIN:
            conn.exec_driver_sql(ddl)
        conn.exec_driver_sql(f"CREATE TABLE erp_customer (cust_no VARCHAR(20) PRIMARY KEY, cust_name VARCHAR(60) NOT"
                             f" NULL, company VARCHAR(4), curr VARCHAR(3), tax_code VARCHAR(8), credit_lim {credit},"
                             f" status {status}, updated_at TIMESTAMPTZ, deleted CHAR(1) DEFAULT 'N')")
    context = AdapterContext(name="erp_apply", state_dir=tmp_path, schemas=CATALOG, log=logging.getLogger("test"))
    sink = SqlApplySink({"url": pg_url, "entities": REVERSE, "lookups": LOOKUPS}, context)
    sink.open()
    try:
        firsts = [customer(f"C-{i}", f"Customer {i}", limit=f"{i}.25") for i in range(5)]
        report = sink.write(queued([event(c, operation="CREATE") for c in firsts]))
        assert len(report.delivered) == 5, report
        later = dt.timedelta(seconds=1)
        closed = [{**c, "status": "closed", "updated_at": c["updated_at"] + later} for c in firsts]
        report = sink.write(queued([event(after, before=c) for after, c in zip(closed, firsts)]))
        assert len(report.delivered) == 5, report
        refused = ({**closed[0], "status": "frozen"} if status == "customer_status"
                   else {**closed[0], "credit_limit": Decimal("-1.00")})
        bad = event({**refused, "updated_at": T0 + 2 * later}, before=closed[0])
        report = sink.write(queued([bad]))
        assert not report.delivered and list(report.rejected) == [bad["metadata"]["event_id"]], report
    finally:
        sink.close()
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT cust_no, status::text, credit_lim FROM erp_customer ORDER BY cust_no").all()
    assert rows == [(f"C-{i}", "closed", Decimal(f"{i}.25")) for i in range(5)]


@pytest.mark.parametrize("key_type", ["region", "CITEXT"], ids=["enum key", "citext key"])
def test_keys_of_an_enum_or_citext_column_are_looked_up_without_arrays(pg_url, key_type):
    """The conflict prefetch reads local rows by key. An enum key cannot be compared with a
    varchar[] element ('operator does not exist'), and citext = varchar compares as text,
    case-sensitively (the local row of 'c-1' was missed for 'C-1', so its conflict check
    was skipped). Such keys are read with an IN list, where the column decides."""
    engine = sa.create_engine(pg_url)
    binary_arrays(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE EXTENSION citext")
        conn.exec_driver_sql("CREATE TYPE region AS ENUM ('active', 'closed')")
        conn.exec_driver_sql(f"CREATE TABLE branch (region {key_type}, no VARCHAR(8), name VARCHAR(20), PRIMARY KEY"
                             f" (region, no))")
        conn.exec_driver_sql("INSERT INTO branch VALUES ('active', '1', 'one'), ('closed', '1', 'other')")
    table = sa.Table("branch", sa.MetaData(), autoload_with=engine)
    wanted = ("active", "1") if key_type == "region" else ("ACTIVE", "1")
    with engine.begin() as conn:
        found = statements.rows_by_keys(conn, table, ["region", "no"], ["name"], [wanted], True)
    assert [r["name"] for r in found] == ["one"]
