"""``sql_apply``: applies inbound canonical events to the local (legacy) database.

``spec`` holds the options model (no driver imports), ``reverse_mapping`` the pure
canonical -> local mapping, ``sink`` the adapter (SQLAlchemy Core, one transaction per
batch with the applied-events ledger). See docs/inbound.md.
"""

from agent.contracts import AdapterSpec

from .spec import SinkOptions

SINK = AdapterSpec(name="sql_apply", kind="sink", options=SinkOptions,
                   implementation="adapters.sql_apply.sink:SqlApplySink")
