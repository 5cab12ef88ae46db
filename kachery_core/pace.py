"""A lower bound on the speed of a transfer, after curl's --speed-limit/--speed-time.

A socket read timeout alone does not bound a transfer: a remote that sends
one byte every second answers every read in time and makes a 4 MiB chunk
last seven weeks. :class:`Pace` fails a transfer whose average speed over the
last ``speed_time`` seconds is below ``speed_limit`` bytes per second, so a
slow remote is given up like a dead one (and the next remote is asked).
"""

import time

from .errors import KacheryError

#: Default minimum speed: far below any working link, far above a drip.
DEFAULT_SPEED_LIMIT = 16 * 1024
#: Default window over which the speed is averaged (seconds).
DEFAULT_SPEED_TIME = 10.0


class TooSlow(KacheryError, TimeoutError):
    """A transfer stayed below the minimum speed for the whole window."""

    def __init__(self, moved, seconds, speed_limit):
        self.moved = moved
        self.seconds = seconds
        self.speed_limit = speed_limit
        super().__init__(f"too slow: {moved} bytes in {seconds:.1f} s "
                         f"(the minimum is {speed_limit} bytes/s)")


class Pace:
    """Checks one transfer's speed; call :meth:`moved` after every read.

    The speed is averaged over windows of ``speed_time`` seconds: at the end
    of each, fewer than ``speed_limit * speed_time`` bytes moved in it raises
    TooSlow. ``speed_limit`` 0 disables the check.
    """

    def __init__(self, speed_limit=DEFAULT_SPEED_LIMIT, speed_time=DEFAULT_SPEED_TIME,
                 clock=time.monotonic):
        self.speed_limit = speed_limit
        self.speed_time = speed_time
        self._clock = clock
        self._window_start = clock()
        self._window_bytes = 0

    def moved(self, count):
        """Record ``count`` more bytes; raise TooSlow when a window ended too slow."""
        self._window_bytes += count
        if not self.speed_limit:
            return
        now = self._clock()
        elapsed = now - self._window_start
        if elapsed < self.speed_time:
            return
        if self._window_bytes < self.speed_limit * elapsed:
            raise TooSlow(self._window_bytes, elapsed, self.speed_limit)
        self._window_start, self._window_bytes = now, 0

    def time_left(self):
        """Seconds until the current window ends (the longest a read may wait
        for its first byte before the window is certainly too slow)."""
        if not self.speed_limit:
            return None
        return max(self.speed_time - (self._clock() - self._window_start), 0.0)

    def paced(self, readinto):
        """``readinto`` that records what each call moved (and raises TooSlow)."""

        def read(buffer):
            got = readinto(buffer)
            self.moved(got or 0)
            return got

        return read


class NoPace:
    """A Pace that never fails (transfers whose speed is not bounded)."""

    speed_limit = 0

    def moved(self, count):
        pass

    def time_left(self):
        return None

    def paced(self, readinto):
        return readinto
