"""Options of the ``sql_apply`` sink: where and how canonical entities land locally.

Identifiers (tables, columns, procedures) come only from here and are checked against
the reflected schema when the sink opens; values are always bound parameters.
"""
from __future__ import annotations

from typing import Any, Literal, Optional, Union
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent.config import Duration, expand_shorthand

__all__ = ["SinkOptions", "ColumnRule", "TableTarget", "ProcedureTarget", "EntityTarget", "REVERSE_CONVERSIONS"]

# canonical value -> local value; kept in sync with reverse_mapping.CONVERSIONS
REVERSE_CONVERSIONS = ("strip", "upper", "lower", "str", "yn", "int", "date", "blank_to_none")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ColumnRule(_Strict):
    """What one local column receives: a canonical field, a constant, or the apply time."""

    field: Optional[str] = None
    const: Any = None
    now: bool = False                                   # the agent's clock (UTC) at apply time
    lookup: Optional[str] = None                        # a table of ``lookups``, reversed
    map: Optional[dict[str, Any]] = None                # explicit canonical -> local codes
    convert: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value):
        return expand_shorthand(value, "field")        # "cust_name: name" means a field

    @model_validator(mode="after")
    def _one_origin(self):
        origins = (self.field is not None) + ("const" in self.model_fields_set) + self.now
        if origins != 1:
            raise ValueError("give exactly one of 'field', 'const' or 'now: true'")
        if self.lookup and self.map:
            raise ValueError("give 'lookup' or 'map', not both")
        unknown = [c for c in self.convert if c not in REVERSE_CONVERSIONS]
        if unknown:
            raise ValueError(f"unknown conversion(s) {unknown}; expected some of {list(REVERSE_CONVERSIONS)}")
        return self


class ConflictRule(_Strict):
    """How to tell that the local row changed after the version an event was based on.

    ``version``: with ``field``, the local ``column`` must equal the event's ``before.<field>``;
    without, ``column`` holds the source version the sink applied (``metadata.version``,
    written by the sink) and an event with an older version is refused;
    ``timestamp``: the local ``column`` must not be later than ``before.<field>``;
    ``before_image``: every mapped column must equal the event's before image;
    ``none``: last writer wins.
    """

    mode: Literal["none", "version", "timestamp", "before_image"] = "none"
    column: Optional[str] = None
    field: Optional[str] = None

    @model_validator(mode="after")
    def _needs(self):
        if self.mode == "timestamp" and not (self.column and self.field):
            raise ValueError("conflict mode 'timestamp' needs 'column' (local) and 'field' (canonical)")
        if self.mode == "version" and not self.column:
            raise ValueError("conflict mode 'version' needs 'column' (local; with 'field' it is compared with "
                             "before.<field>, without it holds the event's metadata.version)")
        return self


class DeletePolicy(_Strict):
    """``soft``: a delete sets ``column`` to ``value``; every create or update sets it back to
    ``restore_value`` (default: the column's default, else NULL), so a customer deleted
    and created again comes back. Mapping the column yourself overrides that."""

    policy: Literal["hard", "soft", "ignore"] = "ignore"
    column: Optional[str] = None
    value: Any = None
    restore_value: Any = None

    @model_validator(mode="after")
    def _soft_needs(self):
        if self.policy == "soft" and (self.column is None or "value" not in self.model_fields_set):
            raise ValueError("soft delete needs 'column' and 'value'")
        return self


class TableTarget(_Strict):
    table: str
    schema_: Optional[str] = Field(None, alias="schema")
    key: list[str] = Field(..., min_length=1, description="Local columns that identify the row (a PK or unique key).")
    columns: dict[str, ColumnRule] = Field(..., min_length=1)
    conflict: ConflictRule = ConflictRule()
    delete: DeletePolicy = DeletePolicy()
    timezone: str = Field("UTC", description="Zone of naive local timestamp columns.")
    capture_cursor: Optional[str] = Field(
        None, description="Cursor column of a sql_poll route capturing this same table: applied row "
                          "versions are recorded so that route skips them (echo prevention).")

    @field_validator("key", mode="before")
    @classmethod
    def _listify(cls, v):
        return [v] if isinstance(v, str) else v

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}")
        return v

    @model_validator(mode="after")
    def _key_mapped(self):
        missing = [k for k in self.key if k not in self.columns]
        if missing:
            raise ValueError(f"key column(s) {missing} need a rule in 'columns'")
        return self


class ProcedureTarget(_Strict):
    """Call a stored procedure instead of writing tables: ``args`` in call order."""

    name: str
    schema_: Optional[str] = Field(None, alias="schema")
    args: list[ColumnRule] = Field(..., min_length=1)
    delete_name: Optional[str] = Field(None, description="Procedure called for deletes (same args); "
                                                         "unset = deletes are ignored.")


class EntityTarget(_Strict):
    tables: list[TableTarget] = Field(default_factory=list)
    procedure: Optional[ProcedureTarget] = None

    @model_validator(mode="after")
    def _one_kind(self):
        if bool(self.tables) == (self.procedure is not None):
            raise ValueError("give either 'tables' or 'procedure'")
        return self


class Ledger(_Strict):
    schema_: Optional[str] = Field(None, alias="schema")
    table: str = "outpost_applied_events"
    rows_table: str = "outpost_applied_rows"
    keys_table: str = Field("outpost_applied_keys", description="The last applied change per entity key (never "
                                                                "pruned): an older one is parked as stale.")
    create: bool = True
    retention_days: float = Field(7, gt=0)


class Marker(_Strict):
    """For Debezium capture of the same database: a row written in every apply transaction."""

    enabled: bool = False
    schema_: Optional[str] = Field(None, alias="schema")
    table: str = "outpost_apply_marker"


class SinkOptions(_Strict):
    url: str
    entities: dict[str, EntityTarget] = Field(..., min_length=1)
    lookups: dict[str, dict[str, Union[str, int, None]]] = Field(
        default_factory=dict, description="Same form as the top-level lookups (local -> canonical); "
                                          "reversed for applying.")
    ledger: Ledger = Ledger()
    marker: Marker = Marker()
    applier: Optional[str] = Field(None, description="Name written in the marker row (default: sink name).")
    lock_wait: Duration = Field(30.0, ge=1, description=(
        "How long one apply waits for a lock another session holds (LOCK TABLES, a long transaction) "
        "before it gives up, says so in status and retries: the databases' own bounds are a day "
        "(MariaDB lock_wait_timeout) or none (PostgreSQL lock_timeout), and a wait without end is silent."))
    wait_for_parent: Duration = Field(600.0, gt=0, description=(
        "How long an event whose foreign key points at a parent row that is not there yet waits (queued, "
        "in order, shown in status) before it is parked naming the missing parent."))

    @model_validator(mode="after")
    def _lookups_known(self):
        for entity, target in self.entities.items():
            rules = [r for t in target.tables for r in t.columns.values()]
            rules += target.procedure.args if target.procedure else []
            for rule in rules:
                if rule.lookup and rule.lookup not in self.lookups:
                    raise ValueError(f"entities.{entity}: lookup {rule.lookup!r} is not in this sink's 'lookups'")
        return self
