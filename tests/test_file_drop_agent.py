"""file_drop end to end: real files in a real inbox, the real Agent, the avro_files sink.

Outcomes (archive / error with its report / exception queue), re-drops, triggers,
sidecars, hostile input, and a half-written file with the real watchdog observer.
"""
import json
import os
import shutil
import time
from decimal import Decimal
from pathlib import Path

import fastavro
import pytest

from agent.config import parse
from agent.runtime import Agent
from tests.support.route import INVOICE_MAPPING, LOOKUPS
from tests.test_file_drop_formats import DATA, FIXED, GERMAN_CSV

HEADER = "inv_no,cust_no,company,curr,tax_code,inv_date,net,tax,gross,status\n"


def invoice_line(n: int, company: str = "01", net: str = "100.00") -> str:
    gross = Decimal(net) + 8 if net.replace(".", "").isdigit() else "0.00"
    return f"I-{n:05d},C-{n},{company},USD,NY,2026-11-27,{net},8.00,{gross},open\n"


def config(tmp_path: Path, capture: dict, mapping: dict = INVOICE_MAPPING, every: str = "0.2s", **source) -> dict:
    inbox = tmp_path / "inbox"
    inbox.mkdir(exist_ok=True)
    return {"state_dir": str(tmp_path / "state"), "lookups": LOOKUPS, "mappings": {"invoice": mapping},
            "sources": {"drop": {"type": "file_drop", "inbox": str(inbox), "observer": "none", "system": "fin",
                                 "rescan_every": "0.05s",
                                 **source}},
            "sinks": {"files": {"type": "avro_files", "directory": str(tmp_path / "out"), "rotate_seconds": 0.2}},
            "routes": {"invoices": {"source": "drop", "sink": "files", "mapping": "invoice",
                                    "schedule": {"every": every},
                                    "capture": {"pattern": "*", "min_age": 0, "settle": 0.05, **capture}}}}


class Running:
    """An in-process agent driven pass by pass (or by its scheduler with ``scheduled``)."""

    def __init__(self, document: dict, scheduled: bool = False):
        self.agent = Agent(parse(document))
        self.agent.build()
        self.agent.start(capture=scheduled)
        self.inbox = Path(document["sources"]["drop"]["inbox"])
        self.out = Path(document["sinks"]["files"]["directory"])

    def passes(self, n: int = 4, pause: float = 0.08) -> None:
        for _ in range(n):
            self.agent.run_pass()
            time.sleep(pause)
        assert self.agent.deliver_all()

    def exceptions(self) -> list[dict]:
        q = self.agent.queue
        return [q.exception(item["id"]) for item in q.exceptions(limit=1000)]

    def stop(self) -> None:
        self.agent.stop()


def published(out: Path) -> list[dict]:
    events = []
    for path in sorted(out.glob("*/*.avro")):
        with open(path, "rb") as handle:
            events.extend(fastavro.reader(handle))
    return events


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def archive_day(inbox: Path) -> Path:
    days = [p for p in (inbox / "archive").iterdir() if p.name != ".ledger"]
    assert len(days) == 1
    return days[0]


@pytest.fixture
def run(tmp_path):
    started = []

    def start(document, **kw):
        started.append(Running(document, **kw))
        return started[-1]

    yield start
    for r in started:
        r.stop()


def german_mapping() -> dict:
    return {"entity": "Invoice", "fields": {
        "invoice_number": "Rechnungsnr", "customer_number": "Kunde",
        "legal_entity": {"column": "Firma", "lookup": "legal_entity"}, "currency": "Währung",
        "tax_jurisdiction": {"column": "Steuer", "lookup": "tax_jurisdiction"}, "invoice_date": "Datum",
        "net_amount": "Netto", "tax_amount": "Steuerbetrag", "total_amount": "Brutto", "status": "Status"}}


def test_german_export_is_published_whole_and_archived(tmp_path, run):
    r = run(config(tmp_path, {**GERMAN_CSV, "pattern": "*.csv"}, mapping=german_mapping()))
    shutil.copy(DATA / "invoices_de_cp1252.csv", r.inbox / "RE_20261127.csv")
    r.passes()
    progress = r.agent.queue.status()["invoices"]["progress"]
    assert progress["file"] == "RE_20261127.csv" and progress["phase"] == "archived" and progress["rows_read"] == 3
    r.stop()
    events = published(r.out)
    assert [e["key"] for e in events] == ["R-2026-0001", "R-2026-0002", "R-2026-0003"]
    assert events[1]["after"]["net_amount"] == Decimal("-500.00") and events[0]["after"]["currency"] == "EUR"
    # identity by route, business key and content (a corrected re-drop repeats unchanged ids)
    positions = [e["metadata"]["source"]["position"] for e in events]
    assert [p.split(":sha256:")[0] for p in positions] == ["key:R-2026-0001", "key:R-2026-0002", "key:R-2026-0003"]
    day = archive_day(r.inbox)
    assert files(day) == ["RE_20261127.csv"] and files(r.inbox) == []
    assert (day / "RE_20261127.csv").read_bytes() == (DATA / "invoices_de_cp1252.csv").read_bytes()


def test_fixed_width_file_with_header_and_trailer(tmp_path, run):
    r = run(config(tmp_path, FIXED))
    shutil.copy(DATA / "invoices_fixed.txt", r.inbox / "INV.DAT")
    r.passes()
    r.stop()
    events = published(r.out)
    assert [(e["key"], e["after"]["net_amount"]) for e in events] == [
        ("INV0000101", Decimal("1234.50")), ("INV0000102", Decimal("-500.00")), ("INV0000103", Decimal("0.99"))]


def test_one_bad_row_rejects_the_whole_file_with_a_full_report(tmp_path, run):
    r = run(config(tmp_path, {"format": "csv", "csv": {"types": {"net": "decimal"}}}))
    body = HEADER + invoice_line(1) + invoice_line(2, company="99") + invoice_line(3, net="12.5x") + invoice_line(4)
    (r.inbox / "inv.csv").write_text(body)
    r.passes()
    assert published(r.out) == [] and r.agent.queue.depth() == 0, "nothing of a rejected file is published"
    assert files(r.inbox / "error") == ["inv.csv", "inv.csv.error.json"]
    report = json.loads((r.inbox / "error" / "inv.csv.error.json").read_text())
    found = {(p["line"], p["column"], p["value"], p["rule"]) for p in report["problems"]}
    assert found == {(3, "company", "99", "legal_entity"), (4, "net", "12.5x", "decimal")}
    assert report["problems_total"] == 2
    [entry] = r.exceptions()
    assert entry["stage"] == "file" and "inv.csv" in entry["reason"] and entry["context"]["problems_total"] == 2
    from agent.retry import retry_exception
    ok, what = retry_exception(r.agent.queue, entry, None)
    assert not ok and "corrected file" in what
    assert (r.inbox / "error" / "inv.csv").read_text() == body, "nothing is deleted or changed"


def test_loosely_written_amounts_and_dates_reject_the_file_with_line_and_value(tmp_path, run):
    """'2025-01-20 garbage' became a date and '1_000.50' an amount: a finance file with
    such values is refused as a whole, every value named with its line."""
    r = run(config(tmp_path, {"format": "csv"}))
    lines = [invoice_line(1), invoice_line(2).replace("2026-11-27", "2025-01-20 garbage"),
             invoice_line(3, net="1_000.50"), invoice_line(4, net="\u0661\u0662\u0663.\u0664\u0665"),
             invoice_line(5).replace("2026-11-27", "2025-01-22T99:99"), invoice_line(6, net="1e3")]
    (r.inbox / "inv.csv").write_text(HEADER + "".join(lines), encoding="utf-8")
    r.passes()
    assert published(r.out) == []
    report = json.loads((r.inbox / "error" / "inv.csv.error.json").read_text())
    found = {(p["line"], p["column"], p["value"]) for p in report["problems"]}
    assert found == {(3, "inv_date", "2025-01-20 garbage"), (4, "net", "1_000.50"),
                     (5, "net", "\u0661\u0662\u0663.\u0664\u0665"), (6, "inv_date", "2025-01-22T99:99"),
                     (7, "net", "1e3")}


def test_every_problem_is_counted_and_the_report_is_bounded(tmp_path, run):
    r = run(config(tmp_path, {"format": "csv", "max_problems": 3}))
    (r.inbox / "inv.csv").write_text(HEADER + "".join(invoice_line(n, company="99") for n in range(1, 8)))
    r.passes()
    report = json.loads((r.inbox / "error" / "inv.csv.error.json").read_text())
    assert report["problems_total"] == 7 and report["problems_listed"] == 3
    assert [p["line"] for p in report["problems"]] == [2, 3, 4]


def test_per_row_option_publishes_good_rows_and_reports_bad_ones(tmp_path, run):
    r = run(config(tmp_path, {"format": "csv", "all_or_nothing": False}))
    body = HEADER + invoice_line(1) + invoice_line(2, company="99") + "I-3,ragged\n" + invoice_line(4)
    (r.inbox / "inv.csv").write_text(body)
    r.passes()
    r.stop()
    assert sorted(e["key"] for e in published(r.out)) == ["I-00001", "I-00004"]
    stages = sorted((x["stage"], x["reason"].split(":")[0]) for x in r.exceptions())
    assert [s for s, _ in stages] == ["file", "mapping"]
    day = archive_day(r.inbox)
    assert files(day) == ["inv.csv", "inv.csv.rejected-rows.json"]
    rules = sorted(p["rule"] for p in json.loads((day / "inv.csv.rejected-rows.json").read_text())["problems"])
    assert rules == ["columns"], "parse problems are listed; mapping failures are in the exception queue"
    mapping = next(x for x in r.exceptions() if x["stage"] == "mapping")
    assert mapping["context"]["record"]["position"].endswith(":2") and mapping["context"]["problems"][0]["value"] == "99"


def test_identical_redrop_is_skipped_and_a_corrected_file_is_processed(tmp_path, run):
    r = run(config(tmp_path, {"format": "csv"}))
    body = HEADER + invoice_line(1) + invoice_line(2)
    (r.inbox / "inv.csv").write_text(body)
    r.passes()
    (r.inbox / "inv.csv").write_text(body)          # the MFT job sends it again
    r.passes()
    (r.inbox / "inv.csv").write_text(body + invoice_line(3))   # corrected: one more invoice
    r.passes()
    r.stop()
    events = published(r.out)
    assert [e["key"] for e in events] == ["I-00001", "I-00002", "I-00003"], "corrected file: only what is new"
    day = archive_day(r.inbox)
    names = files(day)
    assert len([n for n in names if n.endswith(".csv")]) == 3 and len([n for n in names if "skipped" in n]) == 1
    skipped = json.loads((day / next(n for n in names if "skipped" in n)).read_text())
    assert skipped["reason"] == "identical content was already published" and skipped["first_published"]["name"] == "inv.csv"
    status = r.agent.queue.status()["invoices"]
    assert status["health"]["details"]["last skipped file"].startswith("inv.csv at ")


def test_trigger_file_is_awaited_and_moved_along(tmp_path, run):
    r = run(config(tmp_path, {"format": "csv", "trigger": ".ok"}))
    (r.inbox / "inv.csv").write_text(HEADER + invoice_line(1))
    r.passes()
    assert files(r.inbox) == ["inv.csv"] and published(r.out) == []
    health = r.agent.queue.status()["invoices"]["health"]
    assert health["state"] == "waiting for companion files"
    assert health["details"]["waiting for companion file"] == "inv.csv (needs .ok)"
    (r.inbox / "inv.ok").write_text("")
    r.passes()
    health = r.agent.queue.status()["invoices"]["health"]
    assert health["state"] == "ok" and health["details"]["waiting for companion file"] is None
    r.stop()
    assert [e["key"] for e in published(r.out)] == ["I-00001"]
    assert files(archive_day(r.inbox)) == ["inv.csv", "inv.ok"] and files(r.inbox) == []


def test_sidecar_control_file_checks_count_and_totals(tmp_path, run):
    capture = {"format": "csv", "pattern": "*.csv", "csv": {"types": {"net": "decimal"}},
               "checks": {"source": "sidecar", "record_count": "records", "totals": {"net": "net_total"}}}
    r = run(config(tmp_path, capture))
    (r.inbox / "good.csv").write_text(HEADER + invoice_line(1) + invoice_line(2, net="50.25"))
    (r.inbox / "good.csv.ctl").write_text("records=2\nnet_total=150.25\n")
    (r.inbox / "short.csv").write_text(HEADER + invoice_line(3))
    (r.inbox / "short.csv.ctl").write_text('{"records": 2, "net_total": "200.00"}')
    r.passes(6)
    r.stop()
    assert [e["key"] for e in published(r.out)] == ["I-00001", "I-00002"]
    assert files(r.inbox / "error") == ["short.csv", "short.csv.ctl", "short.csv.error.json"]
    rules = [p["rule"] for p in json.loads((r.inbox / "error" / "short.csv.error.json").read_text())["problems"]]
    assert rules == ["record_count", "control_total"]


def test_hostile_input_is_refused_with_a_reason(tmp_path, run):
    secret = tmp_path / "outside.csv"
    secret.write_text(HEADER + invoice_line(9))
    r = run(config(tmp_path, {"format": "csv", "max_size": "2KiB"}))
    os.symlink(secret, r.inbox / "link.csv")
    (r.inbox / "huge.csv").write_text(HEADER + invoice_line(1) * 60)
    (r.inbox / "junk.csv").write_bytes(HEADER.encode() + os.urandom(300))
    (r.inbox / "latin.csv").write_bytes(HEADER.encode() + invoice_line(2).replace("open", "offen\xe9").encode("latin-1"))
    os.mkfifo(r.inbox / "pipe.csv")
    r.passes(8)
    r.stop()
    assert published(r.out) == []
    reasons = {}
    for report in (r.inbox / "error").glob("*.error.json"):
        problem = json.loads(report.read_text())["problems"][0]
        reasons[report.name.removesuffix(".error.json")] = (problem["rule"], problem["message"])
    assert reasons["link.csv"][1].startswith("symbolic link") and reasons["pipe.csv"][1].startswith("not a regular")
    assert "over the configured max_size" in reasons["huge.csv"][1]
    assert reasons["junk.csv"][0] in ("binary", "encoding") and reasons["latin.csv"][0] == "encoding"
    assert secret.read_text() == HEADER + invoice_line(9), "the link target is never touched"
    assert len(r.exceptions()) == 5


def test_half_written_file_is_not_read_before_it_is_finished(tmp_path, run):
    """The real (inotify) watcher wakes the scan; the writer appends for ~2.5 s."""
    document = config(tmp_path, {"format": "csv", "min_age": 1.0, "settle": 0.5}, observer="native",
                      rescan_every="60s")
    r = run(document, scheduled=True)
    path = r.inbox / "slow.csv"
    seen_in_inbox = []
    with open(path, "w") as handle:
        handle.write(HEADER)
        for n in range(1, 11):
            handle.write(invoice_line(n))
            handle.flush()
            time.sleep(0.25)
            seen_in_inbox.append(path.exists())
    assert all(seen_in_inbox), "the file was claimed while it was still being written"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not list((r.inbox / "archive").glob("*/slow.csv")):
        time.sleep(0.1)
    assert r.agent.deliver_all()
    r.stop()
    keys = [e["key"] for e in published(r.out)]
    assert keys == [f"I-{n:05d}" for n in range(1, 11)]


def test_polling_observer_for_network_shares_with_json_lines(tmp_path, run):
    """The polling observer (what SMB/NFS shares need) wakes the scan; the timer is 60 s."""
    document = config(tmp_path, {"format": "jsonl", "pattern": "*.jsonl"}, observer="polling", poll_interval=0.2,
                      rescan_every="60s")
    r = run(document, scheduled=True)
    time.sleep(0.5)                       # the start-up scan has run: only an event can wake the next one
    shutil.copy(DATA / "invoices.jsonl", r.inbox / "inv.jsonl")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not list((r.inbox / "archive").glob("*/inv.jsonl")):
        time.sleep(0.1)
    assert r.agent.deliver_all()
    r.stop()
    events = published(r.out)
    assert [(e["key"], e["after"]["net_amount"]) for e in events] == [("J-1", Decimal("1000.10")),
                                                                      ("J-2", Decimal("99.90"))]


def test_bad_file_specs_are_reported_all_at_once_by_the_config_check(tmp_path):
    from agent.contracts import ConfigError
    document = config(tmp_path, {"format": "fixed_width", "encoding": "utf-16", "pattern": "../x",
                                 "trigger": "done", "min_age": "soon"})
    with pytest.raises(ConfigError) as caught:
        parse(document)
    text = "\n".join(caught.value.problems)
    for expected in ("encoding", "pattern", "trigger", "min_age"):
        assert f"routes.invoices.capture.{expected}" in text, text      # where each was written


def test_graceful_stop_in_the_middle_of_a_file_resumes_without_duplicates(tmp_path, run):
    document = config(tmp_path, {"format": "csv", "batch_size": 100}, every="0.05s")
    rows = 3000
    inbox = tmp_path / "inbox"
    (inbox / "inv.csv").write_text(HEADER + "".join(invoice_line(n) for n in range(1, rows + 1)))
    first = run(document, scheduled=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        cp = first.agent.queue.checkpoint("invoices")
        if cp and cp["file"] and cp["file"]["record"] >= 300:
            break
        time.sleep(0.01)
    first.stop()
    cp_at_stop = json.loads(json.dumps(cp))
    assert list(inbox.glob("processing/*/inv.csv")), "stopped mid-file: it waits in processing/"
    second = run(document)
    second.passes(3)
    second.stop()
    events = published(tmp_path / "out")
    assert len(events) == rows and len({e["metadata"]["event_id"] for e in events}) == rows
    assert sorted(e["key"] for e in events) == [f"I-{n:05d}" for n in range(1, rows + 1)]
    assert 0 < cp_at_stop["file"]["record"] < rows
