"""The Avro decoders generated at build time (agent/avro_decodegen.py) return exactly what
fastavro returns for every canonical schema, or refuse, and then fastavro decides.

Bodies come from the fabric, so they are untrusted: besides valid events (drawn by
hypothesis from each schema, as in test_avro_codegen), every body is also cut short and
damaged byte by byte. Whenever the generated decoder returns something, fastavro must return
the very same thing (same types, same decimal exponents), having read the same bytes.
"""
from __future__ import annotations

import io
import json
from decimal import Decimal

import pytest
from fastavro import schemaless_reader
from hypothesis import HealthCheck, given, settings, strategies as st

from agent import avro_codegen
from tests.test_avro_codegen import CATALOG, ENTITIES, _fastavro, _named_and_parsed, _sample, _values


def _exact(value):
    """A form in which equal means identical: Decimal('1.0') == Decimal('1.00') is not enough."""
    if isinstance(value, dict):
        return ("dict", [(k, _exact(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("list", [_exact(v) for v in value])
    if isinstance(value, Decimal):
        return ("decimal", value.as_tuple())
    return (type(value).__name__, repr(value))


def _fastavro_read(parsed: dict, body: bytes):
    data = io.BytesIO(body)
    return schemaless_reader(data, parsed, parsed), data.tell()


def _decoder(entity: str):
    decoder = CATALOG.entity(entity)._generated_decoder
    assert decoder is not None, f"{entity} has no generated decoder: was the package built? (pip install -e .)"
    return decoder


def _outcome(decoder, parsed: dict, body: bytes) -> str:
    """"read" (and then exactly as fastavro reads it), "refused" (fastavro reads it) or
    "unreadable" (fastavro cannot read it either)."""
    try:
        mine = decoder(body)
    except Exception:
        try:
            _fastavro_read(parsed, body)
        except Exception:
            return "unreadable"
        return "refused"
    theirs = _fastavro_read(parsed, body)     # must not raise where the generated one read
    assert _exact(mine[0]) == _exact(theirs[0]) and mine[1] == theirs[1]
    return "read"


@pytest.mark.parametrize("entity", ENTITIES)
def test_generated_decoder_reads_what_fastavro_reads(entity):
    named, parsed = _named_and_parsed(json.loads(CATALOG.entity(entity).schema_json))
    decoder = _decoder(entity)

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(_values(parsed, named))
    def agree(event):
        body = _fastavro(parsed, event)
        # (a time before year 1 in UTC is unreadable to both: fastavro wrote what it cannot read)
        assert _outcome(decoder, parsed, body) != "refused"
        assert _outcome(decoder, parsed, body + b"\x00\x07") != "refused"   # trailing bytes: not read
    agree()


@pytest.mark.parametrize("entity", ENTITIES)
def test_a_damaged_body_is_refused_or_read_exactly_as_fastavro_reads_it(entity):
    """A body cut short is always refused (every byte of the whole body is needed); a body
    with one byte changed is refused or read exactly as fastavro reads it."""
    named, parsed = _named_and_parsed(json.loads(CATALOG.entity(entity).schema_json))
    decoder = _decoder(entity)

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(_values(parsed, named), st.data())
    def damaged(event, data):
        body = _fastavro(parsed, event)
        cut = data.draw(st.integers(0, len(body) - 1))
        with pytest.raises(Exception):
            decoder(body[:cut])
        at, byte = data.draw(st.integers(0, len(body) - 1)), data.draw(st.integers(0, 255))
        _outcome(decoder, parsed, body[:at] + bytes([byte]) + body[at + 1:])
    damaged()


SMALL = {"type": "record", "name": "Small", "fields": [
    {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 4, "scale": 2}},
    {"name": "count", "type": "int"}, {"name": "flag", "type": "boolean"},
    {"name": "note", "type": ["null", "string"]}]}


def _small_decoder():
    namespace: dict = {}
    exec(avro_codegen.generate_source([SMALL]), namespace)     # what the build writes, for one schema
    (decoder,) = namespace["DECODERS"].values()
    return decoder


@pytest.mark.parametrize("why, body", [
    ("an int beyond 32 bits", b"\x02\x01" + b"\x80\x80\x80\x80\x10" + b"\x00\x00"),
    ("a long varint of eleven bytes", b"\x02\x01" + b"\xff" * 10 + b"\x01" + b"\x00\x00"),
    ("a boolean byte of 2", b"\x02\x01\x02\x02\x00"),
    ("a union index of 2", b"\x02\x01\x02\x00\x04"),
    ("a negative length", b"\x01\x01\x02\x00\x00"),
])
def test_what_fastavro_would_wrap_or_refuse_is_left_to_it(why, body):
    """Refused by the generated decoder (fastavro then decides: see the next test)."""
    decoder = _small_decoder()
    assert decoder(b"\x02\x01\x02\x01\x02\x02A") == ({"amount": Decimal("0.01"), "count": 1, "flag": True,
                                                        "note": "A"}, 7)
    with pytest.raises(Exception):
        decoder(body)


def test_a_decimal_with_more_digits_than_its_precision_is_rounded_as_fastavro_rounds_it():
    """fastavro's writer lets a value with more integer digits than the precision through
    (it counts the digits of the coefficient, 1E+32 has one); its reader then rounds the
    unscaled number to the precision. The generated decoder reads it with the same formula."""
    from fastavro.schema import parse_schema
    body = b"\x06\x01\x86\xa0" + b"\x02\x00\x00"      # unscaled 100000: five digits in decimal(4,2)
    event, read = _small_decoder()(body)
    expected = _fastavro_read(parse_schema(SMALL), body)
    assert (_exact(event), read) == (_exact(expected[0]), expected[1]) and event["amount"] == Decimal("1000.0")


def test_a_body_the_generated_decoder_refuses_is_read_by_fastavro():
    schema = CATALOG.entity("Customer")
    body = schema.encode(_sample("Customer"))
    assert _exact(schema.decode_counted(body)) == _exact(_fastavro_read(schema.parsed, body))
    cut = body[:-1]
    with pytest.raises(Exception) as fastavro_error:
        _fastavro_read(schema.parsed, cut)
    with pytest.raises(fastavro_error.type):
        schema.decode_counted(cut)
