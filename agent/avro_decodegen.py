"""Avro decoders generated from the canonical schemas at packaging time, beside the encoders
(``agent.avro_codegen`` writes both into one module).

fastavro's ``schemaless_reader`` costs 13-28 µs per canonical event on the 2-core reference
machine, and an inbound event is decoded twice (by the kafka source, then by the sql_apply
sink). A function written for one schema reads each field in place (docs/benchmarks.md).

The bodies it reads come from the fabric: they are untrusted. Rules that keep it safe:

* Anything unusual raises instead of guessing: a truncated body, an index outside a union or
  an enum, a boolean byte other than 0 or 1, an over-long varint, an int outside 32 bits.
  The caller then decodes with fastavro, whose result or error stands. A decimal is read
  with fastavro's own formula, in a context of the field's precision (so a value written
  with more digits than that is rounded as fastavro rounds it). So the generated decoder returns
  either exactly what fastavro returns or nothing at all; ``tests/test_avro_decoders.py``
  checks that over every canonical schema, for valid bodies and for damaged ones.
* It is built with the package from the schemas shipped in it, and looked up by the
  fingerprint of the exact schema: any other writer schema is read by fastavro.

Like ``agent.avro_codegen`` it needs only the standard library and fastavro.
"""
from __future__ import annotations

import datetime as _dt
from abc import ABC, abstractmethod
from typing import Any

__all__ = ["decoder", "Emitter", "Unsupported", "RUNTIME_IMPORTS"]

# What the generated module imports from here. It shares the encoders' ``_EPOCH`` (fastavro's
# epoch, aware UTC) and their ``from decimal import Context``.
RUNTIME_IMPORTS = "from agent.avro_decodegen import _DATE_SHIFT, _long, _ord, _timedelta"

_DATE_SHIFT = _dt.date(1970, 1, 1).toordinal()
_ord, _timedelta = _dt.date.fromordinal, _dt.timedelta


def _long(buf: bytes, pos: int) -> tuple[int, int]:
    """(zigzag-decoded long, next position) of the varint at ``pos``; refuses what is not a
    64-bit long (more than ten bytes, or bits beyond 64) and a varint cut short."""
    z, shift = 0, 0
    while True:
        b = buf[pos]
        pos += 1
        z |= (b & 0x7F) << shift
        if b < 0x80:
            break
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than a 64-bit long")
    if z >> 64:
        raise ValueError("varint beyond 64 bits")
    return (z >> 1) ^ -(z & 1), pos


class Unsupported(Exception):
    """The schema uses something a generator does not handle; fastavro handles it."""


class Emitter(ABC):
    """Writes the body of one generated function (encoder or decoder): a fresh local
    variable per value, module-level constants, named types expanded where they are used."""

    local_prefix = "v"

    def __init__(self, named: dict, prefix: str):
        self.named, self.prefix = named, prefix
        self.lines: list[str] = []
        self.constants: dict[str, str] = {}
        self._count = 0
        self._stack: list[str] = []

    def local(self) -> str:
        self._count += 1
        return f"{self.local_prefix}{self._count}"

    def emit(self, depth: int, line: str) -> None:
        self.lines.append("    " * depth + line)

    def constant(self, kind: str, source: str) -> str:
        """A module-level constant of this source text (one per distinct text: none is mutated)."""
        for name, known in self.constants.items():
            if known == source:
                return name
        name = f"{self.prefix}_{kind}{len(self.constants)}"
        self.constants[name] = source
        return name

    def value(self, depth: int, avro_type: Any, variable: str) -> None:
        """Handle ``variable`` of ``avro_type``: a union, a primitive or a named type by name
        here, any other type (a schema dict) by ``typed``."""
        if isinstance(avro_type, list):
            return self.union(depth, avro_type, variable)
        if not isinstance(avro_type, str):
            return self.typed(depth, avro_type, variable)
        if avro_type not in self.named:
            return self.primitive(depth, avro_type, variable)
        if avro_type in self._stack:
            raise Unsupported(f"recursive type {avro_type}")
        self._stack.append(avro_type)
        self.value(depth, self.named[avro_type], variable)
        self._stack.pop()
        return None

    # what each generator writes for its own direction
    @abstractmethod
    def union(self, depth: int, branches: list, variable: str) -> None: ...

    @abstractmethod
    def primitive(self, depth: int, kind: str, variable: str) -> None: ...

    @abstractmethod
    def typed(self, depth: int, avro_type: dict, variable: str) -> None: ...


class _Reader(Emitter):
    """Emits the body of one decoder function: ``buf`` is the body, ``pos`` the position."""

    local_prefix = "r"

    def long(self, depth: int, target: str) -> None:
        """``target`` = the next long: one byte inline (lengths, indexes, small numbers)."""
        self.emit(depth, f"{target} = buf[pos]")
        self.emit(depth, f"if {target} < 128:")
        self.emit(depth + 1, f"{target} = ({target} >> 1) ^ -({target} & 1)")
        self.emit(depth + 1, "pos += 1")
        self.emit(depth, "else:")
        self.emit(depth + 1, f"{target}, pos = _long(buf, pos)")

    def sized(self, depth: int, target: str) -> None:
        """``target`` = the next length-prefixed bytes, refusing a length beyond the body."""
        size, end = self.local(), self.local()
        self.long(depth, size)
        self.emit(depth, f"{end} = pos + {size}")
        self.emit(depth, f"if {size} < 0 or {end} > len(buf): raise ValueError('length beyond the body')")
        self.emit(depth, f"{target} = buf[pos:{end}]")
        self.emit(depth, f"pos = {end}")

    def typed(self, depth: int, avro_type: dict, target: str) -> None:
        kind, logical = avro_type["type"], avro_type.get("logicalType")
        if kind == "record":
            return self.record(depth, avro_type, target)
        if kind == "enum":
            symbols = self.constant("SYMBOLS", repr(tuple(avro_type["symbols"])))
            index = self.local()
            self.long(depth, index)
            self.emit(depth, f"if not 0 <= {index} < {len(avro_type['symbols'])}: raise ValueError('enum index')")
            self.emit(depth, f"{target} = {symbols}[{index}]")
            return None
        if kind == "array":
            return self.blocks(depth, target, "[]", lambda d, item: (
                self.value(d, avro_type["items"], item), self.emit(d, f"{target}.append({item})")))
        if kind == "map":
            def entry(d: int, item: str) -> None:
                key = self.local()
                self.primitive(d, "string", key)
                self.value(d, avro_type["values"], item)
                self.emit(d, f"{target}[{key}] = {item}")
            return self.blocks(depth, target, "{}", entry)
        if logical == "decimal" and kind == "bytes":
            return self.decimal(depth, avro_type["precision"], avro_type.get("scale", 0), target)
        if logical == "date" and kind == "int":
            self.primitive(depth, "int", target)
            self.emit(depth, f"{target} = _ord({target} + _DATE_SHIFT)")
            return None
        if logical in ("timestamp-micros", "timestamp-millis") and kind == "long":
            self.long(depth, target)
            micros = target if logical == "timestamp-micros" else f"{target} * 1000"
            # positional: timedelta(0, 0, n) is timedelta(microseconds=n) at half the cost
            self.emit(depth, f"{target} = _EPOCH + _timedelta(0, 0, {micros})")
            return None
        if logical is None or kind in ("string", "int", "long"):   # a logical type fastavro ignores
            if logical is not None:
                raise Unsupported(f"logical type {logical} on {kind}")
            return self.primitive(depth, kind, target)
        raise Unsupported(f"{kind}/{logical}")

    def primitive(self, depth: int, kind: str, target: str) -> None:
        if kind == "null":
            self.emit(depth, f"{target} = None")
        elif kind == "boolean":
            self.emit(depth, f"{target} = buf[pos]")
            self.emit(depth, f"if {target} > 1: raise ValueError('boolean byte')")
            self.emit(depth, f"{target} = {target} == 1")
            self.emit(depth, "pos += 1")
        elif kind == "long":
            self.long(depth, target)
        elif kind == "int":
            self.long(depth, target)
            self.emit(depth, f"if not -2147483648 <= {target} < 2147483648: raise ValueError('int range')")
        elif kind == "string":
            self.sized(depth, target)
            self.emit(depth, f"{target} = {target}.decode()")
        elif kind == "bytes":
            self.sized(depth, target)
        else:
            raise Unsupported(kind)

    def union(self, depth: int, branches: list, target: str) -> None:
        others = [b for b in branches if b != "null"]
        if len(branches) != 2 or len(others) != 1:
            raise Unsupported("a union other than [null, T]")
        null_index, index = branches.index("null"), self.local()
        self.long(depth, index)
        self.emit(depth, f"if {index} == {null_index}:")
        self.emit(depth + 1, f"{target} = None")
        self.emit(depth, f"elif {index} == {1 - null_index}:")
        self.value(depth + 1, others[0], target)
        self.emit(depth, "else:")
        self.emit(depth + 1, "raise ValueError('union index')")

    def blocks(self, depth: int, target: str, empty: str, read_item) -> None:
        count, ignored, item = self.local(), self.local(), self.local()
        self.emit(depth, f"{target} = {empty}")
        self.emit(depth, "while True:")
        self.long(depth + 1, count)
        self.emit(depth + 1, f"if {count} == 0: break")
        self.emit(depth + 1, f"if {count} < 0:")        # a negative count is followed by the block's size
        self.emit(depth + 2, f"{count} = -{count}")
        self.long(depth + 2, ignored)
        self.emit(depth + 1, f"for _ in range({count}):")
        read_item(depth + 2, item)

    def record(self, depth: int, schema: dict, target: str) -> None:
        names = []
        for field in schema["fields"]:
            item = self.local()
            self.value(depth, field["type"], item)
            names.append(f"{field['name']!r}: {item}")
        self.emit(depth, f"{target} = {{{', '.join(names)}}}")

    def decimal(self, depth: int, precision: int, scale: int, target: str) -> None:
        data = self.local()
        self.sized(depth, data)
        # fastavro's read_decimal: Context(prec=precision).create_decimal(unscaled).scaleb(-scale, same)
        context = self.constant("CONTEXT", f"Context(prec={precision})")
        self.emit(depth, f"{target} = {context}.create_decimal(int.from_bytes({data}, 'big', signed=True))"
                         f".scaleb({-scale}, {context})")


def decoder(function: str, parsed: dict, named: dict) -> tuple[list[str], dict[str, str]]:
    """(source lines, constants) of ``function(buf) -> (event, end position)`` for a schema
    parsed by fastavro (``named``: its named types). Unsupported if it cannot be read here."""
    reader = _Reader(named, function)
    reader.emit(1, "pos = 0")
    reader.value(1, parsed, "event")
    reader.emit(1, "return event, pos")
    return [f"def {function}(buf):"] + reader.lines, reader.constants
