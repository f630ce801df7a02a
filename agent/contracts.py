"""The small contracts between the core and the adapters.

Adapters import this module (and nothing else from ``agent`` but ``agent.schemas``);
the core never imports ``adapters``: it looks adapters up by their config name.

Exception tree::

    OutpostError
    ├── ConfigError          bad configuration; lists every problem at once
    ├── TransientError       retry later (broker/database unreachable, timeouts);
    │                        anything unknown is treated as transient
    └── TerminalError        retrying the same input cannot succeed (schema rejected,
                             constraint violated); the input goes to the exception queue
"""
from __future__ import annotations

import abc
import logging
import threading
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Context, Decimal
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

__all__ = [
    "OutpostError", "ConfigError", "TransientError", "TerminalError",
    "SourceRecord", "SourceBatch", "QueuedEvent", "DeliveryReport", "Deferral",
    "AdapterContext", "AdapterSpec", "Health", "KeyHold", "Source", "Sink", "OPERATIONS", "Approximate", "approximate",
]

OPERATIONS = ("create", "update", "delete", "snapshot")


class OutpostError(Exception):
    """Base of every error Outpost raises on purpose."""


class ConfigError(OutpostError):
    """A configuration is invalid. ``problems`` holds one line per problem."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in self.problems))


class TransientError(OutpostError):
    """The other side is unavailable; the same work can succeed later."""


class TerminalError(OutpostError):
    """This input can never succeed as it is; park it in the exception queue."""


@dataclass(frozen=True)
class SourceRecord:
    """One captured change, before mapping.

    ``position`` must be deterministic: capturing the same change again (after a crash
    or a re-snapshot) yields the same position, so the derived ``event_id`` is the same.
    """

    object: str                       # table or file name the change came from
    operation: str                    # one of OPERATIONS
    position: str                     # e.g. "pk=42@2026-11-27T10:00:00" or "file:sha:line"
    after: Optional[Mapping[str, Any]] = None
    before: Optional[Mapping[str, Any]] = None
    occurred_at: Optional[datetime] = None   # when the change happened at the source (UTC)


@dataclass
class SourceBatch:
    """Records plus the checkpoint that covers them (committed atomically with them)."""

    records: list[SourceRecord]
    checkpoint: Any                   # JSON-serialisable; handed back to ``Source.batches``
    progress: Optional[dict] = None   # free-form progress for status (snapshot %, rows read)
    # Source-side rejections committed with this batch: {"stage", "reason", "context"} dicts
    # (a whole file refused, a row that cannot be parsed); they go to the exception queue.
    exceptions: list = field(default_factory=list)


class Approximate(Decimal):
    """A number read from a binary floating-point column (DOUBLE, FLOAT, REAL), as the
    decimal it stands for, already rounded to the column's declared scale if it has one.

    Sources decide by the column's declared type, never by the Python type a driver hands
    over (SQLAlchemy gives a MariaDB DOUBLE as a Decimal, the binlog as a float): the
    mapping then rounds it half-even to the schema's scale, where an exact decimal with
    too many places is refused.
    """

    __slots__ = ()


# What amounts are quantised in. Python's default context keeps 28 digits and raises
# InvalidOperation beyond them, but a DECIMAL(38,4) column is common in an ERP; the
# generated Avro encoder uses the same 100 digits. Quantising, sums and expression
# arithmetic on amounts run in it.
AMOUNTS = Context(prec=100, rounding=ROUND_HALF_EVEN)
_QUANTUMS: dict = {}     # declared scale -> Decimal('1e-scale'), built once


def approximate(value: Any, declared_scale: Optional[int] = None) -> Any:
    """A double column's value as an ``Approximate``: the shortest decimal the double stands
    for (``repr``), rounded half-even to the column's declared scale (``double(24,8)`` keeps
    8 places, so ``-0.0050000000000000044`` is ``-0.00500000`` on every path). None stays None."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return value           # not a number: the mapping refuses it with the value named
        value = Decimal(repr(value))
    elif not isinstance(value, Decimal):
        value = Decimal(value)
    if declared_scale is not None and value.is_finite():
        quantum = _QUANTUMS.get(declared_scale) or _QUANTUMS.setdefault(declared_scale,
                                                                       Decimal(1).scaleb(-declared_scale))
        value = value.quantize(quantum, rounding=ROUND_HALF_EVEN, context=AMOUNTS)
    return Approximate(value)


@dataclass
class QueuedEvent:
    """An encoded canonical event as it sits in the durable queue."""

    seq: int
    event_id: str
    route: str
    entity: str                       # e.g. "Customer"
    key: str                          # business key; the Kafka message key
    schema_fingerprint: str           # hex of the writer schema's fingerprint
    body: bytes                       # Avro binary, schemaless (no header)
    correlation_id: str
    operation: str
    enqueued_at: float                # unix time
    occurred_at: Optional[float] = None


@dataclass(frozen=True)
class Deferral:
    """An event that cannot be delivered *yet* (an applier's parent row has not arrived): it
    stays queued in order, holds back the later events of its key, and is offered again as
    soon as a batch ``provided`` what it ``waits_for`` (else on a slow timer); it is parked
    with ``reason`` once it has waited ``max_wait_s``."""

    reason: str
    max_wait_s: float
    waits_for: Optional[str] = None     # a token the sink puts in ``DeliveryReport.provided``


@dataclass
class DeliveryReport:
    """What a sink did with a batch. Events in no set stay queued (transient)."""

    delivered: set[str] = field(default_factory=set)          # event ids acked
    rejected: dict[str, str] = field(default_factory=dict)     # event id -> terminal reason
    transient_error: Optional[str] = None                      # why the rest is still queued
    deferred: dict[str, Deferral] = field(default_factory=dict)   # event id -> why it waits, how long
    provided: set[str] = field(default_factory=set)     # what this batch made available (wakes deferrals)
    # Optional structured detail of a rejection, kept in its exception-queue entry's context
    # (a conflict's local row and event side by side, for ``outpost queue show``).
    context: dict[str, dict] = field(default_factory=dict)    # event id -> JSON-able detail


@dataclass(frozen=True)
class Health:
    """What a source says about itself, in one shape that ``status``, ``/metrics``, the
    health endpoints and the page render without knowing the adapter.

    ``state``: one word or two (streaming, snapshotting, retrying, waiting). ``problem``:
    something wrong right now (the route shows as degraded until it is cleared).
    ``warning``: something a person should look at soon (slot growing, retention short).
    ``lag_seconds`` / ``lag_bytes``: how far behind the source capture is (change log not
    yet read: WAL a slot retains, binlog behind the server). ``retention_s``: how long the
    source keeps its change log (an outage, or an HA pair's failover, longer than that
    loses changes; None: no such limit). ``details``: label -> value, shown as they are
    (slot name, binlog file, last skipped file).
    """

    state: str = "ok"
    problem: Optional[str] = None
    warning: Optional[str] = None
    lag_seconds: Optional[float] = None
    lag_bytes: Optional[int] = None
    retention_s: Optional[float] = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"state": self.state, "problem": self.problem, "warning": self.warning,
                "lag_seconds": self.lag_seconds, "lag_bytes": self.lag_bytes, "retention_s": self.retention_s,
                "details": dict(self.details)}


@dataclass
class AdapterContext:
    """What the core hands to an adapter. Adapters do their own I/O with it."""

    name: str                         # the source or sink name in the config
    state_dir: Path
    schemas: Any                      # agent.schemas.SchemaCatalog
    fabric: Mapping[str, Any] = field(default_factory=dict)   # the config's ``fabric`` section
    agent_id: str = ""                # which agent this is (host and state directory): HA pairs, headers
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("outpost"))
    # Set when the agent stops: streaming sources return from ``batches`` soon after.
    stop: threading.Event = field(default_factory=threading.Event)
    # How the source is doing (``Health``); each report replaces the previous one.
    report_health: Callable[[Health], None] = lambda health: None
    # Progress of long work (a snapshot, a big file): a dict shown by ``outpost status``.
    report_progress: Callable[[dict], None] = lambda progress: None
    # The route's mapping gates, for sources that must check a whole unit (a file) before
    # emitting any of it: returns the problems of one record ([] = it would be published).
    validate: Callable[[SourceRecord], list] = lambda record: []
    # The route this source instance captures for (one instance per route).
    route: str = ""
    # What the route's mapping makes of a record, for sources that publish only what changed
    # (a corrected file): (business key, digest of the canonical image), or None when the
    # record cannot be mapped (the route then parks it as usual).
    identify: Callable[[SourceRecord], Optional[tuple]] = lambda record: None
    # The source columns the route reads (its mapping and filter), for sources that can
    # refuse a file of another layout at its header instead of on every row.
    columns: Callable[[], frozenset] = lambda: frozenset()
    health: Health = field(default_factory=Health)     # the last one reported

    def set_health(self, **changes) -> None:
        """Change some fields of the source's ``Health`` and report the whole of it."""
        self.health = replace(self.health, **changes)
        self.report_health(self.health)


@dataclass(frozen=True)
class AdapterSpec:
    """An adapter, declared once in its package's ``__init__`` (``SOURCE = AdapterSpec(...)``
    and/or ``SINK = ...``), which must import lightly: the registry reads every one of them.

    ``options``: the pydantic model of its options; the config is validated against it
    once, at load, and the adapter receives the frozen instance. ``implementation``:
    ``"module:Class"``, imported only when a route uses it (the JVM, database drivers).
    ``emits``: what a source yields, ``"records"`` (mapped by the route) or
    ``"canonical_events"`` (inbound: no mapping). ``streaming``: a source that follows a
    change log gets a loop of its own instead of a schedule. ``commands``:
    ``"module:COMMANDS"``, click commands added to ``outpost``. ``delivery_bound``: for a
    sink, the longest a healthy write may take given its options (seconds), so the
    watchdog knows when a sink is stuck rather than slow.
    """

    name: str
    kind: str                                   # "source" or "sink"
    options: Any
    implementation: str
    emits: str = "records"
    streaming: bool = False
    commands: Optional[str] = None
    delivery_bound: Optional[Callable[[Any], float]] = None

    def load(self):
        """The implementation class (imports it now)."""
        import importlib
        module, _, attribute = self.implementation.partition(":")
        return getattr(importlib.import_module(module), attribute)


class _Adapter:
    """An adapter receives its options as the validated, frozen model (``self.spec``).

    A mapping is still accepted (tests, embedding) and validated once here, against
    ``options_model``; the agent itself always hands over the model the config built.
    """

    options_model: Any = None

    def __init__(self, options: Any, context: AdapterContext):
        self.context = context
        model = self.options_model
        if model is None or isinstance(options, model):
            self.spec = options
            return
        from pydantic import ValidationError
        try:
            self.spec = model.model_validate(dict(options or {}))
        except ValidationError as exc:
            raise ConfigError([f"{context.name}: {'.'.join(map(str, e['loc'])) or 'options'}: {e['msg']}"
                               for e in exc.errors()]) from None


class Source(_Adapter, abc.ABC):
    """Captures changes. One instance per route (a route reads one object)."""

    def open(self) -> None:
        """Connect. Raise TransientError if the source is unreachable."""

    @abc.abstractmethod
    def batches(self, checkpoint: Any) -> Iterator[SourceBatch]:
        """Yield batches from ``checkpoint`` (None = never run) until caught up.

        The caller commits each batch's events and checkpoint in one transaction, then
        resumes the generator; the next batch must start right after that checkpoint.
        Resuming the generator is therefore the signal that the batch is durable: a
        streaming source acknowledges upstream (Debezium ``markProcessed``, Kafka
        ``store_offsets``) only then (invariant 2). Return when caught up or when
        ``context.stop`` is set; the scheduler calls ``batches`` again.
        """

    def check(self) -> list[str]:
        """Problems to fix, for ``outpost check``; lines starting with "warning:" are advice."""
        return []

    def close(self) -> None:
        """Release connections. Must be safe to call twice."""


class KeyHold:
    """Order per entity key within a batch: once one event of a key stays queued, every
    later event of that key must stay queued too, or its retry would be overtaken."""

    def __init__(self):
        self._held: set = set()

    def blocked(self, event: QueuedEvent) -> bool:
        return (event.entity, event.key) in self._held

    def hold(self, event: QueuedEvent) -> None:
        self._held.add((event.entity, event.key))


class Sink(_Adapter, abc.ABC):
    """Delivers queued events. A successful return of ``write`` is the ack.

    The core screens each batch first (``screen``): what a sink can tell before sending
    (a schema the registry refuses, a value the table cannot hold) is rejected or held
    there, and the core keeps per-key order around it (``KeyHold``) before ``write`` sees
    the rest. Within ``write``, an event that fails must hold the later events of its key.
    """

    def open(self) -> None:
        """Connect. Raise TransientError if the destination is unreachable."""

    def screen(self, events: Sequence[QueuedEvent]) -> dict[str, tuple[bool, str]]:
        """Before sending: event id -> (terminal, reason) for what cannot be sent now
        (terminal: never, it goes to the exception queue; else it stays queued)."""
        return {}

    @abc.abstractmethod
    def write(self, events: Sequence[QueuedEvent]) -> DeliveryReport:
        """Deliver in order; return only when every event has a definite outcome or
        the destination is unreachable (then set ``transient_error``)."""

    def check(self) -> list[str]:
        """Connectivity and compatibility problems, for ``outpost check``."""
        return []

    def close(self) -> None:
        """Flush and release. Must be safe to call twice."""
