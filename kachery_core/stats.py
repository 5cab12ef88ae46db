"""Thread-safe counters that make fetching observable (bytes fetched, cache
hits and misses, verification failures)."""

import threading


class Stats:
    def __init__(self):
        self._lock = threading.Lock()
        self._counts = {}

    def add(self, name, amount=1):
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + amount

    def snapshot(self):
        """A copy of every counter (missing ones read as 0)."""
        with self._lock:
            return dict(self._counts)
