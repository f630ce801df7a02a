#!/usr/bin/env python
"""CPU per event of each hot-path stage of the polling route, in one process, min of R runs.

Run:  .venv/bin/python bench/bench_hot_stages.py [--rows 20000] [--repeat 5]

For A/B work on a shared machine, where the end-to-end CPU per event of
bench_polling_route.py moves by ±10 % between runs: each stage runs R times over the same
rows and the best process time (user+sys) is kept, which filters out most interference.
Stages: fetch (sql_poll batches: SQL, rows, SourceRecord), mapping (EntityMapping.apply),
translate (mapping, envelope, id, Avro encode), encode (Avro alone, generated encoder and
fastavro), commit (DurableQueue.commit_capture,
2000-event transactions with fsync) and peek+settle (all delivered, no sink). Fresh
PostgreSQL database and state directory; no broker (the sink is never opened).
"""
from __future__ import annotations

import argparse, datetime as dt, gc, sys, tempfile, time, types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlalchemy as sa  # noqa: E402

from bench import bench_polling_route as B  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    n, batch = a.rows, 2000
    name, url = B.fresh_db(False)
    try:
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.exec_driver_sql(B.FILL_SQL.format(n=n))
        engine.dispose()
        agent = B.make_agent(types.SimpleNamespace(state=tempfile.mkdtemp(), pg=url, bootstrap="127.0.0.1:1",
                                                   registry="http://127.0.0.1:1", poll_batch=batch,
                                                   delivery_batch=batch))
        from adapters.sql_poll.source import encode_value
        from agent.contracts import DeliveryReport
        capture = agent.captures["customers"]
        source, tr, queue = capture.source, capture.translator, agent.queue
        cp = {"v": 1, "phase": "incremental", "pk": None,
              "cursor": encode_value(dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc))}
        gc.collect()
        gc.freeze()
        best: dict[str, float] = {}

        def keep(label, seconds):
            best[label] = min(best.get(label, seconds), seconds)

        def timed(label, fn):
            for _ in range(a.repeat):
                t0 = time.process_time()
                out = fn()
                keep(label, time.process_time() - t0)
            return out
        records = timed("fetch", lambda: [r for b in source.batches(cp) for r in b.records])
        timed("mapping", lambda: [tr.mapping.apply(r.after) for r in records])
        rows, _ = timed("translate", lambda: tr.translate(records))
        # the Avro encoding alone, both encoders, over the events translate built
        schema, events = tr.schema, []
        encode = schema.encode
        schema.encode = lambda event, prechecked=False: events.append(event) or encode(event, prechecked)
        tr.translate(records)
        schema.encode = encode
        generated = schema._generated
        if generated is not None:
            timed("encode(generated)", lambda: [encode(e, True) for e in events])
        schema._generated = None
        timed("encode(fastavro)", lambda: [encode(e, True) for e in events])
        schema._generated = generated
        for _ in range(a.repeat):
            commit = settle = 0.0
            for i in range(0, n, batch):
                t0 = time.process_time()
                queue.commit_capture("customers", rows[i:i + batch], [], {"i": i}, status={"last_capture_at": 1})
                t1 = time.process_time()
                events = queue.peek("fabric", batch)
                queue.settle("fabric", events, DeliveryReport(delivered={e.event_id for e in events}))
                commit, settle = commit + t1 - t0, settle + time.process_time() - t1
            keep("commit", commit)
            keep("peek+settle", settle)
            db = queue.reader()       # the same ids go in again next round
            for (gen,) in db.execute("SELECT gen FROM id_generations").fetchall():
                db.execute(f"DELETE FROM seen_{gen}")
        agent.stop()
    finally:
        B.drop_dbs([name])
    print(f"CPU us/event, min of {a.repeat} ({n} rows): " + "  ".join(f"{k} {v / n * 1e6:.1f}" for k, v in best.items()))


if __name__ == "__main__":
    main()
