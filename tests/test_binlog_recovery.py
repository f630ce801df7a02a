"""``binlog`` source under failure: SIGKILL of the agent process mid-stream, the database
stopped and restarted, binlogs purged behind the stored position.

Real MariaDB (the shared server for the SIGKILL test; a PRIVATE mariadbd for the outage
and purge tests, so the shared one is never stopped or purged), real SQLite queue, real
outbox files, real agent process killed with SIGKILL.
"""
import time

import pytest

from agent import config as config_module
from agent import snapshots
from agent.runtime import Agent
from adapters.binlog.source import BinlogSource
from agent.contracts import AdapterContext, ConfigError
from tests.support.binlog import (CUSTOMER_DDL, INSERT_CUSTOMER, PrivateMariaDB, binlog_config, customer_rows,
                                  execute, fetch)
from tests.support.harness import BinlogHarness
from tests.support.recovery import RecoveryContract

pytestmark = pytest.mark.slow


class TestBinlogRecovery(RecoveryContract):
    """The SIGKILL recovery contract over a binlog stream into avro_files: kills land inside
    40-row transactions (batches of 15 rows commit mid-transaction), and rows change while
    the agent is down."""

    source = BinlogHarness
    kill_every = (0.3, 1.2)


@pytest.fixture
def private_mariadb(tmp_path):
    server = PrivateMariaDB(tmp_path / "mariadb")
    try:
        yield server
    finally:
        server.destroy()


def _agent(document) -> Agent:
    agent = Agent(config_module.parse(document), drain_timeout=5)
    agent.build()
    return agent


def _keys(agent) -> list[str]:
    return [k for (k,) in agent.queue._conn().execute("SELECT key FROM outbox ORDER BY seq")]


def test_database_stopped_and_restarted_during_a_stream(tmp_path, private_mariadb):
    url = private_mariadb.database("erp")
    execute(url, CUSTOMER_DDL, many=(INSERT_CUSTOMER, customer_rows(range(1, 51))))
    document = binlog_config(tmp_path / "state", url, sink={"type": "avro_files", "directory": str(tmp_path / "out")})
    agent = _agent(document)
    try:
        agent.run_pass()
        execute(url, many=(INSERT_CUSTOMER, customer_rows(range(51, 76))))
        agent.run_pass()
        assert len(_keys(agent)) == 75
        agent.stop()
        execute(url, many=(INSERT_CUSTOMER, customer_rows(range(76, 101))))   # not read before the outage
        private_mariadb.stop()
        agent = _agent(document)
        assert agent.run_pass() == 0
        status = agent.queue.status()["customers"]
        assert status["capture_state"].startswith("retrying") and "binlog" in status["source_error"]
        private_mariadb.start()                            # a new binlog file; the old one is still readable
        # after a restart table ids start again: another table may now have our table's old id
        execute(url, "CREATE TABLE other (x INT PRIMARY KEY, y VARCHAR(20))", "INSERT INTO other VALUES (1, 'a')")
        execute(url, many=(INSERT_CUSTOMER, customer_rows(range(101, 151))))
        execute(url, "DELETE FROM erp_customer WHERE cust_no <= 'C-00010'")
        deadline = time.monotonic() + 60
        while len(_keys(agent)) < 160 and time.monotonic() < deadline:
            time.sleep(0.5)
            agent.run_pass()
        status = agent.queue.status()["customers"]
        keys = _keys(agent)
    finally:
        agent.stop()
    assert sorted(set(keys)) == [f"C-{n:05d}" for n in range(1, 151)] and len(keys) == 160
    assert status["capture_state"] == "ok" and status["source_error"] is None
    assert status["progress"]["position"].startswith("mariadb-bin.000002:"), "the position follows the new file"


def test_purged_binlog_stops_the_route_with_the_recovery_and_a_snapshot_request_recovers(tmp_path, private_mariadb):
    url = private_mariadb.database("erp")
    execute(url, CUSTOMER_DDL, many=(INSERT_CUSTOMER, customer_rows(range(1, 21))))
    document = binlog_config(tmp_path / "state", url, sink={"type": "avro_files", "directory": str(tmp_path / "out")},
                             snapshot="none")
    agent = _agent(document)
    agent.run_pass()
    agent.stop()
    execute(url, many=(INSERT_CUSTOMER, customer_rows(range(21, 31))))   # lost to the log by the purge
    purge_all_but_the_newest_binlog(private_mariadb.server_url)
    agent = _agent(document)
    try:
        agent.run_pass()
        agent.run_pass()
        status = agent.queue.status()["customers"]
        assert status["capture_state"] == "stopped: configuration problem"
        assert "no longer on the server" in status["source_error"]
        assert "outpost snapshot erp erp_customer" in status["source_error"], "the message names the recovery"
        assert agent.captures["customers"].stopped_reason, "stopped, not retried in a loop"
    finally:
        agent.stop()
    snapshots.request(document["state_dir"], "erp", ["erp_customer"])   # what `outpost snapshot` does
    agent = _agent(document)
    try:
        deadline = time.monotonic() + 30
        while len(_keys(agent)) < 30 and time.monotonic() < deadline:
            agent.run_pass()
        keys = _keys(agent)
    finally:
        agent.stop()
    assert sorted(keys) == [f"C-{n:05d}" for n in range(1, 31)], "the re-snapshot covers the purged gap"
    assert snapshots.listing(document["state_dir"])[0]["state"] == "done"


def purge_all_but_the_newest_binlog(server_url: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:   # MariaDB purges a file only after its binlog checkpoint
        execute(server_url, "FLUSH BINARY LOGS")
        newest = fetch(server_url, "SHOW BINARY LOGS")[-1][0]
        execute(server_url, f"PURGE BINARY LOGS TO '{newest}'")
        if len(fetch(server_url, "SHOW BINARY LOGS")) == 1:
            return
        time.sleep(0.5)
    raise AssertionError("the server kept its old binlogs")


def test_when_needed_re_snapshots_a_purged_position_by_itself(tmp_path, private_mariadb):
    url = private_mariadb.database("erp")
    execute(url, CUSTOMER_DDL, many=(INSERT_CUSTOMER, customer_rows(range(1, 11))))
    document = binlog_config(tmp_path / "state", url, sink={"type": "avro_files", "directory": str(tmp_path / "out")},
                             snapshot="when_needed")
    agent = _agent(document)
    agent.run_pass()                                       # the initial snapshot: 10 rows
    agent.stop()
    execute(url, "UPDATE erp_customer SET credit_lim = 5 WHERE cust_no = 'C-00002'",
            many=(INSERT_CUSTOMER, customer_rows(range(11, 16))))
    purge_all_but_the_newest_binlog(private_mariadb.server_url)
    agent = _agent(document)
    try:
        agent.run_pass()
        status = agent.queue.status()["customers"]
        rows = agent.queue._conn().execute("SELECT key, operation FROM outbox ORDER BY seq").fetchall()
    finally:
        agent.stop()
    assert status["capture_state"] == "ok"
    assert len(rows) == 25 and {op for _, op in rows[10:]} == {"snapshot"}, "a second full snapshot covers the gap"
    assert sorted(k for k, _ in rows[10:]) == [f"C-{n:05d}" for n in range(1, 16)]


def test_check_says_what_to_fix(tmp_path, private_mariadb):
    url = private_mariadb.database("erp")
    execute(url, "CREATE TABLE no_pk (a INT, b VARCHAR(10))", "CREATE USER 'cdc'@'%' IDENTIFIED BY 'pw'",
            "GRANT SELECT ON erp.* TO 'cdc'@'%'", "SET GLOBAL binlog_row_image = 'MINIMAL'",
            "SET GLOBAL binlog_expire_logs_seconds = 7200")
    context = AdapterContext(name="erp", state_dir=tmp_path / "state", schemas=None)
    source = BinlogSource({"url": url.replace("root@", "cdc:pw@"), "table": "no_pk"}, context)
    try:
        problems = source.check()
    finally:
        source.close()
    text = "\n".join(problems)
    assert "binlog_row_image=FULL" in text and "REPLICATION SLAVE" in text and "BINLOG MONITOR" in text
    assert "no primary key" in text and "warning: binlogs expire after 2.0 h" in text
    assert "cdc:pw" not in text, "no secret in the advice"
    streaming = BinlogSource({"url": url, "table": "no_pk", "snapshot": "none"}, context)
    try:
        with pytest.raises(ConfigError, match="binlog_row_image=FULL"):
            list(streaming.batches(None))         # the route stops rather than capture half images
    finally:
        streaming.close()


def test_the_documented_grants_are_enough(tmp_path, private_mariadb):
    url = private_mariadb.database("erp")
    execute(url, CUSTOMER_DDL, many=(INSERT_CUSTOMER, customer_rows(range(1, 4))))
    execute(url, "CREATE USER 'outpost'@'%' IDENTIFIED BY 's3cret'",
            "GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO 'outpost'@'%'", "GRANT SELECT ON erp.* TO 'outpost'@'%'")
    context = AdapterContext(name="erp", state_dir=tmp_path / "state", schemas=None)
    source = BinlogSource({"url": url.replace("root@", "outpost:s3cret@"), "table": "erp_customer"}, context)
    try:
        assert [p for p in source.check() if not p.startswith("warning:")] == []
        records, checkpoint = [], None
        for batch in source.batches(None):
            records, checkpoint = records + batch.records, batch.checkpoint
        execute(url, "DELETE FROM erp_customer WHERE cust_no = 'C-00001'")
        records += [r for b in source.batches(checkpoint) for r in b.records]
    finally:
        source.close()
    assert [(r.operation, (r.after or r.before)["cust_no"]) for r in records] == [
        ("snapshot", "C-00001"), ("snapshot", "C-00002"), ("snapshot", "C-00003"), ("delete", "C-00001")]


def test_table_ids_reused_after_a_server_restart_are_not_confused(tmp_path, private_mariadb):
    """MariaDB numbers table-map ids from scratch after a restart, and the old binlog ends
    without a real rotate: another table may carry our table's old id in the new file."""
    url = private_mariadb.database("erp")
    execute(url, CUSTOMER_DDL, "CREATE TABLE other (x INT PRIMARY KEY, y VARCHAR(20))")
    file, pos = fetch(private_mariadb.server_url, "SHOW MASTER STATUS")[0][:2]
    execute(url, many=(INSERT_CUSTOMER, customer_rows([1])))
    private_mariadb.stop()
    private_mariadb.start()
    execute(url, "INSERT INTO other VALUES (7, 'not ours')")   # no DDL after the restart
    execute(url, many=(INSERT_CUSTOMER, customer_rows([2])))
    context = AdapterContext(name="erp", state_dir=tmp_path / "state", schemas=None)
    source = BinlogSource({"url": url, "table": "erp_customer", "snapshot": "none"}, context)
    try:
        batches = list(source.batches({"v": 1, "file": file, "pos": int(pos), "rows": 0, "gtid": None,
                                       "snapshot": None, "snap_done": 0}))
    finally:
        source.close()
    records = [r for b in batches for r in b.records]
    assert [(r.operation, r.after) for r in records] == [
        ("create", {**records[0].after, "cust_no": "C-00001"}), ("create", {**records[1].after, "cust_no": "C-00002"})]
    assert set(records[1].after) == set(records[0].after), "decoded with our table's own columns"
    assert batches[-1].checkpoint["file"] != file, "the position moved to the new binlog file"
