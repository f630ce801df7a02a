"""The ``sql_apply`` sink: queued canonical events -> the local database, apply-once.

One transaction per batch holds the changes, the applied-events ledger rows (the
GoldenGate checkpoint-table pattern), the applied row versions a ``sql_poll`` route of the
same table skips (echo prevention) and, when enabled, the Debezium marker row. A
successful return is the queue's ack (invariant 3); an event already in the ledger is
acknowledged without touching anything (invariant 4), so redelivery changes nothing.

Outcomes per event, decided in queue order: applied; rejected (exception queue, stage
"publish"): older than the change applied last for its key ("stale: ..."), a broken gate
("gate: ..."), a conflict ("conflict: ..." with the local row and the event side by side
in its context), an unknown code, a value the column cannot hold, a constraint violation
("constraint: ..."); deferred: its parent row is not there yet (it and the later events
of its key wait, see ``parents``); or, when the database is unreachable, everything stays
queued (``transient_error``) and is retried in order. A constraint violation rolls the
batch back, then each event is applied in its own transaction so that only the offending
one is parked.
"""
from __future__ import annotations

import datetime as dt
import time
from collections import defaultdict
from typing import Any, Mapping, Optional, Sequence

import sqlalchemy as sa

from adapters.sql_apply import statements as sql
from adapters.sql_apply.bookkeeping import Bookkeeping
from adapters.sql_apply.database import Refused, binary_arrays, errors, reflect, session_settings
from adapters.sql_apply.ordering import Stamp
from adapters.sql_apply.execution import execute
from adapters.sql_apply.parents import Parents
from adapters.sql_apply.planning import gate_failure, plan_event, prefetch
from adapters.sql_apply.reverse_mapping import ApplyRejected, ProcedurePlan, TablePlan, reverse_lookups
from adapters.sql_apply.spec import SinkOptions
from agent import contracts
from agent.contracts import AdapterContext, ConfigError, Deferral, DeliveryReport, QueuedEvent, TransientError
from agent.mapping import known_codes

__all__ = ["SqlApplySink", "Sink"]

_PRUNE_EVERY_S = 3600


def _key_of(event: QueuedEvent) -> tuple[str, str]:
    """The entity key as the ledger's keys table holds it."""
    return event.entity, event.key[:255]


class SqlApplySink(contracts.Sink):
    options_model = SinkOptions

    def __init__(self, options: Mapping[str, Any], context: AdapterContext):
        super().__init__(options, context)
        lookups, problems = reverse_lookups(self.spec.lookups)
        self.targets: dict[str, list] = {}
        self._gated: dict[str, list] = {}           # entity -> its fields that carry gate rules
        self._codes = known_codes(self.spec.lookups)
        for entity, target in self.spec.entities.items():
            try:
                known = {f.name for f in context.schemas.entity(entity).fields}
            except KeyError as exc:
                problems.append(f"sink {context.name}: entities.{entity}: {exc.args[0]}")
                continue
            fields = {f.name: f for f in context.schemas.entity(entity).fields}
            self._gated[entity] = [f for f in fields.values() if f.rules]
            plans = ([TablePlan(t, entity, lookups, fields) for t in target.tables] if target.tables
                     else [ProcedurePlan(target.procedure, entity, lookups)])
            for plan in plans:
                problems += [f"sink {context.name}: entities.{entity}: {plan.object}: {f!r} is not a field of "
                             f"{entity}" for f in sorted(plan.fields() - known)]
            self.targets[entity] = plans
        try:
            self._url = sa.engine.make_url(self.spec.url)
        except sa.exc.ArgumentError:
            problems.append(f"sink {context.name}: url: not a SQLAlchemy URL (dialect+driver://...)")
        if problems:
            raise ConfigError(problems)
        self._safe_url = self._url.render_as_string(hide_password=True)
        self._password = self._url.password and str(self._url.password)
        self.applier = self.spec.applier or context.name
        self._engine: Optional[sa.Engine] = None
        self._last_prune = 0.0

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        if self._engine is not None:
            return
        try:
            engine = sa.create_engine(self._url, pool_pre_ping=True, **session_settings(self._url, self.spec.lock_wait))
        except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
            raise ConfigError([f"sink {self.context.name}: url {self._safe_url}: {self._scrub(exc)}"]) from None
        binary_arrays(engine)
        try:
            with self._db_errors("connect to"), engine.begin() as conn:
                self._prepare(conn, engine.dialect)
        except BaseException:
            engine.dispose()
            raise
        self._engine = engine

    def _prepare(self, conn, dialect) -> None:
        """Bookkeeping tables created if allowed; every mapped identifier checked against reflection."""
        self._books = Bookkeeping(self.spec.ledger, self.spec.marker, self.applier)
        if self.spec.ledger.create:
            self._books.metadata.create_all(conn, checkfirst=True)
        problems = [f"bookkeeping table {name} is missing and ledger.create is off"
                    for name in self._books.missing(conn)]
        # SQLite checks foreign keys only when a connection asks it to (off by default)
        enforced = dialect.name != "sqlite" or bool(conn.exec_driver_sql("PRAGMA foreign_keys").scalar())
        self._stmts: dict[tuple, tuple] = {}
        self._row_by_row: dict[str, tuple] = {}
        for entity, plans in self.targets.items():
            for plan in plans:
                if isinstance(plan, ProcedurePlan):
                    if dialect.name == "sqlite":
                        problems.append(f"{entity}: SQLite has no stored procedures ({plan.object})")
                    plan.call = sql.procedure_call(dialect, plan.target.schema_, plan.target.name,
                                                   len(plan.target.args))
                    plan.delete_call = (sql.procedure_call(dialect, plan.target.schema_, plan.target.delete_name,
                                                           len(plan.target.args)) if plan.target.delete_name else None)
                    continue
                problems += reflect(conn, dialect, entity, plan, self._safe_url, self._stmts, self._row_by_row)
        if problems:
            raise ConfigError([f"sink {self.context.name}: {p}" for p in problems])
        self._parents = Parents([plan for plans in self.targets.values() for plan in plans
                                 if isinstance(plan, TablePlan)] if enforced else [])

    def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.dispose()

    # ------------------------------------------------------------------ applying

    def write(self, events: Sequence[QueuedEvent]) -> DeliveryReport:
        if self._engine is None:
            self.open()
        report, items = DeliveryReport(), []
        for event in events:
            try:
                payload = self.context.schemas.by_fingerprint(event.schema_fingerprint).decode(event.body)
            except Exception as exc:
                report.rejected[event.event_id] = f"cannot decode the queued event: {exc}"
                continue
            if event.entity not in self.targets:
                report.rejected[event.event_id] = (f"sink {self.context.name} has no reverse mapping for entity "
                                                   f"{event.entity}")
                continue
            items.append((event, payload))
        try:
            try:
                self._apply(items, report)
            except Refused:
                self._one_by_one(items, report)
        except TransientError as exc:
            report.transient_error = str(exc)
            self._reset()
        self._prune()
        return report

    def _one_by_one(self, items: list, report: DeliveryReport) -> None:
        """After the database refused the batch: one transaction per event, in order, so only
        the offender is parked. A foreign key the database reports violated means a parent
        that is not there yet: that event waits, with the later events of its key."""
        blocked = {}
        for event, payload in items:
            key = _key_of(event)
            if key in blocked:
                report.deferred[event.event_id] = self._behind(blocked[key], report.deferred[blocked[key]])
                continue
            try:
                self._apply([(event, payload)], report)
            except Refused as exc:
                if exc.missing_parent:
                    report.deferred[event.event_id] = Deferral(f"{event.entity} {event.key} waits for its parent: "
                                                               f"{exc}", self.spec.wait_for_parent)
                else:
                    report.rejected[event.event_id] = f"constraint: {exc}"
            if event.event_id in report.deferred:
                blocked.setdefault(key, event.event_id)

    def _apply(self, items: list, report: DeliveryReport) -> None:
        now = dt.datetime.now(dt.timezone.utc)
        with self._db_errors("apply to"), self._engine.begin() as conn:
            done = self._books.applied(conn, [e.event_id for e, _ in items])
            todo = [(e, p) for e, p in items if e.event_id not in done]
            last = self._books.last_applied(conn, {_key_of(e) for e, _ in todo}, conn.dialect.name != "sqlite")
            local = prefetch(conn, self.targets, todo, now)
            planned = [(event, self._decide(event, payload, local, last, now, report)) for event, payload in todo]
            accepted, rejected = self._in_key_order(conn, planned, report)
            ops = [step for _, _, steps in accepted for step in steps]
            if ops:
                self._books.mark(conn, now)
            execute(conn, ops, self._stmts, self._row_by_row)
            if accepted:
                touched = defaultdict(dict)
                for event, _, steps in accepted:
                    for kind, plan, row in steps:
                        if kind != "delete" and isinstance(plan, TablePlan) and plan.target.capture_cursor:
                            touched[plan.object][plan.key_of(row)] = (plan, event.event_id)
                self._books.record(conn, [e for e, _, _ in accepted], touched,
                                   {_key_of(e): stamp for e, stamp, _ in accepted}, now)
        report.delivered |= done | {e.event_id for e, _, _ in accepted}
        report.rejected.update(rejected)

    def _decide(self, event: QueuedEvent, payload: dict, local: dict, last: dict, now, report: DeliveryReport):
        """(stamp, steps) of an event that may be applied, else why it is rejected (str)."""
        stamp = Stamp.of(event.event_id, payload.get("metadata"))
        newer = last.get(_key_of(event))
        why = newer and stamp.older_than(newer)
        if why:
            report.context[event.event_id] = {"stale": {"event": stamp.describe(), "applied_last": newer.describe()}}
            return (f"stale: {event.entity} {event.key}: this change is older than the one applied last for this "
                    f"key (event {newer.event_id}; {why}); applying it would move the row backwards: discard it")
        broken = gate_failure(self._gated[event.entity], self._codes, event, payload)
        if broken:
            return broken
        try:
            steps = plan_event(self.targets[event.entity], event, payload, local, now)
        except ApplyRejected as why:
            if why.context:
                report.context[event.event_id] = why.context
            return str(why)
        except Exception as exc:    # a per-event failure parks this event, never the queue
            return f"cannot apply {event.entity} {event.key}: {type(exc).__name__}: {exc}"
        last[_key_of(event)] = stamp           # later events of the batch compare with this one
        return stamp, steps

    def _in_key_order(self, conn, planned: list, report: DeliveryReport) -> tuple[list, dict]:
        """Accepted (event, stamp, steps) and rejections, in queue order. An event whose parent
        row is not there (in the database or earlier in the batch) waits, and so does every
        later event of its key, whatever it would have been: per-key order holds."""
        needs = {e.event_id: self._parents.needs(outcome[1]) for e, outcome in planned
                 if not isinstance(outcome, str)} if self._parents else {}
        present = self._parents.present(conn, {n for ns in needs.values() for n in ns}) if any(needs.values()) \
            else set()
        accepted, rejected, blocked = [], {}, {}
        for event, outcome in planned:
            key = _key_of(event)
            if key in blocked:
                report.deferred[event.event_id] = self._behind(blocked[key], report.deferred[blocked[key]])
                continue
            if isinstance(outcome, str):
                rejected[event.event_id] = outcome
                continue
            missing = [n for n in needs.get(event.event_id, ()) if n not in present]
            if missing:
                report.deferred[event.event_id] = Deferral(
                    f"{event.entity} {event.key} waits for its parent: {missing[0].describe()}",
                    self.spec.wait_for_parent, missing[0].token())
                blocked[key] = event.event_id
                continue
            accepted.append((event, *outcome))
            if self._parents:
                provided = self._parents.provided(outcome[1])
                present |= provided
                report.provided |= {n.token() for n in provided}
        return accepted, rejected

    def _behind(self, blocker_id: str, blocker: Deferral) -> Deferral:
        """Waits with the event ahead of it on its key (woken by the same parent)."""
        return Deferral(f"waits behind event {blocker_id} of the same key: {blocker.reason}",
                        self.spec.wait_for_parent, blocker.waits_for)

    def _prune(self) -> None:
        if time.time() - self._last_prune < _PRUNE_EVERY_S or self._engine is None:
            return
        self._last_prune = time.time()
        try:
            with self._db_errors("prune"), self._engine.begin() as conn:
                self._books.prune(conn, self.spec.ledger.retention_days)
        except TransientError as exc:
            self.context.log.warning("sink %s: %s", self.context.name, exc)

    def _reset(self) -> None:
        # A stale pool (server restarted, SQLite file moved) must not outlive the outage.
        if self._engine is not None:
            self._engine.dispose()

    def _db_errors(self, doing: str):
        return errors(f"sql_apply {self.context.name}: cannot {doing} {self._safe_url}", self._scrub, self.spec.lock_wait)

    def _scrub(self, exc: BaseException) -> str:
        lines = str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__]
        return lines[0].replace(self._password, "***") if self._password else lines[0]

    # ------------------------------------------------------------------ checking

    def check(self) -> list[str]:
        """What the apply user must be allowed to do, and (PostgreSQL) what it lacks."""
        from adapters.sql_apply.privileges import needed, missing_on_postgres
        lines = [f"warning: privileges needed: {line}" for line in needed(self.spec, self.targets)]
        if self._engine is not None and self._engine.dialect.name == "postgresql":
            try:
                with self._db_errors("check privileges on"), self._engine.connect() as conn:
                    lines += missing_on_postgres(conn, self.spec, self.targets)
            except TransientError as exc:
                lines.append(str(exc))
        return lines


Sink = SqlApplySink
