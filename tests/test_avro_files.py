"""The avro_files sink on real files: atomic finalisation, rotation, crash salvage."""
import datetime as dt
import time
from decimal import Decimal

import fastavro

from adapters.avro_files.sink import AvroFilesSink
from agent.contracts import AdapterContext, QueuedEvent
from agent.schemas import SchemaCatalog

CATALOG = SchemaCatalog.load()
CUSTOMER = CATALOG.entity("Customer")


def queued(n: int, limit: str = "10.00") -> QueuedEvent:
    now = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.timezone.utc)
    payload = {"customer_number": f"C-{n}", "name": f"Customer {n}", "legal_entity": "US01", "country": "US",
               "currency": "USD", "tax_jurisdiction": "US-NY", "credit_limit": Decimal(limit), "status": "active",
               "updated_at": now}
    event = {"metadata": {"event_id": f"id-{n}", "correlation_id": f"id-{n}", "causation_id": None,
                          "source": {"system": "erp", "object": "cust", "position": str(n)}, "operation": "UPDATE",
                          "occurred_at": now, "captured_at": now, "schema_version": CUSTOMER.version},
             "key": f"C-{n}", "before": None, "after": payload}
    return QueuedEvent(seq=n, event_id=f"id-{n}", route="r", entity="Customer", key=f"C-{n}",
                       schema_fingerprint=CUSTOMER.fingerprint, body=CUSTOMER.encode(event), correlation_id=f"id-{n}",
                       operation="update", enqueued_at=time.time())


def make_sink(tmp_path, **options) -> AvroFilesSink:
    sink = AvroFilesSink({"directory": "outbox", **options},
                         AdapterContext(name="files", state_dir=tmp_path, schemas=CATALOG))
    sink.open()
    return sink


def read_all(folder):
    records = []
    for path in sorted(folder.glob("*.avro")):
        with open(path, "rb") as handle:
            records.extend(fastavro.reader(handle))
    return records


def test_files_appear_only_when_finished(tmp_path):
    sink = make_sink(tmp_path)
    report = sink.write([queued(1), queued(2, "99999.99")])
    assert report.delivered == {"id-1", "id-2"} and not report.rejected
    folder = tmp_path / "outbox" / "customer"
    assert list(folder.glob("*.avro")) == [], "an open file must not be visible under its final name"
    assert len(list(folder.glob(".*.avro.tmp"))) == 1
    sink.close()
    records = read_all(folder)
    assert [r["key"] for r in records] == ["C-1", "C-2"]
    assert records[1]["after"]["credit_limit"] == Decimal("99999.99")
    assert list(folder.glob(".*.tmp")) == []


def test_rotation_by_size_and_by_age(tmp_path):
    sink = make_sink(tmp_path, rotate_bytes=600, rotate_seconds=1)
    for n in range(10):
        sink.write([queued(n)])
    folder = tmp_path / "outbox" / "customer"
    by_size = len(list(folder.glob("*.avro")))
    assert by_size >= 2, "small rotate_bytes must have produced several files"
    sink.write([queued(100)])
    time.sleep(2.5)                      # no more writes: the age timer finalises the file
    assert list(folder.glob(".*.tmp")) == []
    assert len(read_all(folder)) == 11
    sink.close()


def test_a_file_cut_short_by_a_crash_is_salvaged(tmp_path):
    sink = make_sink(tmp_path, codec="null")
    sink.write([queued(1)])
    sink.write([queued(2)])
    temp = next((tmp_path / "outbox" / "customer").glob(".*.tmp"))
    with open(temp, "ab") as handle:      # a torn block, as if the process died mid-write
        handle.write(b"\x06\x80\x01garbage")
    sink._closing.set()                   # the crashed process's threads are gone, and it
    sink._timer.join()                    # never finalised its file
    restarted = make_sink(tmp_path)
    restarted.close()
    assert [r["key"] for r in read_all(tmp_path / "outbox" / "customer")] == ["C-1", "C-2"]
    assert list((tmp_path / "outbox" / "customer").glob(".*")) == []


def test_unwritable_outbox_is_transient_and_acks_nothing(tmp_path):
    sink = make_sink(tmp_path)
    (tmp_path / "outbox" / "customer").write_text("a file where the entity folder should be")
    report = sink.write([queued(1)])
    assert report.transient_error and not report.delivered
    sink.close()


def test_sizes_and_durations_as_the_example_config_writes_them(tmp_path):
    """``rotate_bytes: 64MB`` / ``rotate_seconds: 5m`` passed ``outpost check`` and then
    crashed ``run`` (the sink re-read the raw option with int()); the agent must build
    the sink from the options the config check validated."""
    from agent.config import parse
    from agent.runtime import Agent
    config = parse({"state_dir": str(tmp_path / "state"),
                    "mappings": {"c": {"entity": "Customer", "fields": {
                        "customer_number": "id", "name": "id", "legal_entity": "id", "currency": "id",
                        "tax_jurisdiction": "id", "updated_at": "id"}}},
                    "sources": {"db": {"type": "sql_poll", "url": f"sqlite:///{tmp_path / 'db.sqlite'}"}},
                    "sinks": {"files": {"type": "avro_files", "directory": "outbox", "rotate_bytes": "64MB",
                                        "rotate_seconds": "5m"}},
                    "routes": {"r": {"source": "db", "sink": "files", "mapping": "c",
                                     "capture": {"table": "t", "cursor": "id"}}}})
    agent = Agent(config)
    agent.build()
    try:
        sink = agent.deliveries["files"].sink
        assert (sink.rotate_bytes, sink.rotate_seconds) == (64 << 20, 300.0)
    finally:
        agent.stop()


def test_acked_events_left_in_a_temp_file_by_a_kill_show_without_new_events(tmp_path):
    """A SIGKILL after the last batch was acked leaves it in the killed process's temp file;
    the restarted agent salvaged it only when it next had something to write, so with a
    quiet source the acked events stayed hidden from readers of the outbox (the binlog
    recovery test lost 390-470 of them that way). Real agent processes, a real SQLite
    source, real files."""
    import sqlite3

    import yaml

    from tests.support.agent_process import AgentProcess, route_status, wait_for
    database = tmp_path / "erp.db"
    with sqlite3.connect(database) as db:
        db.execute("CREATE TABLE cust (id INTEGER PRIMARY KEY, curr TEXT, updated_at DATETIME)")
        db.executemany("INSERT INTO cust VALUES (?, 'EUR', '2026-01-01 10:00:00')", [(n,) for n in range(50)])
    config = tmp_path / "outpost.yaml"
    config.write_text(yaml.safe_dump({
        "state_dir": str(tmp_path / "state"),
        "mappings": {"c": {"entity": "Customer", "fields": {
            "customer_number": "id", "name": "id", "legal_entity": "id", "currency": "curr",
            "tax_jurisdiction": "id", "updated_at": "updated_at"}}},
        "sources": {"db": {"type": "sql_poll", "url": f"sqlite:///{database}", "lag_seconds": 0}},
        "sinks": {"files": {"type": "avro_files", "directory": str(tmp_path / "outbox"), "rotate_seconds": "1h"}},
        "routes": {"r": {"source": "db", "sink": "files", "mapping": "c", "schedule": {"every": "0.2s"},
                         "capture": {"table": "cust", "cursor": "updated_at"}}}}))
    folder = tmp_path / "outbox" / "customer"
    agent = AgentProcess(config, tmp_path / "agent.log").start()
    try:
        assert wait_for(lambda: route_status(tmp_path / "state", "r").get("published_total") == 50, 60), agent.log()
        agent.kill()
        assert len(list(folder.glob(".*.avro.tmp"))) == 1 and not list(folder.glob("*.avro"))
        agent.start()
        shown = wait_for(lambda: not list(folder.glob(".*.avro.tmp")), 30)
        assert shown and len(read_all(folder)) == 50, agent.log()
    finally:
        agent.terminate(30)
