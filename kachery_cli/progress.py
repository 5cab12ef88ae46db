"""Progress on stderr, shown only when stderr is a terminal."""

import sys
import threading
import time

from kachery_core.settings import format_size as human_size


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
        """``total``: bytes, or a callable giving them (only run on a terminal)."""
        from .conventions import QUIET

        if QUIET["on"] or not sys.stderr.isatty():
            return None
        return cls(label, total() if callable(total) else total)

    def expect(self, count):
        """``count`` more bytes to come (a total learnt as the work is decided)."""
        with self._lock:
            self.total = (self.total or 0) + count

    def __call__(self, amount):
        with self._lock:
            self.done += amount
            now = time.monotonic()
            if now - self._last_draw >= 0.1:
                self._last_draw = now
                self._draw(now)

    def _draw(self, now):
        elapsed = max(now - self._started, 1e-6)
        rate = self.done / elapsed
        text = f"\r{self.label}: {human_size(self.done)}"
        if self.total:
            done = min(self.done, self.total)
            text += f" / {human_size(self.total)} ({100 * done // self.total}%)"
        text += f"  {human_size(rate)}/s"
        if self.total and rate > 0 and self.done < self.total:
            text += f"  ETA {_clock((self.total - self.done) / rate)}"
        elif self.done:
            text += f"  in {_clock(elapsed)}"
        self.stream.write(f"{text}   ")
        self.stream.flush()

    def close(self):
        self._draw(time.monotonic())
        self.stream.write("\n")
        self.stream.flush()


def _clock(seconds):
    """12 -> '0:12', 4000 -> '1:06:40'."""
    seconds = int(seconds + 0.5)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def total_size(paths):
    """Bytes of the files at ``paths`` (directories walked): a progress total."""
    import os

    total = 0
    for path in paths:
        if os.path.isdir(path):
            for directory, _, names in os.walk(path):
                for name in names:
                    try:
                        total += os.stat(os.path.join(directory, name)).st_size
                    except OSError:
                        pass
        else:
            try:
                total += os.stat(path).st_size
            except OSError:
                pass
    return total
