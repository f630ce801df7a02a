"""Live reload of the capture side: mappings, lookups, filters and schedules.

Triggers: SIGHUP (POSIX), the Windows service's custom control 128 (``sc control
Outpost 128``), and ``outpost reload``, which works on every host: it records a request
in the table ``reload_requests`` of the state directory's ``queue.db`` (the running agent
holds the state directory's lock, so the command cannot open the agent itself) and waits
for the agent to write the outcome there. The agent looks for requests once a second.

A reload re-reads the file the agent was started with and validates it completely; an
invalid file is refused with every problem listed and the running config stays. A valid
one swaps each route's translator (``LiveTranslator``) between two batches and
reschedules the polling routes: nothing queued is touched, a batch being translated
finishes with the translator it started with. What a reload cannot change (sources,
sinks, routes added or removed, the fabric, the queue, the state directory) is named in
the outcome as needing a restart, and stays as it is.
"""
from __future__ import annotations

import logging
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Optional

__all__ = ["LiveTranslator", "Reloader", "request", "outcome", "wait"]

log = logging.getLogger("outpost.reload")

_DDL = """
CREATE TABLE IF NOT EXISTS reload_requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT, requested_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending', finished_at REAL, outcome TEXT)
"""
# sections a running agent cannot take over without a restart
_RESTART_ONLY = ("state_dir", "delivery_process", "schema_dir", "log", "http", "queue", "fabric", "sources", "sinks")


class LiveTranslator:
    """A route's translator as of the last reload: the capture loop and the source's
    callbacks go through it, so a swap takes effect at the next batch."""

    def __init__(self, translator):
        self.current = translator

    def __getattr__(self, name):
        return getattr(self.current, name)


# ---- requests in queue.db ------------------------------------------------------------

def _connect(state_dir) -> sqlite3.Connection:
    conn = sqlite3.connect(Path(state_dir) / "queue.db", isolation_level=None, timeout=30)
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute(_DDL)
    return conn


def request(state_dir) -> int:
    with closing(_connect(state_dir)) as conn:
        return conn.execute("INSERT INTO reload_requests (requested_at) VALUES (?)", (time.time(),)).lastrowid


def outcome(state_dir, request_id: int) -> Optional[tuple[str, str]]:
    """(state, outcome text) of a request once the agent has handled it, else None."""
    with closing(_connect(state_dir)) as conn:
        row = conn.execute("SELECT state, outcome FROM reload_requests WHERE id=?", (request_id,)).fetchone()
    return None if row is None or row[0] == "pending" else (row[0], row[1] or "")


def wait(state_dir, request_id: int, timeout: float) -> Optional[tuple[str, str]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = outcome(state_dir, request_id)
        if found is not None:
            return found
        time.sleep(0.2)
    return None


def _pending(state_dir) -> list[int]:
    with closing(_connect(state_dir)) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM reload_requests WHERE state='pending' ORDER BY id")]


def _finish(state_dir, ids: list[int], state: str, text: str) -> None:
    with closing(_connect(state_dir)) as conn:
        conn.executemany("UPDATE reload_requests SET state=?, outcome=?, finished_at=? WHERE id=?",
                         [(state, text, time.time(), i) for i in ids])


# ---- in the agent -------------------------------------------------------------------

class Reloader:
    """Serves reload requests for one agent (signals set ``wanted``; ``serve`` runs on
    the agent's scheduler, never in a signal handler)."""

    def __init__(self, agent, config_path: Optional[Path]):
        self.agent, self.config_path = agent, config_path
        self.wanted = threading.Event()
        self._lock = threading.Lock()

    def serve(self) -> None:
        ids = _pending(self.agent.config.state_dir)
        if not ids and not self.wanted.is_set():
            return
        self.wanted.clear()
        state, text = self.reload()
        if ids:
            _finish(self.agent.config.state_dir, ids, state, text)

    def reload(self) -> tuple[str, str]:
        """("done" | "refused", what happened), also logged."""
        from .config import load
        from .contracts import ConfigError
        with self._lock:
            if self.config_path is None:
                text = "this agent was not started from a config file: nothing to re-read"
                log.error("reload refused: %s", text)
                return "refused", text
            try:
                config = load(self.config_path)
            except ConfigError as exc:
                text = f"{self.config_path}: {len(exc.problems)} problem(s); the running configuration stays:\n" + \
                       "\n".join(f"  - {p}" for p in exc.problems)
                log.error("reload refused: %s", text)
                return "refused", text
            try:
                text = apply(self.agent, config)
            except Exception as exc:     # e.g. a mapping that cannot be built: keep what runs
                text = f"not applied, the running configuration stays: {type(exc).__name__}: {exc}"
                log.exception("reload refused")
                return "refused", text
            log.info("reload: %s", text)
            return "done", text


def apply(agent, config) -> str:
    """Swap in the new config's translators and schedules; returns what was done."""
    from apscheduler.triggers.cron import CronTrigger
    from apscheduler.triggers.interval import IntervalTrigger

    from .build import make_lookups, make_translator, streams
    old = agent.config
    kept = [name for name in config.routes if name in agent.captures
            and _same_route(old.routes[name], config.routes[name])]
    lookups = make_lookups(config)
    translators = {name: make_translator(config, agent.catalog, name, lookups) for name in kept}
    for name in kept:      # every translator is built before any is swapped: all or nothing
        agent.captures[name].translator.current = translators[name]
    rescheduled = []
    for name in kept:
        schedule = config.routes[name].schedule
        if schedule != old.routes[name].schedule and agent.scheduler is not None and not streams(config, name):
            trigger = IntervalTrigger(seconds=schedule.every) if schedule.every else CronTrigger.from_crontab(schedule.cron)
            agent.scheduler.reschedule_job(name, trigger=trigger)
            rescheduled.append(name)
    # what was not applied stays as it runs, so that the next reload compares with the truth
    routes = {name: config.routes[name] if name in kept else route for name, route in old.routes.items()}
    agent.config = config.model_copy(update={**{key: getattr(old, key) for key in _RESTART_ONLY},
                                             "routes": routes, "parsed_sources": old.parsed_sources,
                                             "parsed_sinks": old.parsed_sinks})
    restart = [key for key in _RESTART_ONLY if getattr(old, key) != getattr(config, key)]
    restart += [f"routes.{n}" for n in sorted(set(old.routes) ^ set(config.routes))]
    restart += [f"routes.{n}" for n in config.routes if n in old.routes and n not in kept]
    text = f"applied to {len(kept)} route(s) (mappings, lookups, filters)"
    if rescheduled:
        text += f"; rescheduled {', '.join(rescheduled)}"
    if restart:
        text += f"; needs a restart to take effect, left as it was: {', '.join(restart)}"
    return text


def _same_route(old, new) -> bool:
    """Whether a route's source side is unchanged (its mapping, filter and schedule may differ)."""
    return (old.source, old.sink, old.capture) == (new.source, new.sink, new.capture) and \
        (old.mapping is None) == (new.mapping is None)
