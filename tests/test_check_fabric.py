"""``outpost check`` against the fabric of a real config: with ``auto_register: false``,
only the subjects of the entities a sink publishes are required (the broker is tansu,
the registry the HTTP double)."""
import json

import yaml
from click.testing import CliRunner
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from agent.cli import main
from tests.support.route import create_tables, route_config


def test_auto_register_off_asks_only_for_the_subjects_in_use(tmp_path, pg_url, broker, registry, monkeypatch):
    import agent.logs
    monkeypatch.setattr(agent.logs, "setup", lambda *a, **k: None)
    create_tables(pg_url)
    document = route_config(tmp_path / "state", pg_url, broker.bootstrap, registry.url)
    document["fabric"]["auto_register"] = False
    path = tmp_path / "outpost.yaml"
    path.write_text(yaml.safe_dump(document))
    result = CliRunner().invoke(main, ["check", "-c", str(path)])
    topic = document["fabric"]["topic_template"].format(entity="customer")
    problems = [line for line in result.output.splitlines() if line.startswith("  - ") and "warning:" not in line]
    assert result.exit_code == 1 and problems == [
        f"  - schema of Customer is not registered under subject {topic}-value and auto_register is off; register "
        "it (outpost schemas export DIR --subject -c CONFIG writes the file) or set fabric.auto_register: true"], \
        result.output
    exported = CliRunner().invoke(main, ["schemas", "export", str(tmp_path / "avsc"), "--subject", "-c", str(path)])
    assert exported.exit_code == 0 and f"subject {topic}-value" in exported.output
    written = json.loads((tmp_path / "avsc" / f"{topic}-value.avsc").read_text())
    registry_client = SchemaRegistryClient({"url": registry.url})
    registry_client.register_schema(f"{topic}-value", Schema(json.dumps(written), "AVRO"))
    again = CliRunner().invoke(main, ["check", "-c", str(path)])
    assert again.exit_code == 0, again.output


def test_schemas_show_prints_what_the_agent_registers():
    shown = CliRunner().invoke(main, ["schemas", "show", "Customer"])
    from agent.schemas import SchemaCatalog
    assert shown.exit_code == 0
    assert json.loads(shown.output) == json.loads(SchemaCatalog.load().entity("Customer").schema_json)
    unknown = CliRunner().invoke(main, ["schemas", "show", "Custmer"])
    assert unknown.exit_code == 1 and "did you mean 'Customer'" in unknown.output
