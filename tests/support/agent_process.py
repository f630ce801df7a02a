"""A real ``outpost`` process for tests, and the few things tests ask of it.

Every test that starts, kills or stops the agent as a separate process uses this one
helper (no test module keeps its own copy): the agent runs as ``python -m agent.cli``
from the checkout under test, its output goes to a log file the test can read (stdout to
a file of its own when the test checks that nothing goes there). ``kill_at_write`` lands
the SIGKILL exactly on a write to a given file (strace fault injection).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent.parent


def outpost(*args, timeout: float = 120, env: Optional[dict] = None, **kw) -> subprocess.CompletedProcess:
    """Run one ``outpost`` command to completion (text output captured)."""
    return subprocess.run([sys.executable, "-m", "agent.cli", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
                          **kw)


class AgentProcess:
    """``outpost run -c CONFIG`` as a child process.

    ``cwd``: its working directory (the checkout by default); ``stdout_path``: where its
    stdout goes when it must stay apart from the log (stderr), else both go to ``log_path``.
    """

    def __init__(self, config_path: Path, log_path: Path, args: Sequence[str] = ("run",),
                 env: Optional[dict] = None, cwd: Optional[Path] = None, stdout_path: Optional[Path] = None):
        self.config_path, self.log_path = Path(config_path), Path(log_path)
        self.args, self.env = list(args), env or {}
        self.cwd, self.stdout_path = Path(cwd or ROOT), stdout_path and Path(stdout_path)
        self.process: Optional[subprocess.Popen] = None

    def start(self) -> "AgentProcess":
        with open(self.log_path, "ab") as log, open(self.stdout_path or os.devnull, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "agent.cli", *self.args, "-c", str(self.config_path)], cwd=self.cwd,
                stdout=out if self.stdout_path else log, stderr=log if self.stdout_path else subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT), **self.env})
        return self

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no handler runs, nothing is flushed."""
        if self.alive():
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def kill_at_write(self, path: Path, timeout: float) -> bool:
        """SIGKILL the agent when one of its threads next calls write(2) on ``path``.

        strace injects the signal at the syscall's entry, so the file stays as the writer left
        it just before: a store rewritten in place is truncated and not yet written (torn). If
        no write comes within ``timeout`` the agent is killed anyway. Returns whether the kill
        landed on the write. Needs ``strace`` (and ptrace rights over the agent)."""
        tracer = subprocess.Popen([shutil.which("strace") or "strace", "-qq", "-f", "-p", str(self.pid),
                                   "-e", "trace=write", "-e", "inject=write:signal=SIGKILL", "-P", str(path),
                                   "-o", os.devnull], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            self.process.wait(timeout)
            landed = self.process.returncode == -signal.SIGKILL
        except subprocess.TimeoutExpired:
            landed = False
            self.kill()
        try:
            tracer.wait(10)
        except subprocess.TimeoutExpired:
            tracer.kill()
            tracer.wait(10)
        return landed

    def terminate(self, timeout: float = 60) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def wait(self, timeout: float = 60) -> int:
        return self.process.wait(timeout)

    def log(self, tail: Optional[int] = None) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text[-tail:] if tail else text

    def wait_for_log(self, text: str, timeout: float = 60) -> bool:
        return self.until(lambda: text in self.log(), timeout)

    def until(self, condition: Callable[[], object], timeout: float = 60) -> bool:
        """``wait_for``, but gives up at once when the agent has exited."""
        return wait_for(lambda: condition() or not self.alive(), timeout) and bool(condition())

    def __enter__(self) -> "AgentProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        if self.alive():
            self.kill()


def wait_for(condition: Callable[[], object], timeout: float = 60, every: float = 0.2) -> bool:
    """Poll ``condition`` until it is truthy; False at the timeout (the test asserts)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every)
    return bool(condition())


def _read(state_dir: Path, sql: str, args=(), default=None):
    """One query on the agent's queue, read-only as another process would; ``default``
    while the agent has not created it yet."""
    path = Path(state_dir) / "queue.db"
    if not path.exists():
        return default
    try:
        with sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=10) as db:
            row = db.execute(sql, args).fetchone()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return default
        raise
    return default if row is None else row[0]


def queue_depth(state_dir: Path) -> int:
    """Events waiting in the agent's local queue."""
    return _read(state_dir, "SELECT count(*) FROM outbox", default=0)


def checkpoint_of(state_dir: Path, route: str):
    """The route's committed source checkpoint (None before its first commit)."""
    value = _read(state_dir, "SELECT value FROM checkpoints WHERE route=?", (route,))
    return json.loads(value) if value else None


def route_status(state_dir: Path, route: str) -> dict:
    """What ``outpost status`` shows for a route (its stored status fields)."""
    value = _read(state_dir, "SELECT value FROM route_status WHERE route=?", (route,))
    return json.loads(value) if value else {}


def open_exceptions(state_dir: Path) -> list[dict]:
    """The agent's open exception-queue entries (id, stage, entity, key, reason, context), oldest first."""
    path = Path(state_dir) / "queue.db"
    if not path.exists():
        return []
    with sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=10) as db:
        try:
            rows = db.execute("SELECT id, stage, entity, key, reason, context, event_id FROM exceptions"
                              " WHERE status='open' ORDER BY id").fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise
    keys = ("id", "stage", "entity", "key", "reason", "context", "event_id")
    return [{**dict(zip(keys, row)), "context": json.loads(row[5])} for row in rows]
