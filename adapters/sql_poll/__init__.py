"""``sql_poll``: change capture by polling a table on (cursor, primary key).

See docs/sql_poll.md. ``spec`` holds the options model (no driver imports);
``source`` holds the adapter, loaded only when a route uses it.
"""

from agent.contracts import AdapterSpec

from .spec import SourceOptions

SOURCE = AdapterSpec(name="sql_poll", kind="source", options=SourceOptions,
                     implementation="adapters.sql_poll.source:SqlPollSource")
