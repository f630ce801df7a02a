"""The config file as YAML: size cap, alias bombs, duplicate keys, scalars YAML 1.1 retypes.

Real files and, for the alias bomb, the real ``outpost check`` process.
"""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent import config
from agent.contracts import ConfigError

ROOT = Path(__file__).resolve().parent.parent
SINK = "sinks:\n  out: {type: avro_files, directory: out}\n"


def problems_of(tmp_path, text: str) -> list[str]:
    path = tmp_path / "outpost.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    return caught.value.problems


def billion_laughs(levels: int) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "fabric:\n  kafka:\n" + "".join(f"    {line}\n" for line in lines)


def test_an_alias_bomb_is_refused_within_the_budget(tmp_path):
    # 9^6 = 531,441 strings: small enough that the loader without a budget accepts it
    # (in a few seconds), far beyond what any hand-written config expands to.
    started = time.process_time()
    (problem,) = problems_of(tmp_path, billion_laughs(6))
    assert "fabric.kafka.a" in problem and "aliases expand to more than 10000 nodes" in problem
    assert time.process_time() - started < 5, "refused early, not after expanding"


def test_outpost_check_refuses_a_billion_laughs_without_blowing_up(tmp_path):
    """The issue's case: nine levels (387 million strings once expanded) took > 90 s and
    2.3 GB in `outpost check`. The bound is generous: the point is "no blow-up"; the
    child's peak RSS comes from its own rusage (os.wait4)."""
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(billion_laughs(9))
    with open(tmp_path / "stderr", "wb") as stderr:
        child = subprocess.Popen([sys.executable, "-m", "agent.cli", "check", "-c", str(bomb)], cwd=ROOT,
                                 stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.monotonic() + 60
    while not (waited := os.wait4(child.pid, os.WNOHANG))[0]:
        if time.monotonic() > deadline:
            child.kill()
            os.wait4(child.pid, 0)
            pytest.fail("outpost check still running after 60 s")
        time.sleep(0.05)
    _, status, usage = waited
    child.returncode = os.waitstatus_to_exitcode(status)     # reaped here: tell Popen
    assert child.returncode == 2, (tmp_path / "stderr").read_text()
    assert "aliases expand to more than" in (tmp_path / "stderr").read_text()
    assert usage.ru_maxrss < 400 * 1024, f"peak RSS {usage.ru_maxrss} KiB"      # Linux reports KiB


def test_a_file_over_the_size_cap_is_refused_before_parsing(tmp_path):
    (problem,) = problems_of(tmp_path, "lookups:\n  big:\n" + "    k: v\n" * ((1 << 20) // 9 + 1))
    assert "larger than 1 MiB" in problem and "outpost.yaml" in problem


def test_recursive_alias_and_deep_nesting_are_problems_not_crashes(tmp_path):
    assert "nested deeper than" in problems_of(tmp_path, "fabric:\n  kafka: &k {x: *k}\n")[0]
    assert "nested deeper than" in problems_of(tmp_path, "fabric: {kafka: {x: " + "[" * 200 + "]" * 200 + "}}\n")[0]


@pytest.mark.parametrize("text, expected", [
    ("state_dir: 2021-02-30\n", "day is out of range"),
    ("queue: {delivery_batch: " + "9" * 5000 + "}\n", "not valid YAML"),
    ("state_dir: !!python/name:os.system\n", "could not determine a constructor"),
    ("a: 1\n---\nb: 2\n", "expected a single document"),
    ("{[1]: 2}\n", "unhashable key"),
])
def test_documents_the_constructor_cannot_build_are_config_errors(tmp_path, text, expected):
    (problem,) = problems_of(tmp_path, text)
    assert expected in problem


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path):
    path = tmp_path / "outpost.yaml"
    path.write_bytes(b"state_dir: caf\xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        config.load(path)


def test_duplicate_keys_are_reported_with_lines_together_with_other_problems(tmp_path):
    text = (SINK + "routes:\n"
            "  customers: {source: erp, sink: out}\n"        # line 4
            "  customers: {source: erp, sink: out}\n"        # line 5: would silently replace line 4
            "queue: {max_bytes: plenty, max_bytes: 2GiB}\n"
            "sources:\n  erp: {type: sql_poll, url: 'sqlite://', table: t, table: u}\n"
            "queue: {}\n")
    problems = problems_of(tmp_path, text)
    assert "routes.customers: duplicate key at lines 4, 5 (YAML would keep only the last one); merge them or " \
           "rename one" in problems
    assert any(p.startswith("queue.max_bytes: duplicate key at line 6 column 9, line 6 column 28") for p in problems)
    assert any(p.startswith("sources.erp.table: duplicate key at line 8") for p in problems)
    assert any(p.startswith("queue: duplicate key at lines 6, 9") for p in problems)
    assert any(p.startswith("routes.customers.mapping: ") for p in problems), "validation reported in the same pass"


def test_keys_that_are_equal_once_read_are_duplicates_and_merge_keys_are_not(tmp_path):
    problems = problems_of(tmp_path, "lookups:\n  x: {1: a, 01: b}\n"
                                     "base: &base {a: 1}\nfabric: {kafka: {<<: *base, a: 2}}\n")
    assert any(p.startswith("lookups.x.1: duplicate key at line 2") for p in problems)
    assert not any(p.startswith("fabric") for p in problems), problems


def test_unquoted_leading_zero_and_yes_no_keys_get_a_hint_to_quote(tmp_path):
    problems = problems_of(tmp_path, "lookups:\n  legal_entity: {01: US01, \"02\": UK01}\n"
                                     "  country: {NO: Norway, SE: Sweden}\n")
    assert 'lookups.legal_entity.1: found 01 unquoted; YAML reads the unquoted 01 as ' \
           'a number: write "01" in quotes if you mean the text' in problems
    assert any(p.startswith("lookups.country.False: the key should be a valid string (found False); YAML reads "
                            'the unquoted NO as a boolean: write "NO"') for p in problems)
    assert len(problems) == 2


def test_a_retyped_lookup_value_is_refused_not_mapped_silently(tmp_path):
    # Without this, {"07": 010} would map '07' to 8 and {"Y": yes} 'Y' to 1.
    problems = problems_of(tmp_path, "lookups:\n  code: {\"07\": 010, \"Y\": yes, \"Z\": \"010\", \"N\": 12}\n")
    assert sorted(problems) == [
        'lookups.code.07: found 010 unquoted; YAML reads the unquoted 010 as a number: write "010" in quotes if '
        'you mean the text',
        'lookups.code.Y: found yes unquoted; YAML reads the unquoted yes as a boolean: write "yes" in quotes if '
        'you mean the text']


def test_quoted_codes_load_as_written(tmp_path):
    path = tmp_path / "outpost.yaml"
    path.write_text("lookups:\n  legal_entity: {\"01\": US01, '02': UK01}\n  country: {\"NO\": Norway}\n")
    cfg = config.load(path)
    assert cfg.lookups == {"legal_entity": {"01": "US01", "02": "UK01"}, "country": {"NO": "Norway"}}


def test_a_hint_is_added_where_the_retyped_value_is_the_problem(tmp_path):
    (problem,) = problems_of(tmp_path, "http: {port: 0x1F90, token: on}\n")
    assert problem.startswith("http.token: Input should be a valid string (found True); YAML reads the unquoted "
                              "on as a boolean")
