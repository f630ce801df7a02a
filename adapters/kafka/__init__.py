"""The ``kafka`` sink: publishes queued canonical events to Kafka in the Confluent wire
format (magic byte, schema-registry id, Avro body), with an idempotent producer.

Kept import-light on purpose: the core imports ``adapters.kafka.spec`` to validate
configuration without loading librdkafka; ``adapters.kafka.sink`` holds the adapter.
"""

from agent.contracts import AdapterSpec

from .spec import SinkOptions, SourceOptions

SOURCE = AdapterSpec(name="kafka", kind="source", options=SourceOptions, streaming=True,
                     emits="canonical_events", implementation="adapters.kafka.source:KafkaSource")
SINK = AdapterSpec(name="kafka", kind="sink", options=SinkOptions,
                   implementation="adapters.kafka.sink:KafkaSink",
                   delivery_bound=lambda options: options.delivery_timeout_s)
