#!/usr/bin/env python
"""Per-row CPU cost of the mapping: plain columns, expression fields, a route filter.

Run:  .venv/bin/python bench/bench_mapping.py [--rows 200000]

Pure CPU in this process (no I/O): ``EntityMapping.apply`` on a Dolibarr-shaped time entry
row, timed with psutil's user+system CPU time of this process; the best of three runs is
reported per row. Variants:

columns       every field from a column or a constant (the baseline)
expressions   the same mapping with four fields computed by expressions
              (hours = round_half_even(element_duration / 3600, 2), coalesce of two
              currency columns, an id joined from two columns, a lookup() through a table)
filter        a route filter evaluated on the row (``client in (1, 3) and status != 9``)
translate     Translator.translate per record with the expression mapping (map + encode)
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
from decimal import Decimal
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.config import MappingConfig  # noqa: E402
from agent.contracts import SourceRecord  # noqa: E402
from agent.expressions import compile_expression  # noqa: E402
from agent.mapping import EntityMapping  # noqa: E402
from agent.schemas import SchemaCatalog  # noqa: E402
from agent.translate import Translator  # noqa: E402

BASE = {"entry_id": {"column": "rowid", "convert": ["str"]}, "project_code": "project_ref", "employee_id": "fk_user",
        "work_date": "element_date", "billable": {"const": True}, "hours": "hours",
        "bill_rate": "thm", "currency": "fk_currency", "description": "note"}
EXPRESSIONS = {**BASE, "hours": {"expr": "round_half_even(element_duration / 3600, 2)"},
               "currency": {"expr": "coalesce(multicurrency_code, fk_currency)"},
               "entry_id": {"expr": "join('/', fk_task, rowid)"},
               "project_code": {"expr": "lookup('task_project', fk_task)"}}
ROW = {"rowid": 4711, "fk_task": 50, "project_ref": "PJ2601-0005", "fk_user": "jdupont",
       "element_date": dt.date(2026, 1, 5), "element_duration": 5400, "hours": Decimal("1.50"),
       "thm": Decimal("41.1250"), "multicurrency_code": None, "fk_currency": "EUR", "note": "Analyse",
       "client": 1, "status": 1}
LOOKUPS = {"task_project": {"50": "PJ2601-0005"}}


def cpu_seconds() -> float:
    times = psutil.Process().cpu_times()
    return times.user + times.system


def per_row(work, rows: int) -> float:
    best = None
    for _ in range(3):
        start = cpu_seconds()
        work(rows)
        spent = cpu_seconds() - start
        best = spent if best is None else min(best, spent)
    return best / rows * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    rows = parser.parse_args().rows
    catalog = SchemaCatalog.load()
    schema = catalog.entity("Timesheet")
    plain = EntityMapping("t", MappingConfig.model_validate({"entity": "Timesheet", "fields": BASE}), schema, LOOKUPS)
    exprs = EntityMapping("t", MappingConfig.model_validate({"entity": "Timesheet", "fields": EXPRESSIONS}), schema,
                          LOOKUPS)
    assert plain.apply(ROW)[1] == [] and exprs.apply(ROW)[1] == [], exprs.apply(ROW)[1]
    row_filter = compile_expression("client in (1, 3) and status != 9")
    translator = Translator("r", "s", "dolibarr", exprs)
    record = SourceRecord("llx_element_time", "update", "[4711]@2026-01-05T10:00:00", after=ROW,
                          occurred_at=dt.datetime(2026, 1, 5, 9, tzinfo=dt.timezone.utc))

    def apply_all(mapping):
        def work(n):
            apply = mapping.apply
            for _ in range(n):
                apply(ROW)
        return work

    def filter_all(n):
        for _ in range(n):
            row_filter(ROW)

    def translate_all(n):
        batch = [record] * 500
        for _ in range(n // 500):
            translator.translate(batch)

    results = {"columns": per_row(apply_all(plain), rows), "expressions": per_row(apply_all(exprs), rows),
               "filter": per_row(filter_all, rows), "translate": per_row(translate_all, rows // 4)}
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPU(s) "
          f"({platform.processor() or 'unknown'}), Python {platform.python_version()}, {rows} rows")
    for name, micros in results.items():
        print(f"  {name:<12} {micros:7.2f} us CPU per row")
    print(f"  4 expression fields cost {results['expressions'] - results['columns']:.2f} us per row "
          f"({(results['expressions'] - results['columns']) / 4:.2f} us per expression field)")


if __name__ == "__main__":
    main()
