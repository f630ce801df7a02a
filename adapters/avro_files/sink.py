"""Writes canonical events as Avro object container files, one folder per entity.

A file is written under a hidden temporary name, fsynced after every batch (that is the
ack), and renamed to its final name when it reaches ``rotate_bytes`` or
``rotate_seconds`` (and on stop), so a reader of the outbox never sees a partial file.
A temporary file left by a crash is salvaged at the next start: the records it holds
are kept and the file is finalised. Events written but not yet acked in the queue are
then written again with the same ``event_id``: readers de-duplicate on it.
"""
from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path
from typing import Sequence

import fastavro

from agent.contracts import DeliveryReport, QueuedEvent, Sink, TransientError
from agent.statedir import fsync_dir

from .spec import SinkOptions


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class _PartFile:
    def __init__(self, folder: Path, entity_schema, codec: str):
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        self.final = folder / f"{snake(entity_schema.entity)}-{stamp}-{time.time_ns() % 10**9:09d}.avro"
        self.temp = folder / f".{self.final.name}.tmp"
        self.fingerprint = entity_schema.fingerprint
        self.opened_at = time.monotonic()
        self.handle = open(self.temp, "wb")
        self.writer = fastavro.write.Writer(self.handle, entity_schema.parsed, codec=codec)

    def append(self, records) -> None:
        for record in records:
            self.writer.write(record)
        self.writer.flush()
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def size(self) -> int:
        return self.handle.tell()

    def finish(self) -> None:
        self.writer.flush()
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        os.replace(self.temp, self.final)
        fsync_dir(self.final.parent)


class AvroFilesSink(Sink):
    options_model = SinkOptions

    def __init__(self, options, context):
        super().__init__(options, context)
        directory = self.spec.directory
        self.directory = directory if directory.is_absolute() else context.state_dir / directory
        self.rotate_bytes = self.spec.rotate_bytes
        self.rotate_seconds = self.spec.rotate_seconds
        self.codec = self.spec.codec
        self._parts: dict[str, _PartFile] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._timer = None

    def open(self) -> None:
        if self._timer is not None:
            return      # already open: salvaging now would take this sink's own open files away
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            for temp in sorted(self.directory.glob("*/.*.avro.tmp")):
                self._salvage(temp)
        except OSError as exc:
            raise TransientError(f"outbox {self.directory} is not writable: {exc}") from exc
        self._closing.clear()
        self._timer = threading.Thread(target=self._rotate_by_age, name="avro-files-rotate", daemon=True)
        self._timer.start()

    def _salvage(self, temp: Path) -> None:
        records, schema = [], None
        with open(temp, "rb") as handle:
            try:
                reader = fastavro.reader(handle)
                schema = reader.writer_schema
                for record in reader:
                    records.append(record)
            except Exception:   # a torn last block: keep every record before it
                self.context.log.warning("outbox file %s was cut short by a crash; salvaged %d records",
                                         temp, len(records))
        if records and schema is not None:
            final = temp.with_name(temp.name[1:-len(".tmp")])
            with open(final.with_suffix(".salvage"), "wb") as out:
                fastavro.writer(out, schema, records, codec=self.codec)
                out.flush()
                os.fsync(out.fileno())
            os.replace(final.with_suffix(".salvage"), final)
        temp.unlink()
        fsync_dir(temp.parent)

    def write(self, events: Sequence[QueuedEvent]) -> DeliveryReport:
        report = DeliveryReport()
        with self._lock:
            try:
                for entity, fingerprint, group in _runs(events):
                    try:
                        schema = self.context.schemas.by_fingerprint(fingerprint)
                    except KeyError as exc:     # retrying cannot bring the schema back: park them
                        report.rejected.update((e.event_id, f"cannot write: {exc.args[0]}") for e in group)
                        continue
                    part = self._part(entity, schema)
                    part.append(schema.decode(e.body) for e in group)
                    report.delivered.update(e.event_id for e in group)
                    if part.size() >= self.rotate_bytes:
                        self._finish(entity)
            except OSError as exc:
                # nothing in this batch is acked: a re-send repeats the same event ids
                return DeliveryReport(transient_error=f"cannot write to {self.directory}: {exc}")
        return report

    def _part(self, entity: str, schema) -> _PartFile:
        part = self._parts.get(entity)
        if part is not None and part.fingerprint != schema.fingerprint:
            self._finish(entity)   # one writer schema per container file
            part = None
        if part is None:
            folder = self.directory / snake(entity)
            folder.mkdir(parents=True, exist_ok=True)
            part = self._parts[entity] = _PartFile(folder, schema, self.codec)
        return part

    def _finish(self, entity: str) -> None:
        self._parts.pop(entity).finish()

    def _rotate_by_age(self) -> None:
        while not self._closing.wait(1.0):
            with self._lock:
                for entity in [e for e, p in self._parts.items()
                               if time.monotonic() - p.opened_at >= self.rotate_seconds]:
                    self._finish(entity)

    def close(self) -> None:
        self._closing.set()
        if self._timer is not None:
            self._timer.join(5)
            self._timer = None
        with self._lock:
            for entity in list(self._parts):
                self._finish(entity)


def _runs(events):
    """Consecutive events of the same entity and schema, in order."""
    run, current = [], None
    for event in events:
        marker = (event.entity, event.schema_fingerprint)
        if run and marker != current:
            yield current[0], current[1], run
            run = []
        current = marker
        run.append(event)
    if run:
        yield current[0], current[1], run


Sink = AvroFilesSink
