"""A torn last line of Debezium's ``FileSchemaHistory`` is repaired before the engine starts.

The file holds one JSON document per line (every DDL the connector saw); Debezium appends
each record with ``append(line); newLine()`` and at start parses every non-empty line, so a
kill in the middle of an append leaves a partial last line and every later start fails with
"Unable to read object content". Repair, at each engine start:

* a last line without its newline that is a complete JSON document was fully written: only
  the newline is added (dropping it could lose a DDL whose offset was already committed);
* otherwise the partial line is cut off, after keeping a copy of the file (``.torn``). The
  record was being written when the process died, so the offset of its DDL was not
  committed yet (the history is written before the change is handed over): Debezium reads
  that DDL again from the log.

Damage before the last line is not a kill's doing: it is left alone and Debezium's failure
("history ... corrupt") stops the route with the recovery named.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Optional

__all__ = ["repair"]


def repair(path: Path) -> Optional[str]:
    """Repair a torn last line of ``path``; returns what was done, None if nothing was needed."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    complete = data.rfind(b"\n") + 1
    tail = data[complete:]
    if not tail.strip():
        return None
    try:
        json.loads(tail)
        whole = True
    except ValueError:     # UnicodeDecodeError too: a multi-byte character cut in half
        whole = False
    if whole:
        with open(path, "ab") as handle:
            handle.write(b"\n")
            _sync(handle)
        return f"{path.name}: its last record lacked the line end (the process died right after writing it); added"
    kept = path.with_name(path.name + ".torn")
    shutil.copyfile(path, kept)
    with open(path, "r+b") as handle:
        handle.truncate(complete)
        _sync(handle)
    return (f"{path.name}: cut a partial last record of {len(tail)} bytes (the process died while Debezium wrote "
            f"it; copy kept as {kept.name}); Debezium reads that DDL again from the log")


def _sync(handle) -> None:
    handle.flush()
    os.fsync(handle.fileno())
