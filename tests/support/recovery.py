"""The SIGKILL recovery contract, written once for every route.

A real agent process (``outpost run``) runs a real route and is killed with SIGKILL at random
points while changes flow, then restarted each time. At the end it must stop on SIGTERM, and
an independent reader of the destination checks what arrived against what was changed
upstream (``assert_delivered_once``): nothing lost, nothing that never happened (a second
snapshot), no change under two event ids, each key's changes in order.

Adopting it: a class names the route's source and sink harnesses (``tests/support/harness.py``;
defaults: ``sql_poll`` on PostgreSQL into ``avro_files``), and gets the whole run::

    class TestBinlogRecovery(RecoveryContract):
        source = BinlogHarness

The default run writes ``rounds`` transactions of ``chunk`` new rows while the agent is
killed every ``kill_every`` seconds (at least ``min_kills`` times); while it is down after
every other kill, ``update_while_down`` rows get a new version (sources with updates).
``kill_process`` says which process: the agent's main process (its delivery process exits
with it), the delivery process alone (the agent restarts it), or the two in turn. A
route with a scenario of its own (where to kill, what to write, what else to check) overrides
the hooks ``prepare``, ``ready``, ``run``, ``landed`` and ``check``, and keeps the rest.

Set OUTPOST_CRASH_SEED to replay a run's random kill points (each run prints its seed).
"""
from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterable, Optional

import psutil
import pytest
import yaml

from tests.support.agent_process import AgentProcess, queue_depth
from tests.support.harness import ROUTE, AvroFilesHarness, Change, SqlPollHarness
from tests.support.route import CUSTOMER_MAPPING, LOOKUPS

__all__ = ["RecoveryContract", "assert_delivered_once"]


def assert_delivered_once(expected: Iterable[Change], landed: Iterable[Change], *, coalesced: bool = False,
                          exact: bool = False, note: str = "") -> None:
    """``expected``: the changes made upstream, in commit order; ``landed``: what arrived, in
    the destination's order (with event ids where the destination keeps them).

    ``coalesced``: the source may merge two changes of a key made between two of its reads
    (polling): only each key's last version must arrive. ``exact``: nothing may arrive twice
    even under the same id (an apply-once sink, graceful stops). A repeat under the same id
    is otherwise allowed (consumers de-duplicate on it); order is judged by each change's
    first arrival, as such a consumer sees it.
    """
    expected, landed = list(expected), list(landed)
    made = {(c.key, c.version) for c in expected}
    arrived = [(c.key, c.version) for c in landed]
    last = {c.key: (c.key, c.version) for c in expected}
    lost = sorted((set(last.values()) if coalesced else made) - set(arrived))
    assert not lost, f"lost {len(lost)} change(s), e.g. {lost[:5]} {note}"
    invented = sorted(set(arrived) - made)
    assert not invented, f"{len(invented)} change(s) arrived that were never made (a second snapshot?): " \
                         f"{invented[:5]} {note}"
    ids, owners = defaultdict(set), defaultdict(set)
    for change in landed:
        if change.event_id is not None:
            ids[(change.key, change.version)].add(change.event_id)
            owners[change.event_id].add((change.key, change.version))
    twice = {change: sorted(found) for change, found in ids.items() if len(found) > 1}
    assert not twice, f"{len(twice)} change(s) under two event ids, e.g. {list(twice.items())[:3]} {note}"
    shared = {event_id: sorted(found) for event_id, found in owners.items() if len(found) > 1}
    assert not shared, f"one event id for different changes: {list(shared.items())[:3]} {note}"
    order, seen = defaultdict(list), defaultdict(list)
    for change in expected:
        order[change.key].append(change.version)
    for key, version in dict.fromkeys(arrived):          # first arrivals, in order
        seen[key].append(version)
    wrong = [key for key, versions in seen.items() if versions != [v for v in order[key] if v in versions]]
    assert not wrong, f"{len(wrong)} key(s) out of order, e.g. {wrong[0]}: made {order[wrong[0]]}, " \
                      f"arrived {seen[wrong[0]]} {note}"
    if exact:
        repeated = len(arrived) - len(set(arrived))
        assert not repeated, f"{repeated} change(s) arrived twice {note}"


class RecoveryContract:
    source: type = SqlPollHarness
    sink: type = AvroFilesHarness
    route: Optional[tuple[str, str]] = None      # (source, sink) adapters, when not the harnesses'
    rounds, chunk, pause = 30, 40, 0.05
    min_kills = 3
    kill_every = (0.4, 1.6)           # seconds between interruptions, drawn at random
    update_while_down = 20
    interrupt_with = signal.SIGKILL   # SIGTERM: graceful stops, after which nothing may arrive twice
    # SIGKILL "agent": the main process, whose delivery process then exits (the pipe's end);
    # "delivery": the delivery process alone, which the running agent restarts; "alternate":
    # the delivery process first, then the agent, and so on
    kill_process = "agent"
    exact = False                     # see assert_delivered_once
    grace = 0.0                       # after everything arrived: time for a double delivery to show
    stop_within = 30.0                # the final SIGTERM ends the agent within this
    deliver_within = 120.0

    @pytest.mark.slow
    def test_sigkill_recovery(self, request, tmp_path):
        """Killed at random points, restarted each time: every change arrives, under one event
        id, each key in order (what a consumer de-duplicating on event_id sees exactly once)."""
        seed = int(os.environ.get("OUTPOST_CRASH_SEED", time.time()))
        print(f"crash test seed {seed}")
        self.rng, self.note = random.Random(seed), f"(seed {seed})"
        self.tmp_path, self.state_dir, self.expected = tmp_path, tmp_path / "state", []
        config_path = tmp_path / "outpost.yaml"
        config_path.write_text(yaml.safe_dump(self.prepare(request, tmp_path)))
        self.agent = self.make_agent(config_path)
        request.addfinalizer(lambda: self.agent.alive() and self.agent.kill())
        self.start_agent()
        assert self.agent.until(self.ready, 90), self.agent.log(3000)
        self.run()
        self.await_delivery()
        started = time.monotonic()
        assert self.agent.terminate(self.stop_within + 30) == 0, self.agent.log(3000)
        took = time.monotonic() - started
        assert took < self.stop_within, f"the agent took {took:.1f}s to stop after SIGTERM"
        landed = self.landed()
        try:
            assert_delivered_once(self.expected, landed, coalesced=self.coalesced, exact=self.exact, note=self.note)
        except AssertionError as failure:   # a CI run keeps only this message: say what the agent said
            raise AssertionError(f"{failure}\n{self.diagnosis()}") from None
        self.check(landed)

    def diagnosis(self) -> str:
        """What the agent warned of, across all its runs, and what its queue still holds."""
        said = [line for line in self.agent.log().splitlines()
                if " WARNING " in line or " ERROR " in line or "agent running" in line]
        kills = getattr(self, "interruptions", "?")        # a route's own run() may not count them
        return (f"queue depth at the end {queue_depth(self.state_dir)}, {kills} interruption(s); the agent's log "
                "(warnings, errors, starts):\n" + "\n".join(line[:300] for line in said[-40:]))

    # ------------------------------------------------------------------ hooks

    def prepare(self, request, tmp_path: Path) -> dict:
        """Set up the endpoints; return the agent's config document."""
        self.src, self.dst = self.source(request, tmp_path), self.sink(request, tmp_path)
        mapping = {"mapping": self.src.mapping} if self.src.mapping else {}
        return {"state_dir": str(self.state_dir), "fabric": {**self.src.fabric(), **self.dst.fabric()},
                "lookups": LOOKUPS, "mappings": {"customer": CUSTOMER_MAPPING},
                "sources": {"src": self.src.section()}, "sinks": {"dst": self.dst.section()},
                "routes": {ROUTE: {"source": "src", "sink": "dst", "schedule": {"every": "0.2s"}, **mapping}}}

    def make_agent(self, config_path: Path) -> AgentProcess:
        env = {}
        for harness in self._harnesses():
            env.update(harness.agent_env())
        return AgentProcess(config_path, self.tmp_path / "agent.log", env=env)

    def ready(self) -> bool:
        """The route captures: changes made from now on will be seen."""
        return all(h.ready(self.state_dir) for h in self._harnesses() if h.kind == "source")

    def run(self) -> None:
        """Make changes while interrupting the agent; ``self.expected`` gets every change made."""
        writer = threading.Thread(target=self.write, daemon=True)
        writer.start()
        self.interruptions = self.interrupt_until(lambda: not writer.is_alive(), while_down=self.update_some)
        writer.join()

    def landed(self) -> list[Change]:
        return self.dst.landed()

    def check(self, landed: list[Change]) -> None:
        """What else the route must show at the end (its log, files left behind)."""

    # ------------------------------------------------------------------ the parts

    @classmethod
    def adapters(cls) -> tuple[str, str]:
        """The (source, sink) adapters this route runs."""
        return cls.route or (cls.source.adapter, cls.sink.adapter)

    def _harnesses(self) -> list:
        return [h for h in (getattr(self, "src", None), getattr(self, "dst", None)) if h is not None]

    @property
    def coalesced(self) -> bool:
        """Whether the source may merge changes of a key made between two reads (polling)."""
        return any(h.kind == "source" and h.coalesces for h in self._harnesses())

    def write(self) -> None:
        for _ in range(self.rounds):
            self.expected += self.src.change(self.chunk)
            time.sleep(self.pause)

    def update_some(self, interruptions: int) -> None:
        """While the agent is down after every other kill: changes it must find at restart."""
        keys = list(dict.fromkeys(c.key for c in self.expected))
        if interruptions % 2 and keys and getattr(self, "src", None):
            try:
                self.expected += self.src.update(self.rng.sample(keys, min(self.update_while_down, len(keys))))
            except NotImplementedError:       # a source without updates (new files only)
                pass

    def interrupt(self) -> bool:
        """SIGKILL (no handler runs, nothing is flushed), or a graceful stop within its bound.
        Returns whether the agent itself is down (not when only its delivery process was killed)."""
        if self.interrupt_with == signal.SIGKILL:
            self.kills = getattr(self, "kills", 0) + 1
            target = ("agent", "delivery")[self.kills % 2] if self.kill_process == "alternate" else self.kill_process
            if target == "delivery" and self.kill_delivery_process():
                return False
            self.agent.kill()
            return True
        # a stop during a stream, not during the interpreter's start (SIGTERM's default action)
        assert self.agent.until(lambda: "agent running" in self.agent.log()[self._started_at:], 60), \
            self.agent.log(3000)
        started = time.monotonic()
        code = self.agent.terminate(self.stop_within + 30)
        assert code == 0, f"exit code {code} after SIGTERM: {self.agent.log(3000)}"
        took = time.monotonic() - started
        assert took < self.stop_within, f"a graceful stop took {took:.1f}s"
        return True

    def kill_delivery_process(self, timeout: float = 30.0) -> bool:
        """SIGKILL the agent's delivery process (its child that is not multiprocessing's
        resource tracker), waiting for it while the agent (re)starts it; False if none came."""
        killed = getattr(self, "killed_deliveries", set())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.agent.alive():
            try:       # not one killed before and not yet reaped
                children = [c for c in psutil.Process(self.agent.pid).children() if c.pid not in killed
                            and c.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in " ".join(c.cmdline())]
            except psutil.Error:
                children = []
            if children:
                for child in children:
                    child.send_signal(signal.SIGKILL)
                    killed.add(child.pid)
                self.killed_deliveries = killed
                return True
            time.sleep(0.05)
        return False

    def interrupt_until(self, done: Callable[[], bool], while_down: Optional[Callable[[int], None]] = None) -> int:
        """Interrupt at random points until ``done()`` and at least ``min_kills`` times,
        restarting after each; ``while_down(n)`` runs while the agent is down. Returns n."""
        interruptions = 0
        while not done() or interruptions < self.min_kills:
            time.sleep(self.rng.uniform(*self.kill_every))
            agent_down = self.interrupt()
            interruptions += 1
            if while_down:
                while_down(interruptions)
            if agent_down:
                self.start_agent()
        return interruptions

    def start_agent(self) -> None:
        self._started_at = len(self.agent.log())
        self.agent.start()

    def await_delivery(self) -> None:
        """Until every change that must arrive has (the checks then say what is missing)."""
        must = {(c.key, c.version) for c in
                ({c.key: c for c in self.expected}.values() if self.coalesced else self.expected)}
        deadline = time.monotonic() + self.deliver_within
        while time.monotonic() < deadline:
            # reading the destination can be slow (a topic from the start): only once the queue is empty
            if queue_depth(self.state_dir) == 0 and must <= {(c.key, c.version) for c in self.landed()}:
                break
            time.sleep(1)
        time.sleep(self.grace)
