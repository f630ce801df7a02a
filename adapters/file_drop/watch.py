"""watchdog observers whose only job is to wake the inbox scan.

Events are hints: they are lost on network shares, on Windows under load and across
restarts, so the source also scans at start and on a timer. ``polling`` (a stat-based
observer) is what SMB/NFS shares need, since native notifications do not cross the network.
"""
from __future__ import annotations

import threading

from watchdog.events import FileSystemEventHandler


class _Wake(FileSystemEventHandler):
    def __init__(self, wake: threading.Event):
        self.wake = wake

    def on_any_event(self, event) -> None:   # whatever happened, the scan decides
        self.wake.set()


def start_observer(polling: bool, poll_interval: float, folders: list[str], wake: threading.Event):
    """A started daemon observer on ``folders`` (not recursive); call ``stop()``/``join()``."""
    if polling:
        from watchdog.observers.polling import PollingObserver
        observer = PollingObserver(timeout=poll_interval)
    else:
        from watchdog.observers import Observer
        observer = Observer()
    handler = _Wake(wake)
    for folder in folders:
        observer.schedule(handler, folder, recursive=False)
    observer.daemon = True
    observer.start()
    return observer
