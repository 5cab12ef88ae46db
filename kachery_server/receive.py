"""One PUT body on its way into the store: a temp file plus a running hash.

The event loop receives the body; blocks of it are handed to a worker thread
that hashes and writes them (hashlib and os.write release the GIL), so a large
upload neither blocks other requests nor waits on the disk between reads.
"""

import os
import threading

from kachery_core.durability import start_writeback
from kachery_core.hashing import new_hasher

#: Start disk writeback every this many bytes, so the final flush is short.
WRITEBACK_STEP = 64 * 1024 * 1024


class TempUpload:
    """A temp file in the store's tmp area being filled, hashed as it grows.

    ``absorb`` runs on worker threads (one at a time per upload), ``abort``
    may run on the event loop at any moment: a lock makes sure the file
    descriptor is never closed under a running write (a reused fd number
    would otherwise receive stray bytes).
    """

    def __init__(self, store, algorithm):
        self.store = store
        self.algorithm = algorithm
        self.size = 0
        self._hasher = new_hasher(algorithm)
        self._lock = threading.Lock()
        self._fd, self.path = store.create_temp()

    def absorb(self, blocks):
        """Hash and append ``blocks`` (a list of bytes-likes, written with one
        writev rather than joined: a join is one more copy of every byte); a
        no-op after abort."""
        with self._lock:
            if self._fd is None:
                return
            for block in blocks:
                self._hasher.update(block)
            count = sum(map(len, blocks))
            _write_all(self._fd, blocks)
            before, self.size = self.size, self.size + count
            if before // WRITEBACK_STEP != self.size // WRITEBACK_STEP:
                start_writeback(self._fd, 0, 0)

    def finish(self):
        """Close the file; return the hex digest. (The group commit flushes it.)"""
        with self._lock:
            os.close(self._fd)
            self._fd = None
            return self._hasher.hexdigest()

    def abort(self):
        """Close (if open) and delete the temp file; safe to call more than once."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass



def _write_all(fd, blocks):
    """writev until every byte of ``blocks`` is written."""
    views = [memoryview(block) for block in blocks if len(block)]
    while views:
        written = os.writev(fd, views[:_IOV_MAX])
        while written and written >= len(views[0]):
            written -= len(views.pop(0))
        if written:
            views[0] = views[0][written:]


#: Buffers per writev(2) call (the kernel's UIO_MAXIOV).
_IOV_MAX = 1024
