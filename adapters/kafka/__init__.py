"""The ``kafka`` sink: publishes queued canonical events to Kafka in the Confluent wire
format (magic byte, schema-registry id, Avro body), with an idempotent producer.

Kept import-light on purpose: the core imports ``adapters.kafka.spec`` to validate
configuration without loading librdkafka; ``adapters.kafka.sink`` holds the adapter.
"""
