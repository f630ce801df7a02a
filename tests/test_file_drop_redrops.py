"""Re-dropped files, end to end with the real Agent, real files and the avro_files sink
(issue 12, defects 6 and 7): a corrected file publishes only what changed, as corrections
of the earlier rows; what a route has published is its own, not its inbox's."""
from __future__ import annotations

import json
from decimal import Decimal

from tests.test_file_drop_agent import HEADER, archive_day, config, files, invoice_line, published, run  # noqa: F401


def test_a_corrected_file_publishes_only_the_changed_row_as_an_update(tmp_path, run):
    """Defect 6: one changed byte sent all 50 rows again as CREATE with 50 new ids."""
    r = run(config(tmp_path, {"format": "csv"}))
    lines = [invoice_line(n) for n in range(1, 51)]
    (r.inbox / "inv.csv").write_text(HEADER + "".join(lines))
    r.passes()
    lines[16] = invoice_line(17, net="100.50")          # the correction
    (r.inbox / "inv.csv").write_text(HEADER + "".join(lines))
    r.passes()
    r.stop()
    events = published(r.out)
    assert len(events) == 51, "50 creates, then only the corrected row"
    first, correction = events[16], events[50]
    assert first["key"] == correction["key"] == "I-00017"
    assert [e["metadata"]["operation"] for e in (first, correction)] == ["CREATE", "UPDATE"]
    assert correction["before"]["net_amount"] == first["after"]["net_amount"] and \
        str(correction["after"]["net_amount"]) == "100.50"
    assert correction["metadata"]["event_id"] != first["metadata"]["event_id"]
    assert correction["metadata"]["source"]["position"].startswith("key:I-00017:sha256:")
    assert len({e["metadata"]["event_id"] for e in events}) == 51


def test_the_ids_of_unchanged_rows_do_not_depend_on_the_file_they_came_in(tmp_path, run):
    """Without the route's record (another agent, a wiped state directory), a corrected file
    is published whole, and its unchanged rows repeat their ids: consumers drop them."""
    body = HEADER + invoice_line(1) + invoice_line(2)
    for agent_dir in ("a", "b"):
        (tmp_path / agent_dir).mkdir()
    first = run(config(tmp_path / "a", {"format": "csv"}))
    (first.inbox / "inv.csv").write_text(body)
    first.passes()
    first.stop()
    second = run(config(tmp_path / "b", {"format": "csv"}))
    (second.inbox / "inv.csv").write_text(body.replace("I-00002,C-2,01,USD,NY,2026-11-27,100.00",
                                                       "I-00002,C-2,01,USD,NY,2026-11-28,100.00"))
    second.passes()
    second.stop()
    ids = [{e["key"]: e["metadata"]["event_id"] for e in published(r.out)} for r in (first, second)]
    assert ids[0]["I-00001"] == ids[1]["I-00001"] and ids[0]["I-00002"] != ids[1]["I-00002"]


def two_routes(tmp_path, lenient: bool = False) -> dict:
    document = config(tmp_path, {"format": "csv", "pattern": "strict_*"})
    lenient_route = json.loads(json.dumps(document["routes"]["invoices"]))
    lenient_route["capture"].update(pattern="lenient_*", all_or_nothing=not lenient)
    document["routes"]["second"] = lenient_route
    document["sinks"]["second_out"] = {**document["sinks"]["files"], "directory": str(tmp_path / "second_out")}
    lenient_route["sink"] = "second_out"
    return document


def test_the_same_bytes_meant_for_a_second_route_are_published_by_it(tmp_path, run):
    """Defect 7: the re-drop ledger was per inbox, so the second route skipped the file."""
    r = run(two_routes(tmp_path))
    body = HEADER + invoice_line(1)
    (r.inbox / "strict_inv.csv").write_text(body)
    r.passes()
    (r.inbox / "lenient_inv.csv").write_text(body)
    r.passes()
    r.stop()
    assert [e["key"] for e in published(r.out)] == ["I-00001"]
    assert [e["key"] for e in published(tmp_path / "second_out")] == ["I-00001"]
    assert not [n for n in files(archive_day(r.inbox)) if "skipped" in n]


def test_junk_a_lenient_route_accepted_is_not_already_published_for_a_strict_one(tmp_path, run):
    r = run(two_routes(tmp_path, lenient=True))
    body = HEADER + invoice_line(1) + invoice_line(2, company="99")      # an unknown legal entity
    (r.inbox / "lenient_inv.csv").write_text(body)
    r.passes()
    (r.inbox / "strict_inv.csv").write_text(body)
    r.passes()
    r.stop()
    assert [e["key"] for e in published(tmp_path / "second_out")] == ["I-00001"], "lenient: the good row"
    assert published(r.out) == [] and files(r.inbox / "error") == ["strict_inv.csv", "strict_inv.csv.error.json"]


def test_a_key_repeated_after_a_batch_boundary_inside_the_lookahead_is_an_update_of_the_settled_row(tmp_path, run):
    """Pass 2 looks the keys of many rows up at once (ahead of the batches): a key published
    in one batch and repeated after it must still see that batch's row, once settled."""
    r = run(config(tmp_path, {"format": "csv", "batch_size": 3}))
    lines = [invoice_line(n) for n in range(1, 8)] + [invoice_line(2, net="2.50"), invoice_line(2, net="2.50"),
                                                      invoice_line(5)]
    (r.inbox / "inv.csv").write_text(HEADER + "".join(lines))
    r.passes()
    r.stop()
    events = published(r.out)
    assert [(e["key"], e["metadata"]["operation"]) for e in events] == \
        [(f"I-0000{n}", "CREATE") for n in range(1, 8)] + [("I-00002", "UPDATE")], "then unchanged twice"
    assert str(events[-1]["before"]["net_amount"]) == "100.00" and str(events[-1]["after"]["net_amount"]) == "2.50"


def test_the_record_ledger_answers_a_prefetch_as_the_table_does(tmp_path):
    from adapters.file_drop.records import RecordLedger
    ledger = RecordLedger(tmp_path / "records.db")
    ledger.note("a", "d1", {"n": Decimal("1.50")})
    ledger.settle()
    keys = ["a", "b"] + [f"k{n}" for n in range(1200)]     # more keys than one query binds
    ledger.prefetch(keys)
    assert ledger.last("a") == ("d1", {"n": "1.50"}) and ledger.last("b") is None
    ledger.note("b", "d2", {"n": 2})
    assert ledger.last("b") == ("d2", {"n": 2}), "the batch in flight first"
    ledger.settle()
    assert ledger.last("b") == ("d2", {"n": 2})
    ledger.close()
    again = RecordLedger(tmp_path / "records.db")
    assert [again.last(k) for k in ("a", "b", "k7")] == [("d1", {"n": "1.50"}), ("d2", {"n": 2}), None]
    again.close()
