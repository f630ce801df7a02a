"""Options of the ``kafka`` sink. Everything here overrides the config's ``fabric`` section
for this one sink; unset options (None) fall back to the fabric, then to the defaults."""
from __future__ import annotations

from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agent.config_checks import checked_topic_template

__all__ = ["SinkOptions", "DEFAULTS", "SourceOptions"]

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
        return None if value is None else checked_topic_template(value)


# ---- the ``kafka`` source (inbound: fabric -> local queue -> sql_apply) -------------------

class SourceOptions(BaseModel):
    """Consumer-group options; Kafka connection properties come from ``fabric.kafka``."""

    model_config = ConfigDict(extra="forbid")

    topics: Union[list[str], dict[str, Optional[str]]] = Field(
        ..., description="Topics to consume: a list (the entity is read from the writer schema) "
                         "or {topic: Entity} to pin the canonical entity of each topic.")
    group_id: str = Field(..., min_length=1, description="Consumer group id (one per site).")
    system: Optional[str] = None
    batch_size: int = Field(500, gt=0, le=100_000, description="Messages per local-queue commit.")
    poll_timeout_s: float = Field(1.0, gt=0, description="A poll this long without messages = caught up.")
    assignment_wait_s: float = Field(15.0, ge=0, description="How long a run waits for the group to "
                                                              "assign partitions before returning.")
    dead_letter_topic: Optional[str] = Field(
        None, description="Also copy poison messages (undecodable, schema-invalid) here, with headers "
                          "naming the origin and the error. The exception queue always gets them.")
    consumer: dict[str, Any] = Field(default_factory=dict,
                                     description="Extra librdkafka consumer properties (override fabric.kafka).")

    @field_validator("topics")
    @classmethod
    def _some_topics(cls, value):
        if not value:
            raise ValueError("name at least one topic")
        return value

    @field_validator("consumer")
    @classmethod
    def _protected(cls, value: dict) -> dict:
        fixed = {"enable.auto.offset.store", "group.id", "enable.auto.commit"} & set(value)
        if fixed:
            raise ValueError(f"{', '.join(sorted(fixed))} cannot be overridden: offsets are stored only "
                             "after the events are durable in the local queue")
        return value
