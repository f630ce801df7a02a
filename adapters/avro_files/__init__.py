"""Avro object container files in an outbox folder: the embedded default fabric."""

from agent.contracts import AdapterSpec

from .spec import SinkOptions

SINK = AdapterSpec(name="avro_files", kind="sink", options=SinkOptions,
                   implementation="adapters.avro_files.sink:AvroFilesSink")
