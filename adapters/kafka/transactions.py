"""Kafka transactions for the sink, when its producer has a ``transactional.id``.

An HA pair (agent/ha.py) gives every agent of the pair the same transactional id for a
sink: the agent that becomes active initialises it, which fences the previous holder
(KIP-98): a paused active that comes back cannot commit anything more. Each ``write`` is
one transaction; what its consumers see (``read_committed``, librdkafka's default) is the
committed batch or nothing. A fenced producer is fatal: it is reported, and the sink
builds a new one (which fences in turn) only when its agent is active again.
"""
from __future__ import annotations

from typing import Callable

from confluent_kafka import KafkaException

from agent.contracts import TransientError

__all__ = ["Transactions"]


class Transactions:
    def __init__(self, enabled: bool, timeout_s: float, scrub: Callable[[object], str]):
        self.enabled, self.timeout_s, self.scrub = enabled, timeout_s, scrub

    def init(self, producer) -> None:
        """After creating the producer: claim the transactional id (fences older holders)."""
        if not self.enabled:
            return
        try:
            producer.init_transactions(self.timeout_s)
        except KafkaException as exc:
            raise TransientError(f"kafka transactions cannot start: {self.scrub(exc.args[0].str())}") from None

    def begin(self, producer) -> None:
        if self.enabled:
            producer.begin_transaction()

    def finish(self, producer, batch) -> bool:
        """Commit what the batch produced; on failure abort it, so nothing of it counts as
        delivered. False when the producer must be replaced (fenced or fatal)."""
        if not self.enabled:
            return True
        try:
            producer.commit_transaction(self.timeout_s)
            return True
        except KafkaException as exc:
            error = exc.args[0]
            batch.report.delivered.clear()
            batch.transient.append(f"transaction not committed: {self.scrub(error.str())}")
            if error.txn_requires_abort():
                try:
                    producer.abort_transaction(self.timeout_s)
                except KafkaException:
                    return False
                return True
            return False
