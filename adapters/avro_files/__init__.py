"""Avro object container files in an outbox folder: the embedded default fabric."""
