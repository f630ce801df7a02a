"""docs/reconciliation.md stays true: its configuration validates as written."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from agent.config import parse
from tests.support.route import INVOICE_MAPPING, LOOKUPS

DOC = (Path(__file__).resolve().parent.parent / "docs" / "reconciliation.md").read_text(encoding="utf-8")


def test_the_documented_reconcile_section_and_objectives_are_valid():
    block = yaml.safe_load(re.findall(r"```yaml\n(.*?)```", DOC, re.S)[0])
    config = parse({**block, "lookups": LOOKUPS, "mappings": {"invoice": INVOICE_MAPPING},
                    "sources": {"erp": {"type": "sql_poll", "url": "sqlite:///erp.db"}},
                    "sinks": {"fabric": {"type": "kafka"}}})
    settings = config.routes["invoices"].reconcile
    assert (settings.cron, settings.window, settings.zone, settings.deletes) == \
        ("0 2 * * *", "day", "Europe/Berlin", "report")
    assert config.objectives["Invoice"].within == 60 and config.objectives["Invoice"].target == 0.99
