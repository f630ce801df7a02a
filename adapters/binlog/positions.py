"""Pure logic of the ``binlog`` source: positions, checkpoints, server-setting verdicts.

Checkpoint (versioned JSON, committed with the events it covers: invariant 1)::

    {"v": 1, "file": "mysql-bin.000007", "pos": 1234, "rows": 0, "gtid": "0-1-99",
     "snapshot": null | {"tag": "...", "table": "t", "after": [pk..] | null, "rows": n,
                         "request": id | null, "initial": bool},
     "snap_done": 0}

``file``/``pos`` is where the current transaction starts, i.e. the end of the last fully
committed transaction (or DDL) read; ``rows`` is how many row changes of the captured table
in that transaction are already queued, so a batch may end mid-transaction and a restart
skips exactly those. ``gtid`` is informational (the last committed GTID).

Positions (the input of the event id, so they must be deterministic)::

    binlog rows:    "<file>:<transaction start pos>:<row number in the transaction>"
    snapshot rows:  "snapshot:<tag>:<primary key as JSON>"

The same binlog row read again after a crash yields the same position, hence the same
event id; a snapshot row and a binlog row of the same table row never share a position:
they are two versions and both are published (see docs/binlog.md).
"""
from __future__ import annotations

import datetime as dt
import json
import re
from decimal import Decimal
from typing import Any, Optional, Sequence

CHECKPOINT_VERSION = 1
TIMESTAMP_TYPES = frozenset({7, 17})   # MYSQL_TYPE_TIMESTAMP, MYSQL_TYPE_TIMESTAMP2


def new_checkpoint(file: str, pos: int, snapshot: Optional[dict] = None, snap_done: int = 0) -> dict:
    return {"v": CHECKPOINT_VERSION, "file": file, "pos": int(pos), "rows": 0, "gtid": None,
            "snapshot": snapshot, "snap_done": snap_done}


def valid_checkpoint(cp: Any) -> bool:
    return (isinstance(cp, dict) and cp.get("v") == CHECKPOINT_VERSION and isinstance(cp.get("file"), str)
            and isinstance(cp.get("pos"), int) and isinstance(cp.get("rows"), int))


def _plain(v: Any) -> Any:
    if isinstance(v, dt.datetime):
        return (v.astimezone(dt.timezone.utc) if v.tzinfo else v).isoformat()
    if isinstance(v, (dt.date, dt.time, Decimal)):
        return str(v)
    if isinstance(v, bytes):
        return v.hex()
    return v


def snapshot_position(tag: str, pk_values: Sequence[Any]) -> str:
    return f"snapshot:{tag}:{json.dumps([_plain(v) for v in pk_values], separators=(',', ':'))}"


def pk_to_json(values: Sequence[Any]) -> list:
    """Primary key values for the checkpoint (chunk resume): tagged so they round-trip."""
    out = []
    for v in values:
        if isinstance(v, Decimal):
            out.append({"t": "decimal", "v": str(v)})
        elif isinstance(v, dt.datetime):
            out.append({"t": "datetime", "v": v.replace(tzinfo=None).isoformat()})
        elif isinstance(v, dt.date):
            out.append({"t": "date", "v": v.isoformat()})
        elif isinstance(v, bytes):
            out.append({"t": "bytes", "v": v.hex()})
        else:
            out.append(v)
    return out


def pk_from_json(values: Sequence[Any]) -> list:
    decoders = {"decimal": Decimal, "datetime": dt.datetime.fromisoformat, "date": dt.date.fromisoformat,
                "bytes": bytes.fromhex}
    return [decoders[v["t"]](v["v"]) if isinstance(v, dict) else v for v in values]


class TxnTracker:
    """Follows transaction boundaries in the event stream (no I/O, unit-testable).

    ``boundary`` is the start of the current transaction: the end position of the last
    commit (XID, or a COMMIT/DDL query event), or the start of a new file after a rotate.
    """

    def __init__(self, file: str, pos: int, skip: int = 0, gtid: Optional[str] = None):
        self.file, self.boundary, self.skip, self.gtid = file, pos, skip, gtid
        self.rows = 0              # row changes of our table seen in the current transaction
        self.pending_gtid: Optional[str] = None
        self.echo = False          # the current transaction wrote the applier's marker row

    def rotate(self, next_file: str, position: int) -> None:
        # The rotate sent when a dump starts names the file we asked for: nothing moves. A
        # switch to another file (a real rotate at the end of a file, or the artificial one
        # sent after a server restart, whose old file ends without a rotate) moves the
        # boundary to the head of the next file.
        if next_file != self.file:
            self.file = next_file
            if self.rows == 0:
                self.boundary = position

    def begin(self, gtid: Optional[str] = None) -> None:
        self.pending_gtid, self.echo = gtid, False

    def row(self) -> Optional[int]:
        """Number of the next row in the transaction, or None if it was queued before a restart."""
        index = self.rows
        self.rows += 1
        return None if index < self.skip else index

    def commit(self, end_pos: int) -> None:
        self.boundary, self.rows, self.skip, self.echo = end_pos, 0, 0, False
        if self.pending_gtid:
            self.gtid, self.pending_gtid = self.pending_gtid, None

    def position(self, index: int) -> str:
        return f"{self.file}:{self.boundary}:{index}"

    def checkpoint(self, base: dict) -> dict:
        """The resume point covering everything handed out so far."""
        return {**base, "file": self.file, "pos": self.boundary, "rows": max(self.rows, self.skip), "gtid": self.gtid}


def is_commit_query(query: str) -> Optional[bool]:
    """True: ends a transaction (COMMIT, DDL); False: opens one (BEGIN); None: other."""
    q = query.strip().upper()
    if q == "BEGIN" or q.startswith("XA START") or q.startswith("XA END"):
        return False
    if q.startswith("SAVEPOINT") or q.startswith("ROLLBACK TO"):
        return None
    return True


# ---- server settings and privileges ---------------------------------------------------

def settings_problems(variables: dict) -> list[str]:
    """What ``outpost check`` says about the server's binlog settings."""
    v = {k.lower(): str(val) for k, val in variables.items()}
    problems = []
    if v.get("log_bin", "OFF").upper() not in ("ON", "1"):
        problems.append("the binary log is off: set log_bin=mysql-bin (and server_id) in my.cnf, then restart")
    if v.get("binlog_format", "").upper() != "ROW":
        problems.append(f"binlog_format is {v.get('binlog_format')!r}: set binlog_format=ROW in my.cnf "
                        "(SET GLOBAL binlog_format=ROW applies to new sessions only)")
    if v.get("binlog_row_image", "FULL").upper() != "FULL":
        problems.append(f"binlog_row_image is {v.get('binlog_row_image')!r}: set binlog_row_image=FULL, "
                        "otherwise updates and deletes lack the full before/after images")
    meta = v.get("binlog_row_metadata")
    if meta is not None and meta.upper() != "FULL":
        problems.append(f"warning: binlog_row_metadata is {meta!r}: set binlog_row_metadata=FULL so column "
                        "names travel in the binlog (else they are read from the current table definition, "
                        "which is wrong for events written before an ALTER TABLE)")
    expire = expire_seconds(v)
    if expire and expire < 86400:
        problems.append(f"warning: binlogs expire after {expire / 3600:.1f} h: an agent stopped longer "
                        "than that, or an HA pair's failover waiting longer, loses its position (set "
                        "binlog_expire_logs_seconds to a few days)")
    return problems


def expire_seconds(variables: dict) -> Optional[float]:
    """Binlog retention in seconds, or None when logs never expire automatically."""
    v = {k.lower(): val for k, val in variables.items()}
    seconds = float(v.get("binlog_expire_logs_seconds") or 0)
    if not seconds:
        seconds = float(v.get("expire_logs_days") or 0) * 86400
    return seconds or None


_GRANT = re.compile(r"^GRANT (.+?) ON (\S+) TO ", re.IGNORECASE)


def privilege_problems(grants: Sequence[str], schema: str, table: str) -> list[str]:
    """Missing privileges for binlog capture, from ``SHOW GRANTS`` lines."""
    global_privs: set[str] = set()
    select_ok = False
    targets = {"*.*", f"`{schema}`.*", f"`{schema}`.`{table}`"}
    for line in grants:
        match = _GRANT.match(line.strip())
        if not match:
            continue
        privs = {p.strip().upper() for p in match.group(1).split(",")}
        on = match.group(2).replace('"', "`")
        if on == "*.*":
            global_privs |= privs
        if on in targets and (privs & {"SELECT", "ALL PRIVILEGES", "ALL"}):
            select_ok = True
    has_all = bool(global_privs & {"ALL PRIVILEGES", "ALL"})
    problems = []
    if not has_all and not global_privs & {"REPLICATION SLAVE", "REPLICATION REPLICA"}:
        problems.append("the user lacks REPLICATION SLAVE: GRANT REPLICATION SLAVE ON *.* TO the capture user")
    if not has_all and not global_privs & {"REPLICATION CLIENT", "BINLOG MONITOR", "SUPER"}:
        problems.append("the user lacks BINLOG MONITOR (MariaDB >= 10.5; REPLICATION CLIENT on MySQL), needed "
                        "for SHOW BINARY LOGS / SHOW MASTER STATUS: GRANT BINLOG MONITOR ON *.* TO the user")
    if not select_ok:
        problems.append(f"the user lacks SELECT on {schema}.{table} (snapshots read the table): "
                        f"GRANT SELECT ON `{schema}`.* TO the capture user")
    return problems


def retention_report(stored_file: str, stored_pos: int, logs: Sequence[tuple[str, int]],
                     expire: Optional[float], warn_bytes: int) -> dict:
    """Where the stored position stands in the retained binlogs (for status)."""
    names = [name for name, _ in logs]
    report: dict[str, Any] = {"stored": f"{stored_file}:{stored_pos}", "oldest_retained": names[0] if names else None,
                              "newest": names[-1] if names else None, "expire_seconds": expire}
    if stored_file not in names:
        report.update(purged=True, warning=f"stored binlog {stored_file} is no longer on the server")
        return report
    index = names.index(stored_file)
    behind = sum(size for _, size in logs[index:]) - stored_pos
    report.update(purged=False, files_behind=len(names) - 1 - index, bytes_behind=max(0, behind),
                  files_before_position=index)
    if behind > warn_bytes:
        report["warning"] = (f"{behind / 1e6:.0f} MB of binlog not yet read (threshold {warn_bytes / 1e6:.0f} MB)"
                             + (f"; logs expire after {expire / 3600:.1f} h" if expire else ""))
    elif index == 0 and expire and len(names) > 1:
        report["warning"] = "the stored position is in the oldest retained binlog: the next purge removes it"
    return report
