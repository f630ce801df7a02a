"""The Avro encoders generated at build time (agent/avro_codegen.py) write exactly fastavro's
bytes for every canonical schema, and defer to fastavro for anything else.

Values are drawn by hypothesis from each schema itself (every type, the edges of every
range, absent defaulted fields), so a schema added to ``avro/`` is covered without an edit.
"""
from __future__ import annotations

import copy
import datetime as dt
import io
import json
from decimal import Decimal
from pathlib import Path

import pytest
from fastavro import schemaless_writer
from fastavro.schema import parse_schema
from hypothesis import HealthCheck, given, settings, strategies as st

from agent import avro_codegen
from agent.contracts import TerminalError
from agent.schemas import SchemaCatalog, find_schema_dir

CATALOG = SchemaCatalog.load()
ENTITIES = CATALOG.names()
ZONES = [dt.timezone.utc, dt.timezone(dt.timedelta(hours=5, minutes=30)), dt.timezone(dt.timedelta(hours=-8))]


def _named_and_parsed(schema: dict) -> tuple[dict, dict]:
    named: dict = {}
    parse_schema(copy.deepcopy(schema), named_schemas=named, _write_hint=False)
    return named, parse_schema(copy.deepcopy(schema), _write_hint=False)


def _values(avro_type, named: dict):
    """A strategy for every value fastavro and the generated encoder must agree on."""
    if isinstance(avro_type, list):
        return st.one_of(*[_values(branch, named) for branch in avro_type])
    if isinstance(avro_type, str):
        if avro_type in named:
            return _values(named[avro_type], named)
        return {"null": st.none(), "boolean": st.booleans(), "int": st.integers(-2**31, 2**31 - 1),
                "long": st.integers(-2**63, 2**63 - 1), "string": st.text(max_size=40) | st.text(min_size=600),
                "bytes": st.binary(max_size=40)}[avro_type]
    kind, logical = avro_type["type"], avro_type.get("logicalType")
    if logical == "decimal":
        precision, scale = avro_type["precision"], avro_type.get("scale", 0)
        unscaled = st.integers(-(10**precision - 1), 10**precision - 1)
        return unscaled.map(lambda n: Decimal(n).scaleb(-scale)) | st.just(Decimal("-0").scaleb(-scale))
    if logical == "date":
        return st.dates()
    if logical in ("timestamp-micros", "timestamp-millis"):
        return st.datetimes(timezones=st.sampled_from(ZONES))
    if kind == "record":
        return _records(avro_type, named)
    if kind == "enum":
        return st.sampled_from(avro_type["symbols"])
    if kind == "array":
        return st.lists(_values(avro_type["items"], named), max_size=3)
    if kind == "map":
        return st.dictionaries(st.text(max_size=5), _values(avro_type["values"], named), max_size=3)
    return _values(kind, named)


def _records(schema: dict, named: dict):
    """Records of the schema; a field with a default is sometimes left out."""
    @st.composite
    def record(draw):
        out = {}
        for field in schema["fields"]:
            if "default" in field and draw(st.booleans()):
                continue
            out[field["name"]] = draw(_values(field["type"], named))
        return out
    return record()


def _fastavro(parsed: dict, event: dict) -> bytes:
    out = io.BytesIO()
    schemaless_writer(out, parsed, event, strict_allow_default=True)
    return out.getvalue()


def _generated(entity: str):
    encoder = CATALOG.entity(entity)._generated
    assert encoder is not None, f"{entity} has no generated encoder: was the package built? (pip install -e .)"
    return encoder


def test_the_built_module_covers_every_canonical_schema_and_is_current():
    """A stale module (schemas edited after the build) would silently fall back to fastavro."""
    assert all(CATALOG.entity(name).has_generated_encoder for name in ENTITIES)
    expanded, problems = avro_codegen.load_entity_schemas(find_schema_dir())
    assert not problems
    built = Path(avro_codegen.__file__).with_name("_avro_encoders.py").read_text(encoding="utf-8")
    assert built == avro_codegen.generate_source(list(expanded.values()))


@pytest.mark.parametrize("entity", ENTITIES)
def test_generated_bytes_equal_fastavro_bytes(entity):
    schema = CATALOG.entity(entity)
    named, parsed = _named_and_parsed(json.loads(schema.schema_json))
    encoder = _generated(entity)

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(_values(parsed, named))
    def agree(event):
        assert encoder(event) == _fastavro(parsed, event)
    agree()


def _sample(entity: str) -> dict:
    """One valid event with every payload field set."""
    values = {"string": "x", "decimal": Decimal("1.00"), "date": dt.date(2026, 1, 2), "int": 3, "long": 4,
              "boolean": True, "timestamp": dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc)}
    schema = CATALOG.entity(entity)
    payload = {}
    for field in schema.fields:
        value = values.get(field.avro_type)
        if field.avro_type == "decimal":
            value = Decimal(1).scaleb(-field.scale)
        payload[field.name] = value if value is not None else None if field.nullable else []
    now = dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.timezone.utc)
    return {"metadata": {"event_id": "e", "correlation_id": "c", "source": {"system": "s", "object": "o", "position": "p"},
                         "operation": "UPDATE", "captured_at": now, "schema_version": schema.version},
            "key": "k", "before": None, "after": payload}


def _misfits(event: dict, entity: str):
    schema = CATALOG.entity(entity)
    first_decimal = next((f for f in schema.fields if f.avro_type == "decimal"), None)
    first_string = next(f for f in schema.fields if f.avro_type == "string" and not f.nullable)
    yield "unknown key", {**event, "after": {**event["after"], "surprise": 1}}
    yield "missing key", {**event, "after": {k: v for k, v in event["after"].items() if k != first_string.name}}
    yield "number for text", {**event, "after": {**event["after"], first_string.name: 5}}
    yield "naive time", {**event, "metadata": {**event["metadata"], "captured_at": dt.datetime(2026, 1, 2)}}
    yield "unknown operation", {**event, "metadata": {**event["metadata"], "operation": "MERGE"}}
    yield "long overflow", {**event, "metadata": {**event["metadata"], "version": 2**63}}
    if first_decimal is not None:
        name, scale = first_decimal.name, first_decimal.scale
        yield "float amount", {**event, "after": {**event["after"], name: 1.5}}
        yield "too many places", {**event, "after": {**event["after"], name: Decimal(1).scaleb(-scale - 1)}}
        yield "too many digits", {**event, "after": {**event["after"], name: Decimal(10) ** first_decimal.precision}}


@pytest.mark.parametrize("entity", ENTITIES)
def test_what_does_not_fit_is_left_to_fastavro_and_its_checks(entity):
    """The generated encoder raises, and encode() then behaves as it does without it:
    the checked fastavro path's bytes or its TerminalError."""
    schema, encoder = CATALOG.entity(entity), _generated(entity)
    event = _sample(entity)
    assert schema.encode(event, prechecked=True) == encoder(event) == schema.encode(event)
    for why, misfit in _misfits(event, entity):
        with pytest.raises(Exception):
            encoder(misfit)
        try:
            expected = schema.encode(misfit)
        except TerminalError as exc:
            with pytest.raises(TerminalError) as caught:
                schema.encode(misfit, prechecked=True)
            assert str(caught.value) == str(exc), why
        else:
            assert schema.encode(misfit, prechecked=True) == expected, why
