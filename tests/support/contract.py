"""The contract suite: every source and every sink passes the same checks.

Adopting it takes one small class per adapter per role, given a harness that sets up the
adapter's live endpoint (``tests/support/harness.py``; a new adapter writes one like them)::

    class JsonLinesHarness(SinkHarness):          # where the events go, and how to read them back
        adapter = "jsonl"
        def options(self, endpoint=None): ...
        def landed(self, sink=None): ...

    class TestJsonLinesSink(SinkContract):        # the checks on the adapter itself
        harness = JsonLinesHarness
        not_applicable = {"test_a_duplicate_write_changes_nothing":
                          "appends: readers de-duplicate on event_id, as for avro_files"}

    class TestJsonLinesRecovery(RecoveryContract):   # tests/support/recovery.py: a real route, SIGKILLed
        sink = JsonLinesHarness

(tests/test_contract_plugin.py does exactly this for a sink that lives outside the repository.)

Each check says in its docstring what it proves. Adapters are built as the agent builds them:
looked up by name in the registry, options validated once by the spec's model. A source is
driven as ``agent.capture.RouteCapture`` drives it (each batch's checkpoint committed, through
JSON, before the generator is resumed); a sink's writes go through ``agent.delivery.in_key_order``
as in delivery. A check that cannot apply to an adapter is named in the class's
``not_applicable`` with the reason: it then shows as skipped with that reason (the keys must
be checks of the class, else the class does not even import).
"""
from __future__ import annotations

import json
import logging
import socket
import threading
import time
import uuid
from collections import defaultdict
from typing import Any, Optional

import pytest
from pydantic import ValidationError

from agent.contracts import AdapterContext, ConfigError, QueuedEvent, Sink, Source, TransientError
from agent.delivery import in_key_order
from agent.registry import adapter_names, parse_options, spec_of
from agent.schemas import SchemaCatalog

__all__ = ["SourceContract", "SinkContract", "Tripwire", "refused_endpoint", "customer_events"]

CATALOG = SchemaCatalog.load()
CUSTOMER = CATALOG.entity("Customer")
CHANGES = 12                # per step of a source check; the harnesses make batches of 5
WITHIN_S = 90               # a source delivers what it has within this (debezium starts a JVM engine)


class Tripwire:
    """A port that listens and never answers, and tells whether anyone connected to it."""

    def __enter__(self) -> "Tripwire":
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(16)
        self.socket.setblocking(False)
        self.address = self.socket.getsockname()
        return self

    def connections(self, settle: float = 0.5) -> int:
        time.sleep(settle)          # background client threads connect within milliseconds
        count = 0
        while True:
            try:
                peer, _ = self.socket.accept()
            except BlockingIOError:
                return count
            peer.close()
            count += 1

    def __exit__(self, *exc) -> None:
        self.socket.close()


def refused_endpoint() -> tuple[str, int]:
    """A local port nobody listens on: connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()


def customer_events(keys: int, versions: int) -> list[QueuedEvent]:
    """Canonical Customer events as the queue holds them, key after key, each key's versions in
    order; an event carries its id as the customer's name (so a table's audit tells who wrote)."""
    from tests.support.inbound import customer, event
    run, events = uuid.uuid4().hex[:8], []
    for version in range(1, versions + 1):
        for k in range(keys):
            event_id = f"ev-{run}-{k}-{version}"
            payload = event(customer(f"C-{run}-{k}", event_id, limit=f"{version}.00"), event_id=event_id,
                            operation="CREATE" if version == 1 else "UPDATE")
            events.append(QueuedEvent(len(events) + 1, event_id, "contract", "Customer", payload["key"],
                                      CUSTOMER.fingerprint, CUSTOMER.encode(payload), f"corr-{event_id}",
                                      "create" if version == 1 else "update", time.time()))
    return events


def _unknown_schema_event() -> QueuedEvent:
    """An event whose schema no catalog knows (queued by an agent version whose schema is gone)."""
    return QueuedEvent(0, f"ev-{uuid.uuid4().hex[:8]}-unknown", "contract", "Customer", "C-UNKNOWN",
                       "00" * 8, b"\x02\x00garbage", "corr-unknown", "update", time.time())


def _committed(checkpoint: Any) -> Any:
    """A checkpoint as the queue gives it back: through JSON."""
    return json.loads(json.dumps(checkpoint))


class _Contract:
    harness: type = None
    kind: str = ""
    base: type = object
    not_applicable: dict[str, str] = {}
    # what building the adapter may create under the state directory, with the reason
    created_at_construction: dict[str, str] = {}

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        checks = {name for name in dir(cls) if name.startswith("test_")}
        wrong = {name for name, why in cls.not_applicable.items() if name not in checks or not str(why).strip()}
        if wrong:
            raise TypeError(f"{cls.__name__}.not_applicable: {sorted(wrong)} are not checks of the class "
                            "or lack a reason")

    @pytest.fixture(autouse=True)
    def _live(self, request, tmp_path):
        reason = self.not_applicable.get(request.function.__name__)
        if reason:
            pytest.skip(f"not applicable to {self.harness.adapter}: {reason}")
        self.tmp_path = tmp_path
        self.h = self.harness(request, tmp_path)
        self.state_dir = tmp_path / "state"
        self.state_dir.mkdir()
        self.made: list = []
        yield
        for adapter in reversed(self.made):
            try:
                adapter.close()
            except Exception:        # the check already said what went wrong
                logging.getLogger("tests.contract").warning("closing %s failed", adapter, exc_info=True)

    @property
    def spec(self):
        return spec_of(self.kind, self.harness.adapter)

    def make(self, endpoint: Optional[tuple[str, int]] = None):
        """The adapter as the agent builds it: options validated once by its spec's model."""
        context = AdapterContext(name=f"contract-{self.harness.adapter}", state_dir=self.state_dir,
                                 schemas=CATALOG, fabric=self.h.fabric(endpoint),
                                 log=logging.getLogger(f"outpost.contract.{self.harness.adapter}"))
        adapter = self.spec.load()(self.spec.options.model_validate(self.h.options(endpoint)), context)
        self.made.append(adapter)
        return adapter

    # ------------------------------------------------------------------ every adapter

    def test_is_registered_and_its_implementation_loads(self):
        """The registry finds the adapter by its config name; its implementation imports and
        validates options with the very model the spec declares (the config's)."""
        spec = self.spec
        assert (spec.kind, spec.name) == (self.kind, self.harness.adapter)
        assert self.harness.adapter in adapter_names(self.kind)
        implementation = spec.load()
        assert issubclass(implementation, self.base)
        assert implementation.options_model is spec.options, "the adapter must not validate its options differently"

    def test_options_reject_unknown_keys(self):
        """A misspelt option is an error that names it, wherever the options are read."""
        options = {**self.h.options(), "no_such_option": 1}
        with pytest.raises(ValidationError) as failure:
            self.spec.options.model_validate(options)
        assert [e["loc"] for e in failure.value.errors() if e["type"] == "extra_forbidden"] == [("no_such_option",)]
        model, problems = parse_options(self.kind, self.harness.adapter, options, "section")
        assert model is None and [p for p in problems if p.startswith("section.no_such_option: unknown key")], problems
        context = AdapterContext(name="contract", state_dir=self.state_dir, schemas=CATALOG, fabric=self.h.fabric())
        with pytest.raises(ConfigError, match="no_such_option"):
            self.spec.load()(options, context)

    def test_construction_does_no_io(self):
        """Building the adapter (the agent builds every route at start, and `check` builds
        them too) neither connects to its endpoint nor fails when it is unreachable, and
        writes nothing; connecting is open()'s job, where failures are retried."""
        before = set(self.tmp_path.rglob("*"))
        with Tripwire() as wire:
            self.make(endpoint=wire.address)
            assert wire.connections() == 0, "building the adapter connected to its endpoint"
        created = {p for p in set(self.tmp_path.rglob("*")) - before
                   if not (p.is_relative_to(self.state_dir)
                           and p.relative_to(self.state_dir).parts[0] in self.created_at_construction)}
        assert not created, f"building the adapter created {sorted(map(str, created))}"

    def _threads(self) -> set:
        return {t for t in threading.enumerate() if t.is_alive()}

    def _no_leaked_threads(self, before: set) -> None:
        deadline = time.monotonic() + 5
        while self._threads() - before and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not self._threads() - before, f"threads left running after close: {self._threads() - before}"


class SourceContract(_Contract):
    """What every source guarantees to the capture loop (``agent.contracts.Source``)."""

    kind, base = "source", Source

    def pass_once(self, source, checkpoint):
        """One capture pass: (records, checkpoint after it), every batch committed and resumed."""
        records = []
        for batch in source.batches(checkpoint):
            records += batch.records
            checkpoint = _committed(batch.checkpoint)
        return records, checkpoint

    def drain(self, source, checkpoint, want: int):
        """Passes until ``want`` records came (or the time is up: the caller's count says so)."""
        records, deadline = [], time.monotonic() + WITHIN_S
        while len(records) < want and time.monotonic() < deadline:
            more, checkpoint = self.pass_once(source, checkpoint)
            records += more
        return records, checkpoint

    def establish(self, source):
        """The first pass (a streaming source takes its position), until the source is ready."""
        _, checkpoint = self.pass_once(source, None)
        deadline = time.monotonic() + WITHIN_S
        while not self.h.ready() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert self.h.ready(), "the source never became ready to capture"
        return checkpoint

    def first_batch(self, source, checkpoint):
        """(generator, first batch with records, checkpoint before it): the empty batches
        before it are committed; the generator is left suspended at that batch."""
        deadline = time.monotonic() + WITHIN_S
        while time.monotonic() < deadline:
            batches = source.batches(checkpoint)
            for batch in batches:
                if batch.records:
                    return batches, batch, checkpoint
                checkpoint = _committed(batch.checkpoint)
        pytest.fail("the source yielded no records")

    def keys(self, records) -> list[str]:
        return sorted(self.h.key_of(r) for r in records)

    @staticmethod
    def positions(records) -> set:
        return {(r.object, r.position) for r in records}

    def test_open_and_close_are_safe_twice(self):
        """The capture loop closes a source after an error and opens it again; a shutdown may
        close it twice, or close one that never opened. None of that breaks it or leaks threads."""
        source = self.make()
        threads = self._threads()
        source.close()
        source.open()
        source.open()
        checkpoint = self.establish(source)
        source.close()
        source.close()
        source.open()
        made = self.h.change(CHANGES)
        records, _ = self.drain(source, checkpoint, CHANGES)
        assert self.keys(records) == sorted(c.key for c in made)
        source.close()
        source.close()
        self._no_leaked_threads(threads)

    def test_unreachable_endpoint_is_transient(self):
        """An endpoint that is down is a TransientError from open() or the first pass (the
        route retries with backoff and says so in status), never a ConfigError (the route
        would stop) nor a pass that ends as if all were well."""
        source = self.make(endpoint=refused_endpoint())
        with pytest.raises(TransientError):
            source.open()
            next(iter(source.batches(None)), None)

    def test_resume_from_a_checkpoint_repeats_nothing(self):
        """After a restart (a new instance) from the last committed checkpoint, the source
        yields exactly the changes made since: nothing again, nothing lost."""
        source = self.make()
        checkpoint = self.establish(source)
        before = self.h.change(CHANGES)
        records, checkpoint = self.drain(source, checkpoint, CHANGES)
        assert self.keys(records) == sorted(c.key for c in before)
        source.close()
        since = self.h.change(CHANGES)
        restarted = self.make()
        records, checkpoint = self.drain(restarted, checkpoint, CHANGES)
        records += self.pass_once(restarted, checkpoint)[0]
        assert self.keys(records) == sorted(c.key for c in since), "resumed: exactly the changes made since"

    @pytest.mark.parametrize("restart", [False, True], ids=["next-call", "after-restart"])
    def test_a_batch_not_resumed_is_replayed(self, restart):
        """A batch the loop never resumed (its commit failed, the agent died) was never
        acknowledged upstream: the next call (or a new instance after a crash) from the same
        checkpoint yields it again, with the same positions, so the same event ids."""
        source = self.make()
        checkpoint = self.establish(source)
        made = self.h.change(CHANGES)
        batches, lost, checkpoint = self.first_batch(source, checkpoint)
        batches.close()
        if restart:
            source.close()
            source = self.make()
        records, _ = self.drain(source, checkpoint, CHANGES)
        assert self.positions(lost.records) <= self.positions(records), "the batch not resumed came again"
        assert self.keys(records) == sorted(c.key for c in made), "every change exactly once"

    def test_a_batch_committed_but_not_resumed_is_not_repeated(self):
        """The agent stopping right after a commit closes the generator without resuming it:
        the next call, handed the checkpoint of that batch, must not yield it again."""
        source = self.make()
        checkpoint = self.establish(source)
        made = self.h.change(CHANGES)
        batches, first, _ = self.first_batch(source, checkpoint)
        batches.close()
        records, checkpoint = self.drain(source, _committed(first.checkpoint), CHANGES - len(first.records))
        records += self.pass_once(source, checkpoint)[0]
        assert not self.positions(first.records) & self.positions(records), "a committed batch came again"
        assert self.keys(first.records + records) == sorted(c.key for c in made), "every change exactly once"


class SinkContract(_Contract):
    """What every sink guarantees to delivery (``agent.contracts.Sink``)."""

    kind, base = "sink", Sink

    def test_open_and_close_are_safe_twice(self):
        """Opening an open sink changes nothing it set up (what was written before stays and
        lands), closing twice or closing a sink never opened is harmless, and no thread outlives it."""
        sink = self.make()
        threads = self._threads()
        sink.close()
        sink.open()
        events = customer_events(2, 2)
        first = in_key_order(sink, events[:2])
        sink.open()
        second = in_key_order(sink, events[2:])
        assert first.delivered | second.delivered == {e.event_id for e in events}
        landed = [c.event_id for c in self.h.landed(sink)]
        sink.close()
        sink.close()
        assert sorted(landed) == sorted(e.event_id for e in events), "a second open lost what the first wrote"
        self._no_leaked_threads(threads)

    def test_unreachable_endpoint_is_transient(self):
        """A destination that is down keeps every event queued, with the reason (the sink's
        delivery retries with backoff): a TransientError from open() or write(), or a
        report with ``transient_error`` and nothing delivered or rejected."""
        sink = self.make(endpoint=refused_endpoint())
        try:
            sink.open()
            report = in_key_order(sink, customer_events(2, 1))
        except TransientError:
            return
        assert report.transient_error and not report.delivered and not report.rejected, report

    def test_every_event_gets_an_outcome(self):
        """Each event of a batch ends delivered, rejected (never deliverable: the exception
        queue), or still queued with a transient error; one that can never be delivered (its
        schema is unknown) is rejected rather than retried forever, and does not hold back
        the others. What was delivered is at the destination, each key in order."""
        sink = self.make()
        sink.open()
        events, unknown = customer_events(3, 3), _unknown_schema_event()
        batch = events[:4] + [unknown] + events[4:]
        report = in_key_order(sink, batch)
        ids = {e.event_id for e in batch}
        assert not report.delivered & set(report.rejected) and report.delivered | set(report.rejected) <= ids
        assert report.transient_error or report.delivered | set(report.rejected) == ids, "an event got no outcome"
        assert unknown.event_id in report.rejected, "an event that can never be delivered must be rejected"
        assert report.delivered == ids - {unknown.event_id} and report.transient_error is None, report
        landed = [c.event_id for c in self.h.landed(sink)]
        assert sorted(landed) == sorted(report.delivered), "delivered = at the destination"
        by_key = defaultdict(list)
        for event in events:
            by_key[event.key].append(event.event_id)
        position = {event_id: n for n, event_id in enumerate(landed)}
        for key, in_order in by_key.items():
            assert sorted(in_order, key=position.get) == in_order, f"{key} landed out of order"

    def test_a_duplicate_write_changes_nothing(self):
        """A crash between a write and the queue's settle sends the same batch again: it is
        acknowledged again (else it would stay queued forever) and changes nothing."""
        sink = self.make()
        sink.open()
        events = customer_events(2, 2)
        assert in_key_order(sink, events).delivered == {e.event_id for e in events}
        before = self.h.state()
        again = in_key_order(sink, events)
        assert again.delivered == {e.event_id for e in events} and not again.rejected, again
        assert self.h.state() == before, "a repeated write changed the destination"
