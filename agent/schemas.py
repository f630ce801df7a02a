"""The canonical Avro schemas: loading, encoding, fingerprints and evolution checks.

The ``avro/`` folder holds one ``.avsc`` per named type. Shared types (``EventMetadata``)
live in their own file and are inlined into each entity envelope at load, so what is
registered in a schema registry is one self-contained schema per entity.

``fastavro`` encodes (fast, on the hot path); the compatibility check between versions is
``agent.schema_compat``'s.
"""
from __future__ import annotations

import copy
import datetime as _dt
import importlib
import io
import json
import os
import site
import sys
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Optional

from fastavro import schemaless_reader, schemaless_writer
from fastavro.schema import parse_schema
from fastavro.validation import ValidationError, validate

from agent.avro_codegen import GENERATED_MODULE, load_entity_schemas, schema_fingerprint
from agent.contracts import AMOUNTS, ConfigError, TerminalError

__all__ = ["find_schema_dir", "FieldSpec", "EntitySchema", "SchemaCatalog", "decimal_misfit"]

_LOGICAL_NAMES = {"decimal": "decimal", "date": "date", "timestamp-micros": "timestamp",
                  "timestamp-millis": "timestamp"}
_TIMESTAMP_TYPES = ("timestamp-micros", "timestamp-millis")


def find_schema_dir() -> Path:
    """Where the ``.avsc`` files are: env override, dev checkout, then installed copy."""
    env = os.environ.get("OUTPOST_SCHEMA_DIR")
    if env:
        if not Path(env).is_dir():
            raise ConfigError([f"OUTPOST_SCHEMA_DIR={env} is not a directory"])
        return Path(env)
    candidates = [
        Path(__file__).resolve().parent.parent / "avro",          # dev checkout
        Path(sys.prefix) / "share" / "outpost" / "avro",           # pip install (data_files)
        Path(site.getuserbase()) / "share" / "outpost" / "avro",   # pip install --user
    ]
    if getattr(sys, "frozen", False):                              # PyInstaller folder (packaging/)
        candidates.insert(0, Path(getattr(sys, "_MEIPASS", Path(sys.executable).parent)) / "avro")
    for candidate in candidates:
        if (candidate / "EventMetadata.avsc").is_file():
            return candidate
    raise ConfigError([f"no canonical schemas found; looked in {', '.join(map(str, candidates))}"
                       " (set OUTPOST_SCHEMA_DIR)"])


@dataclass(frozen=True)
class FieldSpec:
    """One payload field, flattened for mappers and validation gates."""

    name: str
    avro_type: str                 # string, int, long, boolean, decimal, date, timestamp, ...
    nullable: bool
    precision: Optional[int]
    scale: Optional[int]
    rules: tuple[str, ...]
    doc: str


def decimal_misfit(value: Decimal, precision: int, scale: int) -> Optional[str]:
    """Why ``value`` does not fit decimal(precision, scale), in exact digits (never rounded,
    never in exponent notation: 1E+16 is shown as 10000000000000000); None if it fits.
    Trailing zeros are not decimal places (100.0000 fits decimal(18,2))."""
    if not value.is_finite():
        return f"{value} is not a finite number"
    _, digits, exponent = value.as_tuple()
    digits = list(digits)
    while exponent < 0 and len(digits) > 1 and digits[-1] == 0:
        digits.pop()
        exponent += 1
    places = max(-exponent, 0)
    integer_digits = max(len(digits) + exponent, 0) if value else 0
    problems = []
    if integer_digits > precision - scale:
        problems.append(f"{integer_digits} integer digits (at most {precision - scale})")
    if places > scale:
        problems.append(f"{places} decimal places (at most {scale})")
    return f"{value:f} does not fit decimal({precision},{scale}): {' and '.join(problems)}" if problems else None


def _generated(table: str, fingerprint: str):
    """The encoder (``ENCODERS``) or decoder (``DECODERS``) built for exactly this schema at
    packaging time, or None (fastavro)."""
    try:
        module = importlib.import_module(GENERATED_MODULE)
    except ImportError:         # a source checkout that was never built: fastavro only
        return None
    return getattr(module, table, {}).get(fingerprint)


def _non_null(avro_type: Any) -> tuple[Any, bool]:
    """The real type of a field and whether it is ``[null, T]``."""
    if isinstance(avro_type, list):
        rest = [t for t in avro_type if t != "null"]
        return (rest[0] if len(rest) == 1 else rest), len(rest) < len(avro_type)
    return avro_type, False


def _field_spec(field: dict) -> FieldSpec:
    real, nullable = _non_null(field["type"])
    precision = scale = None
    if isinstance(real, dict):
        logical = real.get("logicalType")
        kind = _LOGICAL_NAMES.get(logical, real["type"])
        if logical == "decimal":
            precision, scale = real["precision"], real.get("scale", 0)
    else:
        kind = real if isinstance(real, str) else "union"
    return FieldSpec(field["name"], kind, nullable, precision, scale,
                     tuple(field.get("outpost.rules", ())), field.get("doc", ""))


class EntitySchema:
    """One entity's envelope schema, parsed once; ``encode``/``decode`` are the hot path."""

    def __init__(self, schema: dict):
        self.schema = schema
        self.entity: str = schema["outpost.entity"]
        self.key_field: str = schema["outpost.key"]
        self.version: int = int(schema["outpost.version"])
        self.event_name: str = schema["name"].rsplit(".", 1)[-1]
        self.schema_json = json.dumps(schema)
        # fastavro adds private keys to what it parses: parse a copy, keep ``schema`` clean.
        self._parsed = parse_schema(copy.deepcopy(schema))
        self.fingerprint: str = schema_fingerprint(schema)
        self._generated = _generated("ENCODERS", self.fingerprint)
        self._generated_decoder = _generated("DECODERS", self.fingerprint)
        before = next(f for f in schema["fields"] if f["name"] == "before")
        payload, _ = _non_null(before["type"])
        self.fields: list[FieldSpec] = [_field_spec(f) for f in payload["fields"]]
        namespace = payload.get("namespace") or schema.get("namespace", "")
        self._payload_name = payload["name"] if "." in payload["name"] else f"{namespace}.{payload['name']}".lstrip(".")
        # Checked by hand before encoding: fastavro ignores decimal precision and reads
        # naive datetimes as local time, both silently.
        self._decimals = [(f.name, f.precision, f.scale) for f in self.fields if f.avro_type == "decimal"]
        self._timestamps = [f.name for f in self.fields if f.avro_type == "timestamp"]

    def __repr__(self) -> str:
        return f"<EntitySchema {self.event_name} v{self.version} {self.fingerprint[:12]}>"

    @property
    def has_generated_encoder(self) -> bool:
        return self._generated is not None

    @property
    def parsed(self):
        """The fastavro-parsed schema (for container-file writers)."""
        return self._parsed

    def field(self, name: str) -> FieldSpec:
        for spec in self.fields:
            if spec.name == name:
                return spec
        raise KeyError(f"{self.entity} has no field {name!r}")

    def encode(self, event: dict, prechecked: bool = False) -> bytes:
        """Schemaless Avro binary of ``event``; TerminalError naming the field if it does not fit.

        ``prechecked``: the caller guarantees what ``_precheck`` enforces (decimals already
        quantised to the schema, timestamps aware), as ``agent.mapping`` output does; only
        then may the encoder generated at build time write it (``agent.avro_codegen``).
        """
        if not isinstance(event, dict):
            raise TerminalError(f"{self.entity} event must be a dict, not {type(event).__name__}")
        if prechecked and self._generated is not None:
            try:
                return self._generated(event)
            except Exception:       # not the exact shape, or a misfit: checked, then fastavro decides
                prechecked = False
        if not prechecked:
            event = self._precheck(event)
        # Naming the union branch (fastavro's tuple notation) spares fastavro trying each
        # branch of before/after: same bytes, about a quarter faster.
        hinted = event
        for image in ("before", "after"):
            if isinstance(event.get(image), dict):
                hinted = {**hinted, image: (self._payload_name, event[image])}
        out = io.BytesIO()
        try:
            # strict_allow_default: an unknown (e.g. misspelt) field is an error, a missing
            # nullable one is not.
            schemaless_writer(out, self._parsed, hinted, strict_allow_default=True)
        except Exception as exc:  # fastavro raises many types; explain with the validator
            raise TerminalError(self._explain(event, exc)) from exc
        return out.getvalue()

    def check(self, event: dict) -> None:
        """What ``encode`` checks beyond fastavro (decimal precision and scale, aware times),
        for an event whose body is kept as it arrived; TerminalError naming the field."""
        self._precheck(event)

    def decode(self, body: bytes) -> dict:
        return self.decode_counted(body)[0]

    def decode_counted(self, body: bytes) -> tuple[dict, int]:
        """(event, bytes read) of a schemaless body written with exactly this schema. The
        decoder generated at build time reads it when it can; anything it refuses (a damaged
        body, an unusual value) is read by fastavro, whose result or error stands."""
        if self._generated_decoder is not None:
            try:
                return self._generated_decoder(body)
            except Exception:
                pass
        data = io.BytesIO(body)
        return schemaless_reader(data, self._parsed, self._parsed), data.tell()

    # -- internals -------------------------------------------------------------------
    def _precheck(self, event: dict) -> dict:
        """Reject what fastavro would accept wrongly; returns ``event`` or a fixed copy."""
        meta = event.get("metadata")
        if isinstance(meta, dict):
            for name in ("occurred_at", "captured_at"):
                self._check_timestamp("metadata", name, meta.get(name))
        for image in ("before", "after"):
            record = event.get(image)
            if not isinstance(record, dict):
                continue
            for name in self._timestamps:
                self._check_timestamp(image, name, record.get(name))
            for name, precision, scale in self._decimals:
                value = record.get(name)
                if value is None:
                    continue
                fixed = self._check_decimal(image, name, value, precision, scale)
                if fixed is not value:
                    # Copy rather than mutate the caller's record.
                    event = {**event, image: {**event[image], name: fixed}}
                    record = event[image]
        return event

    def _check_timestamp(self, image: str, name: str, value: Any) -> None:
        if isinstance(value, _dt.datetime) and value.tzinfo is None:
            raise TerminalError(f"{self.entity} {image}.{name}: naive datetime {value.isoformat()};"
                                " timestamps must be timezone-aware (UTC)")

    def _check_decimal(self, image: str, name: str, value: Any, precision: int, scale: int) -> Decimal:
        where = f"{self.entity} {image}.{name} (decimal({precision},{scale}))"
        if not isinstance(value, Decimal):
            kind = "text or raw bytes (the writer's schema has no decimal here)" \
                if isinstance(value, (str, bytes)) else type(value).__name__
            raise TerminalError(f"{where}: got {kind} {value!r:.80}; an amount must be an exact decimal, "
                                "never text or a float")
        _, digits, exponent = value.as_tuple()
        # the usual amount, at most the scale's places and the integer digits allowed: it fits
        # (exactly what decimal_misfit decides for it, without its digit-by-digit reasoning)
        if type(exponent) is int and -scale <= exponent and len(digits) + exponent <= precision - scale:
            return value
        misfit = decimal_misfit(value, precision, scale)
        if misfit:
            raise TerminalError(f"{where}: {misfit}")
        if value.as_tuple().exponent < -scale:
            value = value.quantize(Decimal(1).scaleb(-scale), context=AMOUNTS)   # only zeros beyond the scale
        return value

    def _explain(self, event: dict, exc: Exception) -> str:
        head = f"{self.entity} event does not fit {self.event_name} v{self.version}"
        try:
            validate(event, self._parsed, raise_errors=True)
        except ValidationError as verr:
            lines = [str(e) for e in verr.errors]
            # A bad field inside before/after also yields "<whole record> expected null"
            # for the union; that line only repeats the record, so keep the precise ones.
            precise = [line for line in lines if not line.endswith("expected null")]
            return head + ": " + "; ".join(precise or lines)
        except Exception as verr:  # the validator can fail on the same input
            return f"{head}: {verr}"
        return f"{head}: {exc}"


class SchemaCatalog:
    """Every canonical entity schema in a directory, by name and by fingerprint."""

    def __init__(self, directory: Path, schemas: dict[str, EntitySchema]):
        self.directory = directory
        self._by_name = schemas
        self._by_fingerprint = {s.fingerprint: s for s in schemas.values()}
        self._released_read = False

    @classmethod
    def load(cls, directory: Optional[Path] = None) -> "SchemaCatalog":
        directory = Path(directory) if directory is not None else find_schema_dir()
        expanded_schemas, problems = load_entity_schemas(directory)
        schemas: dict[str, EntitySchema] = {}
        for path, expanded in expanded_schemas.items():
            try:
                entity = EntitySchema(expanded)
            except Exception as exc:
                problems.append(f"{path}: {type(exc).__name__}: {exc}")
                continue
            if entity.entity in schemas:
                problems.append(f"{path}: entity {entity.entity} is defined twice")
            schemas[entity.entity] = entity
        if not schemas and not problems:
            problems.append(f"{directory}: no entity schemas (*.avsc with outpost.entity)")
        if problems:
            raise ConfigError(problems)
        return cls(directory, schemas)

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def entity(self, name: str) -> EntitySchema:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"unknown entity {name!r}; known: {', '.join(self.names())}") from None

    def by_fingerprint(self, fingerprint: str) -> EntitySchema:
        """The schema an event was written with: the current one, or a released version.
        An event queued before an upgrade keeps the fingerprint it was written with, and
        is delivered under that schema (its body is that schema's bytes)."""
        found = self._by_fingerprint.get(fingerprint)
        if found is None and not self._released_read:
            self._read_released()
            found = self._by_fingerprint.get(fingerprint)
        if found is None:
            raise KeyError(f"no current or released schema has fingerprint {fingerprint}: the event was written "
                           f"with a schema this agent does not have (released versions belong in "
                           f"{self.directory / 'released'}/v<N>/, docs/schemas.md)")
        return found

    def _read_released(self) -> None:
        """Every ``released/vN/<Entity>.avsc``, by fingerprint (read on the first miss:
        only a queue that outlived an upgrade needs them)."""
        for path in sorted((self.directory / "released").glob("v*/*.avsc")):
            try:
                schema = EntitySchema(json.loads(path.read_text(encoding="utf-8")))
            except Exception:   # (tests/test_schemas.py checks them) one that does not load wrote nothing queued
                continue
            self._by_fingerprint.setdefault(schema.fingerprint, schema)
        self._released_read = True

    def released(self, entity: str) -> Optional[dict]:
        """The highest released version (``released/vN/<Entity>.avsc``), or None."""
        best: Optional[tuple[int, Path]] = None
        for path in (self.directory / "released").glob(f"v*/{entity}.avsc"):
            number = path.parent.name[1:]
            if number.isdigit() and (best is None or int(number) > best[0]):
                best = (int(number), path)
        return json.loads(best[1].read_text(encoding="utf-8")) if best else None

    def check_backward(self, entity: str, previous: Optional[dict] = None) -> list[str]:
        """Problems reading data written with ``previous`` (default: last released) using
        the current schema; [] means BACKWARD compatible (``agent.schema_compat``)."""
        from .schema_compat import backward_problems
        previous = previous if previous is not None else self.released(entity)
        if previous is None:
            return []
        current = self.entity(entity)
        return backward_problems(entity, current.schema_json, current.schema, previous)
