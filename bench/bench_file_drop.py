#!/usr/bin/env python
"""Benchmark of the file_drop route: CSV file -> file_drop -> SQLite queue [-> kafka sink -> tansu].

Run:  .venv/bin/python bench/bench_file_drop.py [--rows 1000000] [--big-mb 1024] [--skip queue,ack,rss]

Each measurement runs in a child process (fresh state dir, fresh inbox) so its peak RSS is
the agent's alone. Everything is real (files on local disk, SQLite WAL queue with
synchronous=FULL, confluent-kafka idempotent producer acks=all, tansu with memory storage)
except the schema registry: the HTTP double of tests/support/registry_double.py.

to queue rows/s   --rows invoice rows (~75 bytes each, all valid, all_or_nothing on): the
                  agent's main thread calls run_pass() until the file is archived; both
                  passes (check: parse + mapping gates + encode; emit: parse + map + encode +
                  queue commit) are inside the timer. No delivery.
to ack rows/s     same file, delivered into tansu by a delivery process of its own, as
                  `outpost run` does; timer until the file is archived AND the queue is
                  empty (every delivery report succeeded). CPU: user+sys of every agent
                  process (bench/agent_procs.py), split capture / delivery.
peak RSS          --big-mb file of fat rows (a ~1.9 KB free-text column that the mapping
                  ignores), to the queue only, sampled every 0.5 s with psutil, compared with
                  a file a tenth of that size: constant memory means the two peaks match.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

HEADER = "inv_no,cust_no,company,curr,tax_code,inv_date,net,tax,gross,status,memo\n"


def write_file(path: Path, rows: int = 0, target_bytes: int = 0, memo_len: int = 0) -> int:
    memo = "x" * memo_len
    n = 0
    with open(path, "w", buffering=1 << 20) as f:
        f.write(HEADER)
        while (rows and n < rows) or (target_bytes and f.tell() < target_bytes):
            n += 1
            f.write(f"I-{n:08d},C-{n % 997},{'01' if n % 3 else '02'},USD,{'NY' if n % 3 else 'LDN'},"
                    f"2026-11-27,{n % 100000}.25,1.00,{n % 100000 + 1}.25,open,{memo}\n")
    return n


def document(work: Path, sink: dict) -> dict:
    from tests.support.route import INVOICE_MAPPING, LOOKUPS
    return {"state_dir": str(work / "state"), "lookups": LOOKUPS, "mappings": {"invoice": INVOICE_MAPPING},
            "queue": {"max_bytes": "20GiB", "delivery_batch": 2000},
            "sources": {"drop": {"type": "file_drop", "inbox": str(work / "inbox"), "observer": "none",
                                 "rescan_every": "0.05s"}},
            "sinks": {"out": sink},
            "routes": {"inv": {"source": "drop", "sink": "out", "mapping": "invoice", "schedule": {"every": "1h"},
                               "capture": {"pattern": "*.csv", "format": "csv", "min_age": 0, "settle": 0.01,
                                           "batch_size": 2000, "max_size": "4GiB",
                                           "csv": {"types": {"net": "decimal", "tax": "decimal",
                                                             "gross": "decimal"}}}}}}


def child(a) -> dict:
    import psutil
    from agent_procs import AgentMeter, peak_rss, wait_delivery_ready
    from agent.config import parse
    from agent.runtime import Agent
    work = Path(a.work)
    sink = ({"type": "kafka"} if a.mode == "ack" else {"type": "avro_files", "directory": str(work / "out")})
    doc = document(work, sink)
    if a.mode == "ack":
        doc["fabric"] = {"kafka": {"bootstrap.servers": a.bootstrap}, "schema_registry": {"url": a.registry},
                         "topic_template": f"bench{os.getpid()}.{{entity}}", "create_topics": True}
    ack = a.mode == "ack"
    agent = Agent(parse(doc), drain_timeout=5, separate_delivery=ack)
    agent.build()
    me, peak, done = psutil.Process(), [0], threading.Event()

    def sample():
        while not done.wait(0.5):
            peak[0] = max(peak[0], me.memory_info().rss)
    threading.Thread(target=sample, daemon=True).start()
    rss_built = me.memory_info().rss
    if ack:
        agent.start(capture=False)
        wait_delivery_ready(agent)
    inbox = work / "inbox"
    meter, t0 = AgentMeter(agent).start(), time.monotonic()
    while not list(inbox.glob("archive/*/*.csv")):
        agent.run_pass()
    captured_s = time.monotonic() - t0
    while ack and agent.queue.depth() > 0:
        time.sleep(0.05)
    total_s = time.monotonic() - t0
    used = meter.read()
    done.set()
    peak[0] = max(peak[0], me.memory_info().rss)
    rss = peak_rss(agent)
    result = {"captured_s": captured_s, "total_s": total_s, "cpu_s": used["cpu_s"],
              "capture_cpu_s": used["capture_cpu_s"], "delivery_cpu_s": used["delivery_cpu_s"],
              "peak_rss_mb": peak[0] / 2**20, "delivery_peak_rss_mb": rss["delivery_mb"],
              "rss_after_build_mb": rss_built / 2**20,
              "exceptions": agent.queue.count_exceptions(), "queued": agent.queue.depth()}
    agent.stop()
    return result


def run(a, mode: str, make, extra=()) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"outpost-fd-{mode}-", dir=a.dir))
    (work / "inbox").mkdir()
    rows = make(work / "inbox" / "bench.csv.part")
    (work / "inbox" / "bench.csv.part").rename(work / "inbox" / "bench.csv")
    size = (work / "inbox" / "bench.csv").stat().st_size
    out = work / "result.json"
    subprocess.run([sys.executable, __file__, "--child", mode, "--work", str(work), "--out", str(out), *extra],
                   check=True, cwd=ROOT)
    result = json.loads(out.read_text())
    result.update(rows=rows, file_mb=size / 2**20)
    subprocess.run(["rm", "-rf", str(work)], check=False)
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--big-mb", type=int, default=1024)
    ap.add_argument("--skip", default="")
    ap.add_argument("--dir", default=None, help="where to write the files (default: the temp dir)")
    for hidden in ("child", "work", "out", "bootstrap", "registry"):
        ap.add_argument(f"--{hidden}", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        a.mode = a.child
        Path(a.out).write_text(json.dumps(child(a)))
        return
    skip, results = set(a.skip.split(",")), {}
    if "queue" not in skip:
        results["queue"] = run(a, "queue", lambda p: write_file(p, rows=a.rows))
    if "ack" not in skip:
        from tests.support.registry_double import RegistryDouble
        from tests.support.services import Broker
        broker, registry = Broker(Path(tempfile.mkdtemp()) / "tansu.log"), RegistryDouble()
        try:
            results["ack"] = run(a, "ack", lambda p: write_file(p, rows=a.rows),
                                 ["--bootstrap", broker.bootstrap, "--registry", registry.url])
        finally:
            registry.stop()
            broker.stop()
    if "rss" not in skip:
        for label, mb in (("rss_small", a.big_mb // 10), ("rss_big", a.big_mb)):
            results[label] = run(a, "queue", lambda p, mb=mb: write_file(p, target_bytes=mb << 20, memo_len=1900))
    print(json.dumps(results, indent=1))
    for label, r in results.items():
        print(f"{label:<10} {r['rows']:>9} rows {r['file_mb']:>7.0f} MB  {r['rows'] / r['total_s']:>8,.0f} rows/s "
              f"(captured in {r['captured_s']:.1f}s, total {r['total_s']:.1f}s)  CPU {r['cpu_s'] / r['rows'] * 1e6:.1f} "
              f"µs/row (capture {r['capture_cpu_s'] / r['rows'] * 1e6:.1f}, delivery "
              f"{r['delivery_cpu_s'] / r['rows'] * 1e6:.1f})  peak RSS {r['peak_rss_mb']:.0f} MB + delivery "
              f"{r['delivery_peak_rss_mb']:.0f} (after build {r['rss_after_build_mb']:.0f})  exceptions {r['exceptions']}")


if __name__ == "__main__":
    main()
