"""Configuration: one YAML file, validated once at start, then read-only.

Every problem is collected and reported together (key path, what was expected, what was
found) so that an engineer fixes the file in one pass. Secrets are never written in the
file: ``${ENV_VAR}``, ``${file:/path}`` and ``${credential:NAME}`` references are resolved
here (``agent.references``), and every resolved value is remembered so the log filter,
and every problem reported here, can redact it.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from . import yaml_load
from .config_checks import checked_topic_template
from .contracts import ConfigError
from .logs import RedactingFilter
from .lookups import Lookup, SqlLookup
from .references import resolve_references
from .reconcile_config import Objective, ReconcileConfig
from .registry import describe_error, parse_options, spec_of
from .units import parse_duration, parse_size

Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]



class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def expand_shorthand(value, origin: str):
    """A bare string names the ``origin`` (a column, or a canonical field for inbound
    mappings), and a single conversion may be written without a list."""
    if isinstance(value, str):
        return {origin: value}
    if isinstance(value, dict) and isinstance(value.get("convert"), str):
        value = {**value, "convert": [value["convert"]]}
    return value


class FieldRule(_Strict):
    """How one canonical field is filled: from a column, a constant or an expression; then
    conversions, ``missing`` values, the lookup, and ``default``, in that order."""

    column: Optional[str] = None
    const: Any = None
    expr: Optional[str] = None                         # e.g. "round_half_even(duration / 3600, 2)"
    lookup: Optional[str] = None                       # name of a table in ``lookups``
    convert: list[str] = Field(default_factory=list)   # e.g. [strip, upper]
    # source values that mean "no value" (a 0 foreign key): treated as NULL before the lookup
    missing: list[Union[str, int]] = Field(default_factory=list)
    default: Any = None                                # canonical value when there is none (not looked up)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value):
        return expand_shorthand(value, "column")       # "name: CUST_NAME" means a column

    @model_validator(mode="after")
    def _one_origin(self):
        given = [name for name in ("column", "const", "expr") if name in self.model_fields_set]
        if len(given) != 1 or (self.column is None and "column" in given) or (self.expr is None and "expr" in given):
            raise ValueError("give exactly one of 'column', 'const' or 'expr'")
        return self


class MappingConfig(_Strict):
    entity: str
    fields: dict[str, FieldRule]
    # the zone of naive (zone-less) date-times the mapping reads: DATETIME columns, text in
    # files; never applied to a value that carries its zone (TIMESTAMP, timestamptz, 'Z')
    source_timezone: str = "UTC"


class Schedule(_Strict):
    every: Optional[Duration] = None
    cron: Optional[str] = None       # crontab expression, e.g. "*/5 * * * *"

    @model_validator(mode="after")
    def _one_kind(self):
        if (self.every is None) == (self.cron is None):
            raise ValueError("give exactly one of 'every' or 'cron'")
        if self.every is not None and self.every <= 0:
            raise ValueError(f"expected a positive interval, found {self.every}")
        if self.cron is not None:
            from apscheduler.triggers.cron import CronTrigger
            try:
                CronTrigger.from_crontab(self.cron)
            except ValueError as exc:
                raise ValueError(f"expected a crontab expression such as '*/5 * * * *', found {self.cron!r} ({exc})")
        return self


class RouteConfig(_Strict):
    source: str
    sink: str
    mapping: Optional[str] = None      # None: the source yields canonical events (inbound)
    capture: dict[str, Any] = Field(default_factory=dict)   # adapter-specific (table, cursor...)
    schedule: Schedule = Schedule(every=10.0)
    # rows for which this expression is false are not published; a row that stops matching
    # is published as a delete (a customer turned supplier leaves the Customer stream)
    filter: Optional[str] = None
    reconcile: Optional[ReconcileConfig] = None      # docs/reconciliation.md


class QueueConfig(_Strict):
    max_bytes: Size = parse_size("2GiB")          # events waiting to be delivered; capture pauses beyond it
    dedup_retention: Duration = parse_duration("7d")
    prune_every: Duration = Field(default=60.0, gt=0)   # forgetting old delivered ids, on a timer
    # What an exception entry keeps of a rejected source row: the mapped columns (with the
    # business key), or the whole row. Source rows hold personal data; keep them minimal.
    exception_context: Literal["mapped", "full"] = "mapped"
    delivery_batch: int = Field(default=2000, ge=1, le=100_000)   # events per sink write (measured)


class HttpConfig(_Strict):
    enabled: bool = False
    bind: str = "127.0.0.1"
    port: int = Field(default=8765, ge=0, le=65535)
    token: Optional[str] = None


class LogConfig(_Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"
    file: Optional[Path] = None


class FabricConfig(_Strict):
    kafka: dict[str, Any] = Field(default_factory=dict)           # librdkafka properties, as-is
    schema_registry: dict[str, Any] = Field(default_factory=dict)  # SchemaRegistryClient conf
    topic_template: Annotated[str, AfterValidator(checked_topic_template)] = "outpost.{entity}"
    auto_register: bool = True
    create_topics: bool = False
    topic_partitions: int = Field(default=3, ge=1)


class HaConfig(_Strict):
    """An active/passive pair (docs/ha.md): agents with the same group take turns."""

    group: str = Field(pattern=r"^[A-Za-z0-9._-]{1,100}$")
    lease: Duration = Field(default=6.0, ge=1.0)       # how long a silent active keeps the role
    control_topic: Optional[str] = None                # compacted; default outpost.ha.<group>


class Config(_Strict):
    state_dir: Path = Path("./state")
    ha: Optional[HaConfig] = None
    # `outpost run` delivers in a process of its own, so that capture and delivery do not
    # share one interpreter (false: one process, delivery in threads)
    delivery_process: bool = True
    schema_dir: Optional[Path] = None
    shutdown_timeout: Duration = 30.0
    log: LogConfig = LogConfig()
    http: HttpConfig = HttpConfig()
    queue: QueueConfig = QueueConfig()
    fabric: FabricConfig = FabricConfig()
    lookups: dict[str, Lookup] = Field(default_factory=dict)
    mappings: dict[str, MappingConfig] = Field(default_factory=dict)
    sources: dict[str, dict[str, Any]] = Field(default_factory=dict)
    sinks: dict[str, dict[str, Any]] = Field(default_factory=dict)
    routes: dict[str, RouteConfig] = Field(default_factory=dict)
    objectives: dict[str, Objective] = Field(default_factory=dict)   # by entity (agent.slo)

    # filled by parse(): every value that came from ${...} and its encoded forms, for redaction
    secrets: frozenset[str] = Field(frozenset(), exclude=True)
    # filled by parse(): each adapter's options, validated once against its options model
    # (a route's source: its source section plus the route's capture); read-only from here
    parsed_sources: dict[str, Any] = Field(default_factory=dict, exclude=True)   # by route
    parsed_sinks: dict[str, Any] = Field(default_factory=dict, exclude=True)     # by sink

    def source_options(self, route_name: str) -> dict[str, Any]:
        """The raw options of a route's source: its source section plus the route's capture."""
        route = self.routes[route_name]
        section = {k: v for k, v in self.sources[route.source].items() if k != "type"}
        return {**section, **route.capture}

    def sink_options(self, sink_name: str) -> dict[str, Any]:
        return {k: v for k, v in self.sinks[sink_name].items() if k != "type"}

    def lookup_url(self, name: str) -> Optional[str]:
        """The database URL a SQL lookup reads from (None when it cannot be told)."""
        spec = self.lookups[name]
        with_url = [n for n, s in self.sources.items() if isinstance(s.get("url"), str)]
        source = spec.source or (with_url[0] if len(with_url) == 1 else None)
        url = self.sources.get(source, {}).get("url") if source else None
        return url if isinstance(url, str) else None


def parse(document: Any, base_dir: Optional[Path] = None, needs_secrets: bool = True) -> Config:
    """Validate a parsed YAML document. Raises ConfigError listing every problem.

    ``needs_secrets=False``: a secret reference that cannot be resolved becomes empty text
    instead of a problem, for operator commands that only read the state directory."""
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError([f"(top level): expected a mapping of sections, found {type(document).__name__}"])
    problems: list[str] = []
    secrets: set[str] = set()
    resolved = resolve_references(document, "", problems if needs_secrets else [], secrets)
    config = None
    try:
        config = Config.model_validate({**resolved, "secrets": frozenset(secrets)})
    except ValidationError as exc:
        problems.extend(describe_error("", e, secrets, Config) for e in exc.errors())
        # Drop what is broken and validate the rest, so cross-references and adapter
        # options are reported in the same pass.
        config = _validate_without(resolved, [e["loc"] for e in exc.errors()], secrets)
    if config is not None:
        if base_dir is not None and not config.state_dir.is_absolute():
            config = config.model_copy(update={"state_dir": (base_dir / config.state_dir).resolve()})
        written = resolved.get("lookups") if isinstance(resolved.get("lookups"), dict) else {}
        parsed, found = cross_check(config, declared_lookups=set(written))
        problems.extend(found)
        config = config.model_copy(update=parsed)
    if problems:
        # Redacted here, whatever produced them: every problem below ends up on a terminal or
        # in the journal. A problem shared by the routes of one source is said once.
        redact = RedactingFilter(secrets).redact
        raise ConfigError(list(dict.fromkeys(redact(p) for p in problems)))
    return config


def _validate_without(document: dict, locations, secrets) -> Optional[Config]:
    """Validate again without the broken leaves, then, if needed, without their sections."""
    locations = list(locations)
    for depth in (None, None, 2, 1):
        pruned = copy.deepcopy(document)
        for loc in locations:
            _remove(pruned, loc if depth is None else loc[:depth])
        try:
            return Config.model_validate({**pruned, "secrets": frozenset(secrets)})
        except ValidationError as exc:
            locations += [e["loc"] for e in exc.errors()]
    return None


def _remove(tree: Any, loc) -> None:
    for part in loc[:-1]:
        if isinstance(tree, dict) and part in tree:
            tree = tree[part]
        elif isinstance(tree, list) and isinstance(part, int) and part < len(tree):
            tree = tree[part]
        else:
            return
    if isinstance(tree, dict):
        tree.pop(loc[-1], None)


def load(path: Path, needs_secrets: bool = True) -> Config:
    """Read and validate a config file; relative paths are relative to the file.

    Duplicate keys are reported with the validation problems, and a problem about a
    scalar YAML 1.1 retyped (``01`` -> 1, ``NO`` -> False) says to quote it."""
    path = Path(path)
    document = yaml_load.read(path)
    problems = list(document.problems)
    # Code tables are text: a retyped code or value would be used silently (010 as 8, yes
    # as 1). A plain integer code (0: draft) is its digits, as written; a key read as a
    # boolean is refused by the model, which says so.
    problems += [f"{where}: found {scalar.text} unquoted" for where, scalar in document.retyped.items()
                 if where.startswith("lookups.") and where.count(".") == 2
                 and (not scalar.is_key or scalar.kind == "a number")]
    try:
        config = parse(document.data, base_dir=path.resolve().parent, needs_secrets=needs_secrets)
    except ConfigError as exc:
        problems += exc.problems
    if problems:
        raise ConfigError(document.with_hints(problems))
    return config


def cross_check(config: Config, declared_lookups: Optional[set] = None) -> tuple[dict, list[str]]:
    """References between sections, mappings against schemas, adapter options: the parsed
    options ({"parsed_sources": ..., "parsed_sinks": ...}) and the problems.

    ``declared_lookups``: every lookup name written in the file, valid or not, so that a
    broken table is reported once and not again by every mapping that uses it."""
    from .expressions import ExpressionError, compile_expression
    from .mapping import check_mapping
    from .schemas import SchemaCatalog

    problems: list[str] = []
    try:
        catalog = SchemaCatalog.load(config.schema_dir)
    except Exception as exc:      # a broken schema folder is one more problem to report
        return {}, [f"schema_dir: expected readable canonical schemas, found an error: {exc}"]
    parsed: dict = {"parsed_sources": {}, "parsed_sinks": {}}

    lookups = {name: config.lookups.get(name) for name in set(config.lookups) | (declared_lookups or set())}
    for name, mapping in config.mappings.items():
        problems.extend(check_mapping(f"mappings.{name}", mapping, catalog, lookups))
    for name, spec in config.lookups.items():
        if isinstance(spec, SqlLookup) and config.lookup_url(name) is None:
            with_url = sorted(n for n, s in config.sources.items() if isinstance(s.get("url"), str))
            problems.append(f"lookups.{name}.source: expected the name of a source with a url "
                            f"({', '.join(with_url) or 'none defined'}), found {spec.source!r}")
    for name, route in config.routes.items():
        if route.filter is not None:
            try:
                compile_expression(route.filter, lookups)
            except ExpressionError as exc:
                problems.append(f"routes.{name}.filter: {exc}")
    for kind, section in (("source", config.sources), ("sink", config.sinks)):
        for name, options in section.items():
            if not isinstance(options.get("type"), str):
                found = "nothing" if options.get("type") is None else repr(options["type"])
                problems.append(f"{kind}s.{name}.type: expected an adapter name, found {found}")
    for name, route in config.routes.items():
        where = f"routes.{name}"
        for attr, section in (("source", config.sources), ("sink", config.sinks), ("mapping", config.mappings)):
            ref = getattr(route, attr)
            if ref is None and attr == "mapping" and _emits_canonical_events(config.sources.get(route.source)):
                continue
            if ref not in section:
                known = ", ".join(sorted(section)) or "none defined"
                problems.append(f"{where}.{attr}: expected one of {known}, found {ref!r}")
        source = config.sources.get(route.source, {})
        if isinstance(source.get("type"), str):
            options, found = parse_options("source", source["type"], config.source_options(name), f"{where}.capture",
                                           secrets=config.secrets,
                                           located=_written_at(route.source, source, name, route))
            problems.extend(found)
            parsed["parsed_sources"][name] = options
    for name, options in config.sinks.items():
        if isinstance(options.get("type"), str):
            model, found = parse_options("sink", options["type"], config.sink_options(name), f"sinks.{name}",
                                         secrets=config.secrets)
            problems.extend(found)
            parsed["parsed_sinks"][name] = model
    problems.extend(f"objectives.{name}: expected a canonical entity ({', '.join(catalog.names())}), found {name!r}"
                    for name in config.objectives if name not in catalog.names())
    problems.extend(_ha_problems(config))
    return parsed, problems


def _ha_problems(config: Config) -> list[str]:
    """What an HA pair needs: the fabric for coordination, fenced sinks, re-readable sources."""
    if config.ha is None:
        return []
    problems = []
    if not config.fabric.kafka.get("bootstrap.servers"):
        problems.append("ha: needs fabric.kafka.bootstrap.servers (the pair coordinates through the fabric)")
    for name, route in config.routes.items():
        sink_type = config.sinks.get(route.sink, {}).get("type")
        if sink_type not in (None, "kafka", "sql_apply"):
            problems.append(f"routes.{name}.sink: an HA pair publishes only through fenced kafka sinks (or applies "
                            f"with sql_apply), found {sink_type!r}")
        if config.sources.get(route.source, {}).get("type") == "debezium":
            problems.append(f"routes.{name}.source: debezium is not supported in an HA pair: the engine moves the "
                            "replication slot when events are safe locally, not when the fabric has them, so a "
                            "failover could not read them again (use sql_poll, binlog, or one agent)")
    return problems


def _written_at(source_name: str, source: dict, route_name: str, route: RouteConfig):
    """Where a source option of a route was written: the route's capture wins over the
    source section; a missing option may go in either."""
    def located(option: str) -> str:
        if option in route.capture:
            return f"routes.{route_name}.capture.{option}"
        if option in source:
            return f"sources.{source_name}.{option}"
        return f"routes.{route_name}.capture.{option} (or sources.{source_name}.{option})"
    return located


def _emits_canonical_events(source: Optional[dict]) -> bool:
    """Whether a source adapter yields canonical events (its spec says so), so its routes
    need no mapping. An unknown adapter is reported elsewhere."""
    try:
        return spec_of("source", str((source or {}).get("type", ""))).emits == "canonical_events"
    except LookupError:
        return True
