"""``binlog`` source: MariaDB/MySQL row-based binary log capture in pure Python (no JVM)."""

from agent.contracts import AdapterSpec

from .spec import SourceOptions

SOURCE = AdapterSpec(name="binlog", kind="source", options=SourceOptions, streaming=True,
                     implementation="adapters.binlog.source:BinlogSource")
