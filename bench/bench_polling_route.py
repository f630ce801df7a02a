#!/usr/bin/env python
"""Benchmark of the core polling route: PostgreSQL -> sql_poll -> SQLite queue -> kafka sink -> tansu.

Run:  .venv/bin/python bench/bench_polling_route.py [--rows 100000] [--cursor-index] [--profile DIR]

Everything is real (PostgreSQL 15 on 127.0.0.1:5432, tansu with memory storage, SQLite WAL
queue with synchronous=FULL, confluent-kafka idempotent producer, acks=all) except the schema
registry, which is the HTTP double of tests/support/registry_double.py (one lookup per run).
Each agent run happens in a child process (fresh PG database, fresh state dir, fresh topic)
so its peak RSS is the agent's alone. What the numbers mean:

e2e events/s       N rows committed in PG before the timer; Agent.start(capture=False) runs the
                   delivery thread, the main thread calls run_pass() (incremental poll, lag 0);
                   timer = first capture query .. queue empty (every delivery report succeeded
                   and the rows were settled). Capture and delivery overlap, as in production.
PostgreSQL CPU     user+sys of the backends serving the e2e child's database, over the same span
                   (parallel query off for the bench database, so no worker process escapes it).
                   The table is ANALYZEd after the fill (--no-analyze: not); --cursor-index adds
                   the index on (updated_at, cust_no) that `outpost check` asks for. The report
                   shows the EXPLAIN ANALYZE of one page read after a position, mid-run: with the
                   index and statistics an Index Scan under the Limit; without the index (or
                   without statistics) a Sort over every row left up to the signpost, per page.
capture-only /s    second child, no delivery thread: run_pass() alone (poll, map, encode, insert
                   into the queue + checkpoint commits). Then delivery-only /s: deliver_all()
                   drains that queue (peek, produce, wait for acks, settle) with nothing else running.
sql_poll fetch /s  in this process: the source's batches() over the same rows (SQL + dict rows
                   + SourceRecord), no mapping.  translate /s: Translator.translate() (mapping,
                   envelope, precheck, encode) over those records.  mapping /s: EntityMapping.apply.
encode /s          EntitySchema.encode of the prebuilt envelopes (checked: fastavro; mapped
                   output: the encoder generated at build time), and plain fastavro
                   schemaless_writer with the parsed schema (the "fastavro-only ceiling").
producer /s        confluent-kafka alone (idempotent, acks=all, linger 10 ms, same keys, values
                   and headers as the sink), streaming then waiting for every report; and the
                   same in flush-every-500 batches (the sink waits for each batch's reports).
latency p50/p99    Agent.start() with its scheduler (every 0.05 s, lag 0) in a child; this
                   process commits single-row INSERTs (autocommit) at --rate for --seconds.
                   commit = client clock right after COMMIT returned; ack = the producer's
                   delivery callback for that key (an instrumented wrapper around the sink's
                   Producer, in the agent process; same host clock); settled = when the queue
                   row was removed (settle() returned). Both reported.
peak RSS           the sum of each agent process's VmHWM: the e2e child (capture: interpreter,
                   SQLAlchemy, psycopg, fastavro, APScheduler, pydantic, SQLite page cache),
                   the delivery process (confluent-kafka/librdkafka and its registry client)
                   and multiprocessing's resource tracker, which "spawn" starts with them.
                   Not tansu, PostgreSQL or the registry double.
peak PSS           the peak of the same processes' summed PSS, sampled by this (parent)
                   process every 0.25 s: shared pages (the interpreter, libraries) counted once.
"""
from __future__ import annotations

import argparse, gc, io, logging, json, os, resource, struct, subprocess, sys, tempfile, time, uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Where the delivery process is started with "spawn" (Windows, frozen builds) it runs this file
# again as __mp_main__: it must not pay for the harness's SQLAlchemy, which `outpost run`'s delivery never loads.
if __name__ != "__mp_main__":
    import sqlalchemy as sa  # noqa: E402
    sys.path.insert(0, str(ROOT / "bench"))
    from agent_procs import PssSampler, agent_processes, cpu_s, peak_rss_mb, registry_helper_peak_rss_mb  # noqa: E402
    from latency_probes import AckSpy, paced_inserts  # noqa: E402

PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
FILL_SQL = """INSERT INTO erp_customer (cust_no, cust_name, company, curr, tax_code, credit_lim)
SELECT 'C-' || lpad(g::text, 7, '0'), 'Customer number ' || g, CASE WHEN mod(g, 3) = 0 THEN '02' ELSE '01' END,
       CASE WHEN mod(g, 3) = 0 THEN 'GBP' ELSE 'USD' END, CASE WHEN mod(g, 3) = 0 THEN 'LDN' ELSE 'NY' END,
       mod(g, 100000) * 1.25 + 0.01 FROM generate_series(1, {n}) g"""


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- child: the agent alone

def make_agent(a, every="1h", separate=False):
    from agent import config as config_module
    from agent.runtime import Agent
    from tests.support.route import route_config
    doc = route_config(Path(a.state), a.pg, a.bootstrap, a.registry, every=every, lag=0,
                       topic_prefix=f"b{uuid.uuid4().hex[:8]}")
    doc["routes"]["customers"]["capture"]["batch_size"] = a.poll_batch
    doc["queue"] = {"delivery_batch": a.delivery_batch}
    agent = Agent(config_module.parse(doc), drain_timeout=60, separate_delivery=separate)
    agent.build()
    return agent


def pg_backends(engine):
    """The PostgreSQL server processes serving the agent's connections to this database."""
    import psutil
    with engine.connect() as conn:
        pids = [r[0] for r in conn.exec_driver_sql(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")]
    return [psutil.Process(pid) for pid in pids]


def profiled(a, name, fn):
    if not a.profile:
        return fn()
    import cProfile
    prof = cProfile.Profile()
    try:
        return prof.runcall(fn)
    finally:
        os.makedirs(a.profile, exist_ok=True)
        prof.dump_stats(os.path.join(a.profile, f"{name}.prof"))


def child(a) -> dict:
    logging.getLogger("apscheduler").setLevel(logging.ERROR)   # "skipped: max instances" noise
    agent = make_agent(a, every="0.05s" if a.child == "latency" else "1h", separate=a.child == "e2e")
    agent.run_pass()                       # empty table: the checkpoint moves to incremental
    out = {"rss_after_build_mb": rss_mb()}
    if a.child == "latency":
        acked, settled = {}, {}
        sink = agent.deliveries["fabric"].sink
        new_producer = sink._new_producer
        sink._new_producer = lambda: AckSpy(new_producer(), acked)
        settle = agent.queue.settle

        def settle_spy(name, events, report):
            settle(name, events, report)
            now = time.time()
            settled.update((e.key, now) for e in events if e.event_id in report.delivered)
        agent.queue.settle = settle_spy
        agent.start()
        print("READY", flush=True)
        deadline = time.monotonic() + a.seconds + 120
        while len(settled) < a.expect and time.monotonic() < deadline:
            time.sleep(0.1)
        agent.stop()
        return {**out, "acked": acked, "settled": settled}
    engine = sa.create_engine(a.pg)
    with engine.begin() as conn:
        conn.exec_driver_sql(FILL_SQL.format(n=a.rows))
    if a.analyze:   # as autovacuum soon would: without statistics the planner takes an indexed
        with engine.begin() as conn:    # page for a few hundred rows and sorts the whole rest instead
            conn.exec_driver_sql("ANALYZE erp_customer")
    if a.child == "e2e":
        import psutil
        agent.start(capture=False)         # the delivery process starts; capture stays here
        delivery = psutil.Process(agent.delivery._process.pid)
        backends = pg_backends(engine)
        while not agent.deliveries["fabric"].is_alive():
            time.sleep(0.05)
        pages = []      # (sql, params) of the pages after a position, for the plan below
        spy = lambda _c, _cur, sql, params, *_: pages.append((sql, params)) if "k0" in str(params) else None  # noqa
        sa.event.listen(sa.Engine, "before_cursor_execute", spy)
        cpu0, dcpu0, pg0 = os.times(), cpu_s([delivery]), cpu_s(backends)
        t0 = time.perf_counter()
        captured = agent.run_pass()
        t1 = time.perf_counter()
        sa.event.remove(sa.Engine, "before_cursor_execute", spy)
        while agent.queue.depth():
            time.sleep(0.002)
        t2 = time.perf_counter()
        cpu1, dcpu1, pg1 = os.times(), cpu_s([delivery]), cpu_s(backends)
        out.update(capture_s=t1 - t0, total_s=t2 - t0, delivery_cpu_s=dcpu1 - dcpu0, pg_cpu_s=pg1 - pg0,
                   capture_cpu_s=(cpu1.user + cpu1.system) - (cpu0.user + cpu0.system),
                   delivery_peak_rss_mb=peak_rss_mb(delivery.pid), captured=captured,
                   tracker_peak_rss_mb=sum(peak_rss_mb(p.pid) for p in agent_processes(agent)["capture"][1:]),
                   exceptions=agent.queue.count_exceptions(), left=agent.queue.depth(), peak_rss_mb=rss_mb())
        out["cpu_s"] = out["capture_cpu_s"] + out["delivery_cpu_s"]
        if pages:
            out["page_plan"] = page_plan(engine, *pages[len(pages) // 2])
        engine.dispose()
        agent.stop()
        return out
    engine.dispose()
    cpu0 = os.times()                       # split: capture alone, then delivery alone, one process
    t0 = time.perf_counter()
    captured = profiled(a, "capture", agent.run_pass)
    t1 = time.perf_counter()
    ok = profiled(a, "delivery", lambda: agent.deliver_all(timeout=900))
    out.update(capture_s=t1 - t0, deliver_s=time.perf_counter() - t1, drained=ok)
    cpu1 = os.times()
    out.update(captured=captured, exceptions=agent.queue.count_exceptions(), left=agent.queue.depth(),
               cpu_s=(cpu1.user + cpu1.system) - (cpu0.user + cpu0.system), peak_rss_mb=rss_mb())
    agent.stop()
    return out


def page_plan(engine, sql, params) -> list[str]:
    """EXPLAIN ANALYZE of one page the source read after a position (mid-run): does the
    keyset bound an index scan, or does PostgreSQL sort the table for every page?"""
    with engine.connect() as conn:
        return [r[0] for r in conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)]


# ---------------------------------------------------------------- parent

def fresh_db(index=False):
    from tests.support.route import CUSTOMER_DDL
    name = "outpost_bench_" + uuid.uuid4().hex[:8]
    admin = sa.create_engine(PG_SERVER, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        # Serial plans: a parallel worker is a process of its own, not among the backends whose
        # CPU is measured (without the index a page's Parallel Seq Scan left half the scan out).
        conn.exec_driver_sql(f'ALTER DATABASE "{name}" SET max_parallel_workers_per_gather = 0')
    admin.dispose()
    url = sa.engine.make_url(PG_SERVER).set(database=name).render_as_string(hide_password=False)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(CUSTOMER_DDL)
        if index:   # the tests' table has none; outpost check warns about that
            conn.exec_driver_sql("CREATE INDEX ON erp_customer (updated_at, cust_no)")
    engine.dispose()
    return name, url


def drop_dbs(names):
    admin = sa.create_engine(PG_SERVER, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for name in names:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


def run_child(a, mode, pg_url, work, **extra):
    state = tempfile.mkdtemp(prefix=f"{mode}-", dir=work)
    out = os.path.join(state, "result.json")
    cmd = [sys.executable, __file__, "--child", mode, "--pg", pg_url, "--bootstrap", a.bootstrap,
           "--registry", a.registry, "--rows", str(a.rows), "--state", state, "--out", out,
           "--poll-batch", str(a.poll_batch), "--delivery-batch", str(a.delivery_batch)]
    cmd += [] if a.analyze else ["--no-analyze"]
    cmd += [x for k, v in extra.items() if v is not None for x in (f"--{k}", str(v))]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True), out


def timed(n, fn):
    gc.collect()
    gc.freeze()    # the harness's own 100k records must not make the cyclic GC slower
    t = time.perf_counter()
    result = fn()
    return n / (time.perf_counter() - t), result


def ceilings(a, pg_url, work) -> dict:
    """Source read, mapping, translate, encode and producer rates on the e2e run's rows."""
    import datetime as dt
    from confluent_kafka import Producer
    from fastavro import schemaless_writer
    from adapters.sql_poll.source import encode_value
    from agent.events import envelope
    a.state, a.pg = tempfile.mkdtemp(prefix="ceil-", dir=work), pg_url
    agent = make_agent(a)
    source, tr = agent.captures["customers"].source, agent.captures["customers"].translator
    cp = {"v": 1, "phase": "incremental", "pk": None,
          "cursor": encode_value(dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc))}
    res = {}
    res["fetch"], records = timed(a.rows, lambda: [r for b in source.batches(cp) for r in b.records])
    res["mapping"], mapped = timed(a.rows, lambda: [tr.mapping.apply(r.after)[0] for r in records])
    res["translate"], (rows, failures) = timed(a.rows, lambda: tr.translate(records))
    assert not failures and len(records) == a.rows, failures[:1]
    now = dt.datetime.now(dt.timezone.utc)
    envs = [envelope(r, system=tr.system, key=m["customer_number"], before=None, after=m,
                     schema_version=tr.schema.version, captured_at=now) for r, m in zip(records, mapped)]
    res["encode"], bodies = timed(a.rows, lambda: [tr.schema.encode(e) for e in envs])
    # what translate() uses for mapped output: the encoder generated at build time
    res["generated"], _ = timed(a.rows, lambda: [tr.schema.encode(e, prechecked=True) for e in envs])

    def raw():
        for e in envs:
            buf = io.BytesIO()
            schemaless_writer(buf, tr.schema.parsed, e)
            buf.getvalue()
    res["fastavro"], _ = timed(a.rows, raw)
    res["body_bytes"] = sum(map(len, bodies)) / len(bodies)
    agent.stop()
    msgs = [(r["key"].encode(), b"\x00" + struct.pack(">I", 1) + r["body"],
             [("event_id", r["event_id"].encode()), ("correlation_id", r["correlation_id"].encode()),
              ("entity", b"Customer"), ("operation", b"update")]) for r in rows]
    for label, every in (("producer", len(msgs)), ("producer_b500", 500)):
        topic = f"ceiling-{uuid.uuid4().hex[:8]}"
        a.broker.create_topic(topic, 3)
        p = Producer({"bootstrap.servers": a.bootstrap, "enable.idempotence": True, "acks": "all",
                      "linger.ms": 10})
        p.produce(topic, value=b"warm-up")      # producer id + metadata, outside the timer
        p.flush(30)
        acked = [0]

        def produce_all():
            for i, (key, value, headers) in enumerate(msgs, 1):
                while True:
                    try:
                        p.produce(topic, value=value, key=key, headers=headers,
                                  on_delivery=lambda err, _m: acked.__setitem__(0, acked[0] + (err is None)))
                        break
                    except BufferError:
                        p.poll(0.05)
                if i % every == 0:
                    p.flush(60)
            p.flush(60)
        res[label] = timed(1, produce_all)[0] * acked[0]
    return res


def latency(a, work) -> dict:
    import psycopg
    name, url = fresh_db(a.cursor_index)
    total = int(a.rate * a.seconds)
    proc, out = run_child(a, "latency", url, work, seconds=a.seconds, expect=total)
    assert proc.stdout.readline().strip() == "READY"
    with psycopg.connect(f"host=127.0.0.1 user=postgres dbname={name}", autocommit=True) as conn:
        commits, achieved = paced_inserts(conn, a.rate, total)
    proc.wait()
    res = json.load(open(out))
    drop_dbs([name])
    stats = {"rate": achieved, "rows": total}
    for what in ("acked", "settled"):
        lat = sorted(res[what][k] - c for k, c in commits.items() if k in res[what])
        stats[what] = len(lat)
        if lat:
            stats[f"{what}_p50"], stats[f"{what}_p99"] = lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * .99))]
            stats[f"{what}_max"] = lat[-1]
    return stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--rate", type=float, default=500.0, help="latency test: inserts per second")
    ap.add_argument("--seconds", type=float, default=20.0, help="latency test: duration")
    ap.add_argument("--poll-batch", type=int, default=2000, help="sql_poll batch_size (default 2000)")
    ap.add_argument("--delivery-batch", type=int, default=2000, help="queue.delivery_batch (default 2000)")
    ap.add_argument("--cursor-index", action="store_true", help="index erp_customer(updated_at, cust_no)")
    ap.add_argument("--no-analyze", dest="analyze", action="store_false",
                    help="leave the filled table without planner statistics (no ANALYZE)")
    ap.add_argument("--profile", help="directory: cProfile the split run (capture.prof, delivery.prof)")
    ap.add_argument("--skip", default="", help="comma list of: split,ceilings,latency")
    for hidden in ("child", "pg", "bootstrap", "registry", "state", "out", "expect"):
        ap.add_argument(f"--{hidden}", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        a.expect = int(a.expect or 0)
        a.seconds = float(a.seconds)
        result = child(a)
        Path(a.out).write_text(json.dumps(result))
        return
    from tests.support.registry_double import RegistryDouble
    from tests.support.services import Broker
    import psutil
    work = tempfile.mkdtemp(prefix="outpost-bench-")
    a.broker = Broker(Path(work) / "tansu.log")
    registry = RegistryDouble()
    a.bootstrap, a.registry = a.broker.bootstrap, registry.url
    tansu = psutil.Process(a.broker.process.pid)
    skip, dbs, R = set(a.skip.split(",")), [], {}
    try:
        for mode in ("e2e", "split"):
            if mode in skip:
                continue
            name, url = fresh_db(a.cursor_index)
            dbs.append(name)
            c0 = sum(tansu.cpu_times()[:2])
            proc, out = run_child(a, mode, url, work, profile=a.profile if mode == "split" else None)
            pss = PssSampler(proc.pid).start()
            if proc.wait():
                raise SystemExit(f"{mode} child failed")
            R[mode] = json.load(open(out))
            R[mode]["peak_pss_mb"], R[mode]["lasting_peak_pss_mb"] = pss.stop(), pss.lasting_peak_mb
            R[mode]["tansu_cpu_s"] = sum(tansu.cpu_times()[:2]) - c0
        R["registry_helper_rss_mb"] = registry_helper_peak_rss_mb(registry.url)
        if "ceilings" not in skip:
            R["ceil"] = ceilings(a, "postgresql+psycopg://postgres@127.0.0.1:5432/" + dbs[0], work)
        if "latency" not in skip:
            R["lat"] = latency(a, work)
    finally:
        registry.stop()
        a.broker.stop()
        drop_dbs(dbs)
    print(json.dumps(R, indent=1, default=str), file=open(os.path.join(work, "results.json"), "w"))
    report(a, R, work)


def plan_summary(plan: list[str]) -> str:
    """'Limit > Sort > Seq Scan on erp_customer, 1.2 ms' from EXPLAIN ANALYZE's lines."""
    nodes = [line.strip().lstrip("-> ").split("  (")[0] for line in plan
             if line.strip().startswith("->") or line is plan[0]]
    took = next((line.split(":")[1].strip() for line in plan if line.startswith("Execution Time")), "?")
    return f"{' > '.join(nodes)}, {took}" if plan else "not captured"


def report(a, R, work) -> None:
    n, rows = a.rows, []
    met = lambda ok: "MET" if ok else "NOT met"  # noqa: E731
    if "e2e" in R:
        e = R["e2e"]
        us = lambda seconds: seconds / n * 1e6  # noqa: E731
        rss = e["peak_rss_mb"] + e["delivery_peak_rss_mb"] + e.get("tracker_peak_rss_mb", 0)
        rows += [("end-to-end events/s (PG -> acked in tansu)", f"{n / e['total_s']:,.0f}",
                  f"target >= 25,000: {met(n / e['total_s'] >= 25000)}"),
                 ("  capture finished after (s) / total (s)", f"{e['capture_s']:.2f} / {e['total_s']:.2f}", ""),
                 ("  agent CPU us/event, both processes", f"{us(e['cpu_s']):.1f}",
                  f"target <= 35: {met(us(e['cpu_s']) <= 35)} (capture {us(e['capture_cpu_s']):.1f}, "
                  f"delivery {us(e['delivery_cpu_s']):.1f})"),
                 ("  PostgreSQL CPU us/event (its backends)", f"{us(e['pg_cpu_s']):.2f}",
                  f"target <= 3: {met(us(e['pg_cpu_s']) <= 3)}"),
                 ("  a page's plan (EXPLAIN ANALYZE, mid-run)", "", plan_summary(e.get("page_plan", []))),
                 ("  tansu CPU s", f"{e['tansu_cpu_s']:.1f}", ""),
                 ("  peak RSS, all processes (MB)", f"{rss:.0f}", f"target <= 150: {met(rss <= 150)} "
                  f"(capture {e['peak_rss_mb']:.0f}, delivery {e['delivery_peak_rss_mb']:.0f}, "
                  f"resource tracker {e.get('tracker_peak_rss_mb', 0):.0f})"),
                 ("  peak PSS, all processes (MB)", f"{e['peak_pss_mb']:.0f}",
                  f"shared pages counted once (agent_procs.PssSampler); {e['lasting_peak_pss_mb']:.0f} "
                  "without the registry helper"),
                 ("  registry helper's own peak RSS (MB)", f"{R['registry_helper_rss_mb']:.0f}",
                  "alive ~0.2 s per new schema, not in the RSS sum above"),
                 ("  captured / exceptions / left in queue", f"{e['captured']} / {e['exceptions']} / {e['left']}", "")]
    if "split" in R:
        s = R["split"]
        rows += [("capture-only events/s (poll+map+encode+queue)", f"{s['captured'] / s['capture_s']:,.0f}", ""),
                 ("delivery-only events/s (peek+produce+ack+settle)", f"{s['captured'] / s['deliver_s']:,.0f}", "")]
    if "ceil" in R:
        c = R["ceil"]
        rows += [(f"{label} /s", f"{c[k]:,.0f}", "") for k, label in (
            ("fetch", "sql_poll fetch only"), ("mapping", "EntityMapping.apply only"),
            ("translate", "Translator.translate (map+envelope+encode)"), ("encode", "EntitySchema.encode only (checked, fastavro)"),
            ("generated", "EntitySchema.encode, mapped output (generated encoder)"),
            ("fastavro", "fastavro schemaless_writer only"), ("producer", "producer only, streamed (acked)"),
            ("producer_b500", "producer only, flush every 500 (acked)"))]
        rows.append(("  avg Avro body bytes", f"{c['body_bytes']:.0f}", ""))
        if "e2e" in R:
            ratio = n / R["e2e"]["total_s"] / c["fastavro"]
            rows.append(("e2e / fastavro-only ceiling", f"{ratio:.2f}", f"target >= 0.5: {met(ratio >= .5)}"))
            rows.append(("e2e / generated-encoder-only ceiling", f"{n / R['e2e']['total_s'] / c['generated']:.2f}", ""))
    if "lat" in R:
        L = R["lat"]
        rows.append((f"latency: {L['rows']} single-row commits at", f"{L['rate']:.0f}/s", ""))
        rows += [(f"  commit -> {w} p50 / p99 / max (ms)", " / ".join(f"{L[f'{w}_{q}'] * 1e3:.0f}" for q in
                  ("p50", "p99", "max")), f"({L[w]} of {L['rows']} seen)") for w in ("acked", "settled") if L[w]]
    print(f"\nOutpost polling-route benchmark: {n} rows, poll batch {a.poll_batch}, delivery batch "
          f"{a.delivery_batch}, cursor index {'yes' if a.cursor_index else 'no'}, "
          f"{'ANALYZEd' if a.analyze else 'no statistics'} (raw: {work}/results.json)\n")
    for k, v, tgt in rows:
        print(f"{k:<50}{v:>16}  {tgt}")


if __name__ == "__main__":
    main()
