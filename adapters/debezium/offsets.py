"""The engine's offsets, with the local queue's checkpoint as their single source of truth.

Why: Kafka's ``FileOffsetBackingStore`` rewrites its file in place (truncate, then write). A
SIGKILL in between leaves a torn file, which ``load()`` either reads as "no offsets" (an
``EOFException`` it swallows: the initial snapshot runs again mid-stream, under new event ids)
or cannot read at all (``StreamCorruptedException`` at every start). Both were seen in
SIGKILL storms. So the file is never trusted:

* **Capture** (the Java thread, once per batch): the source partition and offset of the
  batch's LAST record, whatever it is (heartbeats are marked processed too), serialized as
  the engine's own offset writer does (a schemaless ``JsonConverter``; key =
  ``[engine name, partition]``, value = the offset map: byte-identical to the file's
  entries, checked against a file Debezium wrote). They ride, base64, in the batch's
  checkpoint, committed in the same SQLite transaction as the batch's events (invariant 1).
* **Start** (every engine start, also the in-process restart after a failure): the file is
  regenerated from the committed checkpoint, in the store's own format (a
  ``java.util.HashMap<byte[],byte[]>`` through ``ObjectOutputStream``), written to a temp
  file, fsynced, renamed over the offsets path, directory fsynced. Whatever Debezium did to
  the file while running is never read again. Resuming there is never ahead of the slot:
  ``confirmed_flush_lsn`` <= what was marked processed <= what the queue committed.
* **Never an implicit re-snapshot** (``plan_start``): once the checkpoint says the initial
  snapshot is complete the engine starts in ``no_data`` mode (for Debezium's snapshotters
  ``initial`` and ``no_data`` only differ when there is no offset, or a snapshot is in
  progress), and a route that committed before without engine offsets (an older agent's
  checkpoint) whose offsets file is missing or unreadable stops with the recovery named.

Only ``OffsetCapture``, ``read_store`` and ``write_store`` at the bottom touch Java (JPype, imported
lazily).
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from agent.contracts import ConfigError
from agent.statedir import fsync_dir

__all__ = ["FILE_STORE", "RESUME_FROM_SLOT", "StartPlan", "prepare", "plan_start", "encode", "snapshot_complete",
           "StoreUnreadable", "OffsetCapture", "read_store", "write_store", "recovery_hint"]

FILE_STORE = "org.apache.kafka.connect.storage.FileOffsetBackingStore"
RESUME_FROM_SLOT = "slot"


class StoreUnreadable(Exception):
    """The offsets file exists but cannot be read (torn by a kill, or damaged)."""


def recovery_hint(source: str) -> str:
    return (f"recovery (agent stopped): `outpost debezium recover {source}` resumes from the replication slot's "
            f"confirmed position without a snapshot (changes after it are read again; the queue drops those it "
            f"already holds), or `outpost debezium reset {source}` snapshots again; once streaming, "
            f"`outpost snapshot {source} TABLE` re-reads a table; see docs/debezium.md")


@dataclass(frozen=True)
class StartPlan:
    """What one engine start uses: the offsets to write first and the snapshot mode."""

    offsets: dict[str, str]                 # base64 key -> base64 value (the checkpoint's form)
    snapshot_mode: str
    origin: str                             # for the log: where the offsets came from
    resume_from_slot: bool = False          # `outpost debezium recover`: the slot must exist
    warnings: list[str] = field(default_factory=list)


def encode(key: bytes, value: bytes) -> tuple[str, str]:
    return base64.b64encode(key).decode("ascii"), base64.b64encode(value).decode("ascii")


def snapshot_complete(offsets: Mapping[str, str]) -> bool:
    """True when no stored offset belongs to a snapshot still in progress.

    PostgreSQL writes ``snapshot: INITIAL, snapshot_completed: false`` during the initial
    snapshot, ``snapshot_completed: true`` on its last record, and neither when streaming;
    other connectors use ``snapshot: true``. Anything unparsable counts as in progress.
    """
    if not offsets:
        return False
    for value in offsets.values():
        try:
            offset = json.loads(base64.b64decode(value))
        except (ValueError, binascii.Error):
            return False
        if not isinstance(offset, dict):
            return False
        if offset.get("snapshot") not in (None, False, "false") and offset.get("snapshot_completed") is not True:
            return False
    return True


def plan_start(checkpoint: Any, snapshot_mode: str, offsets_path: Path, source: str) -> StartPlan:
    """Decide the offsets and snapshot mode of the next engine start (raises ``ConfigError``).

    ``checkpoint`` is the route's committed queue checkpoint: ``None`` (never committed, or
    forgotten by ``outpost snapshot --reset-checkpoint``), version 1 (an older agent: the
    position lived in the offsets file only) or version 2 (``offsets`` inside).
    """
    checkpoint = checkpoint if isinstance(checkpoint, dict) else None
    stored = checkpoint.get("offsets") if checkpoint else None
    if stored is not None:
        if not stored and checkpoint.get("resume") == RESUME_FROM_SLOT:
            return StartPlan({}, "no_data", "none: resuming from the replication slot (outpost debezium recover)",
                             resume_from_slot=True)
        origin = "the queue checkpoint" if stored else "none (reset: first start)"
        return StartPlan(dict(stored), _mode(snapshot_mode, stored), origin)
    try:
        legacy = dict(encode(k, v) for k, v in read_store(offsets_path).items())
    except StoreUnreadable as exc:
        kept = _keep_copy(offsets_path)
        raise ConfigError([f"debezium {source}: offset store corrupt: {offsets_path} cannot be read ({exc}; "
                           f"copy kept as {kept.name}), and "
                           + ("the queue checkpoint (written by an older agent version) holds no engine offsets"
                              if checkpoint else "the queue holds no checkpoint for this route")
                           + "; starting without offsets would re-run the snapshot mid-stream; "
                           + recovery_hint(source)]) from None
    if legacy:
        return StartPlan(legacy, _mode(snapshot_mode, legacy), f"{offsets_path.name} (written by an older agent "
                         "version or kept after `outpost snapshot --reset-checkpoint`)")
    if checkpoint is None:
        return StartPlan({}, snapshot_mode, "none (first start)")
    missing = (f"debezium {source}: the route committed changes before (queue checkpoint of an older agent "
               f"version, without engine offsets) but {offsets_path} is missing")
    if snapshot_mode == "initial":
        raise ConfigError([f"{missing}; starting without offsets would re-run the initial snapshot mid-stream; "
                           f"{recovery_hint(source)}"])
    then = "takes a new snapshot (snapshot: when_needed)" if snapshot_mode == "when_needed" else \
        "streams from the replication slot's confirmed position (snapshot: none)"
    return StartPlan({}, snapshot_mode, "none (offsets file missing)", warnings=[f"{missing}: the engine {then}"])


def _mode(configured: str, offsets: Mapping[str, str]) -> str:
    # Belt and braces: with the snapshot complete, no_data behaves as initial does, except
    # that offsets Debezium cannot match (renamed engine, lost file) stream from the slot
    # instead of re-reading the table under new ids. when_needed keeps its documented
    # re-snapshot of unusable offsets: that is what its user asked for.
    return "no_data" if configured == "initial" and snapshot_complete(offsets) else configured


def _keep_copy(path: Path) -> Path:
    """One copy of a damaged store for the post-mortem (the latest one; they do not pile up)."""
    kept = path.with_name(path.name + ".torn")
    shutil.copyfile(path, kept)
    return kept


def prepare(checkpoint: Any, properties: Mapping[str, str], path: Path, source: str, log) -> StartPlan:
    """The plan of the next engine start, with the offsets file regenerated for it."""
    mode = properties["snapshot.mode"]
    if properties.get("offset.storage") != FILE_STORE:   # the user's own store (``properties``) keeps them
        stored = checkpoint.get("offsets") if isinstance(checkpoint, dict) else None
        return StartPlan(stored or {}, mode, str(properties.get("offset.storage")))
    plan = plan_start(checkpoint, mode, path, source)
    for warning in plan.warnings:
        log.warning(warning)
    try:
        read_store(path)
    except StoreUnreadable as exc:
        log.warning("debezium %s: %s was torn (%s; the previous process was killed while Debezium wrote it; copy "
                    "kept as %s); it is rewritten from the queue checkpoint", source, path.name, exc,
                    _keep_copy(path).name)
    write_store(path, plan.offsets)
    return plan


# -- Java side (JPype, the JVM is already running) ---------------------------------------

class OffsetCapture:
    """Serializes a record's position as the engine's offset writer would (Java thread).

    The key of an equal partition is serialized once: Kafka's writer also keeps one entry per
    equal partition (a ``HashMap`` keyed by the partition map)."""

    def __init__(self, engine_name: str):
        import jpype
        converter = jpype.JClass("org.apache.kafka.connect.json.JsonConverter")()
        # AsyncEmbeddedEngine: JsonConverter, {"schemas.enable": "false"}, key converter isKey=true
        converter.configure(jpype.JClass("java.util.Collections").singletonMap("schemas.enable", "false"), True)
        self._converter, self._name = converter, engine_name
        self._as_list = jpype.JClass("java.util.Arrays").asList
        self._partition, self._key = None, b""

    def __call__(self, record) -> tuple[bytes, bytes]:
        source = record.sourceRecord()
        partition = source.sourcePartition()
        if self._partition is None or not self._partition.equals(partition):
            self._key = bytes(self._converter.fromConnectData(self._name, None, self._as_list(self._name, partition)))
            self._partition = partition
        return self._key, bytes(self._converter.fromConnectData(self._name, None, source.sourceOffset()))


def read_store(path: Path) -> dict[bytes, bytes]:
    """The entries of an offsets file; {} when there is none. Stricter than Kafka's
    ``load()``: an ``EOFException`` is a torn file here, not an empty store."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    import jpype
    try:
        stream = jpype.JClass("java.io.ObjectInputStream")(jpype.JClass("java.io.ByteArrayInputStream")(data))
        raw = stream.readObject()
        if not isinstance(raw, jpype.JClass("java.util.HashMap")):
            raise StoreUnreadable(f"expected a java.util.HashMap, found {raw.getClass().getName()}")
        return {bytes(entry.getKey()): bytes(entry.getValue()) for entry in raw.entrySet()}
    except jpype.JException as exc:
        raise StoreUnreadable(f"{exc.getClass().getName()}: {exc.getMessage() or 'truncated'}, {len(data)} bytes") \
            from None


def write_store(path: Path, offsets: Mapping[str, str]) -> None:
    """Regenerate the offsets file (crash-safe: temp, fsync, rename, fsync the directory)."""
    if not offsets:
        path.unlink(missing_ok=True)
        fsync_dir(path.parent)
        return
    import jpype
    table = jpype.JClass("java.util.HashMap")()
    as_bytes = jpype.JArray(jpype.JByte)
    for key, value in offsets.items():
        table.put(as_bytes(base64.b64decode(key)), as_bytes(base64.b64decode(value)))
    buffer = jpype.JClass("java.io.ByteArrayOutputStream")()
    stream = jpype.JClass("java.io.ObjectOutputStream")(buffer)
    stream.writeObject(table)
    stream.close()
    temp = path.with_name(path.name + ".tmp")
    with open(temp, "wb") as handle:
        handle.write(bytes(buffer.toByteArray()))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)
    fsync_dir(path.parent)

