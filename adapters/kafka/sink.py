"""The ``kafka`` sink: queued events -> Kafka, Confluent wire format, idempotent producer.

A successful ``write`` is the queue's ack (delivery invariant 3), so ``write`` returns
only when every produced message has its delivery report. Outcomes per event:

- delivered: the broker acknowledged it (acks=all);
- rejected (terminal, goes to the exception queue): the registry refused its schema
  (HTTP 409/422, or not registered while ``auto_register`` is off), its fingerprint is
  unknown, or the broker refused the message itself (too large, invalid record);
- neither (stays queued, ``transient_error`` set): registry or broker unreachable,
  timeouts, anything unknown. Once an event of a key stays queued, later events of the
  same key in the batch stay queued too, so a retry cannot overtake them: the core holds
  them around ``screen`` (registry and topics, before producing), ``write`` around a
  produce that fails (``KeyHold``).

A message that timed out locally may still have reached the broker (a broker that was
stalled, not dead, can append it later), so a retry can duplicate it: consumers
de-duplicate on the ``event_id`` header (delivery invariant 4).
"""
from __future__ import annotations

import logging
import struct
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from adapters.kafka.diagnose import broker_problem, registry_problems
from adapters.kafka.fabric import connection
from adapters.kafka.registry_helper import RegistryHelper, Refusal
from adapters.kafka.spec import DEFAULTS, SinkOptions
from adapters.kafka.transactions import Transactions
from agent import contracts
from agent.client_logs import attach
from agent.config_checks import snake_case
from agent.contracts import AdapterContext, ConfigError, DeliveryReport, KeyHold, QueuedEvent

__all__ = ["KafkaSink", "Sink"]

# Errors that retrying the same message can never fix; everything else is transient.
_PERMANENT = {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_MSG_SIZE,
              KafkaError.INVALID_RECORD, KafkaError.RECORD_LIST_TOO_LARGE,
              KafkaError.INVALID_TIMESTAMP}
_MARGIN_S = 5.0


@dataclass
class _Batch:
    """Outcomes of one ``write``; delivery callbacks fill it in."""

    report: DeliveryReport = field(default_factory=DeliveryReport)
    produced: int = 0
    answered: int = 0
    transient: list[str] = field(default_factory=list)


class _Resolution(Exception):
    """Why an event cannot be produced now: ``terminal`` -> rejected, else it stays queued."""

    def __init__(self, reason: str, terminal: bool):
        super().__init__(reason)
        self.reason, self.terminal = reason, terminal


class KafkaSink(contracts.Sink):
    options_model = SinkOptions

    def __init__(self, options: Mapping[str, Any], context: AdapterContext):
        super().__init__(options, context)
        fabric = dict(context.fabric or {})

        def pick(name):
            own = getattr(self.spec, name)
            return own if own is not None else fabric.get(name, DEFAULTS[name])

        self.topic_template = pick("topic_template")
        self.auto_register = bool(pick("auto_register"))
        self.create_topics = bool(pick("create_topics"))
        self.topic_partitions = int(pick("topic_partitions"))
        self._kafka_conf, self._registry_conf, self._scrub = connection(self.context, "sink")
        timeout_ms = self._kafka_conf.get("message.timeout.ms",
                                          self._kafka_conf.get("delivery.timeout.ms"))
        self._message_timeout_s = (float(timeout_ms) / 1000 if timeout_ms is not None
                                   else self.spec.delivery_timeout_s)
        self._producer: Optional[Producer] = None
        self._admin: Optional[AdminClient] = None
        self._registry = RegistryHelper(self._registry_conf, self.auto_register, self._message_timeout_s)
        self._ids: dict[tuple[str, str], int] = {}      # (subject, fingerprint) -> schema id
        self._topics: set[str] = set()                  # created or known to exist
        self._topic_names: dict[str, str] = {}
        self._replace_producer = False
        self._last_client_error: Optional[str] = None
        self._txn = Transactions("transactional.id" in self._kafka_conf, self._message_timeout_s, self._scrub)
        self._agent = (context.agent_id or "").encode()
        # per event on the hot path, the same few values: built once each
        self._header_tails: dict[tuple[str, str], tuple] = {}
        self._prefixes: dict[int, bytes] = {}
        # (entity, fingerprint) -> (topic, schema id) once both are known: ids and created
        # topics are never forgotten, so neither is a resolution (screen and write ask per event)
        self._resolved: dict[tuple[str, str], tuple[str, int]] = {}

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        """Create the clients. Connects lazily: an unreachable broker surfaces as
        transient write outcomes, never as a blocking open."""
        if self._producer is not None:
            return
        try:
            self._producer = self._new_producer()
            self._admin = AdminClient(self._client_conf()) if self.create_topics else None
        except (KafkaException, ValueError, TypeError) as exc:
            self.close()
            raise ConfigError([f"sink {self.context.name}: {self._scrub(exc)}"]) from None
        self.context.log.info("kafka sink %s: producing to %s", self.context.name,
                              self._kafka_conf["bootstrap.servers"])

    def _new_producer(self) -> Producer:
        conf: dict[str, Any] = {"linger.ms": 10}
        if "delivery.timeout.ms" not in self._kafka_conf:
            conf["message.timeout.ms"] = int(self.spec.delivery_timeout_s * 1000)
        conf.update(self._client_conf())
        # Not overridable: without them a retry could duplicate or reorder within a key.
        conf.update({"enable.idempotence": True, "acks": "all", "error_cb": self._on_client_error})
        producer = Producer(conf)
        self._txn.init(producer)      # an HA pair's sink: claims (fences) the transactional id
        return producer

    def _client_conf(self) -> dict[str, Any]:
        # librdkafka chatter (connection refused during outages) goes to a child logger
        # the service can filter, instead of raw stderr lines.
        return {**self._kafka_conf,
                "logger": attach(logging.getLogger(f"{self.context.log.name}.librdkafka"))}

    def _on_client_error(self, err: KafkaError) -> None:
        self._last_client_error = self._scrub(err.str())
        if err.fatal():
            self._replace_producer = True
        self.context.log.debug("kafka sink %s: %s", self.context.name, self._last_client_error)

    def close(self) -> None:
        producer, self._producer = self._producer, None
        self._replace_producer = False      # the next open starts clean (and claims the id again)
        if producer is not None:
            left = producer.flush(min(self._message_timeout_s, 10.0))
            if left:
                self.context.log.warning("kafka sink %s: closed with %d message(s) unacknowledged; "
                                         "they stay in the local queue", self.context.name, left)
        self._admin = None

    # ------------------------------------------------------------------ writing

    def topic_for(self, entity: str) -> str:
        topic = self._topic_names.get(entity)
        if topic is None:   # per event on the hot path: compute each entity's name once
            topic = self._topic_names[entity] = self.topic_template.format(entity=snake_case(entity), Entity=entity)
        return topic

    def screen(self, events: Sequence[QueuedEvent]) -> dict[str, tuple[bool, str]]:
        """Topic and schema id of every event before anything is produced: a schema the
        registry refuses is terminal; an unreachable registry or topic keeps it queued."""
        if self._producer is None:
            self.open()
        # One failure per registry, topic or (subject, schema) per batch: a thousand events
        # of a rejected entity must not mean a thousand registry calls or topic timeouts.
        failures: dict[tuple, _Resolution] = {}
        self._look_up_ids({self._subject_key(e) for e in events
                           if (e.entity, e.schema_fingerprint) not in self._resolved}, failures)
        verdicts = {}
        for event in events:
            try:
                self._resolve(event, failures)
            except _Resolution as why:
                verdicts[event.event_id] = (why.terminal, why.reason)
        return verdicts

    def write(self, events: Sequence[QueuedEvent]) -> DeliveryReport:
        if self._producer is None:
            self.open()
        if self._replace_producer:
            if self._txn.enabled:
                # A transactional producer in error was fenced (or is broken): claiming the id
                # again would fence the pair's new active. Only a reopen (this agent active
                # again) makes a new one.
                return DeliveryReport(transient_error="fenced by a newer active of the HA pair: nothing is sent "
                                                      "until this agent is active again")
            self._recreate_producer()
        batch, hold, failures = _Batch(), KeyHold(), {}
        self._txn.begin(self._producer)
        for event in events:
            if hold.blocked(event):
                continue
            try:       # resolved by screen(): from the caches
                topic, schema_id = self._resolve(event, failures)
            except _Resolution as why:
                if why.terminal:
                    batch.report.rejected[event.event_id] = why.reason
                    continue
                hold.hold(event)
                batch.transient.append(why.reason)
                continue
            if not self._produce(batch, event, topic, schema_id):
                hold.hold(event)
        self._await_reports(batch)
        if not self._txn.finish(self._producer, batch):
            self._replace_producer = True
        if batch.transient:
            # librdkafka bumps the idempotent epoch after a timeout, which some brokers
            # (tansu) answer with PRODUCER_FENCED forever: start clean next time.
            self._replace_producer = True
            pending = len(events) - len(batch.report.delivered) - len(batch.report.rejected)
            batch.report.transient_error = f"{pending} event(s) still queued: {batch.transient[0]}"
        return batch.report

    def _subject_key(self, event: QueuedEvent) -> tuple[str, str]:
        # TopicNameStrategy, what Confluent consumers expect
        return f"{self.topic_for(event.entity)}-value", event.schema_fingerprint

    def _resolve(self, event: QueuedEvent, failures: dict[tuple, _Resolution]) -> tuple[str, int]:
        known = self._resolved.get((event.entity, event.schema_fingerprint))
        if known is not None:
            return known
        cache_key = self._subject_key(event)
        if cache_key not in self._ids:
            self._look_up_ids({cache_key}, failures)
            for scope in (("schema",) + cache_key, ("registry",)):
                if scope in failures:
                    raise failures[scope]
        topic = self.topic_for(event.entity)
        if self.create_topics and topic not in self._topics:
            if ("topic", topic) in failures:
                raise failures[("topic", topic)]
            try:
                self._create_topic(topic)
            except _Resolution as why:
                failures[("topic", topic)] = why
                raise
        known = self._resolved[(event.entity, event.schema_fingerprint)] = (topic, self._ids[cache_key])
        return known

    def _look_up_ids(self, wanted: set[tuple[str, str]], failures: dict[tuple, _Resolution]) -> None:
        """Ask the registry, in one go, for every (subject, fingerprint) not known or
        already refused in this batch; a refusal is recorded in ``failures``."""
        asks = []
        for cache_key in sorted(wanted):
            if cache_key in self._ids or ("registry",) in failures or ("schema",) + cache_key in failures:
                continue
            try:
                asks.append((cache_key, self.context.schemas.by_fingerprint(cache_key[1]).schema_json))
            except (KeyError, LookupError, AttributeError):
                failures[("schema",) + cache_key] = _Resolution(f"unknown schema fingerprint {cache_key[1]}",
                                                                terminal=True)
        answers = self._registry.ids([(subject, schema_json) for (subject, _), schema_json in asks])
        for (cache_key, _), answer in zip(asks, answers):
            if isinstance(answer, int):
                self._ids[cache_key] = answer
                continue
            why = self._refusal(cache_key[0], answer)
            failures[("schema",) + cache_key if why.terminal else ("registry",)] = why

    def _refusal(self, subject: str, refusal: Refusal) -> _Resolution:
        message = self._scrub(refusal.message)
        if refusal.status is None:
            return _Resolution(f"schema registry unreachable: {message}", terminal=False)
        if refusal.status in (409, 422):
            return _Resolution(f"schema registry rejected the schema for subject {subject}: {message}", terminal=True)
        if refusal.status == 404 and not self.auto_register:
            return _Resolution(f"schema not registered under subject {subject} (auto_register "
                               f"is off; register it first)", terminal=True)
        return _Resolution(f"schema registry error for subject {subject}: {message}", terminal=False)

    def _create_topic(self, topic: str) -> None:
        futures = self._admin.create_topics(
            [NewTopic(topic, num_partitions=self.topic_partitions, replication_factor=-1)],
            request_timeout=min(self._message_timeout_s, 10.0))
        try:
            futures[topic].result(timeout=min(self._message_timeout_s, 10.0) + _MARGIN_S)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise _Resolution(f"cannot create topic {topic}: {self._scrub(exc.args[0].str())}",
                                  terminal=False) from None
        except Exception as exc:
            raise _Resolution(f"cannot create topic {topic}: {self._scrub(exc)}",
                              terminal=False) from None
        self._topics.add(topic)

    def _produce(self, batch: _Batch, event: QueuedEvent, topic: str, schema_id: int) -> bool:
        """Hand one message to librdkafka; False when the event stays queued."""
        tail = self._header_tails.get((event.entity, event.operation))
        if tail is None:
            # the metadata's spelling (UPDATE), so a consumer compares one with the other as is
            tail = (("entity", event.entity.encode()), ("operation", event.operation.upper().encode()))
            if self._agent:     # which agent published it (an HA pair's members tell apart)
                tail += (("outpost_agent", self._agent),)
            self._header_tails[(event.entity, event.operation)] = tail
        headers = [("event_id", event.event_id.encode()),
                   ("correlation_id", (event.correlation_id or "").encode()), *tail]
        prefix = self._prefixes.get(schema_id)
        if prefix is None:      # Confluent wire format: magic byte, then the registry id
            prefix = self._prefixes[schema_id] = b"\x00" + struct.pack(">I", schema_id)
        value = prefix + event.body

        def on_delivery(err, _msg, event_id=event.event_id):
            batch.answered += 1
            if err is None:
                batch.report.delivered.add(event_id)
            elif err.code() in _PERMANENT:
                batch.report.rejected[event_id] = f"broker refused the message: {self._scrub(err.str())}"
            else:
                batch.transient.append(f"delivery failed: {self._scrub(err.str())}")
                if err.fatal():
                    self._replace_producer = True

        deadline = time.monotonic() + self._message_timeout_s
        while True:
            try:
                self._producer.produce(topic, value=value, key=event.key.encode(),
                                       headers=headers, on_delivery=on_delivery)
                batch.produced += 1
                return True
            except BufferError:
                # The local queue is full: serving callbacks frees room.
                if time.monotonic() > deadline:
                    batch.transient.append("producer queue full for too long")
                    return False
                self._producer.poll(0.1)
            except KafkaException as exc:
                err = exc.args[0]
                if err.code() in _PERMANENT:
                    batch.report.rejected[event.event_id] = f"message refused: {self._scrub(err.str())}"
                    return True
                batch.transient.append(f"produce failed: {self._scrub(err.str())}")
                return False

    def _await_reports(self, batch: _Batch) -> None:
        # librdkafka times messages out after message.timeout.ms, so the margin is only a
        # guard against a hung client; what is unanswered then simply stays queued.
        deadline = time.monotonic() + self._message_timeout_s + _MARGIN_S
        while batch.answered < batch.produced:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                batch.transient.append(f"no delivery report within {self._message_timeout_s:.0f}s"
                                       f" ({self._last_client_error or 'broker not answering'})")
                return
            try:
                self._producer.flush(min(remaining, 1.0))
            except (KafkaException, SystemError) as exc:   # a fatal producer error (fenced) comes out here
                batch.transient.append(f"producer failed: {self._scrub(exc)}")
                self._replace_producer = True
                return

    def _recreate_producer(self) -> None:
        old, self._producer = self._producer, None
        if old is not None:
            old.purge(in_queue=True, in_flight=False, blocking=False)
            old.poll(0)
        self._producer = self._new_producer()
        self._replace_producer = False

    # ------------------------------------------------------------------ checking

    def check(self) -> list[str]:
        problems: list[str] = []
        try:
            self.open()
        except ConfigError as exc:
            return exc.problems
        bootstrap = self._kafka_conf["bootstrap.servers"]
        broker = broker_problem(self._kafka_conf, bootstrap, min(self._message_timeout_s, 10), self._scrub)
        problems += [broker] if broker else []
        catalog = self.context.schemas
        subjects = ([(name, self.topic_for(name) + "-value", catalog.entity(name).schema_json) for name in catalog.names()]
                    if hasattr(catalog, "names") and hasattr(catalog, "entity") else [])
        return problems + registry_problems(self._registry_conf, self._scrub, subjects,
                                            registered=not self.auto_register)

Sink = KafkaSink
