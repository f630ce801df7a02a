"""Options of the ``binlog`` source (the source section merged with the route's capture).

Kept free of database drivers so ``outpost check`` can validate a config cheaply.
"""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator


class SourceOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # mysql+pymysql://user:password@host:3306/database (the database is the default schema)
    url: str
    system: Optional[str] = None

    table: str
    schema_: Optional[str] = Field(None, alias="schema")
    # initial: snapshot the table first (chunked by primary key), then stream from the position
    #          recorded before the snapshot; when_needed: also re-snapshot by itself when the
    #          stored position was purged from the server; none: only changes from now on.
    snapshot: Literal["initial", "when_needed", "none"] = "initial"
    snapshot_chunk: int = Field(5000, gt=0)
    batch_size: int = Field(2000, gt=0)            # records per queue transaction, at most
    max_delay: float = Field(0.05, gt=0, le=5)     # seconds a committed change may wait for more
    idle_return: float = Field(0.5, gt=0)          # return to the scheduler after this long idle
    heartbeat: float = Field(0.05, gt=0, le=30)    # server heartbeat period while idle
    # return to the scheduler at least this often even when the server is never idle (rare:
    # the gap until the next scheduled call adds latency to what arrives meanwhile)
    max_pass: float = Field(30.0, gt=0)
    # unique replica id towards the server; derived from source, table and state dir if unset
    server_id: Optional[int] = Field(None, ge=2, le=4294967295)
    # warn in status when the unread binlog behind the stored position exceeds this
    retention_warn_bytes: int = Field(1 << 30, gt=0)
    connect_timeout: float = Field(10.0, gt=0)
    # Echo prevention for a table an inbound sql_apply sink also writes (marker.enabled): the
    # sink writes this marker table first in each apply transaction; every change of a
    # transaction that wrote it is Outpost's own and is not captured. "table" (in this
    # source's schema) or "schema.table".
    echo_marker_table: Optional[str] = None

    @field_validator("url")
    @classmethod
    def _mysql_url(cls, v: str) -> str:
        scheme = v.split("://", 1)[0] if "://" in v else ""
        if not (scheme.startswith("mysql") or scheme.startswith("mariadb")):
            raise ValueError(f"expected a MySQL/MariaDB URL such as mysql+pymysql://user@host:3306/erp, "
                             f"found scheme {scheme or 'none'!r}")
        return v
