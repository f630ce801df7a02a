"""Options of the ``sql_poll`` source (the source section merged with the route's capture).

Kept free of database drivers so ``outpost check`` can validate a config cheaply.
"""
from __future__ import annotations

from typing import Any, Literal, Optional
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class SoftDelete(BaseModel):
    """Rows matching this become ``delete`` records: ``{column, value}`` or ``{column, not_null}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    column: str
    value: Any = None
    not_null: bool = False

    @model_validator(mode="after")
    def _one_rule(self) -> "SoftDelete":
        if self.not_null == (self.value is not None):
            raise ValueError("soft_delete needs exactly one of 'value' or 'not_null: true'")
        return self

    def matches(self, row: dict) -> bool:
        v = row.get(self.column)
        if self.not_null:
            return v is not None
        # MariaDB hands booleans back as 1/0 and legacy schemas use 'Y'/'1' strings,
        # so compare loosely on the textual form as a fallback.
        return v == self.value or (v is not None and str(v).lower() == str(self.value).lower())


class Rollup(BaseModel):
    """A value of the parent row computed over a child table: ``{table: llx_contratdet,
    key: fk_contrat, sum: total_ht, cursor: tms}`` (a contract's value is the sum of its
    lines). With ``cursor``, a changed child row publishes its parent again."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    table: str
    key: str                        # the child's column holding the parent's primary key
    sum: Optional[str] = None
    count: bool = False
    cursor: Optional[str] = None    # the child's change-tracking column

    @model_validator(mode="after")
    def _one_aggregate(self) -> "Rollup":
        if (self.sum is None) == (not self.count):
            raise ValueError("give exactly one of 'sum: COLUMN' or 'count: true'")
        return self


class SourceOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str
    system: Optional[str] = None
    lag_seconds: float = Field(5.0, ge=0)
    batch_size: int = Field(2000, gt=0)   # measured: 2000 saved ~10% agent CPU, ~70% PostgreSQL CPU
    source_timezone: str = "UTC"

    table: str
    schema_: Optional[str] = Field(None, alias="schema")
    primary_key: Optional[list[str]] = None
    cursor: Optional[str] = None
    columns: Optional[list[str]] = None
    soft_delete: Optional[SoftDelete] = None
    mode: Literal["incremental", "snapshot_only"] = "incremental"
    snapshot: Literal["initial", "none"] = "initial"
    snapshot_chunk: int = Field(5000, gt=0)
    # Echo prevention (docs/inbound.md): the applied-row-versions table of a sql_apply sink
    # writing to this same table, "table" or "schema.table"; versions found there are skipped.
    skip_applied: Optional[str] = None
    # values computed over child tables, by the name the mapping reads them as
    rollups: dict[str, Rollup] = Field(default_factory=dict)

    @field_validator("primary_key", "columns", mode="before")
    @classmethod
    def _listify(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("primary_key")
    @classmethod
    def _non_empty(cls, v: Optional[list[str]]) -> Optional[list[str]]:
        if v is not None and not v:
            raise ValueError("primary_key must name at least one column")
        return v

    @field_validator("source_timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r} (use an IANA name such as 'Europe/Berlin')")
        return v

    @model_validator(mode="after")
    def _cursor_needed(self) -> "SourceOptions":
        if self.mode == "incremental" and not self.cursor:
            raise ValueError("'cursor' (the change-tracking column, e.g. updated_at) is required "
                             "unless mode is 'snapshot_only'")
        if self.mode == "snapshot_only" and self.snapshot == "none":
            raise ValueError("mode 'snapshot_only' with snapshot 'none' would read nothing")
        return self
