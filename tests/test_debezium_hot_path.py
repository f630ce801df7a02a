"""The Debezium route's per-record hot path, made cheaper, must give exactly what it gave
before: the same positions (hence event ids), values, operations and facts for the same
engine output. The reference below is the conversion as it was before the hot path was
tuned (json.loads/json.dumps per key, destination read per record); no JVM, no database."""
import datetime as dt
import hashlib
import json
import random

import pytest

from adapters.debezium.events import _canonical_key, position, to_records

_OPS = {"c": "create", "u": "update", "d": "delete", "r": "snapshot"}
_FIELDS = ("lsn", "txId", "change_lsn", "commit_lsn", "event_serial_no", "scn", "commit_scn", "file", "pos", "row",
           "gtid")


def _reference_key(key):
    if not key:
        return "{}"
    try:
        return json.dumps(json.loads(key), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except ValueError:
        return key


def _reference_position(source, key, op="c", after=None):
    if op == "r":
        image = json.dumps(after, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return f"snapshot/{_reference_key(key)}/{hashlib.sha256(image.encode()).hexdigest()[:20]}"
    parts = [f"{name}={source[name]}" for name in _FIELDS if source.get(name) is not None]
    return "/".join(parts + [_reference_key(key)])


def _reference_table(source):
    return ".".join(p for p in (source.get("schema") or source.get("db"), source.get("table")) if p)


# Keys as Kafka's JsonConverter writes them, and as other writers might: text with quotes,
# backslashes, control characters, non-Latin scripts, surrogate pairs; integers, big
# integers, floats, booleans, nulls, several columns in any order, nested, not JSON at all.
KEYS = ['{"cust_no":"C-00000001"}', '{"id":1}', '{"id": 1}', '{"id":-9223372036854775808}',
        '{"id":123456789012345678901234567890}', '{"b":2,"a":1}', '{"z":"x","a":"y","m":3}',
        '{"k":"quote \\" backslash \\\\ slash / tab \\t nl \\n cr \\r"}', '{"k":"\\u0001\\u001F\\u007f"}',
        '{"k":"Grüße 日本語 😀 \\ud83d\\ude00"}', '{"k":"\\u2028\\u2029"}', '{"é":"accent name"}',
        '{"k":1.5}', '{"k":1.0E10}', '{"k":true}', '{"k":null}', '{"k":false,"j":0}', '{"k":{"n":1}}',
        '{"k":[1,"a"]}', '{}', '[1,2]', '"text"', '17', 'NaN', '{"k":NaN}', 'not json', '{"k":', None, '',
        '{"a":"1","a":"2"}', '{"B":1,"a":2,"_":3,"1":4}']


@pytest.mark.parametrize("key", KEYS)
def test_canonical_keys_are_those_of_json_dumps(key):
    assert _canonical_key(key) == _reference_key(key)


def test_random_keys_are_canonical_as_before():
    rng = random.Random(11)
    alphabet = ["a", "Z", "0", " ", '"', "\\", "/", "\n", "\x00", "\x1f", "\x7f", "é", "日", "😀", "\u2028"]
    for _ in range(3000):
        row = {}
        for _ in range(rng.randint(1, 4)):
            name = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4)))
            row[name] = rng.choice([
                "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8))), rng.randint(-2**70, 2**70),
                rng.random() * 10 ** rng.randint(-5, 20), rng.choice([True, False, None])])
        for key in (json.dumps(row), json.dumps(row, ensure_ascii=False, separators=(",", ":"))):
            assert _canonical_key(key) == _reference_key(key), key


def _event(op, after, before=None, **source):
    base = {"version": "3.6.3.Final", "connector": "postgresql", "name": "x", "ts_ms": 1796194650750,
            "snapshot": None, "db": "erp", "sequence": '[null,"4657229056"]', "ts_us": 1796194650750519,
            "ts_ns": 1796194650750519000, "schema": "public", "table": "t", "txId": 9011, "lsn": 4657229056,
            "xmin": None}
    return json.dumps({"before": before, "after": after, "source": {**base, **source}, "transaction": None,
                       "op": op, "ts_ms": 1796194650800})


def _corpus():
    rows = [{"id": 1, "n": "12.50", "tz": "2026-11-27T08:00:00.500000Z", "tx": "Grüße \"q\" \\"},
            {"id": 2, "n": None, "tz": None, "tx": "日本語\n"}, {"id": 3, "dbl": 0.1, "b": True, "big": "x" * 2000}]
    items = []
    for i, key in enumerate(k for k in KEYS if k is not None):
        row = rows[i % len(rows)]
        items += [("x.public.t", _event("c", row), key),
                  ("x.public.t", _event("u", {**row, "v": 2}, {**row, "v": 1}, lsn=4657229056 + i), key),
                  ("x.public.t", _event("d", None, row, txId=None), key),
                  ("x.public.t", _event("r", row, snapshot="true", lsn=None), key),
                  ("x.public.t", _event("r", row, snapshot="last"), key),
                  ("x.public.t", None, key)]
    items += [("__debezium-heartbeat.x", '{"ts_ms":1796194650750}', '{"serverName":"x"}'),
              ("x.public.t", _event("c", rows[0], schema=None, db="erp", table="t"), '{"id":1}'),
              ("x.public.t", _event("c", rows[0], schema=None, db=None), '{"id":1}'),
              ("x.public.hb", _event("u", rows[0], table="hb"), '{"id":1}'),
              ("x.public.t", json.dumps({"source": {"table": "t"}, "databaseName": "erp", "ddl": "ALTER"}), None),
              ("x.public.t", _event("c", rows[1], connector="sqlserver", lsn=None, txId=None,
                                    change_lsn="00000027:00000758:0003", commit_lsn="00000027:00000758:0005",
                                    event_serial_no=1), '{"id":2}')]
    return items


def test_records_are_those_the_reference_conversion_gave():
    kinds = {"public.t": {"n": "decimal", "tz": "timestamptz"}}
    items = _corpus()
    records, facts = to_records(items, kinds, skip={"public.hb"})
    expected = []
    for destination, value, key in items:
        if destination.startswith("__debezium-heartbeat") or value is None:
            continue
        event = json.loads(value)
        source = event.get("source") or {}
        table = _reference_table(source)
        if event.get("op") not in _OPS or table == "public.hb":
            continue
        expected.append((table, _OPS[event["op"]], _reference_position(source, key, event["op"], event.get("after"))))
    assert [(r.object, r.operation, r.position) for r in records] == expected
    assert facts["heartbeats"] == 2 and facts["snapshot"] == "last"
    assert records[0].after["tz"] == dt.datetime(2026, 11, 27, 8, 0, 0, 500000, tzinfo=dt.timezone.utc)


def test_a_heartbeat_is_known_by_its_value_when_the_destination_is_not_read():
    """The engine's consumer no longer reads each record's destination (a JNI call each)."""
    items = [(None, '{"ts_ms":1796194650750}', '{"serverName":"x"}'), (None, _event("c", {"id": 1}), '{"id":1}'),
             (None, None, '{"id":1}')]
    with_destinations = [("__debezium-heartbeat.x",) + items[0][1:], ("x.public.t",) + items[1][1:],
                         ("x.public.t",) + items[2][1:]]
    assert to_records(items, {}) == to_records(with_destinations, {})
    records, facts = to_records(items, {})
    assert [r.position for r in records] == ['lsn=4657229056/txId=9011/{"id":1}'] and facts["heartbeats"] == 1


def test_snapshot_positions_hash_the_same_image():
    row = {"b": "Grüße", "a": 1, "n": None, "f": 0.1, "nested": {"y": 1, "x": [1, "é"]}}
    for key in ('{"a":1}', '{"b":"Grüße","a":1}'):
        assert position({}, key, "r", row) == _reference_position({}, key, "r", row)
