"""docs/mapping.md stays true: its worked examples validate as written, and the bank
statement it shows parses to the amounts it states."""
from __future__ import annotations

import io
import re
from decimal import Decimal
from pathlib import Path

import yaml

from adapters.file_drop.formats import read_rows
from adapters.file_drop.spec import SourceOptions
from agent.config import parse

DOC = (Path(__file__).resolve().parent.parent / "docs" / "mapping.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```yaml\n(.*?)```", DOC, re.S)


def test_the_dolibarr_example_is_a_valid_config(monkeypatch):
    monkeypatch.setenv("DOLIBARR_DB_PASSWORD", "not-a-secret")
    erp = yaml.safe_load(BLOCKS[-2])
    config = parse({**erp, "sinks": {"fabric": {"type": "kafka"}}, "state_dir": "state"})
    assert set(config.routes) == {"customers", "projects", "time", "invoices", "contracts"}
    assert config.routes["customers"].filter == "client in (1, 3)"


def test_the_bank_statement_example_parses_to_the_amounts_it_states():
    bank = yaml.safe_load(BLOCKS[-1])
    parse({**bank, "sources": {"finance_share": {"type": "file_drop", "inbox": "inbox"}},
           "sinks": {"fabric": {"type": "kafka"}}, "lookups": {"legal_entity": {"DE": "DE01"}}})
    statement = re.search(r"```\n(Kontoauszug.*?)```", DOC, re.S).group(1)
    capture = bank["routes"]["bank"]["capture"]
    options = SourceOptions.model_validate({"inbox": "inbox", **{k: v for k, v in capture.items() if k != "pattern"}})
    rows = [r for r in read_rows(io.BytesIO(statement.encode("windows-1252")), options) if r.kind == "detail"]
    assert [r.problems for r in rows] == [[], [], []]
    assert [r.values["amount"] for r in rows] == [Decimal("-1200.00"), Decimal("2380.00"), Decimal("29.99")]
