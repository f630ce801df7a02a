"""Config models of reconciliation and business objectives (``routes.<name>.reconcile``,
``objectives``), validated with the rest of the file: every problem names its key path."""
from __future__ import annotations

from typing import Annotated, Literal, Optional
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from .units import parse_duration

__all__ = ["ReconcileConfig", "Objective"]


class ReconcileConfig(BaseModel):
    """``reconcile: {cron: "0 2 * * *", window: day}``: when and over what to reconcile a route."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cron: Optional[str] = None          # scheduled runs; without it only `outpost reconcile`
    window: Literal["day", "all"] = "day"   # a scheduled run's window: yesterday, or everything
    zone: str = "UTC"                   # the zone of business days (IANA name)
    # hard deletes on polling sources: look for them and only report, publish their deletes, or not look
    deletes: Literal["off", "report", "publish"] = "report"
    chunk_rows: int = Field(20_000, gt=0, le=10_000_000)     # keys per hashed range of the key-set comparison
    rows_per_query: int = Field(5_000, gt=0, le=1_000_000)   # keys one query may stream from the source
    max_queries_per_second: float = Field(20.0, gt=0)        # load bound on the source

    @field_validator("cron")
    @classmethod
    def _crontab(cls, value: Optional[str]) -> Optional[str]:
        if value is not None:
            from apscheduler.triggers.cron import CronTrigger
            try:
                CronTrigger.from_crontab(value)
            except ValueError as exc:
                raise ValueError(f"expected a crontab expression such as '0 2 * * *', found {value!r} ({exc})")
        return value

    @field_validator("zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"expected an IANA time zone such as 'Europe/Berlin', found {value!r}")
        return value


class Objective(BaseModel):
    """``Invoice: {within: 60s, target: 0.99}``: that share of changes reaches the fabric in time."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    within: Annotated[float, BeforeValidator(parse_duration)] = Field(gt=0)
    target: float = Field(gt=0, le=1)
