"""``file_drop``: watched inboxes of CSV, fixed-width and JSON-lines exports.

See docs/file_drop.md. ``spec`` holds the options model (light imports); ``source`` the
adapter; ``formats`` and ``checks`` the pure parsing and control checks; ``claim`` the
inbox folders (finished-file detection, atomic claim, archive / error moves).
"""

from agent.contracts import AdapterSpec

from .spec import SourceOptions

SOURCE = AdapterSpec(name="file_drop", kind="source", options=SourceOptions,
                     implementation="adapters.file_drop.source:FileDropSource")
