"""Adding a sink needs no edit in ``agent/``: a sink that lives outside the repository.

The test writes a throwaway adapter distribution into its temporary folder, laid out as pip
installs one (a package and its ``.dist-info`` declaring the entry point
``outpost.adapters``, see ``agent.registry``), and puts that folder on the path: of this
process, and of the agent processes it starts. The sink (JSON lines in a folder) then passes
the sink contract, runs a real route through real agent processes killed with SIGKILL (the
recovery contract: sql_poll on PostgreSQL into it), and ``outpost check`` validates its
options with its own model. Nothing in the repository names it.
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from decimal import Decimal
from pathlib import Path

import yaml

from agent import registry
from tests.support.agent_process import ROOT, outpost
from tests.support.contract import SinkContract
from tests.support.harness import Change, SinkHarness
from tests.support.recovery import RecoveryContract

PLUGIN = {
    "outpost_jsonl/__init__.py": '''
"""A sink outside the repository: canonical events as JSON lines, one file per sink."""
from pydantic import BaseModel, ConfigDict

from agent.contracts import AdapterSpec


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    directory: str


SINK = AdapterSpec(name="jsonl_out", kind="sink", options=Options, implementation="outpost_jsonl.sink:JsonLinesSink")
''',
    "outpost_jsonl/sink.py": '''
import json
import os
from pathlib import Path

from agent.contracts import DeliveryReport, Sink, TransientError

from . import Options


class JsonLinesSink(Sink):
    options_model = Options

    def open(self):
        self.path = Path(self.spec.directory) / "events.jsonl"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists():          # a write cut short by a crash: drop its partial line
                data = self.path.read_bytes()
                if data and not data.endswith(b"\\n"):
                    os.truncate(self.path, data.rfind(b"\\n") + 1)
        except OSError as exc:
            raise TransientError(f"{self.path.parent}: {exc}") from None

    def write(self, events):
        report, lines = DeliveryReport(), []
        for event in events:
            try:
                payload = self.context.schemas.by_fingerprint(event.schema_fingerprint).decode(event.body)
            except Exception as exc:        # can never be written: the exception queue
                report.rejected[event.event_id] = f"cannot decode: {exc}"
                continue
            lines.append(json.dumps({"event_id": event.event_id, "key": event.key, "event": payload}, default=str))
        try:
            with open(self.path, "a", encoding="utf-8") as out:
                out.write("".join(line + "\\n" for line in lines))
                out.flush()
                os.fsync(out.fileno())      # the ack: on disk
        except OSError as exc:
            report.transient_error = f"{self.path}: {exc}"
            return report
        report.delivered.update(e.event_id for e in events if e.event_id not in report.rejected)
        return report
''',
    "outpost_jsonl-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: outpost-jsonl\nVersion: 0.1\n",
    "outpost_jsonl-0.1.dist-info/entry_points.txt": "[outpost.adapters]\njsonl_out = outpost_jsonl\n",
}


def install(site: Path, files: dict, monkeypatch) -> None:
    """``files`` under ``site``, which goes on this process's path; the registry reads again."""
    for name, text in files.items():
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_text(text.lstrip())
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    registry._declared.cache_clear()


def uninstall() -> None:
    for module in [m for m in sys.modules if m.split(".")[0] in ("outpost_jsonl", "outpost_broken")]:
        del sys.modules[module]
    registry._declared.cache_clear()


class JsonLinesHarness(SinkHarness):
    """The plugin, installed for one test; its folder read back line by line."""

    adapter = "jsonl_out"

    def __init__(self, request, tmp_path):
        super().__init__(request, tmp_path)
        self.site, self.out = tmp_path / "site", tmp_path / "out"
        install(self.site, PLUGIN, self.fixture("monkeypatch"))
        request.addfinalizer(uninstall)
        (tmp_path / "a-file").write_text("not a folder")

    def options(self, endpoint=None):
        return {"directory": str(self.out if endpoint is None else self.tmp_path / "a-file" / "out")}

    def agent_env(self):
        return {"PYTHONPATH": os.pathsep.join([str(ROOT), str(self.site)])}

    def landed(self, sink=None):
        path = self.out / "events.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        return [Change(line["key"], f"{Decimal(line['event']['after']['credit_limit']):.2f}", line["event_id"])
                for line in map(json.loads, lines)]


class TestJsonLinesPluginSink(SinkContract):
    harness = JsonLinesHarness
    not_applicable = {"test_a_duplicate_write_changes_nothing":
                      "appends: readers de-duplicate on event_id, as for avro_files"}


class TestJsonLinesPluginRecovery(RecoveryContract):
    sink = JsonLinesHarness


def test_check_validates_the_plugins_options_with_its_own_model(tmp_path, sqlite_url, monkeypatch, request):
    """`outpost check` names a misspelt option of the plugin and its valid keys; without the
    plugin on the path the same config names the missing adapter instead."""
    harness = JsonLinesHarness(request, tmp_path)
    document = {"state_dir": str(tmp_path / "state"), "lookups": {}, "mappings": {},
                "sources": {"erp": {"type": "sql_poll", "url": sqlite_url, "table": "t", "cursor": "c"}},
                "sinks": {"out": {"type": "jsonl_out", "dirctory": str(tmp_path / "out")}},
                "routes": {"r": {"source": "erp", "sink": "out", "mapping": "m"}}}
    config = tmp_path / "outpost.yaml"
    config.write_text(yaml.safe_dump(document))
    with_plugin = outpost("check", "-c", config, env=harness.agent_env())
    without = outpost("check", "-c", config)
    assert with_plugin.returncode != 0
    assert "sinks.out.dirctory: unknown key, did you mean 'directory'? (valid keys: directory)" in \
        with_plugin.stdout + with_plugin.stderr, with_plugin.stdout + with_plugin.stderr
    assert "no adapter named 'jsonl_out'" in without.stdout + without.stderr, without.stdout + without.stderr


def test_a_plugin_that_cannot_be_imported_is_skipped_with_a_warning(tmp_path, monkeypatch, request, caplog):
    broken = {"outpost_broken/__init__.py": "import no_such_module_anywhere\n",
              "outpost_broken-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: outpost-broken\nVersion: 0.1\n",
              "outpost_broken-0.1.dist-info/entry_points.txt": "[outpost.adapters]\nbroken = outpost_broken\n"}
    install(tmp_path / "site", {**PLUGIN, **broken}, monkeypatch)
    request.addfinalizer(uninstall)
    with caplog.at_level(logging.WARNING, logger="outpost.registry"):
        sinks = registry.adapter_names("sink")
    assert {"jsonl_out", "kafka", "avro_files", "sql_apply"} <= set(sinks)
    assert "adapter plugin broken (outpost_broken) cannot be imported and is ignored" in caplog.text
    assert "no_such_module_anywhere" in caplog.text
