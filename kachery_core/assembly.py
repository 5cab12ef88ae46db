"""A large file's whole object, built from its chunks as they arrive in order.

When a program reads a remote file from the start, its chunks arrive (nearly)
in order. Each verified chunk is appended to one temp file in the cache and
fed to the whole-file hasher; after the last one the hash is checked and the
temp file is renamed to the object's name. The file becomes a whole verified
object without a second pass: no chunk files to write, read back and join.

Chunks that arrive ahead of their turn are kept as chunk objects in the cache
and absorbed when the assembly reaches them (see Fetcher._persist_chunk).
Appending happens on one thread (the fetcher's writer); reads of what is
already appended may come from any thread.
"""

import os
import threading

from .hashing import new_hasher


class Assembly:
    """The growing whole object of one file: a temp file in ``cache`` and its hash."""

    def __init__(self, cache, target, manifest):
        self.cache = cache
        self.target = target
        self.manifest = manifest
        self.next = 0  # index of the next chunk to append
        self._hasher = new_hasher(target.algorithm)
        self._lock = threading.Lock()  # guards the fd against close during a read
        self._end = 0  # bytes appended so far
        self._fd, self._temp_path = cache.create_temp()  # (write only)
        self._read_fd = os.open(self._temp_path, os.O_RDONLY | os.O_CLOEXEC)

    @property
    def complete(self):
        return self.next == len(self.manifest.chunks)

    def append(self, data):
        """Append the verified bytes of chunk ``self.next`` (writer thread only)."""
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        self._hasher.update(data)
        with self._lock:
            self._end += len(data)
            self.next += 1

    def has(self, index):
        return index < self.next

    def read(self, start, stop):
        """Bytes [start, stop) if already appended, else None (any thread)."""
        with self._lock:
            if self._fd is None or stop > self._end:
                return None
            return os.pread(self._read_fd, stop - start, start)

    @property
    def temp_path(self):
        return self._temp_path

    def hexdigest(self):
        """The whole file's hash (call once complete)."""
        return self._hasher.hexdigest()

    def close(self):
        """Close the temp file (after it was published or dropped)."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                os.close(self._read_fd)
                self._fd = None

    def abort(self):
        """Close and drop the temp file."""
        self.close()
        try:
            os.unlink(self._temp_path)
        except FileNotFoundError:
            pass
