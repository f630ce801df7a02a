"""The durable queue's invariants (DESIGN.md 1-5), on a real SQLite file."""
import sqlite3
import threading
import time

import pytest

from agent.contracts import DeliveryReport, Sink, SourceBatch, SourceRecord, Source
from agent.capture import RouteCapture
from agent.queue import DurableQueue


def event(n, key="K1", sink="s", route="r"):
    return {"event_id": f"id-{n}", "route": route, "sink": sink, "entity": "Customer", "key": key,
            "operation": "update", "schema_fingerprint": "fp", "body": b"\x00" + bytes([n % 256]),
            "correlation_id": f"id-{n}", "occurred_at": None}


@pytest.fixture
def queue(tmp_path):
    q = DurableQueue(tmp_path)
    yield q
    q.close()


def test_uses_wal_and_full_sync(queue):
    conn = queue._conn()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2   # FULL


def test_invariant1_events_and_checkpoint_commit_together(queue):
    queue.commit_capture("r", [event(1), event(2)], [], {"cursor": 2})
    assert queue.checkpoint("r") == {"cursor": 2}
    broken = event(3)
    broken["body"] = None            # NOT NULL violation half-way through the batch
    with pytest.raises(sqlite3.IntegrityError):
        queue.commit_capture("r", [event(4), broken], [], {"cursor": 4})
    assert queue.checkpoint("r") == {"cursor": 2}, "checkpoint moved without its events"
    assert [e.event_id for e in queue.peek("s", 10)] == ["id-1", "id-2"]


def test_invariant1_survives_reopen(tmp_path):
    first = DurableQueue(tmp_path)
    first.commit_capture("r", [event(1)], [], {"cursor": 1})
    first.close()
    again = DurableQueue(tmp_path)
    assert again.checkpoint("r") == {"cursor": 1} and again.depth() == 1
    again.close()


def test_invariant3_only_confirmed_rows_are_removed(queue):
    queue.commit_capture("r", [event(n) for n in range(1, 6)], [], None)
    batch = queue.peek("s", 10)
    queue.settle("s", batch, DeliveryReport(delivered={"id-1", "id-2"}, transient_error="broker down"))
    assert [e.event_id for e in queue.peek("s", 10)] == ["id-3", "id-4", "id-5"]
    queue.settle("s", queue.peek("s", 10), DeliveryReport(transient_error="still down"))
    assert queue.depth("s") == 3
    status = queue.status()["r"]
    assert status["queue_depth"] == 3 and status["sink_error"] == "still down"
    assert status["published_total"] == 2


def test_invariant4_duplicate_ids_are_ignored_before_and_after_delivery(queue):
    assert queue.commit_capture("r", [event(1), event(2)], [], None) == 2
    assert queue.commit_capture("r", [event(1)], [], None) == 0
    queue.settle("s", queue.peek("s", 10), DeliveryReport(delivered={"id-1", "id-2"}))
    assert queue.depth() == 0
    assert queue.commit_capture("r", [event(1), event(3)], [], None) == 1   # id-1 was delivered
    assert [e.event_id for e in queue.peek("s", 10)] == ["id-3"]


def test_invariant5_order_kept_and_rejected_event_parked(queue):
    queue.commit_capture("r", [event(1, "A"), event(2, "B"), event(3, "A"), event(4, "B")], [], None)
    assert [e.key for e in queue.peek("s", 10)] == ["A", "B", "A", "B"]
    queue.settle("s", queue.peek("s", 10), DeliveryReport(rejected={"id-2": "schema rejected"},
                                                          delivered={"id-1"}))
    assert [e.event_id for e in queue.peek("s", 10)] == ["id-3", "id-4"]
    parked = queue.exceptions()
    assert [(x["key"], x["stage"], x["reason"]) for x in parked] == [("B", "publish", "schema rejected")]
    assert queue.status()["r"]["dead_lettered_total"] == 1
    # retry puts it back at the end, with its original body
    assert queue.requeue_exception(parked[0]["id"])
    assert [e.event_id for e in queue.peek("s", 10)] == ["id-3", "id-4", "id-2"]
    assert queue.exceptions() == [] and queue.exceptions("retried")[0]["id"] == parked[0]["id"]


def test_exception_queue_discard(queue):
    queue.commit_capture("r", [], [{"stage": "mapping", "reason": "currency: bad", "context": {"row": 1}}], None)
    (item,) = queue.exceptions()
    assert queue.exception(item["id"])["context"] == {"row": 1}
    assert queue.discard_exception(item["id"]) and not queue.discard_exception(item["id"])
    assert queue.count_exceptions() == 0 and queue.count_exceptions("discarded") == 1


class _EndlessSource(Source):
    """Real rows, made up in memory: as many as asked, 100 per batch."""

    def batches(self, checkpoint):
        start = checkpoint or 0
        while True:
            records = [SourceRecord("t", "update", str(n), after={"n": n}) for n in range(start, start + 100)]
            start += 100
            yield SourceBatch(records, start)


class _PassThrough:
    def translate(self, records):
        return [event(int(r.position)) | {"event_id": f"id-{r.position}", "body": b"x" * 2000}
                for r in records], []


def test_quota_pauses_capture_and_status_says_so(tmp_path):
    queue = DurableQueue(tmp_path, max_bytes=256 * 1024)
    capture = RouteCapture("r", _EndlessSource({}, None), _PassThrough(), queue, threading.Event())
    capture.run_once()
    depth = queue.depth()
    assert 0 < depth < 1000, "capture must stop at the quota, not run forever"
    assert queue.over_quota()
    assert capture.run_once() == 0
    assert queue.depth() == depth, "nothing captured, nothing dropped while over quota"
    assert queue.status()["r"]["backpressure"] is True
    queue.settle("s", queue.peek("s", depth), DeliveryReport(delivered={e.event_id for e in queue.peek("s", depth)}))
    queue._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert not queue.over_quota()
    assert capture.run_once() > 0 and queue.status()["r"]["backpressure"] is False
    queue.close()


def test_delivered_ids_never_count_against_the_quota(tmp_path):
    """The quota tripped with an empty queue: delivered ids counted, and capture stayed
    paused with nothing left to deliver."""
    queue = DurableQueue(tmp_path, max_bytes=64 * 1024)
    for start in range(0, 6000, 500):
        queue.commit_capture("r", [event(n) | {"event_id": f"id-{n}"} for n in range(start, start + 500)], [], None)
        batch = queue.peek("s", 500)
        queue.settle("s", batch, DeliveryReport(delivered={e.event_id for e in batch}))
    assert queue.depth() == 0 and queue.used_bytes() > 64 * 1024, "the delivered ids alone exceed the quota"
    assert queue.pending_bytes() == 0 and not queue.over_quota()
    capture = RouteCapture("r", _EndlessSource({}, None), _PassThrough(), queue, threading.Event())
    assert capture.run_once() > 0, "capture must not pause while nothing waits"
    assert queue.pending_bytes() == sum(len(e.body) for e in queue.peek("s", 10**6))
    queue.close()


def test_pending_bytes_follow_every_way_in_and_out(queue):
    queue.commit_capture("r", [event(1), event(2), event(3)], [], None)
    assert queue.pending_bytes() == 6
    assert queue.commit_capture("r", [event(1)], [], None) == 0 and queue.pending_bytes() == 6, "a duplicate adds nothing"
    batch = queue.peek("s", 10)
    queue.settle("s", batch, DeliveryReport(delivered={"id-1"}, rejected={"id-2": "no"}))
    assert queue.pending_bytes() == 2
    (parked,) = queue.exceptions()
    assert queue.requeue_exception(parked["id"]) and queue.pending_bytes() == 4


def test_old_delivered_ids_are_pruned_without_any_delivery(queue):
    """Ids are forgotten a generation at a time (agent.seen_ids): at least the retention
    after their delivery, and by one and a half retentions."""
    queue.commit_capture("r", [event(1), event(2)], [], None)
    queue.settle("s", queue.peek("s", 10), DeliveryReport(delivered={"id-1", "id-2"}))
    week, now = queue.dedup_retention, time.time()
    assert queue.prune(now=now + week / 2) == 0, "still inside the retention"
    assert queue.prune(now=now + week) == 0, "still inside the retention"
    assert queue.commit_capture("r", [event(1)], [], None) == 0
    assert queue.prune(now=now + 1.5 * week) == 2
    assert queue.commit_capture("r", [event(1)], [], None) == 1, "forgotten after the retention"


def test_an_id_still_queued_is_never_forgotten(queue):
    """The fabric down for longer than the retention: what waits keeps its id, and so does
    what was delivered late, for a retention after its delivery."""
    week, now = queue.dedup_retention, time.time()
    queue.commit_capture("r", [event(1)], [], None)
    for weeks in (0.5, 2, 5):
        assert queue.prune(now=now + weeks * week) == 0
        assert queue.commit_capture("r", [event(1)], [], None) == 0, f"queued, {weeks} weeks on"
    assert queue.depth() == 1
    queue.settle("s", queue.peek("s", 10), DeliveryReport(delivered={"id-1"}))
    assert queue.prune(now=now + 5.5 * week) == 0
    assert queue.commit_capture("r", [event(1)], [], None) == 0, "just delivered"
    assert queue.prune(now=now + 6.5 * week) == 1
    assert queue.commit_capture("r", [event(1)], [], None) == 1


def test_an_id_twice_in_one_batch_is_queued_once(queue):
    assert queue.commit_capture("r", [event(1), event(2), event(1)], [], None) == 2
    assert [e.event_id for e in queue.peek("s", 10)] == ["id-1", "id-2"] and queue.pending_bytes() == 4


V1_DDL = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('schema_version', '1');
CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE,
    route TEXT NOT NULL, sink TEXT NOT NULL, entity TEXT NOT NULL, key TEXT NOT NULL,
    operation TEXT NOT NULL, schema_fingerprint TEXT NOT NULL, body BLOB NOT NULL,
    correlation_id TEXT NOT NULL, occurred_at REAL, enqueued_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT);
CREATE INDEX outbox_by_sink ON outbox (sink, seq);
CREATE TABLE delivered (event_id TEXT PRIMARY KEY, delivered_at REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX delivered_by_age ON delivered (delivered_at);
INSERT INTO outbox (event_id, route, sink, entity, key, operation, schema_fingerprint, body, correlation_id,
                    enqueued_at) VALUES ('6f0c2a52-8d1e-5c55-9a43-0b9e1d7c3f21', 'r', 's', 'Customer', 'K', 'update',
                                         'fp', x'00010203', 'c', 1.0);
INSERT INTO delivered VALUES ('0a0c2a52-8d1e-5c55-9a43-0b9e1d7c3f21', 1.0e12);
"""


def test_a_queue_of_the_released_version_is_upgraded_in_place(tmp_path):
    """A state directory written by the released agent (text id keys, no pending count)."""
    with sqlite3.connect(tmp_path / "queue.db") as db:
        db.executescript(V1_DDL)
    queue = DurableQueue(tmp_path)
    assert queue.pending_bytes() == 4
    (waiting,) = queue.peek("s", 10)
    assert waiting.event_id == "6f0c2a52-8d1e-5c55-9a43-0b9e1d7c3f21" and waiting.body == b"\x00\x01\x02\x03"
    delivered_before = {**event(1), "event_id": "0a0c2a52-8d1e-5c55-9a43-0b9e1d7c3f21"}
    assert queue.commit_capture("r", [delivered_before], [], None) == 0, "what v1 delivered stays refused"
    queue.settle("s", [waiting], DeliveryReport(delivered={waiting.event_id}))
    assert queue.pending_bytes() == 0 and queue.depth() == 0
    queue.close()


V2_DDL = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('schema_version', '2');
CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, id16 BLOB NOT NULL UNIQUE, event_id TEXT NOT NULL,
    route TEXT NOT NULL, sink TEXT NOT NULL, entity TEXT NOT NULL, key TEXT NOT NULL,
    operation TEXT NOT NULL, schema_fingerprint TEXT NOT NULL, body BLOB NOT NULL,
    correlation_id TEXT NOT NULL, occurred_at REAL, enqueued_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT);
CREATE INDEX outbox_by_sink ON outbox (sink, seq);
CREATE TABLE delivered (id16 BLOB PRIMARY KEY, delivered_at REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX delivered_by_age ON delivered (delivered_at);
CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO counters VALUES ('pending_bytes', 4);
INSERT INTO outbox (seq, id16, event_id, route, sink, entity, key, operation, schema_fingerprint, body,
                    correlation_id, enqueued_at)
    VALUES (5, x'6f0c2a528d1e5c559a430b9e1d7c3f21', '6f0c2a52-8d1e-5c55-9a43-0b9e1d7c3f21', 'r', 's', 'Customer',
            'K', 'update', 'fp', x'00010203', 'c', 1.0);
UPDATE sqlite_sequence SET seq = 7 WHERE name = 'outbox';
INSERT INTO delivered VALUES (x'0a0c2a528d1e5c559a430b9e1d7c3f21', 1.0e12);
INSERT INTO delivered VALUES (x'0b0c2a528d1e5c559a430b9e1d7c3f21', 9e999);
"""


def test_a_queue_of_schema_2_keeps_its_events_and_its_refusals(tmp_path):
    """v2 kept delivered and discarded ids in a table of their own; v3 remembers them in
    generations (agent.seen_ids). Nothing queued, delivered or discarded may change meaning."""
    with sqlite3.connect(tmp_path / "queue.db") as db:
        db.executescript(V2_DDL)
    queue = DurableQueue(tmp_path)
    (waiting,) = queue.peek("s", 10)
    assert (waiting.seq, waiting.body, queue.pending_bytes()) == (5, b"\x00\x01\x02\x03", 4)
    for old_id in ("0a0c2a52-8d1e-5c55-9a43-0b9e1d7c3f21", "0b0c2a52-8d1e-5c55-9a43-0b9e1d7c3f21", waiting.event_id):
        assert queue.commit_capture("r", [{**event(1), "event_id": old_id}], [], None) == 0, old_id
    assert queue.commit_capture("r", [event(2)], [], None) == 1
    assert [e.seq for e in queue.peek("s", 10)] == [5, 8], "a seq v2 gave is never given again"
    queue.settle("s", queue.peek("s", 10), DeliveryReport(delivered={waiting.event_id, "id-2"}))
    far = time.time() + 10 * queue.dedup_retention
    assert queue.prune(now=far) == 0 and queue.prune(now=far + 2 * queue.dedup_retention) == 3
    assert queue.commit_capture("r", [{**event(1), "event_id": "0b0c2a52-8d1e-5c55-9a43-0b9e1d7c3f21"}], [],
                                None) == 0, "a discarded id stays refused for good"
    queue.close()


def test_a_parked_event_captured_again_is_not_queued_or_parked_twice(queue):
    queue.commit_capture("r", [event(1)], [], None)
    queue.settle("s", queue.peek("s", 10), DeliveryReport(rejected={"id-1": "constraint violated"}))
    assert queue.count_exceptions() == 1
    assert queue.commit_capture("r", [event(1)], [], None) == 0, "redelivered upstream after a crash"
    assert queue.depth() == 0 and queue.count_exceptions() == 1
    (item,) = queue.exceptions()
    assert queue.discard_exception(item["id"])
    assert queue.commit_capture("r", [event(1)], [], None) == 0, "a discarded event stays discarded"
    assert queue.prune(now=__import__("time").time() + 10 * queue.dedup_retention) == 0
    assert queue.purge_exceptions(older_than=0, now=__import__("time").time() + 1) == 1
    assert queue.count_exceptions("discarded") == 0
    assert queue.commit_capture("r", [event(1)], [], None) == 0, "purging the entry keeps the refusal"
    assert queue.commit_capture("r", [event(2)], [], None) == 1, "another version is new work"


def test_purge_keeps_open_and_recent_entries(queue):
    import time
    queue.commit_capture("r", [event(1), event(2), event(3)], [], None)
    queue.settle("s", queue.peek("s", 10), DeliveryReport(rejected={f"id-{n}": "refused" for n in (1, 2, 3)}))
    first, second, third = (item["id"] for item in queue.exceptions())
    assert queue.discard_exception(first)
    assert queue.requeue_exception(second)
    assert queue.purge_exceptions(older_than=30 * 86400) == 0, "resolved just now"
    assert queue.purge_exceptions(older_than=30 * 86400, now=time.time() + 31 * 86400) == 2
    assert [item["id"] for item in queue.exceptions()] == [third]


class _ScreeningSink(Sink):
    """A small in-memory sink double for the core's ordering wrapper (pure logic): it
    holds what ``hold`` names and refuses what ``refuse`` names before sending."""

    def __init__(self, hold=(), refuse=()):
        super().__init__({}, None)
        self.hold, self.refuse, self.written = set(hold), set(refuse), []

    def screen(self, events):
        return {**{e.event_id: (False, "registry unreachable") for e in events if e.event_id in self.hold},
                **{e.event_id: (True, "schema refused") for e in events if e.event_id in self.refuse}}

    def write(self, events):
        self.written.extend(e.event_id for e in events)
        return DeliveryReport(delivered={e.event_id for e in events})


def test_a_held_event_holds_the_later_events_of_its_key_only(queue):
    from agent.delivery import in_key_order
    queue.commit_capture("r", [event(1, "A"), event(2, "B"), event(3, "A"), event(4, "C"), event(5, "C")], [], None)
    sink = _ScreeningSink(hold={"id-1"}, refuse={"id-4"})
    report = in_key_order(sink, queue.peek("s", 10))
    assert sink.written == ["id-2", "id-5"], "A waits behind its held event; C's refused one leaves the order"
    assert report.delivered == {"id-2", "id-5"} and report.rejected == {"id-4": "schema refused"}
    assert "registry unreachable" in report.transient_error


def test_a_deferred_event_waits_in_place_holds_its_key_back_and_is_parked_past_its_bound(queue, monkeypatch):
    from agent.contracts import Deferral
    queue.commit_capture("r", [event(1, "K1"), event(2, "K2"), event(3, "K1")], [], None)
    first = queue.peek("s", 10)
    wait = Deferral("Project P-1 waits for its parent: erp_customer with cust_no = 'C-1'", max_wait_s=60)
    queue.settle("s", first, DeliveryReport(delivered={"id-2"}, deferred={"id-1": wait, "id-3": wait}))
    assert queue.depth("s") == 2 and queue.peek("s", 10) == [], "not offered again before it is due"
    queue.commit_capture("r", [event(4, "K1"), event(5, "K3")], [], None)
    assert [e.event_id for e in queue.peek("s", 10)] == ["id-5"], "its key waits behind it, other keys flow"
    status = queue.status()["r"]
    assert status["waiting"] == 2 and status["waiting_reason"] == wait.reason
    now = [time.time() + 1]
    monkeypatch.setattr("agent.queue.time.time", lambda: now[0])
    due = queue.peek("s", 10)
    assert [e.event_id for e in due] == ["id-1", "id-3", "id-4", "id-5"], "due again, in order"
    queue.settle("s", due, DeliveryReport(delivered={"id-5"}, deferred={i: wait for i in ("id-1", "id-3", "id-4")}))
    now[0] += 59.5                      # the parent never came
    due = queue.peek("s", 10)
    report = DeliveryReport(deferred={i: wait for i in ("id-1", "id-3", "id-4")})
    queue.settle("s", due, report)
    assert set(report.rejected) == {"id-1", "id-3"}, "parked past the bound"
    assert [x["reason"][:len(wait.reason) + 10] for x in queue.exceptions()] == [wait.reason + " (waited 6"] * 2
    assert queue.depth("s") == 1 and queue.status()["r"]["waiting"] == 1, "id-4 began to wait later: its own bound"


def test_a_deferred_event_is_due_at_once_when_a_batch_provides_what_it_waits_for(queue):
    from agent.contracts import Deferral
    queue.commit_capture("r", [event(1, "P-1"), event(2, "P-2"), event(3, "C-1")], [], None)
    parent = "erp_customer(cust_no)=('C-1',)"
    waits = {"id-1": Deferral("waits for C-1", 600, parent), "id-2": Deferral("waits for C-2", 600, "other")}
    queue.settle("s", queue.peek("s", 2), DeliveryReport(deferred=waits))
    assert [e.event_id for e in queue.peek("s", 10)] == ["id-3"]
    queue.settle("s", queue.peek("s", 10), DeliveryReport(delivered={"id-3"}, provided={parent}))
    assert [e.event_id for e in queue.peek("s", 10)] == ["id-1"], "woken by its parent, the other still waits"


def test_a_batch_delivered_around_a_waiting_event_never_removes_it(queue):
    """The whole-range delete of a fully delivered batch assumed the batch was the head of the
    queue; a peek past a waiting event makes the batch straddle it."""
    from agent.contracts import Deferral
    queue.commit_capture("r", [event(n, f"K{n}") for n in (1, 2, 3, 4)], [], None)
    queue.settle("s", queue.peek("s", 10), DeliveryReport(delivered={"id-2", "id-4"}, deferred={
        "id-1": Deferral("waits", 600, "a"), "id-3": Deferral("waits", 600, "b")}))
    queue.commit_capture("r", [event(5, "K5"), event(6, "K6")], [], None)
    queue.settle("s", queue.peek("s", 1), DeliveryReport(delivered={"id-5"}, provided={"a"}))
    batch = queue.peek("s", 10)
    assert [e.event_id for e in batch] == ["id-1", "id-6"], "id-1 woken, id-3 still waits between them"
    queue.settle("s", batch, DeliveryReport(delivered={"id-1", "id-6"}))
    assert queue.depth("s") == 1 and queue.status()["r"]["waiting"] == 1, "id-3 is still queued"


class _CountingSink(_ScreeningSink):
    """Counts its opens and closes (a real sink's open may reflect a database or claim a
    transactional id: a second one at every start is work, and for a pair a fence)."""

    def __init__(self):
        super().__init__()
        self.opens = self.closes = 0

    def open(self):
        self.opens += 1

    def close(self):
        self.closes += 1


def test_a_sink_is_opened_once_at_start_and_reopened_only_when_a_passive_agent_becomes_active(queue):
    from agent.delivery import SinkDelivery
    sink = _CountingSink()
    delivery = SinkDelivery("s", sink, queue, threading.Event())
    delivery.set_active(True)         # what the delivery process is told at its start, already active
    delivery._open_at_start()
    queue.commit_capture("r", [event(1)], [], None)
    assert delivery.deliver_once() == 1
    assert (sink.opens, sink.closes) == (1, 0), "told 'active' while active: nothing to reopen"
    delivery.set_active(False)        # the pair's other agent took over
    delivery.set_active(True)         # and handed back: the sink claims its ids again
    queue.commit_capture("r", [event(2)], [], None)
    assert delivery.deliver_once() == 1
    assert (sink.opens, sink.closes) == (2, 1)
