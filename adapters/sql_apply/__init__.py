"""``sql_apply``: applies inbound canonical events to the local (legacy) database.

``spec`` holds the options model (no driver imports), ``reverse_mapping`` the pure
canonical -> local mapping, ``sink`` the adapter (SQLAlchemy Core, one transaction per
batch with the applied-events ledger). See docs/inbound.md.
"""
