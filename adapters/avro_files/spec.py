from pathlib import Path

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from typing import Annotated

from agent.units import parse_duration, parse_size


class SinkOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    directory: Path                                   # the outbox; relative to the state dir
    rotate_bytes: Annotated[int, BeforeValidator(parse_size)] = Field(default=64 << 20, ge=1)
    rotate_seconds: Annotated[float, BeforeValidator(parse_duration)] = Field(default=300.0, gt=0)
    codec: str = Field(default="deflate", pattern="^(null|deflate)$")
