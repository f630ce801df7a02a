"""The test services themselves work: the real tansu broker and the registry double,
driven by the real confluent-kafka producer, consumer and SchemaRegistryClient."""
from __future__ import annotations

import json
import uuid

import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

V1 = json.dumps({"type": "record", "name": "Thing", "namespace": "t",
                 "fields": [{"name": "id", "type": "string"}]})
# Adds a field with a default: a v2 reader can read v1 data (BACKWARD compatible).
V2 = json.dumps({"type": "record", "name": "Thing", "namespace": "t",
                 "fields": [{"name": "id", "type": "string"},
                            {"name": "note", "type": ["null", "string"], "default": None}]})
# A new required field without default: v3 cannot read v2 data.
V3 = json.dumps({"type": "record", "name": "Thing", "namespace": "t",
                 "fields": [{"name": "id", "type": "string"},
                            {"name": "amount", "type": "long"}]})


def test_broker_round_trip_with_idempotent_producer(broker):
    topic = f"smoke-{uuid.uuid4().hex[:8]}"
    broker.create_topic(topic, partitions=3)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True,
                         "acks": "all"})
    errors = []
    for i in range(20):
        producer.produce(topic, key=f"k{i % 4}", value=f"v{i}".encode(),
                         headers=[("event_id", f"e{i}".encode())],
                         on_delivery=lambda err, msg: err and errors.append(err))
    assert producer.flush(15) == 0
    assert errors == []

    messages = broker.consume(topic, timeout=30, expected=20)
    assert sorted(m.value() for m in messages) == sorted(f"v{i}".encode() for i in range(20))
    per_key: dict[bytes, list[bytes]] = {}
    for m in messages:
        per_key.setdefault(m.key(), []).append(m.value())
    assert per_key[b"k1"] == [b"v1", b"v5", b"v9", b"v13", b"v17"]
    assert dict(messages[0].headers())["event_id"].startswith(b"e")


def test_consume_without_expected_stops_at_end(broker):
    topic = f"smoke-{uuid.uuid4().hex[:8]}"
    broker.create_topic(topic, partitions=2)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True})
    producer.produce(topic, key="a", value=b"1")
    assert producer.flush(15) == 0
    assert [m.value() for m in broker.consume(topic, timeout=20)] == [b"1"]


def test_registry_double_register_lookup_and_reject(registry):
    client = SchemaRegistryClient({"url": registry.url})
    first = client.register_schema("things-value", Schema(V1, "AVRO"))
    assert SchemaRegistryClient({"url": registry.url}).register_schema(
        "things-value", Schema(V1, "AVRO")) == first
    assert registry.schemas_by_id[first]["schema"] == V1

    found = client.lookup_schema("things-value", Schema(V1, "AVRO"))
    assert (found.schema_id, found.version) == (first, 1)
    assert client.get_schema(first).schema_str == V1
    assert client.get_subjects() == ["things-value"]

    with pytest.raises(SchemaRegistryError) as missing:
        SchemaRegistryClient({"url": registry.url}).lookup_schema("things-value", Schema(V2, "AVRO"))
    assert missing.value.http_status_code == 404 and missing.value.error_code == 40403
    with pytest.raises(SchemaRegistryError) as no_subject:
        client.lookup_schema("nothing-value", Schema(V1, "AVRO"))
    assert no_subject.value.error_code == 40401

    assert client.test_compatibility("things-value", Schema(V2, "AVRO")) is True
    second = client.register_schema("things-value", Schema(V2, "AVRO"))
    assert second != first
    assert client.get_versions("things-value") == [1, 2]
    latest = client.get_latest_version("things-value")
    assert (latest.version, latest.schema_id, latest.schema.schema_str) == (2, second, V2)

    assert client.test_compatibility("things-value", Schema(V3, "AVRO")) is False
    with pytest.raises(SchemaRegistryError) as incompatible:
        client.register_schema("things-value", Schema(V3, "AVRO"))
    assert incompatible.value.http_status_code == 409

    registry.reject_subjects.add("others-value")
    with pytest.raises(SchemaRegistryError) as rejected:
        client.register_schema("others-value", Schema(V1, "AVRO"))
    assert rejected.value.http_status_code == 409 and "others-value" in rejected.value.error_message
    # Same schema text under another subject keeps its global id, as with Confluent.
    assert client.register_schema("copies-value", Schema(V1, "AVRO")) == first
