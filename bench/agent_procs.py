"""The agent's processes as `outpost run` has them, for the benches: find them, sum their
CPU, read their peak RSS.

`Agent(..., separate_delivery=True)` captures in the process that built it and delivers in
a child started by `agent.worker.DeliveryProcess` (`python -m agent.delivery_child`; on
Windows and in frozen builds multiprocessing's "spawn", which also starts multiprocessing's
resource tracker: counted with capture where it runs). A bench runs the agent in a child process of its own; harness work done
inside that process (its main thread writing changes, polling the queue's status, counting
rows) is kept out of the agent's figure by leaving that thread's CPU out.

    meter = AgentMeter(agent, harness=[threading.main_thread().native_id]).start()
    ...timed window...
    used = meter.read()          # {"capture_cpu_s", "delivery_cpu_s", "cpu_s", "harness_cpu_s"}
    rss = peak_rss(agent)        # {"capture_mb", "delivery_mb", "tracker_mb"}, before agent.stop()

A sum of RSS counts every page the processes share (the interpreter, librdkafka, OpenSSL)
once per process. ``PssSampler``, run from outside the agent (the bench's parent), gives the
peak of their summed PSS instead: each shared page divided among the processes that map it,
so what the agent costs the machine.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import psutil

__all__ = ["AgentMeter", "PssSampler", "agent_processes", "cpu_s", "peak_rss", "peak_rss_mb",
           "registry_helper_peak_rss_mb", "thread_cpu_s", "wait_delivery_ready"]


def cpu_s(processes) -> float:
    """user+sys seconds of ``processes`` and of the children they have reaped (the kafka
    sink's registry helper); one that ended counts 0: it can no longer be read."""
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
        except psutil.Error:
            pass
    return total


def thread_cpu_s(native_ids) -> float:
    """user+sys seconds of these threads of this process (Linux native thread ids)."""
    wanted = set(native_ids)
    return sum(t.user_time + t.system_time for t in psutil.Process().threads() if t.id in wanted)


def peak_rss_mb(pid: int) -> float:
    """VmHWM of a process (Linux): its peak resident set, MB."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def agent_processes(agent) -> dict:
    """{"capture": [this process and its helpers], "delivery": [the delivery process]}.

    With delivery in this process (``separate_delivery=False``) the delivery list is empty.
    The helpers are this process's other children that are not harness subprocesses the
    caller started: multiprocessing's resource tracker, where "spawn" starts one."""
    me = psutil.Process()
    delivery_pid = getattr(getattr(agent.delivery, "_process", None), "pid", None)
    capture, delivery = [me], []
    for child in me.children(recursive=True):
        if child.pid == delivery_pid:
            delivery.append(child)
        else:
            try:
                if "resource_tracker" in " ".join(child.cmdline()):
                    capture.append(child)
            except psutil.Error:
                pass
    return {"capture": capture, "delivery": delivery}


def wait_delivery_ready(agent, timeout: float = 60.0) -> float:
    """Wait until every sink reports alive (the delivery process has drained and started its
    loops); seconds waited."""
    t0 = time.monotonic()
    while not all(handle.is_alive() for handle in agent.deliveries.values()):
        if time.monotonic() - t0 > timeout:
            raise RuntimeError("the delivery side did not start")
        time.sleep(0.02)
    return time.monotonic() - t0


class AgentMeter:
    """CPU of the agent's processes over a window, split capture / delivery, without the
    CPU of the harness threads named (native ids of threads of this process)."""

    def __init__(self, agent, harness=()):
        self.agent, self.harness = agent, list(harness)

    def _now(self) -> tuple:
        procs = agent_processes(self.agent)
        self.pids = {role: [p.pid for p in ps] for role, ps in procs.items()}
        return cpu_s(procs["capture"]), cpu_s(procs["delivery"]), thread_cpu_s(self.harness)

    def start(self) -> "AgentMeter":
        self.t0 = self._now()
        self.delivery_pids0 = self.pids["delivery"]
        return self

    def read(self) -> dict:
        capture, delivery, harness = (b - a for a, b in zip(self.t0, self._now()))
        if self.pids["delivery"] != self.delivery_pids0:
            raise RuntimeError(f"the delivery process changed during the window: {self.delivery_pids0} -> "
                               f"{self.pids['delivery']} (a restart: the figure would be wrong)")
        capture -= harness
        return {"capture_cpu_s": capture, "delivery_cpu_s": delivery, "cpu_s": capture + delivery,
                "harness_cpu_s": harness}


def peak_rss(agent) -> dict:
    """Peak RSS (MB) of the capture process (this one), of the delivery process and of
    multiprocessing's resource tracker; read it before ``agent.stop()``, the delivery
    process is gone after."""
    procs = agent_processes(agent)
    return {"capture_mb": peak_rss_mb(os.getpid()),
            "delivery_mb": sum(peak_rss_mb(p.pid) for p in procs["delivery"]),
            "tracker_mb": sum(peak_rss_mb(p.pid) for p in procs["capture"][1:])}


def registry_helper_peak_rss_mb(registry_url: str) -> float:
    """Peak RSS of the kafka adapters' registry helper (adapters/kafka/registry_helper.py)
    asked for one id, as the sink starts it: a process that lives about 0.2 s per new schema."""
    import subprocess
    import sys
    script = ("import json, resource; from adapters.kafka.registry_helper import RegistryHelper; "
              f"RegistryHelper({{'url': {registry_url!r}}}, True, 30).ids([('helper-probe-value', "
              "json.dumps({'type': 'record', 'name': 'Probe', 'fields': []}))]); "
              "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                          cwd=str(Path(__file__).resolve().parent.parent))
    return int(done.stdout.split()[-1]) / 1024


class PssSampler:
    """The peak, over the run, of the summed PSS (MB) of a process and all its descendants,
    read from /proc/<pid>/smaps_rollup every ``every`` seconds by a thread of the caller
    (the kernel walks each process's page tables: run it outside the agent's processes).
    ``lasting_peak_mb`` leaves out the short-lived registry helper."""

    def __init__(self, pid: int, every: float = 0.25):
        self.root, self.every, self.peak_mb, self.lasting_peak_mb = pid, every, 0.0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pss-sampler", daemon=True)

    def start(self) -> "PssSampler":
        self._thread.start()
        return self

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_mb

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                root = psutil.Process(self.root)
                processes = [root] + root.children(recursive=True)
            except psutil.Error:
                return
            lasting = helpers = 0
            for process in processes:
                try:
                    transient = "registry_helper.py" in " ".join(process.cmdline())
                except psutil.Error:
                    continue
                pss = _pss_kib(process.pid) / 1024
                helpers, lasting = (helpers + pss, lasting) if transient else (helpers, lasting + pss)
            self.peak_mb = max(self.peak_mb, lasting + helpers)
            self.lasting_peak_mb = max(self.lasting_peak_mb, lasting)


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def main_thread_id() -> int:
    return threading.main_thread().native_id
