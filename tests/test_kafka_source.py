"""The kafka source against the real tansu broker: offsets move only once a batch is
durable (delivery invariant 2), evolution is resolved against the canonical schema.
The registry is the HTTP double of ``tests/support/registry_double.py`` (no registry
server can run here)."""
import copy
import io
import json
import logging
import uuid

from confluent_kafka.schema_registry import Schema
from fastavro import parse_schema, schemaless_writer

from adapters.kafka.source import KafkaSource
from agent.contracts import AdapterContext
from tests.support.inbound import CATALOG, CUSTOMER, TANSU_CONSUMER, FabricProducer, customer, event
from tests.support.registry_double import returns_within, silent_registry


def source(broker, registry, topic, group, registry_url=None):
    context = AdapterContext(name="fabric_in", state_dir=None, schemas=CATALOG, log=logging.getLogger("test.src"),
                             fabric={"kafka": {"bootstrap.servers": broker.bootstrap},
                                     "schema_registry": {"url": registry_url or registry.url}})
    return KafkaSource({"topics": [topic], "group_id": group, "poll_timeout_s": 0.5, "consumer": TANSU_CONSUMER},
                       context)


def first_batch(src, checkpoint, runs=20):
    """A run may end before the first fetch after a (re)join: the scheduler just runs it again."""
    for _ in range(runs):
        batches = src.batches(checkpoint)
        batch = next((b for b in batches if b.records), None)
        if batch is not None:
            return batches, batch
    raise AssertionError("no batch")


def test_offsets_move_only_after_the_batch_is_durable(broker, registry):
    topic, group = f"src{uuid.uuid4().hex[:8]}.customer", f"g{uuid.uuid4().hex[:8]}"
    broker.create_topic(topic, partitions=1)
    fabric = FabricProducer(broker.bootstrap, registry.url, topic)
    fabric.send([event(customer(f"C-{n}"), operation="CREATE") for n in range(5)])
    src = source(broker, registry, topic, group)
    try:
        batches, batch = first_batch(src, None)
        assert [r.after["offset"] for r in batch.records] == [0, 1, 2, 3, 4]
        batches.close()                   # the queue commit failed: the batch is not durable
        batches, again = first_batch(src, None)
        assert [r.after["offset"] for r in again.records] == [0, 1, 2, 3, 4], "read again, nothing lost"
        batches.close()                   # this time the commit succeeded, then the run stopped
        assert list(src.batches(again.checkpoint)) == [], "covered by the checkpoint: stored, not re-read"
    finally:
        src.close()                       # commits the stored offsets
    fabric.send([event(customer("C-5"), operation="CREATE")])
    later = source(broker, registry, topic, group)
    try:
        batches, batch = first_batch(later, None)
        assert [r.after["offset"] for r in batch.records] == [5], "the group resumes after the stored offsets"
        batches.close()
    finally:
        later.close()


def test_an_older_writer_schema_is_resolved_to_the_current_one(broker, registry):
    topic = f"src{uuid.uuid4().hex[:8]}.customer"
    broker.create_topic(topic, partitions=1)
    older = copy.deepcopy(CUSTOMER.schema)     # a producer still on a version without 'status'
    for image in (f for f in older["fields"] if f["name"] == "before"):
        record = image["type"][1]
        record["fields"] = [f for f in record["fields"] if f["name"] != "status"]
    fabric = FabricProducer(broker.bootstrap, registry.url, topic)
    older_id = fabric.registry.register_schema(f"{topic}-value", Schema(json.dumps(older), "AVRO"))
    sent = event(customer("C-OLD"), operation="CREATE")
    for image in ("before", "after"):
        if sent[image]:
            sent[image] = {k: v for k, v in sent[image].items() if k != "status"}
    body = io.BytesIO()
    schemaless_writer(body, parse_schema(older), sent)
    fabric.send([], raw=[fabric.frame(body.getvalue(), schema_id=older_id)])
    src = source(broker, registry, topic, f"g{uuid.uuid4().hex[:8]}")
    try:
        batches, batch = first_batch(src, None)
        (record,) = batch.records
        batches.close()
    finally:
        src.close()
    carried = record.after
    assert carried["error"] is None and carried["entity"] == "Customer"
    assert carried["event"]["after"]["status"] is None, "the new field gets its default"
    assert "body" not in carried, "written with another schema: re-encoded, not kept"


def test_a_registry_that_never_answers_is_transient_instead_of_hanging(broker, registry, monkeypatch):
    """The registry client has no request timeout by default: a registry that accepts a
    connection and never answers used to hold the route's loop forever."""
    import pytest

    import adapters.kafka.source as source_module
    from agent.contracts import TransientError

    topic = f"src{uuid.uuid4().hex[:8]}.customer"
    broker.create_topic(topic, partitions=1)
    FabricProducer(broker.bootstrap, registry.url, topic).send([event(customer("C-1"), operation="CREATE")])
    monkeypatch.setattr(source_module, "_REGISTRY_TIMEOUT_S", 2.0, raising=False)
    with silent_registry() as url:
        src = source(broker, registry, topic, f"g{uuid.uuid4().hex[:8]}", registry_url=url)
        try:
            with pytest.raises(TransientError, match="schema registry unreachable: no answer within 2s"):
                returns_within(60, lambda: first_batch(src, None))
        finally:
            src.close()


def test_consuming_never_loads_the_registry_client_into_the_process(broker, registry):
    """The writer schemas come from the short-lived registry helper: the process that
    consumes stays without the client's HTTP, OAuth and JOSE stack."""
    import subprocess
    import sys
    from pathlib import Path

    topic = f"src{uuid.uuid4().hex[:8]}.customer"
    broker.create_topic(topic, partitions=1)
    FabricProducer(broker.bootstrap, registry.url, topic).send([event(customer("C-1"), operation="CREATE")])
    # not through this module or tests.support: they import the client themselves
    script = f"""
import json, logging, sys
from adapters.kafka.source import KafkaSource
from agent.contracts import AdapterContext
from agent.schemas import SchemaCatalog
context = AdapterContext(name="fabric_in", state_dir=None, schemas=SchemaCatalog.load(), log=logging.getLogger("t"),
                         fabric={{"kafka": {{"bootstrap.servers": {broker.bootstrap!r}}},
                                 "schema_registry": {{"url": {registry.url!r}}}}})
src = KafkaSource({{"topics": [{topic!r}], "group_id": "g-{uuid.uuid4().hex[:8]}", "poll_timeout_s": 0.5,
                   "consumer": {TANSU_CONSUMER!r}}}, context)
batch = None
for _ in range(20):
    batches = src.batches(None)
    batch = next((b for b in batches if b.records), None)
    if batch is not None:
        batches.close()
        break
src.close()
print(json.dumps({{"read": [r.after["event"]["after"]["customer_number"] for r in batch.records],
                  "loaded": "confluent_kafka.schema_registry" in sys.modules}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=str(Path(__file__).resolve().parent.parent))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"read": ["C-1"], "loaded": False}
