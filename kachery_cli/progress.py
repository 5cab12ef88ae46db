"""Progress on stderr, shown only when stderr is a terminal."""

import sys
import threading
import time


class Progress:
    """A byte counter that redraws one stderr line at most 10 times a second.

    ``Progress.maybe(label, total)`` returns None when stderr is not a terminal,
    so callers pass it straight through as an optional callback.
    """

    def __init__(self, label, total=None, stream=None):
        self.label = label
        self.total = total
        self.done = 0
        self.stream = stream or sys.stderr
        self._lock = threading.Lock()
        self._last_draw = 0.0
        self._started = time.monotonic()

    @classmethod
    def maybe(cls, label, total=None):
        return cls(label, total) if sys.stderr.isatty() else None

    def __call__(self, amount):
        with self._lock:
            self.done += amount
            now = time.monotonic()
            if now - self._last_draw >= 0.1:
                self._last_draw = now
                self._draw(now)

    def _draw(self, now):
        rate = self.done / max(now - self._started, 1e-6)
        text = f"\r{self.label}: {_human(self.done)}"
        if self.total:
            text += f" / {_human(self.total)} ({100 * self.done // self.total}%)"
        self.stream.write(f"{text}  {_human(rate)}/s   ")
        self.stream.flush()

    def close(self):
        self._draw(time.monotonic())
        self.stream.write("\n")
        self.stream.flush()


def _human(count):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"
