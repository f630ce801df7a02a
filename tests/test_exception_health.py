"""The exception queue as operators read it, and health that counts it: one source
position is one open entry (re-reading it, as the overlap after a snapshot does, adds
nothing), entries group by reason, open entries make health degraded, and an outage is
timed from its start. A real SQLite queue and the real customer mapping."""
import threading
import time

from agent.capture import RouteCapture
from agent.contracts import SourceBatch, SourceRecord, Source
from agent.exception_view import Filter, groups, page, summary
from agent.health import verdict
from agent.health import route_problems
from agent.queue import DurableQueue
from agent.translate import Translator
from tests.test_mapping import ROW, customer_mapping


class _Rows(Source):
    """The same rows every pass: a snapshot's overlap re-read, or a poll that re-reads."""

    def __init__(self, records):
        self.records = records

    def batches(self, checkpoint):
        yield SourceBatch(self.records, {"pass": (checkpoint or {}).get("pass", 0) + 1})


def _bad(n, code="07"):
    return SourceRecord("cust", "update", f'["C-{n}"]@2026-11-27T09:30:00', after={**ROW, "CUST_NO": f"C-{n}", "CO": code})


def test_a_position_read_again_keeps_one_open_entry_with_its_key(tmp_path):
    queue = DurableQueue(tmp_path)
    translator = Translator("customers", "fabric", "erp", customer_mapping())
    records = [_bad(n) for n in range(1, 4)] + [_bad(9, code="99")]
    capture = RouteCapture("customers", _Rows(records), translator, queue, threading.Event())
    capture.run_once()
    capture.run_once()                     # the overlap re-read: same positions
    assert queue.count_exceptions() == 4, "one position, one open entry"
    assert queue.status()["customers"]["rejected_total"] == 4, "a re-read is not a new rejection"
    total, items = page(queue.reader(), Filter(), time.time())
    assert total == 4 and {i["key"] for i in items} == {"C-1", "C-2", "C-3", "C-9"}, "the mapped key is shown"
    (first, second) = groups(queue.reader(), Filter(), time.time())
    assert first["count"] == 3 and "unknown legal_entity code '07'" in first["reason"]
    assert second["count"] == 1 and "'99'" in second["reason"]
    queue.discard_exception(items[0]["id"])
    capture.run_once()
    assert queue.count_exceptions() == 3, "a discarded position is not reopened by itself either"
    queue.close()


def test_filters_and_pages_count_every_match(tmp_path):
    queue = DurableQueue(tmp_path)
    entries = [{"stage": "mapping", "reason": f"legal_entity: unknown code '{c}'", "context": {}}
               for c in ["07"] * 5 + ["08"] * 2]
    queue.commit_capture("a", [], entries, None)
    queue.commit_capture("b", [], entries[:1], None)
    now = time.time()
    total, items = page(queue.reader(), Filter(route="a"), now, limit=2, offset=4)
    assert total == 7 and [i["id"] for i in items] == [5, 6]
    assert page(queue.reader(), Filter(reason="'08'"), now)[0] == 2
    assert page(queue.reader(), Filter(older_than=3600), now)[0] == 0
    assert page(queue.reader(), Filter(older_than=3600), now + 7200)[0] == 8
    found = summary(queue.reader(), now + 90)
    assert found["count"] == 8 and found["oldest_age_s"] >= 90
    assert found["top_reasons"][0] == {"count": 5, "route": "a", "stage": "mapping",
                                       "reason": "legal_entity: unknown code '07'"}
    health = verdict({}, found, now)
    assert health["health"] == "degraded"
    assert "8 open exception(s)" in health["problems"][0] and "5 \u00d7 legal_entity" in health["problems"][0]
    assert verdict({}, summary(DurableQueue(tmp_path / "empty").reader(), now), now) == {"health": "ok",
                                                                                          "problems": []}
    queue.close()


def test_an_outage_is_timed_from_its_first_failure_and_counts_what_waits(tmp_path):
    queue = DurableQueue(tmp_path)
    queue.commit_capture("r", [{"event_id": f"e{n}", "route": "r", "sink": "s", "entity": "Customer", "key": "k",
                                "operation": "update", "schema_fingerprint": "f", "body": b"x",
                                "correlation_id": f"e{n}", "occurred_at": None} for n in range(12)], [], None)
    queue.update_status("r", sink_error="sink s: no acknowledgement from the destination (unreachable?)")
    started = queue.status()["r"]["sink_error_since"]
    queue.update_status("r", sink_error="Broker transport failure")      # another text, same outage
    status = queue.status()["r"]
    assert status["sink_error_since"] == started
    (problem,) = route_problems(status, now=started + 45)
    assert "for 45s" in problem and "12 event(s) wait" in problem, problem
    queue.update_status("r", sink_error=None)
    assert "sink_error_since" not in queue.status()["r"] and route_problems(queue.status()["r"]) == []
    queue.close()


def test_a_retried_rejection_stops_counting_against_the_success_ratio(tmp_path):
    from agent.contracts import DeliveryReport
    from agent.metrics import success_rate
    queue = DurableQueue(tmp_path)
    events = [{"event_id": f"e{n}", "route": "r", "sink": "s", "entity": "Customer", "key": f"k{n}",
               "operation": "update", "schema_fingerprint": "f", "body": b"x", "correlation_id": f"e{n}",
               "occurred_at": None} for n in range(4)]
    queue.commit_capture("r", events, [], None)
    batch = queue.peek("s", 10)
    queue.settle("s", batch, DeliveryReport(delivered={"e0", "e1", "e2"}, rejected={"e3": "schema refused"}))
    assert success_rate(queue.status()["r"]) == 0.75
    (parked,) = queue.exceptions()
    assert queue.requeue_exception(parked["id"])
    queue.settle("s", queue.peek("s", 10), DeliveryReport(delivered={"e3"}))
    assert success_rate(queue.status()["r"]) == 1.0, "4 published, nothing lost in the end"
    queue.close()
