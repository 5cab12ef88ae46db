"""Thread-safe counters that make fetching observable (bytes fetched, cache
hits and misses, verification failures)."""

import json
import os
import threading

from .store import pid_alive


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


class StatsFile:
    """Publishes a process's counters as JSON in a file, refreshed every
    ``interval`` seconds, so that commands can show what a running mount has
    fetched (``kachery cache``). Removed again by ``stop()``."""

    def __init__(self, path, collect, interval=1.0):
        self.path = path
        self._collect = collect
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="kachery-stats")

    def start(self):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self._thread.start()
        return self

    def _run(self):
        while True:  # at once first: `kachery mounts` right after a mount finds it
            self.write()
            if self._stop.wait(self._interval):
                return

    def write(self):
        temp = f"{self.path}.{os.getpid()}.tmp"
        with open(temp, "w") as file:
            json.dump(self._collect(), file)
        os.replace(temp, self.path)

    def stop(self):
        self._stop.set()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def read_stats_files(directory, prefix="mount-stats-"):
    """{pid: counters} of the StatsFiles in ``directory`` whose process is alive."""
    found = {}
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return found
    for name in names:
        pid = name.removeprefix(prefix).removesuffix(".json")
        if name.startswith(prefix) and name.endswith(".json") and pid.isdigit() and pid_alive(int(pid)):
            try:
                with open(os.path.join(directory, name)) as file:
                    found[int(pid)] = json.load(file)
            except (OSError, ValueError):
                continue
    return found
