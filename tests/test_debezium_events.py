"""Pure parts of the ``debezium`` source: options, engine properties, Debezium JSON -> records,
failure classification. No JVM, no database (the end-to-end tests are test_debezium_*.py)."""
import datetime as dt
import json
from decimal import Decimal
from pathlib import Path

import pytest

from adapters.debezium.events import parse_notification, position, to_records
from adapters.debezium.spec import SourceOptions, engine_properties, route_key
from agent.contracts import ConfigError, TransientError

UTC = dt.timezone.utc
SOURCE = {"version": "3.6.3.Final", "connector": "postgresql", "name": "x", "ts_us": 1795778627107795,
          "snapshot": None, "schema": "public", "table": "t", "txId": 2601, "lsn": 267849232}


def _item(op, after, before=None, source=None, key='{"id":1}'):
    event = {"before": before, "after": after, "source": {**SOURCE, **(source or {})}, "op": op}
    return ("x.public.t", json.dumps(event), key)


def test_defaults_and_passthrough_properties(tmp_path):
    spec = SourceOptions(user="u", database="erp", table="erp_customer",
                         properties={"poll.interval.ms": 20, "max.batch.size": 4096})
    props = engine_properties("src", spec, tmp_path)
    assert props["converter.schemas.enable"] == "false" and props["decimal.handling.mode"] == "string"
    assert props["converter.replace.null.with.default"] == "false"
    assert props["offset.flush.interval.ms"] == "1000" and props["poll.interval.ms"] == "20"
    assert props["max.queue.size"] == str(4 * 4096), "Debezium needs the queue larger than the batch"
    assert props["table.include.list"] == "public.erp_customer" and props["snapshot.mode"] == "initial"
    assert Path(props["offset.storage.file.filename"]).parent == tmp_path / "debezium"
    assert props["slot.name"] == route_key("src", spec) == "outpost_src_erp_erp_customer"
    assert "schema.history.internal" not in props          # PostgreSQL keeps no schema history
    sqlserver = engine_properties("src", SourceOptions(connector="sqlserver", user="u", database="ERP",
                                                       table="dbo.customer", snapshot="none"), tmp_path)
    assert sqlserver["snapshot.mode"] == "no_data" and sqlserver["database.names"] == "ERP"
    assert sqlserver["schema.history.internal.file.filename"].endswith(".history.dat")


@pytest.mark.parametrize("options, message", [
    ({"connector": "mariadb", "table": "erp.t"}, "debezium-connector-mariadb"),
    ({"table": "t", "database": "d", "jvm_options": ["-XX:+UseSerialGC"]}, "garbage collector"),
    ({"table": "t", "database": "d", "heap": "lots"}, "heap size"),
])
def test_bad_options_are_refused_with_a_reason(options, message):
    with pytest.raises(ValueError, match=message):
        SourceOptions(user="u", **options)


def test_long_names_stay_within_postgres_limits():
    spec = SourceOptions(user="u", database="d" * 40, table="t" * 40)
    assert len(route_key("source", spec)) <= 55 and len(route_key("source", spec) + "_pub") <= 63


def test_values_are_converted_by_column_kind():
    kinds = {"public.t": {"n": "decimal", "ts": "timestamp", "tz": "timestamptz", "d": "date", "tm": "time"}}
    after = {"id": 1, "n": "12345.67", "dbl": 0.1, "ts": "2026-11-27T10:00:00.123456Z",
             "tz": "2026-11-27T08:00:00.500000Z", "d": "2026-11-27Z", "tm": "13:14:15.5Z", "b": True,
             "tx": "Grüße 日本語", "nul": None}
    (record,), facts = to_records([_item("c", after)], kinds)
    row = record.after
    assert row["n"] == Decimal("12345.67") and row["dbl"] == 0.1
    assert row["ts"] == dt.datetime(2026, 11, 27, 10, 0, 0, 123456) and row["ts"].tzinfo is None
    assert row["tz"] == dt.datetime(2026, 11, 27, 8, 0, 0, 500000, tzinfo=UTC)
    assert row["d"] == dt.date(2026, 11, 27) and row["tm"] == dt.time(13, 14, 15, 500000)
    assert row["b"] is True and row["tx"] == "Grüße 日本語" and row["nul"] is None
    assert record.operation == "create" and record.object == "public.t" and facts["lsn"] == 267849232
    assert record.occurred_at == dt.datetime(2026, 11, 27, 11, 23, 47, 107795, tzinfo=UTC)


def test_positions_are_deterministic_and_skip_heartbeats():
    items = [_item("u", {"id": 1, "v": 2}, {"id": 1, "v": 1}), ("__debezium-heartbeat.x", '{"ts_ms":1}', "{}"),
             _item("d", None, {"id": 1, "v": 2}, {"lsn": 267849300}), ("x.public.t", None, '{"id":1}')]
    first, facts = to_records(items, {})
    again, _ = to_records(items, {})
    assert [r.position for r in first] == [r.position for r in again]
    assert [r.operation for r in first] == ["update", "delete"] and facts["heartbeats"] == 1
    assert first[0].position == 'lsn=267849232/txId=2601/{"id":1}'


def test_snapshot_rows_keep_their_id_when_read_again_at_another_lsn():
    row = {"id": 1, "v": "a"}
    one = position({"lsn": 1, "txId": 5}, '{"id":1}', "r", row)
    assert one == position({"lsn": 99, "txId": 7}, '{"id": 1}', "r", dict(row))
    assert one != position({"lsn": 1, "txId": 5}, '{"id":1}', "r", {"id": 1, "v": "b"})


def test_notifications_become_status_fields():
    note = parse_notification("[Notification Service]  {id='4e', aggregateType='Initial Snapshot', "
                              "type='TABLE_SCAN_COMPLETED', additionalData={scanned_collection=public.t, "
                              "connector_name=k, total_rows_scanned=1400, status=SUCCEEDED}, timestamp=1}")
    assert note["kind"] == "Initial Snapshot" and note["state"] == "TABLE_SCAN_COMPLETED"
    assert note["table"] == "public.t" and note["rows"] == 1400
    assert parse_notification("Engine state has changed") is None


def test_engine_failures_are_classified():
    from adapters.debezium.source import classify_failure
    lost = classify_failure("Last recorded offset is no longer available on the server", "erp")
    assert isinstance(lost, ConfigError) and "outpost debezium reset erp" in str(lost)
    assert isinstance(classify_failure("The db history topic is missing", "erp"), ConfigError)
    assert isinstance(classify_failure("FATAL: password authentication failed for user", "erp"), ConfigError)
    assert isinstance(classify_failure("Connection refused", "erp"), TransientError)
    torn = classify_failure("Engine has failed with / java.io.StreamCorruptedException: unexpected EOF in middle of "
                            "data block", "erp")
    assert isinstance(torn, ConfigError) and "offset store corrupt" in str(torn) and "unreachable" not in str(torn)
    history = classify_failure("SchemaHistoryException: Unable to read object content <- JsonEOFException: "
                               "Unexpected end-of-input", "erp")
    assert isinstance(history, ConfigError) and "schema history" in str(history)
