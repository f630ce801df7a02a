"""The state directory: private to the agent's account, and used by one agent at a time.

Two agents on one state directory would both capture and publish (the same rows twice,
every file twice). ``StateLock`` takes an OS lock on ``agent.lock`` (``flock`` on POSIX,
``LockFileEx`` on Windows, through portalocker): the kernel drops it when the holder
dies, so a SIGKILLed agent never blocks its own restart, and there is no stale-PID
guessing. Who holds it (PID, host, since when) is written beside it in
``agent.lock.json`` so the refusal can name the holder. Operator commands that only
read the queue (``status``, ``queue list``) do not take the lock.

The queue holds customer data and the exception queue holds source rows, so the
directory is created 0700 and its files 0600 whatever the umask; on Windows the folder
gets a protected ACL (no inherited Users read) for the service account, SYSTEM and
Administrators.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import stat
from pathlib import Path
from typing import Optional

import portalocker

from .contracts import OutpostError

__all__ = ["StateLock", "StateDirInUse", "prepare", "holder"]

log = logging.getLogger("outpost.statedir")

LOCK_NAME = "agent.lock"
PRIVATE_DIR, PRIVATE_FILE = 0o700, 0o600


class StateDirInUse(OutpostError):
    """Another live agent holds the state directory."""


def prepare(state_dir: Path) -> Path:
    """Create the state directory private to this account and tighten what is in it.

    Also sets the process umask to 077: SQLite creates ``-wal`` / ``-shm`` files later,
    and adapters write into the directory (offsets, outbox), all of which must stay private.
    """
    state_dir = Path(state_dir)
    os.umask(0o077)
    state_dir.mkdir(parents=True, exist_ok=True)
    if os.name == "nt":
        _protect_windows_folder(state_dir)
        return state_dir
    os.chmod(state_dir, PRIVATE_DIR)
    for path in state_dir.rglob("*"):
        try:
            mode = stat.S_IMODE(path.lstat().st_mode)
            if path.is_symlink():
                continue
            wanted = PRIVATE_DIR if path.is_dir() else mode & PRIVATE_FILE
            if mode != wanted:
                os.chmod(path, wanted)
        except OSError as exc:        # a file another process just removed, or not ours
            log.debug("cannot tighten %s: %s", path, exc)
    return state_dir


def _protect_windows_folder(folder: Path) -> None:
    """Owner, SYSTEM and Administrators only, inheritance from the parent cut (pywin32)."""
    try:
        import ntsecuritycon as con
        import win32api
        import win32security
    except ImportError:
        log.warning("pywin32 is not installed: %s keeps the permissions it inherits (install outpost[windows])",
                    folder)
        return
    user, _, _ = win32security.LookupAccountName(None, win32api.GetUserName())
    dacl = win32security.ACL()
    inherit = con.OBJECT_INHERIT_ACE | con.CONTAINER_INHERIT_ACE
    for sid in (user, win32security.CreateWellKnownSid(win32security.WinLocalSystemSid),
                win32security.CreateWellKnownSid(win32security.WinBuiltinAdministratorsSid)):
        dacl.AddAccessAllowedAceEx(win32security.ACL_REVISION, inherit, con.FILE_ALL_ACCESS, sid)
    win32security.SetNamedSecurityInfo(
        str(folder), win32security.SE_FILE_OBJECT,
        win32security.DACL_SECURITY_INFORMATION | win32security.PROTECTED_DACL_SECURITY_INFORMATION,
        None, None, dacl, None)


def holder(state_dir: Path) -> Optional[dict]:
    """Who holds the agent's lock (PID, host, since), or None."""
    return _read_holder(Path(state_dir) / f"{LOCK_NAME}.json")


def _read_holder(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def describe_holder(info: Optional[dict]) -> str:
    if not info:
        return "another process (no holder details recorded)"
    return f"PID {info.get('pid')} on host {info.get('host')} (since {info.get('since')}, {info.get('command')})"


class StateLock:
    """``with StateLock(dir, "run"):`` or ``acquire()`` / ``release()``; never blocks."""

    def __init__(self, state_dir: Path, command: str = "run", name: str = LOCK_NAME):
        self.state_dir = Path(state_dir)
        self.command = command
        self.lock_path = self.state_dir / name
        self.holder_path = self.state_dir / f"{name}.json"
        self._handle = None

    def acquire(self) -> "StateLock":
        if self._handle is not None:
            return self
        prepare(self.state_dir)
        handle = open(self.lock_path, "a+b")
        try:
            portalocker.lock(handle, portalocker.LockFlags.EXCLUSIVE | portalocker.LockFlags.NON_BLOCKING)
        except portalocker.exceptions.LockException:
            handle.close()
            raise StateDirInUse(
                f"state directory {self.state_dir} is in use by {describe_holder(_read_holder(self.holder_path))}; "
                "one agent per state directory (stop that agent first, or give this one its own state_dir)"
            ) from None
        self._handle = handle
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        temp = self.holder_path.with_name(f".{self.holder_path.name}.{os.getpid()}")
        temp.write_text(json.dumps(info), encoding="utf-8")
        os.replace(temp, self.holder_path)
        return self

    def release(self) -> None:
        handle, self._handle = self._handle, None
        if handle is None:
            return
        try:
            self.holder_path.unlink(missing_ok=True)
            portalocker.unlock(handle)
        finally:
            handle.close()

    def __enter__(self) -> "StateLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def fsync_dir(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (POSIX: fsync the directory itself).
    Windows cannot open a directory; NTFS journals the rename."""
    if os.name == "nt":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
