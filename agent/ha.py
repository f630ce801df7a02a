"""Active/passive pairs on one source, coordinated by the fabric.

Two or more agents with the same ``ha.group`` (each with its own state directory) form a
Kafka consumer group on a one-partition control topic, as Kafka Connect's distributed
mode does: the member that holds partition 0 is the **active**, the others are
**passive**. No consensus is written here; Kafka's group membership decides, with the
``cooperative-sticky`` assignor so that a member joining never moves leadership.

- Liveness: the group's session timeout is ``ha.lease``. An active that dies, or is paused
  longer than the lease, loses the partition; another member gets it (failover ~ lease +
  a rebalance: about 8 s with the default 6 s lease).
- Fencing: the kafka sink writes in Kafka transactions with a transactional id shared by
  the group (``outpost-ha-<group>-<sink>``). A new active initialises it and so fences the
  old one: a paused active that comes back can no longer commit anything (KIP-98).
- The fabric holds the checkpoint of what it received: the active publishes, per route,
  the newest source checkpoint whose events were all acknowledged (``covered_checkpoint``
  in the queue) to the compacted control topic, keyed by route. A member that becomes
  active reads the topic and resumes each route from there: what the dead active had
  queued but not published is captured again under the same event ids (consumers
  de-duplicate on ``event_id``). A checkpoint is published after the acknowledgement, so it
  can only lag: a lag means duplicates under the same ids, never a loss.

Failure modes (docs/ha.md): a network partition between the active and the broker makes it
lose the group and stop; between the active and the database it keeps the lease and
retries the source (status says so). Two actives at once cannot both publish: only the
holder of the newest transactional epoch commits.
"""
from __future__ import annotations

import enum
import json
import logging
import socket
import threading
import time
import uuid
from typing import Callable, Optional

log = logging.getLogger("outpost.ha")

__all__ = ["Role", "Coordinator", "control_topic", "transactional_id", "STATUS_ROW", "agent_identity"]

STATUS_ROW = "(ha)"      # the row of the stored route status that holds the pair's state


class Role(enum.Enum):
    STARTING = "starting"
    PASSIVE = "passive"
    ACTIVE = "active"


def control_topic(config) -> str:
    return config.ha.control_topic or f"outpost.ha.{config.ha.group}"


def transactional_id(config, sink: str) -> str:
    return f"outpost-ha-{config.ha.group}-{sink}"


class Coordinator:
    """Group membership on the control topic, the role it gives, and the checkpoints."""

    def __init__(self, config, queue, on_role: Callable[[Role], None], agent_id: str):
        self.config, self.queue, self.on_role, self.agent_id = config, queue, on_role, agent_id
        self.ha = config.ha
        self.topic = control_topic(config)
        self.role = Role.STARTING
        self.since = time.time()
        self.handovers = 0
        self.last_handover: Optional[dict] = None
        self._stop = threading.Event()
        self._step_down_until = 0.0
        self._published: dict[str, str] = {}
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self._consumer = None
        self._producer = None
        self._last_contact = time.monotonic()
        self._reported = 0.0
        self._handled_request = (queue.status_of(STATUS_ROW) or {}).get("handover_requested_at")

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        self._ensure_topic()
        self._thread = threading.Thread(target=self._run, name="ha-coordinator", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.ha.lease + 5)

    def step_down(self, seconds: Optional[float] = None) -> None:
        """Leave the group for a while so that another member takes over (patching)."""
        self._step_down_until = time.monotonic() + (seconds or 3 * self.ha.lease)

    def status(self) -> dict:
        """Role, since when, the lease (and how long since the group last answered), handovers."""
        return {"group": self.ha.group, "role": self.role.value, "agent": self.agent_id,
                "since": self.since, "lease_s": self.ha.lease,
                "lease_age_s": round(time.monotonic() - self._last_contact, 1), "handovers": self.handovers,
                "last_handover": self.last_handover, "control_topic": self.topic}

    def _report(self, force: bool = False) -> None:
        """Into the stored status, for `outpost status` (another process) and the page."""
        if force or time.monotonic() - self._reported >= 2.0:
            self._reported = time.monotonic()
            try:
                self.queue.update_status(STATUS_ROW, **self.status())
                request = self.queue.status_of(STATUS_ROW).get("handover_requested_at")
            except Exception as exc:       # a full disk: status is best effort
                log.debug("ha status not recorded: %s", exc)
                return
            if request and request != self._handled_request:
                self._handled_request = request
                if self.role == Role.ACTIVE:
                    log.warning("ha %s: handing over on request (outpost ha handover)", self.ha.group)
                    self.step_down()

    # -- the membership loop --------------------------------------------------------------
    def _client_conf(self) -> dict:
        return {**self.config.fabric.kafka, "logger": logging.getLogger("outpost.ha.librdkafka")}

    def _join(self):
        from confluent_kafka import Consumer
        lease_ms = int(self.ha.lease * 1000)
        consumer = Consumer({**self._client_conf(), "group.id": f"outpost-ha-{self.ha.group}",
                             "client.id": self.agent_id, "enable.auto.commit": False,
                             # frequent heartbeats: the survivor learns of a rebalance sooner
                             "session.timeout.ms": lease_ms, "heartbeat.interval.ms": max(100, min(500, lease_ms // 4)),
                             "partition.assignment.strategy": "cooperative-sticky"})
        consumer.subscribe([self.topic], on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._revoked)
        return consumer

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self._consumer is None:
                    self._consumer = self._join()
                self._consumer.poll(0.2)
                self._last_contact = time.monotonic()
                if self.role == Role.ACTIVE:
                    self._publish_checkpoints()
                self._report()
                if time.monotonic() < self._step_down_until:
                    self._leave("stepping down on request")
                    self._stop.wait(max(0.0, self._step_down_until - time.monotonic()))
            except Exception as exc:     # the broker away: passive until the group is back
                log.warning("ha %s: coordination failed (%s); passive until the fabric answers", self.ha.group, exc)
                self._leave(f"coordination failed: {exc}")
                self._stop.wait(1.0)
        self._leave("agent stopping")

    def _leave(self, why: str) -> None:
        consumer, self._consumer = self._consumer, None
        self._become(Role.PASSIVE, why)
        if consumer is not None:
            try:
                consumer.close()
            except Exception:
                log.debug("ha: closing the group consumer failed", exc_info=True)

    def _assigned(self, consumer, partitions) -> None:
        if any(p.partition == 0 for p in partitions):
            self._adopt_checkpoints()
            self._become(Role.ACTIVE, "holds the control partition")
        elif self.role == Role.STARTING:
            self._become(Role.PASSIVE, "another member is active")

    def _revoked(self, consumer, partitions) -> None:
        if any(p.partition == 0 for p in partitions):
            self._become(Role.PASSIVE, "lost the control partition")

    def _become(self, role: Role, why: str) -> None:
        with self._lock:
            if role == self.role:
                return
            before, self.role, self.since = self.role, role, time.time()
            if before != Role.STARTING:
                self.handovers += 1
                self.last_handover = {"at": self.since, "from": before.value, "to": role.value, "why": why}
        log.warning("ha %s: %s -> %s (%s)", self.ha.group, before.value, role.value, why)
        self.on_role(role)
        self._report(force=True)

    # -- checkpoints in the fabric --------------------------------------------------------
    def _ensure_topic(self) -> None:
        from confluent_kafka.admin import AdminClient, NewTopic
        admin = AdminClient(self._client_conf())
        futures = admin.create_topics([NewTopic(self.topic, num_partitions=1, replication_factor=-1,
                                                config={"cleanup.policy": "compact"})], request_timeout=10)
        try:
            futures[self.topic].result(15)
        except Exception as exc:     # exists already (the usual case), or made by an operator
            log.debug("ha control topic %s: %s", self.topic, exc)

    def read_checkpoints(self) -> dict[str, dict]:
        """The newest checkpoint the fabric holds for each route (read to its end)."""
        from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
        reader = Consumer({**self._client_conf(), "group.id": f"outpost-ha-read-{uuid.uuid4().hex[:8]}",
                           "enable.auto.commit": False, "enable.partition.eof": True})
        reader.assign([TopicPartition(self.topic, 0, OFFSET_BEGINNING)])
        latest: dict[str, dict] = {}
        deadline = time.monotonic() + max(10.0, self.ha.lease)
        try:
            while time.monotonic() < deadline:
                message = reader.poll(0.5)
                if message is None:
                    continue
                if message.error() is not None:
                    if message.error().code() == KafkaError._PARTITION_EOF:
                        return latest
                    raise RuntimeError(message.error().str())
                if message.key() and message.value():
                    latest[message.key().decode()] = json.loads(message.value())
            raise RuntimeError(f"control topic {self.topic} not read to its end within the deadline")
        finally:
            reader.close()

    def _adopt_checkpoints(self) -> None:
        """Resume every route from what the fabric acknowledged last (any member's)."""
        for route, record in self.read_checkpoints().items():
            if route in self.config.routes:
                self.queue.adopt_checkpoint(route, record["checkpoint"])
                log.warning("ha %s: route %s resumes from the checkpoint %s published by %s at %s", self.ha.group,
                            route, json.dumps(record["checkpoint"])[:300], record.get("agent"),
                            time.strftime("%H:%M:%S", time.localtime(record.get("at", 0))))

    def _publish_checkpoints(self) -> None:
        for route_name, route in self.config.routes.items():
            checkpoint = self.queue.covered_checkpoint(route_name, route.sink)
            text = json.dumps(checkpoint, sort_keys=True) if checkpoint is not None else None
            if text is None or self._published.get(route_name) == text:
                continue
            if self._producer is None:
                from confluent_kafka import Producer
                self._producer = Producer({**self._client_conf(), "enable.idempotence": True, "acks": "all"})
            value = json.dumps({"checkpoint": checkpoint, "agent": self.agent_id, "at": time.time()})
            self._producer.produce(self.topic, key=route_name.encode(), value=value.encode())
            if self._producer.flush(5) == 0:
                self._published[route_name] = text


def agent_identity(state_dir) -> str:
    """Which agent of a pair this is: host and state directory (shown in status, headers)."""
    return f"{socket.gethostname()}:{state_dir}"
