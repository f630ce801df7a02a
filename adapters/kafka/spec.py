"""Options of the ``kafka`` sink. Everything here overrides the config's ``fabric`` section
for this one sink; unset options (None) fall back to the fabric, then to the defaults."""
from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["SinkOptions", "DEFAULTS"]

# Fabric-level defaults, applied when neither the sink nor the fabric sets a value.
DEFAULTS = {
    "topic_template": "outpost.{entity}",
    "auto_register": True,
    "create_topics": True,
    "topic_partitions": 3,
}


class SinkOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    topic_template: Optional[str] = Field(
        None, description="Topic per entity; {entity} is snake_case (billing_milestone), "
                          "{Entity} the CamelCase name (BillingMilestone).")
    auto_register: Optional[bool] = Field(
        None, description="Register schemas on first use; false requires them pre-registered.")
    create_topics: Optional[bool] = Field(
        None, description="Create missing topics when an entity is first published.")
    topic_partitions: Optional[int] = Field(None, ge=1, description="Partitions of created topics.")
    delivery_timeout_s: float = Field(
        30, gt=0, description="How long a batch may wait for broker acknowledgements before "
                              "it stays queued and is retried later.")

    @field_validator("topic_template")
    @classmethod
    def _known_placeholders(cls, value: Optional[str]) -> Optional[str]:
        if value is not None:
            try:
                topic = value.format(entity="x", Entity="X")
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(f"only {{entity}} and {{Entity}} may appear in the template ({exc})")
            if not topic:
                raise ValueError("the template yields an empty topic name")
        return value
