"""hypothesis fuzz of the config loader (issue 9): random bytes, YAML-ish token soup, alias
chains and mutated real configs always end in a Config or a ConfigError, never another
exception, and never in a blow-up of time or memory.

The bounds are generous on purpose (a shared 2-core machine): the point is "no blow-up",
an alias bomb or a runaway recursion, not a speed target. Memory is the growth of this
process's peak RSS (resource.getrusage) over the whole run; time is CPU time per document.
"""
import copy
import resource
import time

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import config
from agent.contracts import ConfigError
from tests.support.route import route_config

MAX_CPU_SECONDS_PER_DOCUMENT = 10
MAX_PEAK_RSS_GROWTH_KIB = 300 * 1024
FUZZ = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

TOKENS = ["sources", "routes", "sinks", "mappings", "lookups", "fabric", "kafka", "queue", "http", "log",
          "type", "sql_poll", "kafka", "avro_files", "url", "table", "cursor", "capture", "schedule", "every",
          "source", "sink", "mapping", "entity", "Customer", "fields", "column", "const", "lookup",
          "postgresql+psycopg://u:${OUTPOST_FUZZ_PW}@h/db?x=${OUTPOST_FUZZ_PW}", "${OUTPOST_FUZZ_UNSET}",
          "${file:/nonexistent/secret}", "${", "}", "01", "NO", "yes", "010", "1:20", "2021-02-30", "0x1F",
          "9" * 5000, "~", "null", "&a", "&b", "*a", "*b", "<<", "!!str", "!!int", "!!binary", "!!python/name:os",
          "!!set", "!!omap", "?", ":", ": ", "- ", ",", "[", "]", "{", "}", "'", '"', "|", ">", "#", "%YAML 1.1",
          "---", "...", "\n", "\n  ", "\n    ", "\t", " ", "\x00", "\x1b[31m", "é", "\ufeff"]


def assert_config_or_config_error(load):
    started = time.process_time()
    try:
        result = load()
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
    else:
        assert isinstance(result, config.Config)
    assert time.process_time() - started < MAX_CPU_SECONDS_PER_DOCUMENT


@pytest.fixture(scope="module", autouse=True)
def bounded_memory():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    yield
    growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert growth < MAX_PEAK_RSS_GROWTH_KIB, f"peak RSS grew by {growth} KiB"


@pytest.fixture(autouse=True)
def secret(monkeypatch):
    monkeypatch.setenv("OUTPOST_FUZZ_PW", "Ap@p/Pw#2026")
    monkeypatch.delenv("OUTPOST_FUZZ_UNSET", raising=False)


def _load_text(tmp_path, data: bytes):
    path = tmp_path / "outpost.yaml"
    path.write_bytes(data)
    return lambda: config.load(path)


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes(tmp_path, data):
    assert_config_or_config_error(_load_text(tmp_path, data))


@FUZZ
@given(st.lists(st.sampled_from(TOKENS), max_size=80))
def test_yaml_ish_token_soup(tmp_path, tokens):
    assert_config_or_config_error(_load_text(tmp_path, "".join(tokens).encode("utf-8", "surrogatepass")))


@FUZZ
@given(levels=st.integers(1, 12), width=st.integers(1, 12), where=st.sampled_from(
    ["fabric:\n  kafka:\n", "lookups:\n  codes:\n", "routes:\n  r:\n    capture:\n", ""]))
def test_alias_chains(tmp_path, levels, width, where):
    lines = ['a0: &a0 "lol"'] + [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]"
                                 for i in range(1, levels)]
    indent = " " * (where.count("\n") * 2)
    text = where + "".join(f"{indent}{line}\n" for line in lines)
    assert_config_or_config_error(_load_text(tmp_path, text.encode()))


SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                    st.text(max_size=30), st.sampled_from(TOKENS))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.sampled_from(TOKENS), st.text(max_size=8)), inner,
                                                 max_size=4)), max_leaves=12)


def _paths(tree, prefix=()):
    yield prefix
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _paths(value, prefix + (key,))


@FUZZ
@given(st.data())
def test_mutated_real_configs(tmp_path, data):
    """A valid sql_poll -> kafka config with a few values replaced: the validators, the
    cross-checks and the adapter option models all see hostile input."""
    document = copy.deepcopy(route_config(tmp_path / "state", "postgresql+psycopg://u:${OUTPOST_FUZZ_PW}@h/db",
                                          "127.0.0.1:9092", "http://127.0.0.1:8081"))
    for _ in range(data.draw(st.integers(1, 4))):
        path = data.draw(st.sampled_from(list(_paths(document))[1:]))
        parent = document
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = data.draw(VALUES)
    text = yaml.safe_dump(document, allow_unicode=True)
    assert_config_or_config_error(_load_text(tmp_path, text.encode("utf-8", "surrogatepass")))
