"""What a config problem says: the key path where it was written, a short found value
with every secret redacted, and the fix (valid keys and types, "did you mean")."""
import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agent import config
from agent.contracts import ConfigError
from tests.support.route import route_config

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "PgS3cret!pw-long-enough-to-be-cut-in-two"


@pytest.fixture
def document(monkeypatch):
    """A valid sql_poll -> kafka config whose database URL carries a secret."""
    monkeypatch.setenv("OUTPOST_T_PW", PASSWORD)
    url = "postgresql+psycopg://postgres:${OUTPOST_T_PW}@127.0.0.1:5432/erp"
    # a copy: route_config's mappings are shared module constants, and tests edit them
    return copy.deepcopy(route_config("/tmp/unused-state", url, "127.0.0.1:9092", "http://127.0.0.1:8081"))


def problems_of(document) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        config.parse(document)
    return caught.value.problems


def assert_no_secret(problems):
    text = "\n".join(problems)
    for fragment in (PASSWORD, PASSWORD[:12], PASSWORD[-12:], "PgS3cret"):
        assert fragment not in text, f"{fragment!r} leaked:\n{text}"


def test_the_document_is_valid_as_given(document):
    assert config.parse(document).routes["customers"].source == "erp"


def test_a_route_without_cursor_does_not_print_the_source_url(document):
    del document["routes"]["customers"]["capture"]["cursor"]
    (problem,) = problems_of(document)
    assert problem.startswith("routes.customers.capture: 'cursor' (the change-tracking column")
    assert_no_secret([problem])
    assert "url" not in problem, "the whole section is not dumped as 'found'"


def test_a_misspelt_section_is_named_with_the_fix_and_not_dumped(document):
    document["sourcs"] = document.pop("sources")
    problems = problems_of(document)
    (named,) = [p for p in problems if p.startswith("sourcs: unknown key, did you mean 'sources'? (valid keys: ")]
    listed = named.split("(valid keys: ")[1].rstrip(")").split(", ")
    assert listed == sorted(listed) and {"mappings", "routes", "sinks", "sources", "state_dir"} <= set(listed), named
    assert "routes.customers.source: expected one of none defined, found 'erp'" in problems
    assert_no_secret(problems)


def test_found_values_are_redacted_before_they_are_shortened(document):
    # A long value cut at 60 characters would keep the first part of the secret if it were
    # redacted after cutting.
    document["fabric"]["topic_partitions"] = "partitions-" + "x" * 30 + "${OUTPOST_T_PW}"
    document["routes"]["customers"]["capture"]["primary_key"] = {"cust_no": "${OUTPOST_T_PW}"}
    problems = problems_of(document)
    assert any(p.startswith("fabric.topic_partitions: Input should be a valid integer") and "partitions-xx" in p
               for p in problems), problems
    assert "routes.customers.capture.primary_key: Input should be a valid list (found a mapping with keys cust_no)" \
        in problems
    assert_no_secret(problems)


def test_adapter_validator_messages_are_redacted(document, monkeypatch):
    monkeypatch.setenv("OUTPOST_T_ZONE", PASSWORD)
    document["routes"]["customers"]["capture"]["source_timezone"] = "${OUTPOST_T_ZONE}"
    (problem,) = problems_of(document)
    assert problem.startswith("routes.customers.capture.source_timezone: unknown time zone '***'")
    assert_no_secret([problem])


def test_a_source_option_is_reported_where_it_was_written(document):
    document["sources"]["erp"]["lag_second"] = 3
    document["routes"]["customers"]["capture"]["batch_sise"] = 10
    document["routes"]["second"] = {**document["routes"]["customers"], "capture": {"table": "t", "cursor": "c"}}
    problems = problems_of(document)
    assert [p.split(",")[0] for p in problems] == [
        "sources.erp.lag_second: unknown key",                 # once, though two routes use the source
        "routes.customers.capture.batch_sise: unknown key"]
    assert "did you mean 'lag_seconds'?" in problems[0] and "did you mean 'batch_size'?" in problems[1]
    assert "(valid keys: batch_size, columns, cursor, lag_seconds," in problems[0]


def test_a_missing_option_names_both_places_it_may_go(document):
    del document["routes"]["customers"]["capture"]["table"]
    assert problems_of(document) == [
        "routes.customers.capture.table (or sources.erp.table): Field required (found nothing)"]


def test_a_nested_unknown_key_lists_the_valid_ones_of_its_own_section(document):
    document["routes"]["customers"]["schedule"] = {"evry": "5s"}
    document["mappings"]["customer"]["fields"]["name"] = {"colum": "cust_name"}
    document["http"] = {"enabeld": True}
    problems = problems_of(document)
    assert "routes.customers.schedule.evry: unknown key, did you mean 'every'? (valid keys: cron, every)" in problems
    assert "mappings.customer.fields.name.colum: unknown key, did you mean 'column'? (valid keys: column, const, " \
           "convert, default, expr, lookup, missing)" in problems
    assert "http.enabeld: unknown key, did you mean 'enabled'? (valid keys: bind, enabled, port, token)" in problems


def test_an_unknown_adapter_type_lists_the_valid_types(document):
    document["sources"]["erp"]["type"] = "sql_pol"
    document["sinks"]["fabric"]["type"] = "kafak"
    problems = problems_of(document)
    assert "sources.erp.type: no adapter named 'sql_pol', did you mean 'sql_poll'? (valid types: binlog, debezium, " \
           "file_drop, kafka, sql_poll)" in problems
    assert "sinks.fabric.type: no adapter named 'kafak', did you mean 'kafka'? (valid types: avro_files, kafka, " \
           "sql_apply)" in problems


def test_an_adapter_of_the_wrong_kind_lists_the_valid_types(document):
    document["sinks"]["fabric"]["type"] = "sql_poll"
    (problem,) = problems_of(document)
    assert problem.startswith("sinks.fabric.type: ") and "(valid types: avro_files, kafka, sql_apply)" in problem


def test_a_type_that_is_not_a_name_is_a_problem_not_a_crash(document):
    document["sources"]["erp"]["type"] = 5
    assert "sources.erp.type: expected an adapter name, found 5" in problems_of(document)


def test_cli_prints_redacted_problems_with_control_characters_escaped(tmp_path, document):
    del document["routes"]["customers"]["capture"]["cursor"]
    document["sourcs\x1b[31m"] = {"erp": {"url": "${OUTPOST_T_PW}"}}
    path = tmp_path / "outpost.yaml"
    path.write_text(yaml.safe_dump(document))
    for command in ("check", "run", "status"):
        result = subprocess.run([sys.executable, "-m", "agent.cli", command, "-c", str(path)], cwd=ROOT,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, result.stderr
        assert "sourcs\\x1b[31m: unknown key" in result.stderr and "\x1b" not in result.stderr
        assert_no_secret([result.stdout, result.stderr])
