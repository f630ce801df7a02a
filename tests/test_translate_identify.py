"""Translator.identify() then translate() of the same record maps its after image once
(file_drop asks for a record's key and digest, then publishes it): the event must be the
one a fresh mapping gives, whatever happened in between. Real mapping, real schemas."""
import dataclasses
import datetime as dt
import hashlib
import json


from agent.config import MappingConfig
from agent.contracts import SourceRecord
from agent.lookups import LookupTable
from agent.mapping import EntityMapping
from agent.schemas import SchemaCatalog
from agent.translate import Translator
from tests.support.route import INVOICE_MAPPING

CATALOG = SchemaCatalog.load()
NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.timezone.utc)
ROW = {"inv_no": "I-1", "cust_no": "C-1", "company": "01", "curr": "USD", "tax_code": "NY",
       "inv_date": "2026-11-27", "net": "100.00", "tax": "8.00", "gross": "108.00", "status": "open"}


class CountingMapping(EntityMapping):
    """The real mapping, counting the after images it maps."""

    def __init__(self, *args):
        super().__init__(*args)
        self.mapped = 0

    def apply(self, row):
        self.mapped += row is not None
        return super().apply(row)


def translator(tables=None):
    tables = tables or {"legal_entity": LookupTable("legal_entity", {"01": "US01", "02": "UK01"}),
                        "tax_jurisdiction": LookupTable("tax_jurisdiction", {"NY": "US-NY"})}
    mapping = CountingMapping("invoice", MappingConfig.model_validate(INVOICE_MAPPING), CATALOG.entity("Invoice"),
                              tables)
    return Translator("inv", "fabric", "fin", mapping), mapping, tables


def record(row=ROW, position="sha256:f:1"):
    return SourceRecord("*.csv", "create", position, after=dict(row), occurred_at=NOW)


def published(t, rec):
    """What the file_drop source does: identify, then translate the record at its new position."""
    key, digest = t.identify(rec)
    events, failures = t.translate([dataclasses.replace(rec, position=f"key:{key}:sha256:{digest}")], NOW)
    return events, failures


def test_identify_then_translate_maps_once_and_gives_the_event_a_fresh_mapping_gives():
    t, mapping, _ = translator()
    rec = record()
    events, failures = published(t, rec)
    assert mapping.mapped == 1 and failures == []
    fresh, _, _ = translator()
    key, digest = fresh.identify(record())
    again, _ = fresh.translate([SourceRecord("*.csv", "create", f"key:{key}:sha256:{digest}", after=dict(ROW),
                                             occurred_at=NOW)], NOW)
    assert events == again


def test_an_equal_but_different_image_is_mapped_again():
    t, mapping, _ = translator()
    rec = record()
    t.identify(rec)
    t.translate([record(position="sha256:f:2")], NOW)     # same content, another dict
    assert mapping.mapped == 2


def test_a_lookup_refresh_between_identify_and_translate_is_seen():
    t, mapping, tables = translator()
    rec = record()
    t.identify(rec)
    tables["legal_entity"].codes = {"01": "UK01", "02": "US01"}    # what a SQL lookup refresh does
    (event,), _ = t.translate([rec], NOW)
    assert mapping.mapped == 2
    assert CATALOG.entity("Invoice").decode(event["body"])["after"]["legal_entity"] == "UK01"


def test_a_record_that_does_not_map_is_parked_the_same_after_identify():
    t, mapping, _ = translator()
    rec = record({**ROW, "company": "99"})
    assert t.identify(rec) is None
    events, failures = t.translate([rec], NOW)
    fresh, _, _ = translator()
    assert events == [] and failures == fresh.translate([record({**ROW, "company": "99"})], NOW)[1]
    assert mapping.mapped == 2     # once more for the key shown in the exception entry


def test_payloads_kept_for_records_never_translated_stay_bounded():
    t, mapping, _ = translator()
    for n in range(10_000):    # a corrected file whose rows are all unchanged: identified, never published
        t.identify(record({**ROW, "inv_no": f"I-{n}"}))
    assert len(t._premapped) <= 4096
    last = record({**ROW, "inv_no": "I-last"})
    t.identify(last)
    before = mapping.mapped
    t.translate([last], NOW)
    assert mapping.mapped == before and len(t._premapped) == 0, "taking one drops the older ones"


def test_the_digest_of_a_mapped_invoice_is_the_one_published_before():
    t, _, _ = translator()
    key, digest = t.identify(record())
    payload, _ = t.mapping.apply(dict(ROW))
    old = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str, separators=(",", ":")).encode())
    assert (key, digest) == ("I-1", old.hexdigest())

