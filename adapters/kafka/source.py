"""The ``kafka`` source: fabric topics -> canonical events for the local inbound queue.

A consumer group on the configured topics (connection properties from ``fabric.kafka``).
Each value is Confluent-framed Avro (magic byte 0, 4-byte registry id, body): the writer
schema is fetched from the registry by id (cached; ``registry_helper``) and the body is read with the
*current canonical schema* of its entity as the reader schema, so schema evolution is
resolved and anything that does not fit the canonical schema is caught here.

Offsets (delivery invariant 2): ``enable.auto.offset.store=false``; the offsets of a batch
are stored only when the pipeline resumes the ``batches`` generator, i.e. after the
batch committed to the local queue; librdkafka's auto commit then commits what was
stored. If the generator is closed instead (stop, quota, error) the batch's fate is read
from the queue checkpoint on the next call: covered -> store its offsets; not covered ->
the consumer is recreated and resumes from the committed offsets (the queue drops the
repeats by ``event_id``). Order: partitions are read in offset order and each batch keeps
that order, so per-key order (one key, one partition) holds.

Poison messages (no Confluent framing, unknown schema id, body that does not decode or
does not fit the canonical schema, or that the route's own validation refuses) are handed
on with ``error`` set: the pass-through translator puts them in the exception queue with
topic, partition, offset, error and the raw bytes; a copy goes to ``dead_letter_topic``
with the original headers plus ``outpost.origin`` and ``outpost.error`` (the reason). An unreachable registry or broker is transient: the run stops, nothing is
stored, and the route retries with backoff.
"""
from __future__ import annotations

import base64
import io
import json
import logging
import struct
import threading
from typing import Any, Iterator, Mapping, Optional

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from fastavro import parse_schema, schemaless_reader

from adapters.kafka.diagnose import registry_problems
from adapters.kafka.fabric import connection
from adapters.kafka.registry_helper import RegistryHelper
from adapters.kafka.spec import SourceOptions
from agent import contracts
from agent.client_logs import attach
from agent.contracts import AdapterContext, ConfigError, SourceBatch, SourceRecord, TransientError
from agent.passthrough import OPERATION_OF_SYMBOL

__all__ = ["KafkaSource", "Source"]

CHECKPOINT_VERSION = 1
_ERROR_HEADER_BYTES = 4096
_DOWN = {KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._RESOLVE}
_REGISTRY_TIMEOUT_S = 30.0


class _Writer:
    """A writer schema from the registry, parsed once; ``dropped``: its fields the canonical
    schema lacks (Avro schema resolution drops them from every event it wrote)."""

    def __init__(self, parsed: Any, entity: Optional[str], error: Optional[str] = None, dropped: tuple = ()):
        self.parsed, self.entity, self.error, self.dropped = parsed, entity, error, dropped


def _records(schema: Any, found: Optional[dict] = None) -> dict:
    """Every record definition in a schema document: short name -> field names."""
    found = {} if found is None else found
    if isinstance(schema, list):
        for branch in schema:
            _records(branch, found)
    elif isinstance(schema, dict):
        if schema.get("type") == "record":
            found.setdefault(str(schema.get("name", "")).rsplit(".", 1)[-1], [f["name"] for f in schema["fields"]])
            for f in schema["fields"]:
                _records(f["type"], found)
        elif schema.get("type") in ("array", "map"):
            _records(schema.get("items") or schema.get("values"), found)
    return found


def unknown_fields(writer: Any, reader: Any) -> tuple[str, ...]:
    """``Record.field`` of each field the writer has and the reader does not."""
    known = _records(reader)
    return tuple(f"{name}.{f}" for name, fields in _records(writer).items() if name in known
                 for f in fields if f not in known[name])


class KafkaSource(contracts.Source):
    options_model = SourceOptions

    def __init__(self, options: Mapping[str, Any], context: AdapterContext):
        super().__init__(options, context)
        self._kafka_conf, self._registry_conf, self._scrub = connection(context, "source")
        self._pinned = dict(self.spec.topics) if isinstance(self.spec.topics, dict) else {}
        self._topics = list(self.spec.topics)
        self._consumer: Optional[Consumer] = None
        self._registry = RegistryHelper(self._registry_conf, False, _REGISTRY_TIMEOUT_S)
        self._dlq: Optional[Producer] = None
        self._writers: dict[int, _Writer] = {}
        self._dropped: dict[int, int] = {}      # writer schema id -> events that lost unknown fields
        self._readers: dict[str, Any] = {}
        self._assigned: set[tuple[str, int]] = set()
        self._pending: Optional[dict[tuple[str, int], int]] = None   # yielded, not yet stored
        self._broker_error: Optional[str] = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle

    def _client_conf(self) -> dict:
        return {**self._kafka_conf, "logger": attach(logging.getLogger(f"{self.context.log.name}.librdkafka"))}

    def open(self) -> None:
        if self._consumer is not None:
            return
        conf = {"auto.offset.reset": "earliest", **self._client_conf(), **self.spec.consumer,
                "group.id": self.spec.group_id, "enable.auto.commit": True,
                "enable.auto.offset.store": False, "error_cb": self._on_error}
        try:
            consumer = Consumer(conf)
        except (KafkaException, ValueError, TypeError) as exc:
            raise ConfigError([f"source {self.context.name}: {self._scrub(exc)}"]) from None
        self._consumer, self._assigned, self._pending, self._subscribed = consumer, set(), None, False

    def _subscribe(self) -> None:
        """Join the group only to read: ``outpost check`` opens the source too, and a member
        that joins and leaves again rebalances the running agent's group (tansu could even
        keep the departed member as leader, and nothing was consumed any more)."""
        if not self._subscribed:
            self._consumer.subscribe(self._topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                                     on_lost=self._on_revoke)
            self._subscribed = True

    def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            try:
                consumer.close()       # commits what was stored, never more
            except (KafkaException, RuntimeError) as exc:
                self.context.log.warning("kafka source %s: close: %s", self.context.name, self._scrub(exc))
        dlq, self._dlq = self._dlq, None
        if dlq is not None:
            dlq.flush(5)

    def _on_assign(self, _consumer, partitions) -> None:
        with self._lock:
            self._assigned |= {(p.topic, p.partition) for p in partitions}
        self.context.log.info("kafka source %s: group %s assigned %s", self.context.name, self.spec.group_id,
                              _partitions(partitions))

    def _on_revoke(self, _consumer, partitions) -> None:
        with self._lock:
            self._assigned -= {(p.topic, p.partition) for p in partitions}
        # a rebalance costs the group a pause: worth a line (another member joined or left)
        self.context.log.info("kafka source %s: group %s revoked %s", self.context.name, self.spec.group_id,
                              _partitions(partitions))

    def _on_error(self, err: KafkaError) -> None:
        if err.code() in _DOWN:
            self._broker_error = self._scrub(err.str())

    # ------------------------------------------------------------------ reading

    def batches(self, checkpoint: Any) -> Iterator[SourceBatch]:
        if self._consumer is None:
            self.open()
        self._subscribe()
        offsets = dict((checkpoint or {}).get("offsets") or {}) if isinstance(checkpoint, dict) else {}
        self._settle_pending(offsets)
        waited = 0.0
        while not self.context.stop.is_set():
            self._broker_error = None
            messages = self._consumer.consume(self.spec.batch_size, timeout=self.spec.poll_timeout_s)
            if not messages:
                if self._broker_error:
                    raise TransientError(f"kafka source {self.context.name}: brokers unreachable: "
                                         f"{self._broker_error}")
                waited += self.spec.poll_timeout_s
                if self._assigned or waited >= self.spec.assignment_wait_s:
                    return          # caught up (or no partitions yet): the scheduler calls again
                continue
            records, ends, poison = [], {}, []
            self._learn_writers(_framed_ids(messages))
            for message in messages:
                if message.error() is not None:
                    if message.error().code() != KafkaError._PARTITION_EOF:
                        self.context.log.warning("kafka source %s: %s", self.context.name,
                                                 self._scrub(message.error().str()))
                    continue
                record = self._record(message)
                records.append(record)
                if record.after["error"]:
                    poison.append((message, record.after["error"]))
                ends[(message.topic(), message.partition())] = message.offset() + 1
            for (topic, partition), end in ends.items():
                offsets[f"{topic}:{partition}"] = end
            self._pending = ends
            if any(self._writers[i].dropped for i in {r.after["schema_id"] for r in records} if i in self._writers):
                dropped = {f"schema {i} ({self._writers[i].entity})": {"fields": list(self._writers[i].dropped),
                                                                        "events": count}
                           for i, count in self._dropped.items()}
                self.context.set_health(details={**self.context.health.details,
                                                 "unknown fields dropped (since start)": dropped})
            yield SourceBatch(records, {"v": CHECKPOINT_VERSION, "offsets": dict(offsets)},
                              {"partitions": len(self._assigned), "last_batch": len(records)})
            # Resumed: the batch is durable in the local queue (invariant 2).
            self._store(ends)
            self._dead_letter(poison)

    def _settle_pending(self, offsets: dict) -> None:
        """The previous run was closed right after yielding: did that batch commit?"""
        pending, self._pending = self._pending, None
        if not pending:
            return
        if all(offsets.get(f"{t}:{p}", -1) >= end for (t, p), end in pending.items()):
            self._store(pending)
        else:
            # Not durable: forget what was fetched; the group's committed offsets are the truth.
            self.close()
            self.open()
            self._subscribe()

    def _store(self, ends: dict[tuple[str, int], int]) -> None:
        try:
            self._consumer.store_offsets(offsets=[TopicPartition(t, p, o) for (t, p), o in ends.items()])
        except KafkaException as exc:
            # A partition revoked meanwhile: its new owner starts from the last commit and
            # the repeats collapse on their event ids.
            self.context.log.info("kafka source %s: offsets not stored (%s)", self.context.name,
                                  self._scrub(exc.args[0].str()))

    def _record(self, message) -> SourceRecord:
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        value = message.value()
        carried = {"topic": topic, "partition": partition, "offset": offset, "entity": self._pinned.get(topic),
                   "event": None, "error": None, "raw": None, "schema_id": None}
        position = f"{topic}:{partition}:{offset}"
        error = self._decode(value, carried, message.headers() or [])
        if error:
            return self._poison(message, carried, position, error)
        meta = carried["event"]["metadata"]
        record = SourceRecord(topic, OPERATION_OF_SYMBOL.get(meta.get("operation"), "update"), position,
                              after=carried, occurred_at=meta.get("occurred_at"))
        # What the route would refuse after decoding (text for a decimal, an amount beyond the
        # schema's precision, a key that is not the image's) is poison too: dead-lettered
        # with its reason like an undecodable message, not only parked.
        problems = self.context.validate(record)
        if problems:
            return self._poison(message, carried, position, "; ".join(p["message"] for p in problems))
        return record

    def _poison(self, message, carried: dict, position: str, error: str) -> SourceRecord:
        carried["error"] = f"{message.topic()}[{message.partition()}]@{message.offset()}: {error}"
        carried["raw"] = base64.b64encode(message.value() or b"").decode("ascii")
        return SourceRecord(message.topic(), "update", position, after=carried)

    def _decode(self, value: Optional[bytes], carried: dict, headers) -> Optional[str]:
        """Fill ``carried`` with the decoded event; returns why not, for poison messages."""
        if not value or len(value) < 5 or value[0] != 0:
            return "not Confluent-framed Avro (no magic byte 0 and schema id)"
        schema_id = struct.unpack(">I", value[1:5])[0]
        carried["schema_id"] = schema_id
        writer = self._writer(schema_id)
        if writer.error:
            return writer.error
        header_entity = next((v.decode("utf-8", "replace") for k, v in headers if k == "entity" and v), None)
        entity = carried["entity"] or writer.entity or header_entity
        if entity not in self.context.schemas.names():
            return f"cannot tell the canonical entity (writer schema {schema_id}, entity {entity!r})"
        carried["entity"] = entity
        payload = value[5:]
        try:
            reader = self._reader(entity)
            if writer.parsed is reader:     # the current schema: its generated decoder may read it
                event, read = self.context.schemas.entity(entity).decode_counted(payload)
            else:
                body = io.BytesIO(payload)
                event, read = schemaless_reader(body, writer.parsed, reader), body.tell()
        except Exception as exc:   # fastavro raises many types for bad input
            return f"does not decode as {entity} (writer schema {schema_id}): {type(exc).__name__}: {exc}"
        if read != len(payload):
            return f"{len(payload) - read} byte(s) left after decoding as {entity}: corrupt message"
        carried["event"] = event
        if writer.dropped:
            self._dropped[schema_id] = self._dropped.get(schema_id, 0) + 1
        if reader is writer.parsed:
            carried["body"] = payload     # already the current schema's encoding: queued as is
        return None

    def _reader(self, entity: str):
        if entity not in self._readers:
            self._readers[entity] = self.context.schemas.entity(entity).parsed
        return self._readers[entity]

    def _writer(self, schema_id: int) -> _Writer:
        if schema_id not in self._writers:
            self._learn_writers({schema_id})
        return self._writers[schema_id]

    def _learn_writers(self, schema_ids: set[int]) -> None:
        """Fetch the writer schemas not known yet, in one go (TransientError if the registry
        cannot tell: nothing of the batch is yielded)."""
        unknown = sorted(schema_ids - self._writers.keys())
        for schema_id, found in zip(unknown, self._registry.schemas(unknown)):
            if isinstance(found, str):
                self._writers[schema_id] = self._parsed_writer(schema_id, found)
            elif found.status == 404:
                self._writers[schema_id] = _Writer(None, None, f"schema id {schema_id} is unknown to the registry")
            elif found.status is None:
                raise TransientError(f"schema registry unreachable: {self._scrub(found.message)}")
            else:
                raise TransientError(f"schema registry error for id {schema_id}: {self._scrub(found.message)}")

    def _parsed_writer(self, schema_id: int, schema_str: str) -> _Writer:
        try:
            document = json.loads(schema_str)
            parsed = parse_schema(document)
        except Exception as exc:
            return _Writer(None, None, f"schema id {schema_id} does not parse: {exc}")
        entity = self._entity_of(document)
        current = self.context.schemas.entity(entity) if entity else None
        dropped = unknown_fields(document, current.schema) if current is not None else ()
        if current is not None and json.loads(current.schema_json) == document:
            parsed = current.parsed    # the current schema itself: no resolution needed (faster)
        elif dropped:
            self.context.log.warning("kafka source %s: writer schema %d (%s) has field(s) the canonical schema "
                                     "lacks: %s; they are dropped from every event it wrote (counted in status)",
                                     self.context.name, schema_id, entity, ", ".join(dropped))
        return _Writer(parsed, entity, dropped=dropped)

    def _entity_of(self, document: Any) -> Optional[str]:
        if not isinstance(document, dict):
            return None
        if document.get("outpost.entity"):
            return document["outpost.entity"]
        name = str(document.get("name", "")).rsplit(".", 1)[-1]
        base = name[:-len("Event")] if name.endswith("Event") else name
        return base if base in self.context.schemas.names() else None

    # ------------------------------------------------------------------ dead letters

    def _dead_letter(self, messages) -> None:
        if not messages or not self.spec.dead_letter_topic:
            return
        if self._dlq is None:
            self._dlq = Producer({**self._client_conf(), "enable.idempotence": True, "acks": "all"})
        for message, error in messages:
            headers = list(message.headers() or []) + [
                ("outpost.origin", f"{message.topic()}:{message.partition()}:{message.offset()}".encode()),
                # why it is here: the same reason as its exception-queue entry (bounded: a header)
                ("outpost.error", error.encode("utf-8")[:_ERROR_HEADER_BYTES])]
            self._dlq.produce(self.spec.dead_letter_topic, value=message.value(), key=message.key(),
                              headers=headers)
        left = self._dlq.flush(10)
        if left:   # the exception queue holds them anyway
            self.context.log.warning("kafka source %s: %d dead letter(s) not acknowledged by %s",
                                     self.context.name, left, self.spec.dead_letter_topic)

    # ------------------------------------------------------------------ checking

    def check(self) -> list[str]:
        """Metadata calls only: the consumer never subscribes here (see ``_subscribe``)."""
        problems = []
        try:
            metadata = self._consumer.list_topics(timeout=5) if self._consumer else None
        except KafkaException as exc:
            return [f"Kafka brokers {self._kafka_conf['bootstrap.servers']} unreachable: "
                    f"{self._scrub(exc.args[0].str())}"]
        if metadata is not None:
            problems += [f"warning: topic {t} does not exist (yet)" for t in self._topics
                         if t not in metadata.topics]
        return problems + registry_problems(self._registry_conf, self._scrub)


def _framed_ids(messages) -> set[int]:
    """The registry ids in the Confluent frames of these messages."""
    ids = set()
    for message in messages:
        value = message.value()
        if message.error() is None and value and len(value) >= 5 and value[0] == 0:
            ids.add(struct.unpack(">I", value[1:5])[0])
    return ids


def _partitions(partitions) -> str:
    return ", ".join(f"{p.topic}[{p.partition}]" for p in partitions) or "nothing"


Source = KafkaSource
