"""``binlog`` source against the real MariaDB (127.0.0.1:3306, log_bin, ROW, FULL).

Real MariaDB, real SQLite queue, real tansu broker where a broker is used; the schema
registry is the HTTP double of ``tests/support/registry_double.py`` (no registry server
can run here).
"""
import datetime as dt
import threading
import time
from decimal import Decimal

from adapters.binlog.positions import TxnTracker, privilege_problems, retention_report, settings_problems
from adapters.binlog.source import BinlogSource
from agent import config as config_module
from agent import snapshots
from agent.config import MappingConfig
from agent.contracts import AdapterContext
from agent.mapping import EntityMapping
from agent.translate import Translator
from agent.runtime import Agent
from agent.schemas import SchemaCatalog
from tests.support.binlog import (CUSTOMER_DDL, INSERT_CUSTOMER, binlog_config, customer_rows, execute, fetch,
                                  kafka_sink)
from tests.support.route import LOOKUPS, decode_messages


def _agent(config: dict) -> Agent:
    agent = Agent(config_module.parse(config), drain_timeout=10)
    agent.build()
    return agent


def _queued(agent) -> list[dict]:
    """Every event in the queue, decoded, in queue order."""
    rows = agent.queue._conn().execute("SELECT schema_fingerprint, body FROM outbox ORDER BY seq").fetchall()
    return [agent.catalog.by_fingerprint(fp).decode(body) for fp, body in rows]


def _capture_until(agent, predicate, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        agent.run_pass()
        if predicate():
            return True
    return False


def test_insert_update_delete_reach_the_broker(tmp_path, mariadb_url, broker, registry):
    execute(mariadb_url, CUSTOMER_DDL, many=(INSERT_CUSTOMER, customer_rows(range(1, 4), Decimal("10.50"))))
    sink, fabric = kafka_sink(broker.bootstrap, registry.url)
    agent = _agent(binlog_config(tmp_path / "state", mariadb_url, sink=sink, fabric=fabric))
    topic = fabric["topic_template"].format(entity="customer")
    agent.start(capture=False)
    try:
        agent.run_pass()                                   # the initial snapshot: 3 rows
        execute(mariadb_url, "UPDATE erp_customer SET credit_lim = 99.99 WHERE cust_no = 'C-00002'",
                "DELETE FROM erp_customer WHERE cust_no = 'C-00003'",
                many=(INSERT_CUSTOMER, customer_rows([4], Decimal("1234567.89"))))
        execute(mariadb_url, "UPDATE erp_customer SET cust_name = 'Renamed' WHERE cust_no = 'C-00004'")
        assert _capture_until(agent, lambda: agent.queue.status()["customers"].get("captured_total", 0) >= 7)
        events = decode_messages(broker.consume(topic, expected=7, timeout=30), registry)
    finally:
        agent.stop()
    per_key = {}
    for e in events:                                       # partitions keep per-key order only
        per_key.setdefault(e["key"], []).append(e)
    assert {k: [e["metadata"]["operation"] for e in v] for k, v in per_key.items()} == {
        "C-00001": ["SNAPSHOT"], "C-00002": ["SNAPSHOT", "UPDATE"], "C-00003": ["SNAPSHOT", "DELETE"],
        "C-00004": ["CREATE", "UPDATE"]}
    update, delete, (create, rename) = per_key["C-00002"][1], per_key["C-00003"][1], per_key["C-00004"]
    assert update["before"]["credit_limit"] == Decimal("10.50") and update["after"]["credit_limit"] == Decimal("99.99")
    assert delete["after"] is None and delete["before"]["name"] == "Customer 3", "full before image of a delete"
    assert create["after"]["credit_limit"] == Decimal("1234567.89")
    assert rename["before"]["name"] == "Customer 4" and rename["after"]["name"] == "Renamed"
    # one transaction: the update, the delete and the insert share the transaction start, rows 0..2
    positions = [e["metadata"]["source"]["position"] for e in (update, delete, create)]
    assert len({p.rsplit(":", 1)[0] for p in positions}) == 1 and [p[-2:] for p in positions] == [":0", ":1", ":2"]
    assert update["metadata"]["occurred_at"].tzinfo is not None
    assert len({e["metadata"]["event_id"] for e in events}) == 7


def test_transactions_written_while_the_agent_is_stopped_all_arrive(tmp_path, mariadb_url):
    """The case that broke the Debezium workaround: several multi-row transactions while
    stopped, and a resume that ends batches in the middle of transactions."""
    execute(mariadb_url, CUSTOMER_DDL)
    config = binlog_config(tmp_path / "state", mariadb_url, sink={"type": "avro_files", "directory": str(tmp_path / "out")},
                           snapshot="none", capture={"batch_size": 37})
    agent = _agent(config)
    agent.run_pass()                                       # records the start position
    execute(mariadb_url, many=(INSERT_CUSTOMER, customer_rows(range(1, 101))))
    agent.run_pass()
    agent.stop()
    for start in range(101, 601, 100):                     # five 100-row transactions while stopped
        execute(mariadb_url, many=(INSERT_CUSTOMER, customer_rows(range(start, start + 100))))
    execute(mariadb_url, "UPDATE erp_customer SET credit_lim = credit_lim + 1 WHERE cust_no <= 'C-00050'",
            "DELETE FROM erp_customer WHERE cust_no > 'C-00590'")
    # the first restart stops after one mid-transaction batch, the second finishes
    agent = _agent(config)
    capture = agent.captures["customers"]
    batches = capture.source.batches(agent.queue.checkpoint("customers"))
    capture._commit(next(batches))
    batches.close()
    assert agent.queue.checkpoint("customers")["rows"] == 37, "the checkpoint is inside a transaction"
    agent.stop()
    agent = _agent(config)
    try:
        assert _capture_until(agent, lambda: agent.queue.depth() >= 660, timeout=30)
        agent.run_pass()
        events = _queued(agent)
    finally:
        agent.stop()
    creates = [e["key"] for e in events if e["metadata"]["operation"] == "CREATE"]
    assert sorted(creates) == [f"C-{n:05d}" for n in range(1, 601)], "every row of every transaction, once"
    assert sum(e["metadata"]["operation"] == "UPDATE" for e in events) == 50
    assert sorted(e["key"] for e in events if e["metadata"]["operation"] == "DELETE") == \
        [f"C-{n:05d}" for n in range(591, 601)]
    assert len({e["metadata"]["event_id"] for e in events}) == len(events) == 660


TYPES_DDL = """
CREATE TABLE tm (
    id INT PRIMARY KEY, emp VARCHAR(50) CHARACTER SET utf8mb4, proj VARCHAR(50) CHARACTER SET latin1,
    rate DECIMAL(18,4), hours DECIMAL(6,2), money_dbl DOUBLE, ts0 TIMESTAMP NULL, ts6 TIMESTAMP(6) NULL,
    dt0 DATETIME NULL, dt3 DATETIME(3) NULL, d DATE, flag TINYINT(1), notes LONGTEXT, notes_l1 TEXT CHARACTER SET latin1)
"""
TYPES_ROW = ("Zoë 😀 Ωmega", "Münchën Straße", Decimal("12345678901234.5678"), Decimal("7.25"), 1234.1,
             "2026-03-29 00:30:00", "2026-03-29 00:30:00.123456", "2026-03-29 03:30:00", "2026-03-29 03:30:00.125",
             "2026-02-28", 1, "x" * 200_000 + "é", "Ça va, Noël")
TIMESHEET = {"entity": "Timesheet", "fields": {
    "entry_id": {"column": "id", "convert": ["str"]}, "project_code": "proj", "employee_id": "emp", "work_date": "d",
    "hours": "hours", "billable": "flag", "bill_rate": "rate", "currency": {"const": "EUR"}, "description": "notes"}}


def _customer_variant(stamp_column: str) -> dict:
    return {"entity": "Customer", "source_timezone": "Europe/Berlin", "fields": {
        "customer_number": {"column": "id", "convert": ["str"]}, "name": "notes_l1", "legal_entity": {"const": "US01"},
        "currency": {"const": "USD"}, "tax_jurisdiction": {"const": "US-NY"}, "credit_limit": "money_dbl",
        "updated_at": stamp_column}}


def test_type_matrix_maps_exactly_through_snapshot_and_binlog(tmp_path, mariadb_url):
    insert = f"INSERT INTO tm VALUES ({', '.join(['%s'] * 14)})"
    # the sparse row still has a name (a required text field may not be blank)
    empty = ("n", "p", None, Decimal("0.50"), None, None, None, None, None, "2026-01-01", 0, None, "-")
    execute(mariadb_url, "SET time_zone = '+00:00'", TYPES_DDL, many=(insert, [(1, *TYPES_ROW), (2, *empty)]))
    context = AdapterContext(name="erp", state_dir=tmp_path / "state", schemas=None)
    source = BinlogSource({"url": mariadb_url, "table": "tm", "snapshot": "initial"}, context)
    records, checkpoint = [], None
    for batch in source.batches(None):                     # the snapshot, then streaming until idle
        records, checkpoint = records + batch.records, batch.checkpoint
    execute(mariadb_url, "SET time_zone = '+00:00'", many=(insert, [(3, *TYPES_ROW), (4, *empty)]))
    for batch in source.batches(checkpoint):
        records, checkpoint = records + batch.records, batch.checkpoint
    source.close()
    assert [r.operation for r in records] == ["snapshot", "snapshot", "create", "create"] and checkpoint
    catalog = SchemaCatalog.load(None)

    def translate(name, mapping):
        config = MappingConfig.model_validate(mapping)
        translator = Translator("r", "s", "erp", EntityMapping(name, config, catalog.entity(config.entity), LOOKUPS))
        events, failures = translator.translate(records)
        assert not failures, failures
        return [catalog.entity(config.entity).decode(e["body"])["after"] for e in events]

    sheets = translate("timesheet", TIMESHEET)
    for full, empty in ((sheets[0], sheets[1]), (sheets[2], sheets[3])):   # snapshot pair, binlog pair
        assert full["employee_id"] == "Zoë 😀 Ωmega" and full["project_code"] == "Münchën Straße"
        assert full["bill_rate"] == Decimal("12345678901234.5678") and full["hours"] == Decimal("7.25")
        assert full["work_date"] == dt.date(2026, 2, 28) and full["billable"] is True
        assert full["description"] == "x" * 200_000 + "é"
        assert empty["bill_rate"] is None and empty["description"] is None and empty["billable"] is False
    utc = dt.timezone.utc
    expected = {  # TIMESTAMP columns are UTC instants; DATETIME is Berlin wall time (CEST from 02:00 that day)
        "ts0": dt.datetime(2026, 3, 29, 0, 30, tzinfo=utc), "ts6": dt.datetime(2026, 3, 29, 0, 30, 0, 123456, tzinfo=utc),
        "dt0": dt.datetime(2026, 3, 29, 1, 30, tzinfo=utc), "dt3": dt.datetime(2026, 3, 29, 1, 30, 0, 125000, tzinfo=utc)}
    for column, instant in expected.items():
        customers = translate(column, _customer_variant(column))
        assert [c["updated_at"] for c in customers] == [instant, None, instant, None], column
        assert customers[0]["credit_limit"] == Decimal("1234.10"), "legacy double money becomes an exact decimal"
        assert customers[0]["name"] == "Ça va, Noël" and customers[1]["credit_limit"] is None


def test_requested_snapshot_while_writes_continue(tmp_path, mariadb_url):
    execute(mariadb_url, CUSTOMER_DDL, many=(INSERT_CUSTOMER, customer_rows(range(1, 1201))))
    config = binlog_config(tmp_path / "state", mariadb_url, sink={"type": "avro_files", "directory": str(tmp_path / "out")},
                           snapshot="none", capture={"snapshot_chunk": 200, "max_pass": 1.0})
    agent = _agent(config)
    stop = threading.Event()

    def writer():
        n = 0
        while not stop.is_set():
            n += 1
            execute(mariadb_url, f"UPDATE erp_customer SET credit_lim = {10000 + n} WHERE cust_no = 'C-{(n * 7) % 1200 + 1:05d}'",
                    many=(INSERT_CUSTOMER, customer_rows([2000 + n])))
            time.sleep(0.01)

    try:
        agent.run_pass()
        (request_id,) = snapshots.request(config["state_dir"], "erp", ["erp_customer"])
        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        done = _capture_until(agent, lambda: snapshots.listing(config["state_dir"])[0]["state"] == "done", timeout=60)
        stop.set()
        thread.join()
        assert done, snapshots.listing(config["state_dir"])
        agent.run_pass()
        agent.run_pass()
        status = agent.queue.status()["customers"]
        events = _queued(agent)
    finally:
        stop.set()
        agent.stop()
    assert snapshots.listing(config["state_dir"])[0]["progress"]["rows"] >= 1200
    snap = [e for e in events if e["metadata"]["operation"] == "SNAPSHOT"]
    updated = {e["key"] for e in events if e["metadata"]["operation"] == "UPDATE"}
    # a chunk row whose key changed while the chunk waited for its watermark is left out:
    # the binlog event already published carries its newer state
    assert {e["key"] for e in snap} | updated >= {f"C-{n:05d}" for n in range(1, 1201)}
    assert all(e["metadata"]["source"]["position"].startswith(f"snapshot:request-{request_id}:") for e in snap)
    history = {}
    for e in events:
        history.setdefault(e["key"], []).append(e["after"]["credit_limit"])
    assert all(h == sorted(h) for h in history.values()), "never an older version after a newer one"
    last = {k: h[-1] for k, h in history.items()}          # and the last one is what the database holds
    for cust_no, limit in fetch(config["sources"]["erp"]["url"], "SELECT cust_no, credit_lim FROM erp_customer"):
        assert last[cust_no] == limit, cust_no
    assert len({e["metadata"]["event_id"] for e in events}) == len(events)
    assert status["health"]["details"]["purged"] is False and status["health"]["lag_bytes"] is not None


# ---- pure logic --------------------------------------------------------------------------

def test_tracker_positions_and_mid_transaction_checkpoints():
    t = TxnTracker("mysql-bin.000003", 400, skip=2)
    assert [t.row(), t.row(), t.row()] == [None, None, 2], "rows queued before the restart are skipped"
    assert t.position(2) == "mysql-bin.000003:400:2"
    assert t.checkpoint({"v": 1})["rows"] == 3 and t.checkpoint({"v": 1})["pos"] == 400
    t.commit(900)
    assert t.checkpoint({})["pos"] == 900 and t.checkpoint({})["rows"] == 0
    t.rotate("mysql-bin.000003", 900)
    assert t.boundary == 900, "the rotate at dump start moves nothing"
    t.rotate("mysql-bin.000004", 4)          # real, or artificial after a server restart (timestamp 0)
    assert (t.file, t.boundary) == ("mysql-bin.000004", 4)
    resumed = TxnTracker("mysql-bin.000003", 400, skip=5)
    assert resumed.checkpoint({})["rows"] == 5, "a resume point is kept until the skipped rows are passed"


def test_settings_privileges_and_retention_verdicts():
    bad = settings_problems({"log_bin": "ON", "binlog_format": "MIXED", "binlog_row_image": "MINIMAL",
                             "binlog_row_metadata": "MINIMAL", "binlog_expire_logs_seconds": "3600"})
    assert any("binlog_format=ROW" in p for p in bad) and any("binlog_row_image=FULL" in p for p in bad)
    assert any(p.startswith("warning: binlogs expire after 1.0 h") for p in bad)
    assert privilege_problems(["GRANT ALL PRIVILEGES ON *.* TO `root`@`localhost`"], "erp", "t") == []
    missing = privilege_problems(["GRANT USAGE ON *.* TO `cdc`@`%`"], "erp", "t")
    assert len(missing) == 3 and "REPLICATION SLAVE" in missing[0] and "SELECT" in missing[2]
    ok = privilege_problems(["GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO `cdc`@`%`",
                             "GRANT SELECT ON `erp`.* TO `cdc`@`%`"], "erp", "t")
    assert ok == []
    logs = [("b.000001", 1000), ("b.000002", 3000)]
    assert retention_report("b.000001", 400, logs, None, 10)["bytes_behind"] == 3600
    assert retention_report("b.000000", 4, logs, 86400, 10)["purged"] is True


def test_a_statement_logged_change_is_reported_not_silently_lost(tmp_path, mariadb_url):
    execute(mariadb_url, CUSTOMER_DDL)
    reported = []
    context = AdapterContext(name="erp", state_dir=tmp_path / "state", schemas=None,
                             report_health=reported.append)
    source = BinlogSource({"url": mariadb_url, "table": "erp_customer", "snapshot": "none"}, context)
    checkpoint = [b.checkpoint for b in source.batches(None)][-1]
    execute(mariadb_url, "SET SESSION binlog_format = 'STATEMENT'",
            "INSERT INTO erp_customer (cust_no, cust_name) VALUES ('C-1', 'logged as a statement')")
    execute(mariadb_url, many=(INSERT_CUSTOMER, customer_rows([2])))
    records = [r for b in source.batches(checkpoint) for r in b.records]
    source.close()
    assert [r.after["cust_no"] for r in records] == ["C-00002"]
    warnings = [health.warning for health in reported if health.warning]
    assert warnings and "logged as a statement" in warnings[0] and "outpost snapshot erp erp_customer" in warnings[0]


def test_snapshot_command_requests_lists_and_resets(tmp_path, mariadb_url):
    import yaml
    from click.testing import CliRunner
    from agent.cli import main
    execute(mariadb_url, CUSTOMER_DDL)
    config = binlog_config(tmp_path / "state", mariadb_url, sink={"type": "avro_files", "directory": str(tmp_path / "o")})
    path = tmp_path / "outpost.yaml"
    path.write_text(yaml.safe_dump(config))
    runner = CliRunner()
    result = runner.invoke(main, ["snapshot", "-c", str(path), "erp", "erp_customer"])
    assert result.exit_code == 0 and "snapshot request 1: erp erp_customer queued" in result.output
    unknown = runner.invoke(main, ["snapshot", "-c", str(path), "erp", "erp_invoice"])
    assert unknown.exit_code != 0 and "captures erp_invoice" in unknown.output
    listed = runner.invoke(main, ["snapshot", "-c", str(path), "--list"])
    assert "erp_customer" in listed.output and "pending" in listed.output
    agent = _agent(config)
    agent.run_pass()
    agent.stop()
    from agent.queue import DurableQueue
    assert DurableQueue(tmp_path / "state").checkpoint("customers")["snap_done"] == 1, "the request was served"
    assert snapshots.listing(config["state_dir"])[0]["state"] == "done"
    reset = runner.invoke(main, ["snapshot", "-c", str(path), "--reset-checkpoint", "customers"])
    assert reset.exit_code == 0 and "forgotten" in reset.output
    assert DurableQueue(tmp_path / "state").checkpoint("customers") is None
    status = runner.invoke(main, ["status", "-c", str(path)])
    assert "binlog_behind" in status.output, status.output


def test_zero_dates_are_null_on_both_paths(tmp_path, mariadb_url):
    """Legacy data holds '0000-00-00' dates (non-strict sql_mode): NULL from the snapshot
    (the driver gives text) and from the binlog (the decoder gives None, or epoch 0)."""
    zero = "SET SESSION sql_mode = ''"
    rows = "(%d, '0000-00-00', '0000-00-00 00:00:00', '0000-00-00 00:00:00', '2026-00-15')"
    execute(mariadb_url, zero, "CREATE TABLE z (id INT PRIMARY KEY, d DATE, dt DATETIME(3), ts TIMESTAMP NULL, d2 DATE)",
            "INSERT INTO z VALUES " + rows % 1)
    source = BinlogSource({"url": mariadb_url, "table": "z"},
                          AdapterContext(name="erp", state_dir=tmp_path / "state", schemas=None))
    batches = list(source.batches(None))
    execute(mariadb_url, zero, "INSERT INTO z VALUES " + rows % 2)
    batches += list(source.batches(batches[-1].checkpoint))
    source.close()
    images = [r.after for b in batches for r in b.records]
    assert images == [{"id": n, "d": None, "dt": None, "ts": None, "d2": None} for n in (1, 2)]


def test_an_interrupted_initial_snapshot_resumes_with_the_same_ids(tmp_path, mariadb_url):
    execute(mariadb_url, CUSTOMER_DDL, many=(INSERT_CUSTOMER, customer_rows(range(1, 1001))))
    config = binlog_config(tmp_path / "state", mariadb_url, sink={"type": "avro_files", "directory": str(tmp_path / "o")},
                           capture={"snapshot_chunk": 100})
    agent = _agent(config)
    capture = agent.captures["customers"]
    batches = capture.source.batches(None)
    for _ in range(4):                                     # the start position, then three chunks
        capture._commit(next(batches))
    batches.close()
    agent.stop()                                           # as if killed: only commits count
    agent = _agent(config)
    try:
        assert agent.queue.checkpoint("customers")["snapshot"]["rows"] == 300
        agent.run_pass()
        execute(mariadb_url, "UPDATE erp_customer SET credit_lim = 1 WHERE cust_no = 'C-00999'")
        agent.run_pass()
        events = _queued(agent)
    finally:
        agent.stop()
    snap = [e for e in events if e["metadata"]["operation"] == "SNAPSHOT"]
    assert sorted(e["key"] for e in snap) == [f"C-{n:05d}" for n in range(1, 1001)], "each row once"
    assert [e["metadata"]["operation"] for e in events[1000:]] == ["UPDATE"]
    assert events[-1]["after"]["credit_limit"] == Decimal("1.00")
