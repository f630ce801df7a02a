"""The kafka sink against the real tansu broker and the schema-registry double.

The schema catalog (``agent.schemas``) is written in parallel, so these tests use a tiny
stand-in with the attributes the sink relies on (``by_fingerprint(fp)`` -> ``.entity``,
``.schema_json``; ``names()``; ``entity(name)``). The event bodies are real Avro, encoded
with fastavro, and the consumed messages are decoded with the schema fetched back from
the registry by the id in their Confluent header.
"""
from __future__ import annotations

import io
import json
import logging
import struct
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import fastavro
import pytest

from adapters.kafka.sink import KafkaSink
from agent.contracts import AdapterContext, QueuedEvent
from tests.support.registry_double import returns_within, silent_registry

CUSTOMER = {"type": "record", "name": "Customer", "namespace": "outpost.test",
            "fields": [{"name": "number", "type": "string"}, {"name": "name", "type": "string"}]}
MILESTONE = {"type": "record", "name": "BillingMilestone", "namespace": "outpost.test",
             "fields": [{"name": "code", "type": "string"}, {"name": "amount_cents", "type": "long"}]}


class StandInCatalog:
    """Just enough of ``agent.schemas.SchemaCatalog`` for the sink."""

    def __init__(self, *schemas: dict):
        self._by_fp, self._by_name = {}, {}
        for schema in schemas:
            parsed = fastavro.parse_schema(schema)
            fp = fastavro.schema.fingerprint(fastavro.schema.to_parsing_canonical_form(parsed),
                                             "CRC-64-AVRO")
            entry = SimpleNamespace(entity=schema["name"], schema_json=json.dumps(schema),
                                    parsed=parsed, fingerprint=fp)
            self._by_fp[fp], self._by_name[schema["name"]] = entry, entry

    def by_fingerprint(self, fp):
        return self._by_fp[fp]

    def names(self):
        return sorted(self._by_name)

    def entity(self, name):
        return self._by_name[name]


class Events:
    """Builds QueuedEvents with real Avro bodies."""

    def __init__(self, catalog: StandInCatalog):
        self.catalog, self.seq = catalog, 0

    def __call__(self, entity: str, key: str, record: dict) -> QueuedEvent:
        entry = self.catalog.entity(entity)
        body = io.BytesIO()
        fastavro.schemaless_writer(body, entry.parsed, record)
        self.seq += 1
        return QueuedEvent(seq=self.seq, event_id=f"ev-{uuid.uuid4().hex}", route="r", entity=entity,
                           key=key, schema_fingerprint=entry.fingerprint, body=body.getvalue(),
                           correlation_id=f"corr-{self.seq}", operation="update",
                           enqueued_at=time.time())


@pytest.fixture
def catalog():
    return StandInCatalog(CUSTOMER, MILESTONE)


@pytest.fixture
def make_sink(broker, registry, catalog, tmp_path):
    prefix = f"t{uuid.uuid4().hex[:8]}"
    sinks = []

    def make(options=None, registry_conf=None, **fabric):
        fabric = {"kafka": {"bootstrap.servers": broker.bootstrap},
                  "schema_registry": {"url": registry.url, **(registry_conf or {})},
                  "topic_template": prefix + ".{entity}", **fabric}
        ctx = AdapterContext(name="fabric", state_dir=tmp_path, schemas=catalog, fabric=fabric,
                             log=logging.getLogger("test.kafka_sink"))
        sink = KafkaSink(options or {}, ctx)
        sink.open()
        sinks.append(sink)
        return sink

    make.prefix = prefix
    yield make
    for sink in sinks:
        sink.close()


def decode(registry, catalog, msg):
    magic, schema_id = struct.unpack(">bI", msg.value()[:5])
    assert magic == 0
    schema = fastavro.parse_schema(json.loads(registry.schemas_by_id[schema_id]["schema"]))
    return schema_id, fastavro.schemaless_reader(io.BytesIO(msg.value()[5:]), schema)


def ids_in_order(messages):
    """Event ids per key, first occurrence only: a retry after a timeout may duplicate."""
    per_key, seen = {}, set()
    for m in messages:
        event_id = dict(m.headers())["event_id"].decode()
        if event_id not in seen:
            seen.add(event_id)
            per_key.setdefault(m.key().decode(), []).append(event_id)
    return per_key


def expected_order(events):
    per_key = {}
    for e in events:
        per_key.setdefault(e.key, []).append(e.event_id)
    return per_key


def test_delivers_confluent_framed_events_with_key_and_headers(make_sink, broker, registry, catalog):
    sink, ev = make_sink(), Events(catalog)
    customers = [ev("Customer", f"C{i % 3}", {"number": f"C{i % 3}", "name": f"name {i}"})
                 for i in range(9)]
    milestones = [ev("BillingMilestone", "P-1/M1", {"code": "P-1/M1", "amount_cents": 1250_00})]
    events = customers[:4] + milestones + customers[4:]

    report = sink.write(events)

    assert report.delivered == {e.event_id for e in events}
    assert report.rejected == {} and report.transient_error is None
    messages = broker.consume(f"{make_sink.prefix}.customer", expected=9)
    assert len(messages) == 9
    assert len(broker.admin.list_topics(f"{make_sink.prefix}.customer").topics[
        f"{make_sink.prefix}.customer"].partitions) == 3
    by_id = {e.event_id: e for e in customers}
    for msg in messages:
        headers = {k: v.decode() for k, v in msg.headers()}
        event = by_id[headers["event_id"]]
        schema_id, record = decode(registry, catalog, msg)
        assert registry.subjects[f"{make_sink.prefix}.customer-value"] == [schema_id]
        assert msg.key().decode() == event.key == record["number"]
        assert headers == {"event_id": event.event_id, "correlation_id": event.correlation_id,
                           "entity": "Customer", "operation": "UPDATE"}, "the metadata's case"
    assert ids_in_order(messages) == expected_order(customers)

    [milestone] = broker.consume(f"{make_sink.prefix}.billing_milestone", expected=1)
    assert decode(registry, catalog, milestone)[1] == {"code": "P-1/M1", "amount_cents": 125000}


def test_rejected_subject_only_rejects_that_entity(make_sink, broker, registry, catalog):
    registry.reject_subjects.add(f"{make_sink.prefix}.customer-value")
    sink, ev = make_sink(), Events(catalog)
    customers = [ev("Customer", "C1", {"number": "C1", "name": "x"}) for _ in range(2)]
    milestone = ev("BillingMilestone", "M1", {"code": "M1", "amount_cents": 1})

    report = sink.write([customers[0], milestone, customers[1]])

    assert report.delivered == {milestone.event_id}
    assert set(report.rejected) == {e.event_id for e in customers}
    assert all(f"{make_sink.prefix}.customer-value" in reason for reason in report.rejected.values())
    assert report.transient_error is None
    # One refusal per batch is enough: the second customer did not ask the registry again.
    assert registry.requests.count(
        ("POST", f"/subjects/{make_sink.prefix}.customer-value/versions")) == 1


def test_frozen_broker_keeps_events_queued_then_delivers_them_in_order(make_sink, broker, catalog):
    sink, ev = make_sink({"delivery_timeout_s": 2}), Events(catalog)
    warm = ev("Customer", "C0", {"number": "C0", "name": "warm"})
    assert sink.write([warm]).delivered == {warm.event_id}   # topic, schema and connection ready
    events = [ev("Customer", f"C{i % 2}", {"number": f"C{i % 2}", "name": str(i)}) for i in range(6)]

    with broker.outage():
        started = time.monotonic()
        report = sink.write(events)
        elapsed = time.monotonic() - started
    assert report.delivered == set() and report.rejected == {}
    assert report.transient_error and "6 event(s) still queued" in report.transient_error
    assert elapsed < 2 + 6

    # as the delivery loop does: write what is still pending again until acked (a broker
    # just thawed on a busy machine may need more than one short delivery timeout)
    pending, delivered = list(events), set()
    for _ in range(5):
        retry = sink.write(pending)
        delivered |= retry.delivered
        pending = [e for e in pending if e.event_id not in delivered]
        if not pending:
            break
    assert delivered == {e.event_id for e in events}, retry.transient_error
    messages = broker.consume(f"{make_sink.prefix}.customer", timeout=30)
    assert ids_in_order(messages) == expected_order([warm] + events)


def test_unregistered_schema_without_auto_register_is_rejected(make_sink, registry, catalog):
    sink, ev = make_sink({"auto_register": False}), Events(catalog)
    event = ev("Customer", "C1", {"number": "C1", "name": "x"})

    report = sink.write([event])

    assert report.delivered == set() and report.transient_error is None
    assert f"{make_sink.prefix}.customer-value" in report.rejected[event.event_id]
    assert registry.subjects == {}


def test_unreachable_registry_is_transient(make_sink, registry, catalog):
    sink, ev = make_sink(registry_conf={"max.retries": 0}), Events(catalog)
    registry.stop()
    events = [ev("Customer", "C1", {"number": "C1", "name": "x"}),
              ev("BillingMilestone", "M1", {"code": "M1", "amount_cents": 1})]

    report = sink.write(events)

    assert report.delivered == set() and report.rejected == {}
    assert "schema registry unreachable" in report.transient_error


def test_check_reports_incompatible_schema_and_unreachable_services(make_sink, registry, catalog):
    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

    sink = make_sink()
    assert sink.check() == []
    # An earlier version without "name": the catalog's Customer adds it with no default,
    # so it cannot read data written with the earlier one (not BACKWARD compatible).
    old = {**CUSTOMER, "fields": CUSTOMER["fields"][:1]}
    SchemaRegistryClient({"url": registry.url}).register_schema(
        f"{make_sink.prefix}.customer-value", Schema(json.dumps(old), "AVRO"))
    [problem] = sink.check()
    assert "Customer" in problem and f"{make_sink.prefix}.customer-value" in problem

    registry.stop()
    offline = make_sink({"delivery_timeout_s": 2}, registry_conf={"max.retries": 0},
                        kafka={"bootstrap.servers": "127.0.0.1:1"})
    problems = offline.check()
    assert any("Kafka brokers 127.0.0.1:1 unreachable" in p for p in problems)
    assert any("schema registry" in p and "unreachable" in p for p in problems)


def test_unreachable_broker_at_open_does_not_block_and_is_transient(make_sink, catalog):
    started = time.monotonic()
    sink = make_sink({"delivery_timeout_s": 1}, kafka={"bootstrap.servers": "127.0.0.1:1"})
    assert time.monotonic() - started < 1
    ev = Events(catalog)
    events = [ev("Customer", "C1", {"number": "C1", "name": "x"}),
              ev("Customer", "C2", {"number": "C2", "name": "y"})]

    report = sink.write(events)

    assert report.delivered == set() and report.rejected == {}
    assert "2 event(s) still queued" in report.transient_error
    assert time.monotonic() - started < 1 + 5 + 3


def test_check_names_a_sasl_refusal_and_a_registry_401_as_such(make_sink):
    """The client knew it was authentication (its log lines say so) while the error said
    "Broker transport failure"; a registry answering 401 is reachable and refusing."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Refusing(BaseHTTPRequestHandler):
        def do_GET(self):
            body = b'{"error_code": 40101, "message": "Unauthorized"}'
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        sink = make_sink({"delivery_timeout_s": 3}, registry_conf={"url": f"http://127.0.0.1:{server.server_port}",
                                                                    "basic.auth.user.info": "outpost:wrong-pw"})
        sink._kafka_conf.update({"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN",
                                 "sasl.username": "outpost", "sasl.password": "wrong-pw"})
        problems = sink.check()
    finally:
        server.shutdown()
    (broker,) = [p for p in problems if p.startswith("Kafka brokers")]
    assert "refused the authentication" in broker and "unreachable" not in broker, broker
    assert "sasl.username and sasl.password" in broker and "wrong-pw" not in broker
    (registry,) = [p for p in problems if p.startswith("schema registry")]
    assert "refused the credentials (HTTP 401" in registry and "basic.auth.user.info" in registry, registry


def test_delivering_never_loads_the_registry_client_into_the_process(broker, registry, tmp_path):
    """The registry client (HTTP, OAuth, JOSE: ~20 MB resident) is imported only by the
    short-lived lookup helper; a process that writes events stays without it."""
    import subprocess
    import sys
    script = f"""
import json, logging, sys
from adapters.kafka.sink import KafkaSink
from agent.contracts import AdapterContext
from tests.test_kafka_sink import CUSTOMER, MILESTONE, Events, StandInCatalog
catalog = StandInCatalog(CUSTOMER, MILESTONE)
fabric = {{"kafka": {{"bootstrap.servers": {broker.bootstrap!r}}}, "schema_registry": {{"url": {registry.url!r}}},
          "topic_template": "nohelper.{{entity}}"}}
sink = KafkaSink({{}}, AdapterContext(name="fabric", state_dir={str(tmp_path)!r}, schemas=catalog, fabric=fabric,
                                    log=logging.getLogger("t")))
ev = Events(catalog)
events = [ev("Customer", "C1", {{"number": "C1", "name": "x"}}), ev("BillingMilestone", "M1", {{"code": "M1", "amount_cents": 1}})]
sink.screen(events)
report = sink.write(events)
sink.close()
print(json.dumps({{"delivered": len(report.delivered), "loaded": "confluent_kafka.schema_registry" in sys.modules}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=str(Path(__file__).resolve().parent.parent))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"delivered": 2, "loaded": False}
    assert sorted(registry.subjects) == ["nohelper.billing_milestone-value", "nohelper.customer-value"]


def test_a_registry_that_never_answers_keeps_events_queued_instead_of_hanging(make_sink, catalog):
    """The registry client has no request timeout by default: an accepted connection that
    never answers used to hold the delivery loop forever."""
    with silent_registry() as url:
        sink, ev = make_sink({"delivery_timeout_s": 2}, registry_conf={"url": url, "max.retries": 0}), Events(catalog)
        report = returns_within(60, lambda: sink.write([ev("Customer", "C1", {"number": "C1", "name": "x"})]))
    assert report.delivered == set() and report.rejected == {}
    assert "schema registry unreachable: no answer within 2s" in report.transient_error


def test_registry_settings_the_client_refuses_keep_events_queued_and_are_named(make_sink, catalog):
    sink, ev = make_sink(registry_conf={"no.such.setting": "1"}), Events(catalog)

    report = sink.write([ev("Customer", "C1", {"number": "C1", "name": "x"})])

    assert report.delivered == set() and report.rejected == {}
    assert "fabric.schema_registry is refused by the client" in report.transient_error
    assert "no.such.setting" in report.transient_error
    assert any("no.such.setting" in p for p in sink.check())


@pytest.mark.parametrize("in_process", [False, True], ids=["helper", "frozen build, in process"])
def test_the_registry_helper_gives_up_on_a_registry_that_never_answers(in_process, monkeypatch):
    """Also without the parent's guard: the frozen build asks in process, and a helper
    whose parent was killed has nobody to stop it."""
    import adapters.kafka.registry_helper as helper

    monkeypatch.setattr(helper, "_IN_PROCESS", in_process)
    with silent_registry() as url:
        asking = helper.RegistryHelper({"url": url, "max.retries": 0}, True, 2.0)
        asking.timeout_s = 60        # the parent's guard out of the way: the request timeout must end it
        (answer,) = returns_within(60, lambda: asking.ids([("s-value", json.dumps(CUSTOMER))]))
    assert isinstance(answer, helper.Refusal) and answer.status is None
    assert "timed out" in answer.message.lower() or "timeout" in answer.message.lower(), answer.message
