"""The inbox on disk: finding finished files, claiming them, and moving them out.

Layout under each inbox (all on the inbox's own file system, so every move is an atomic
rename and nothing is ever copied or deleted)::

    inbox/invoices.csv                    dropped by the MFT job (plus .done / .ctl)
    inbox/processing/<owner>/invoices.csv claimed: renamed here by exactly one agent
    inbox/archive/YYYY-MM-DD/invoices.csv published
    inbox/archive/.ledger/<route>/<sha256>.json   identity of every file the route published
    inbox/error/invoices.csv              rejected, with invoices.csv.error.json

``owner`` is unique per agent state directory and file spec, so a restarted agent finds
the files it had claimed (and only those) and two agents never share one.
"""
from __future__ import annotations

import datetime as dt
import fnmatch
import hashlib
import json
import logging
import os
import re
import stat
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .formats import FileRejected, problem

def open_nofollow(path) -> Any:
    """Open for reading without following a link swapped in after the checks."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise FileRejected(problem(None, "refused", "not a regular file"))
    return os.fdopen(fd, "rb", buffering=1 << 20)


log = logging.getLogger("outpost.file_drop")
REPORT_SUFFIXES = (".error.json", ".skipped.json", ".rejected-rows.json")


def agent_id(state_dir: Path) -> str:
    """A stable id for this agent installation (created once in its state directory)."""
    path = Path(state_dir) / "file_drop" / "agent_id"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(path, "x", encoding="ascii") as handle:
            handle.write(uuid.uuid4().hex[:12])
    except FileExistsError:
        pass
    return path.read_text(encoding="ascii").strip()


def write_json(path: Path, document: dict) -> None:
    """Write a report durably (temporary name, fsync, rename)."""
    temp = path.with_name(f".{path.name}.tmp")
    with open(temp, "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=2, default=str)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)


@dataclass
class Claimed:
    inbox: "Inbox"
    path: Path            # in processing/<owner>/
    name: str             # the name it was dropped under


class Readiness:
    """A file is finished when it is ``min_age`` old and its size and mtime did not
    change between two looks at least ``settle`` apart (a writer appending slowly keeps
    moving its mtime, so it is never taken half-written)."""

    def __init__(self, min_age: float, settle: float):
        self.min_age, self.settle = min_age, settle
        self._seen: dict[str, tuple[int, int, float]] = {}

    def ready(self, path: Path, st: os.stat_result, now: Optional[float] = None) -> bool:
        now = time.time() if now is None else now
        key, shape = str(path), (st.st_size, st.st_mtime_ns)
        before = self._seen.get(key)
        if before is None or before[:2] != shape:
            self._seen[key] = (*shape, now)
            return False
        return now - st.st_mtime >= self.min_age and now - before[2] >= self.settle

    def forget(self, keep: set[str]) -> None:
        for key in [k for k in self._seen if k not in keep]:
            del self._seen[key]

    @property
    def pending(self) -> int:
        return len(self._seen)


def route_id(route: str) -> str:
    """A route name as a folder name (a hash tells apart names that clean up alike)."""
    clean = re.sub(r"[^A-Za-z0-9_.-]", "_", route).strip(".") or "_"
    return clean if clean == route else f"{clean}-{hashlib.sha1(route.encode()).hexdigest()[:8]}"


class Inbox:
    def __init__(self, root: Path, pattern: str, owner: str, companions: tuple[str, ...], route: str = ""):
        self.root = Path(root).resolve()
        self.pattern, self.owner, self.companion_suffixes = pattern, owner, companions
        self.processing = self.root / "processing" / owner
        self.archive = self.root / "archive"
        self.error = self.root / "error"
        # per route: the same bytes meant for a second route are not "already published" for it
        self.shared_ledger = self.archive / ".ledger"
        self.ledger = self.shared_ledger / route if route else self.shared_ledger
        self._locked: set[str] = set()

    def ensure(self) -> None:
        for folder in (self.processing, self.ledger, self.error):
            folder.mkdir(parents=True, exist_ok=True)

    def _is_candidate(self, name: str) -> bool:
        return (not name.startswith(".") and fnmatch.fnmatchcase(name, self.pattern)
                and not name.endswith(REPORT_SUFFIXES)
                and not any(name.endswith(s) for s in self.companion_suffixes))

    def candidates(self) -> list[tuple[Path, os.stat_result]]:
        """Direct children matching the pattern (hidden names are temporary files), lstat'ed."""
        found = []
        with os.scandir(self.root) as entries:
            for entry in entries:
                if not self._is_candidate(entry.name):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    continue
                found.append((Path(entry.path), st))
        return sorted(found, key=lambda item: (item[1].st_mtime_ns, item[0].name))

    def companion(self, path: Path, suffix: str) -> Optional[Path]:
        """``invoices.csv.done`` or ``invoices.done`` next to ``invoices.csv``."""
        for candidate in (path.with_name(path.name + suffix), path.with_name(path.stem + suffix)):
            if candidate.is_file() and not candidate.is_symlink():
                return candidate
        return None

    def claim(self, path: Path) -> Optional[Claimed]:
        """Atomic rename into processing/<owner>/; None if another agent was quicker."""
        target = self.processing / path.name
        if target.exists() or target.is_symlink():
            return None   # a file of that name is still in flight here: take it next time
        try:
            os.rename(path, target)
        except FileNotFoundError:
            return None
        except PermissionError as exc:
            # Windows refuses to rename a file another process still has open (the writer):
            # not finished after all. Elsewhere it means the inbox is not writable: say so.
            if path.name not in self._locked:
                self._locked.add(path.name)
                log.warning("cannot claim %s yet (%s); will try again", path, exc.strerror)
            return None
        self._locked.discard(path.name)
        for suffix in self.companion_suffixes:
            mate = self.companion(path, suffix)
            if mate is not None:
                try:
                    os.rename(mate, self.processing / mate.name)
                except FileNotFoundError:
                    pass
        return Claimed(self, target, path.name)

    def orphans(self) -> list[Claimed]:
        """Files this owner claimed before a crash or stop, oldest first."""
        if not self.processing.is_dir():
            return []
        names = sorted(e.name for e in os.scandir(self.processing) if self._is_candidate(e.name))
        return [Claimed(self, self.processing / n, n) for n in names]

    def in_processing(self, name: str) -> Claimed:
        return Claimed(self, self.processing / name, name)

    def mates(self, claimed: Claimed) -> list[Path]:
        """The trigger, sidecar and report files travelling with a claimed file."""
        stem = Path(claimed.name).stem
        out = []
        for suffix in self.companion_suffixes + REPORT_SUFFIXES:
            for name in {claimed.name + suffix, stem + suffix}:
                if (self.processing / name).exists():
                    out.append(self.processing / name)
        return out

    def refusal(self, claimed: Claimed, max_size: int) -> Optional[str]:
        """Why this claimed file must not be read at all, or None."""
        try:
            st = os.lstat(claimed.path)
        except FileNotFoundError:
            return "the file disappeared after it was claimed"
        if stat.S_ISLNK(st.st_mode):
            return f"symbolic link to {os.readlink(claimed.path)!r}: links are never followed"
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file (device, pipe or socket)"
        real = claimed.path.resolve()
        if self.root not in real.parents:
            return f"path resolves outside the inbox ({real})"
        if st.st_size > max_size:
            return f"file is {st.st_size} bytes, over the configured max_size of {max_size} bytes"
        return None

    def companion_in_processing(self, claimed: Claimed, suffix: str) -> Optional[Path]:
        stem = Path(claimed.name).stem
        for name in (claimed.name + suffix, stem + suffix):
            path = self.processing / name
            if path.is_file() and not path.is_symlink():
                return path
        return None

    # -- outcomes ------------------------------------------------------------------------

    def move_out(self, claimed: Claimed, outcome: str, sha: Optional[str] = None) -> Optional[Path]:
        """Move a claimed file and its mates to archive/YYYY-MM-DD/ or error/. Safe to
        repeat after a crash: whatever was already moved is skipped."""
        day = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
        folder = self.error if outcome == "error" else self.archive / day
        folder.mkdir(parents=True, exist_ok=True)
        mates = self.mates(claimed)
        if not (claimed.path.exists() or claimed.path.is_symlink()):
            return None
        final = _free_name(folder, claimed.name, sha)
        os.rename(claimed.path, folder / final)
        for mate in mates:
            os.rename(mate, folder / (final + mate.name[len(claimed.name):] if mate.name.startswith(claimed.name)
                                      else _free_name(folder, mate.name, sha)))
        return folder / final

    def ledger_entry(self, sha: str) -> Optional[dict]:
        entry = _read_entry(self.ledger / f"{sha}.json")
        if entry is None and self.ledger != self.shared_ledger:
            # written before ledgers were per route: it was this route's if its pattern took the name
            entry = _read_entry(self.shared_ledger / f"{sha}.json")
            if entry is not None and not fnmatch.fnmatchcase(str(entry.get("name", "")), self.pattern):
                entry = None
        return entry

    def record_in_ledger(self, sha: str, entry: dict) -> None:
        self.ledger.mkdir(parents=True, exist_ok=True)
        if not (self.ledger / f"{sha}.json").exists():
            write_json(self.ledger / f"{sha}.json", entry)


def _read_entry(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None


def _free_name(folder: Path, name: str, sha: Optional[str]) -> str:
    """The name itself, or with the content hash / a counter when it is taken."""
    if not (folder / name).exists():
        return name
    base, dot, ext = name.partition(".")
    for n in range(1, 10_000):
        tag = (sha or "")[:12] if n == 1 and sha else f"{int(time.time())}-{n}"
        candidate = f"{base}.{tag}{dot}{ext}"
        if not (folder / candidate).exists():
            return candidate
    raise FileExistsError(f"no free name for {name} in {folder}")


def network_fs(path: str) -> Optional[str]:
    """The file system type if ``path`` is on an SMB/NFS-like mount (Linux), else None."""
    try:
        with open("/proc/mounts", encoding="utf-8") as handle:
            mounts = [line.split()[1:3] for line in handle if len(line.split()) > 2]
    except OSError:
        return None
    real = os.path.realpath(path)
    best = max((m for m in mounts if real == m[0] or real.startswith(m[0].rstrip("/") + "/")),
               key=lambda m: len(m[0]), default=None)
    kinds = ("cifs", "smb3", "smbfs", "nfs", "nfs4", "9p", "fuse.sshfs", "afs")
    return best[1] if best and best[1] in kinds else None
