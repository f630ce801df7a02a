"""Avro encoders generated from the canonical schemas at packaging time.

fastavro's ``schemaless_writer`` walks the parsed schema for every event: it costs
17-22 µs per canonical event on the 2-core reference machine, more than the whole agent
may spend. A function written for one schema knows every field, type and union branch in
advance and does only the writes (docs/benchmarks.md has the figures).

Rules that keep it safe:

* It is built when the package is built (``setup.py`` runs :func:`write_module`), never
  from text read at run time, and it is looked up by the fingerprint of the exact schema
  it was generated from: a changed or custom schema simply has no generated encoder.
* Only records of the exact shape (every field present, no other key) are encoded; any
  other input, and any value that does not fit, raises and the caller encodes with
  fastavro, whose result or error stands. ``tests/test_avro_codegen.py`` proves the bytes
  identical to fastavro's over every canonical schema.
* The caller uses it only for mapped output (typed, decimals quantised, times aware).

This module needs only the standard library and fastavro, so the build can import it.
"""
from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import io
import json
import sys
from pathlib import Path

__all__ = ["schema_fingerprint", "load_entity_schemas", "generate_source", "write_module", "GENERATED_MODULE"]

GENERATED_MODULE = "agent._avro_encoders"

# -- helpers the generated code calls ----------------------------------------------------
_SMALL_LIMIT = 1024
# zigzag varint of 0 <= z < _SMALL_LIMIT, precomputed: lengths and small ints are most writes
_SMALL = tuple(bytes([z]) if z < 0x80 else bytes([(z & 0x7F) | 0x80, z >> 7]) for z in range(_SMALL_LIMIT))
# ... and of a length (or count) n: zigzag(n) = 2n
_LENGTHS = _SMALL[0::2]
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
_DATE_SHIFT = _dt.date(1970, 1, 1).toordinal()
_POWERS = tuple(10 ** n for n in range(80))


class Fallback(Exception):
    """A record not of the exact shape the encoder was generated for: encode with fastavro."""


def _varint(z: int) -> bytes:
    """Varint of an already zigzagged long; refuses what is not a 64-bit long."""
    if not 0 <= z < 1 << 64:
        raise OverflowError("value out of the Avro long range")
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def schema_fingerprint(schema: dict) -> str:
    """sha256 of the whole expanded schema: the Parsing Canonical Form drops logical types,
    so a decimal's scale change would keep its fingerprint."""
    return hashlib.sha256(json.dumps(schema, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def load_entity_schemas(directory: Path) -> tuple[dict, list[str]]:
    """({path: expanded entity schema}, problems) for a directory of ``.avsc`` files:
    files without ``outpost.entity`` hold shared named types and are inlined."""
    from fastavro.schema import load_schema_ordered

    problems: list[str] = []
    raw: dict[Path, dict] = {}
    for path in sorted(Path(directory).glob("*.avsc")):
        try:
            raw[path] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            problems.append(f"{path}: {exc}")
    shared = [str(p) for p, s in raw.items() if "outpost.entity" not in s]
    shared.sort(key=lambda p: not p.endswith("EventMetadata.avsc"))
    expanded: dict[Path, dict] = {}
    for path, doc in raw.items():
        if "outpost.entity" not in doc:
            continue
        try:
            expanded[path] = load_schema_ordered(shared + [str(path)], _write_hint=False)
        except Exception as exc:
            problems.append(f"{path}: {type(exc).__name__}: {exc}")
    return expanded, problems


# -- the generator -----------------------------------------------------------------------
def _load_decodegen():
    """``agent.avro_decodegen``; loaded by path when this file is (the build, setup.py)."""
    if __package__:
        from . import avro_decodegen
        return avro_decodegen
    import importlib.util
    spec = importlib.util.spec_from_file_location("outpost_avro_decodegen", Path(__file__).with_name("avro_decodegen.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_decodegen = _load_decodegen()


class _Writer(_decodegen.Emitter):
    """Emits the body of one encoder function; ``buf`` is the bytearray written to."""

    def length(self, depth: int, size: str) -> None:
        self.emit(depth, f"buf += _LENGTHS[{size}] if {size} < {_SMALL_LIMIT // 2} else _varint({size} << 1)")

    def long(self, depth: int, value: str, eight_bytes_likely: bool = False) -> None:
        z = self.local()
        self.emit(depth, f"{z} = ({value} << 1) ^ ({value} >> 63)")
        if eight_bytes_likely:      # a timestamp of this century: eight 7-bit groups, unrolled
            groups = ", ".join(f"{z} >> {shift} & 127 | 128" for shift in range(7, 49, 7))
            self.emit(depth, f"if {1 << 49} <= {z} < {1 << 56}:")
            self.emit(depth + 1, f"buf += bytes(({z} & 127 | 128, {groups}, {z} >> 49))")
            self.emit(depth, "else:")
            depth += 1
        self.emit(depth, f"buf += _SMALL[{z}] if {z} < {_SMALL_LIMIT} else _varint({z})")

    def typed(self, depth: int, avro_type: dict, value: str) -> None:
        kind, logical = avro_type["type"], avro_type.get("logicalType")
        if kind == "record":
            return self.record(depth, avro_type, value)
        if kind == "enum":
            table = {symbol: _SMALL[index << 1] for index, symbol in enumerate(avro_type["symbols"])}
            self.emit(depth, f"buf += {self.constant('ENUM', repr(table))}[{value}]")
            return None
        if kind == "array":
            return self.block(depth, value, lambda d, item: self.value(d, avro_type["items"], item), "")
        if kind == "map":
            def entry(d: int, pair: str) -> None:
                self.primitive(d, "string", f"{pair}[0]")
                self.value(d, avro_type["values"], f"{pair}[1]")
            return self.block(depth, value, entry, ".items()")
        if logical == "decimal" and kind == "bytes":
            return self.decimal(depth, avro_type["precision"], avro_type.get("scale", 0), value)
        if logical == "date" and kind == "int":
            days = self.local()
            self.emit(depth, f"{days} = {value} if {value}.__class__ is int else {value}.toordinal() - {_DATE_SHIFT}")
            return self.long(depth, days)
        if logical in ("timestamp-micros", "timestamp-millis") and kind == "long":
            since, ticks = self.local(), self.local()
            per_second, micros = ("1000000", f"{since}.microseconds") if logical == "timestamp-micros" \
                else ("1000", f"{since}.microseconds // 1000")
            self.emit(depth, f"if {value}.__class__ is int:")
            self.emit(depth + 1, f"{ticks} = {value}")
            self.emit(depth, "else:")
            # an aware datetime only: a naive one cannot be subtracted from _EPOCH and raises
            self.emit(depth + 1, f"{since} = {value} - _EPOCH")
            self.emit(depth + 1, f"{ticks} = ({since}.days * 86400 + {since}.seconds) * {per_second} + {micros}")
            return self.long(depth, ticks, eight_bytes_likely=logical == "timestamp-micros")
        if logical is None or kind in ("string", "int", "long"):   # a logical type fastavro ignores
            if logical is not None:
                raise _decodegen.Unsupported(f"logical type {logical} on {kind}")
            return self.primitive(depth, kind, value)
        raise _decodegen.Unsupported(f"{kind}/{logical}")

    def primitive(self, depth: int, kind: str, value: str) -> None:
        if kind == "null":
            self.emit(depth, f"if {value} is not None: raise ValueError('not null')")
        elif kind == "boolean":
            self.emit(depth, f"buf += b'\\x01' if {value} else b'\\x00'")
        elif kind in ("int", "long"):
            self.long(depth, value)
        elif kind in ("string", "bytes"):
            data, size = self.local(), self.local()
            self.emit(depth, f"{data} = {value}.encode()" if kind == "string"
                      else f"{data} = {value} if {value}.__class__ is bytes else bytes({value})")
            self.emit(depth, f"{size} = len({data})")
            self.length(depth, size)
            self.emit(depth, f"buf += {data}")
        else:
            raise _decodegen.Unsupported(kind)

    def union(self, depth: int, branches: list, value: str) -> None:
        others = [b for b in branches if b != "null"]
        if len(branches) != 2 or len(others) != 1:
            raise _decodegen.Unsupported("a union other than [null, T]")
        null_index = branches.index("null")
        self.emit(depth, f"if {value} is None:")
        self.emit(depth + 1, f"buf += {_SMALL[null_index << 1]!r}")
        self.emit(depth, "else:")
        self.emit(depth + 1, f"buf += {_SMALL[(1 - null_index) << 1]!r}")
        self.value(depth + 1, others[0], value)

    def block(self, depth: int, value: str, write_item, iterate: str) -> None:
        count, item = self.local(), self.local()
        self.emit(depth, f"{count} = len({value})")
        self.emit(depth, f"if {count}:")
        self.long(depth + 1, count)
        self.emit(depth + 1, f"for {item} in {value}{iterate}:")
        write_item(depth + 2, item)
        self.emit(depth, "buf += b'\\x00'")

    def record(self, depth: int, schema: dict, value: str) -> None:
        fields = schema["fields"]
        defaulted = [f for f in fields if "default" in f]
        if not defaulted:       # exact shape only: every field present and nothing else
            self.emit(depth, f"if len({value}) != {len(fields)}: raise _Fallback({schema['name']!r})")
        else:
            missing = self.local()
            self.emit(depth, f"{missing} = 0")
        for field in fields:
            item = self.local()
            if "default" not in field:
                self.emit(depth, f"{item} = {value}[{field['name']!r}]")
                self.value(depth, field["type"], item)
                continue
            # an absent field is written as fastavro writes its default (strict_allow_default)
            self.emit(depth, f"{item} = {value}.get({field['name']!r}, _Fallback)")
            self.emit(depth, f"if {item} is _Fallback:")
            self.emit(depth + 1, f"{missing} += 1")
            self.emit(depth + 1, f"buf += {self.default_bytes(field)!r}")
            self.emit(depth, "else:")
            self.value(depth + 1, field["type"], item)
        if defaulted:           # ... and no key that is not a field
            self.emit(depth, f"if len({value}) + {missing} != {len(fields)}: raise _Fallback({schema['name']!r})")

    def default_bytes(self, field: dict) -> bytes:
        if field["default"] is None and isinstance(field["type"], list) and field["type"][0] == "null":
            return b"\x00"     # a union's default is of its first branch: null is index 0
        from fastavro import schemaless_writer
        from fastavro.schema import parse_schema
        try:
            holder = parse_schema({"type": "record", "name": "_outpost_default", "fields": [field]},
                                  named_schemas=dict(self.named), _write_hint=False)
            out = io.BytesIO()
            schemaless_writer(out, holder, {}, strict_allow_default=True)
        except Exception as exc:
            raise _decodegen.Unsupported(f"default of {field['name']}: {exc}") from exc
        return out.getvalue()

    def decimal(self, depth: int, precision: int, scale: int, value: str) -> None:
        sign_digits_exp, unscaled, magnitude, data = self.local(), self.local(), self.local(), self.local()
        # fastavro's rules: no more digits than the precision, no finer exponent than the scale
        self.emit(depth, f"{sign_digits_exp} = {value}.as_tuple()")
        self.emit(depth, f"if len({sign_digits_exp}[1]) > {precision} or {sign_digits_exp}[2] + {scale} < 0:"
                         " raise ValueError('decimal does not fit')")
        self.emit(depth, f"{unscaled} = int({value}.scaleb({scale}, _EXACT))")
        self.emit(depth, f"{magnitude} = -{unscaled} if {unscaled} < 0 else {unscaled}")
        # the same byte count as fastavro: (bit_length + 8) // 8 of the magnitude
        self.emit(depth, f"{data} = {unscaled}.to_bytes(({magnitude}.bit_length() + 8) // 8, 'big', signed=True)")
        self.length(depth, f"len({data})")
        self.emit(depth, f"buf += {data}")


def _encoder(function: str, schema: dict) -> tuple[list[str], dict[str, str]]:
    from fastavro.schema import parse_schema

    named: dict = {}
    parse_schema(copy.deepcopy(schema), named_schemas=named, _write_hint=False)
    parsed = parse_schema(copy.deepcopy(schema), _write_hint=False)
    writer = _Writer(named, function)
    writer.emit(1, "buf = bytearray()")
    writer.value(1, parsed, "event")
    writer.emit(1, "return bytes(buf)")
    return [f"def {function}(event):"] + writer.lines, writer.constants


def _decoder(function: str, schema: dict) -> tuple[list[str], dict[str, str]]:
    from fastavro.schema import parse_schema

    named: dict = {}
    parse_schema(copy.deepcopy(schema), named_schemas=named, _write_hint=False)
    return _decodegen.decoder(function, parse_schema(copy.deepcopy(schema), _write_hint=False), named)


def generate_source(schemas: list[dict]) -> str:
    """Python source of a module whose ``ENCODERS`` maps fingerprint -> encode(event) -> bytes
    and whose ``DECODERS`` maps fingerprint -> decode(body) -> (event, end position)."""
    header = [
        "# Generated by agent/avro_codegen.py from the canonical Avro schemas when the package",
        "# was built. Do not edit; rebuild instead. SPDX-License-Identifier: Apache-2.0",
        "from decimal import Context",
        "from agent.avro_codegen import _EPOCH, _LENGTHS, _SMALL, _varint, Fallback as _Fallback",
        _decodegen.RUNTIME_IMPORTS,
        "_EXACT = Context(prec=100)",
    ]
    body: list[str] = []
    tables: dict[str, list[str]] = {"ENCODERS": [], "DECODERS": []}
    for index, schema in enumerate(sorted(schemas, key=schema_fingerprint)):
        for table, function, generate in (("ENCODERS", f"_encode_{index}", _encoder),
                                          ("DECODERS", f"_decode_{index}", _decoder)):
            try:
                lines, constants = generate(function, schema)
            except _decodegen.Unsupported as exc:
                body.append(f"# {schema.get('name')!r}: {function} not generated ({str(exc)!r}); fastavro does it")
                continue
            body += [f"{name} = {source}" for name, source in constants.items()]
            body += [f"# {schema.get('name')!r} v{schema.get('outpost.version')!r}"] + lines + [""]
            tables[table].append(f"    {schema_fingerprint(schema)!r}: {function},")
    for table, rows in tables.items():
        body += [f"{table} = {{"] + rows + ["}", ""]
    return "\n".join(header + [""] + body)


def write_module(schema_dir: Path, target: Path) -> int:
    """Generate the encoders of every entity schema in ``schema_dir`` into ``target``."""
    expanded, problems = load_entity_schemas(schema_dir)
    if problems:
        raise SystemExit("cannot generate Avro encoders:\n  " + "\n  ".join(problems))
    if not expanded:
        raise SystemExit(f"cannot generate Avro encoders: no entity schemas in {schema_dir}")
    schemas = {schema_fingerprint(schema): schema for schema in expanded.values()}
    source = generate_source(list(schemas.values()))
    if not target.exists() or target.read_text(encoding="utf-8") != source:
        target.write_text(source, encoding="utf-8")
    return len(schemas)


def main(argv: list[str]) -> int:
    """``python -m agent.avro_codegen [SCHEMA_DIR]``: what the build runs (setup.py)."""
    root = Path(__file__).resolve().parent.parent
    target = root / "agent" / "_avro_encoders.py"
    count = write_module(Path(argv[0]) if argv else root / "avro", target)
    print(f"{target}: encoders and decoders for {count} schemas")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
