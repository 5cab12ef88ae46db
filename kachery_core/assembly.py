"""A large file's whole object, built in place from its verified chunks.

When a program reads a remote file from its start, the file's whole object
is built in one temp file in the cache, as long as the file: each chunk is
received straight into it at its own offset (spliced from the socket where
the transport can, see http_remote.receive_range), verified against its
chunk sha1, and from then on served from there. A writer thread feeds the
verified chunks, in order, to the whole-file hasher, reading them where they
lie (no copy); after the last one the hash is checked and the temp file is
renamed to the object's name. No byte is copied through Python and none is
written twice.

Chunks may arrive in any order (read-ahead fetches several at once). Reads
and hashing use a read-only descriptor; fetches write through their own
uses of the write descriptor, which is closed only when no fetch holds it.
"""

import os
import threading

from .hashing import new_hasher
from .zerocopy import hash_file_range


class AssemblyClosed(Exception):
    """The assembly was dropped or published: write the chunk elsewhere."""


class Assembly:
    """The growing whole object of one file: a temp file in ``cache`` and its hash."""

    def __init__(self, cache, target, manifest):
        self.cache = cache
        self.target = target
        self.manifest = manifest
        self.next = 0  # chunks before this one are fed to the whole-file hasher
        self._hasher = new_hasher(target.algorithm)
        self._lock = threading.Lock()
        self._verified = set()  # indices of chunks whose verified bytes are in the file
        self._users = 0  # fetches and reads using the descriptors right now
        self._closing = False
        self._fd, self._temp_path = cache.create_temp()  # (read-write: landed bytes are hashed)
        try:
            os.ftruncate(self._fd, target.size)  # sparse: chunks land at their offsets
            self._read_fd = os.open(self._temp_path, os.O_RDONLY | os.O_CLOEXEC)
        except BaseException:
            os.close(self._fd)
            os.unlink(self._temp_path)
            raise

    @property
    def complete(self):
        return self.next == len(self.manifest.chunks)

    @property
    def temp_path(self):
        return self._temp_path

    def receive(self, index, fetch_into):
        """Have ``fetch_into(fd)`` write chunk ``index`` (verified, at its
        offset); then serve it from here. Raises AssemblyClosed when the
        assembly went away first."""
        fd = self._use()
        try:
            fetch_into(fd)
        finally:
            self._unuse()
        with self._lock:
            self._verified.add(index)

    def has(self, index):
        return index in self._verified

    def read(self, start, stop):
        """Bytes [start, stop), which lie in verified chunks (any thread), or
        None once the assembly is closed."""
        try:
            self._use()
        except AssemblyClosed:
            return None
        try:
            return os.pread(self._read_fd, stop - start, start)
        finally:
            self._unuse()

    def hash_verified(self):
        """Feed the verified chunks that come next, in order, to the whole-file
        hasher (writer thread only); True once every chunk is in."""
        chunks = self.manifest.chunks
        while self.next < len(chunks) and self.has(self.next):
            chunk = chunks[self.next]
            hash_file_range(self._hasher, self._read_fd, chunk.start, chunk.end)
            self.next += 1
        return self.complete

    def hexdigest(self):
        """The whole file's hash (call once complete)."""
        return self._hasher.hexdigest()

    def close(self):
        """Close the temp file (after it was published or dropped), as soon
        as no fetch or read uses it."""
        with self._lock:
            self._closing = True
            idle = self._users == 0
        if idle:
            self._close_now()

    def abort(self):
        """Close and drop the temp file."""
        self.close()
        try:
            os.unlink(self._temp_path)
        except FileNotFoundError:
            pass

    def _use(self):
        with self._lock:
            if self._closing:
                raise AssemblyClosed(self.target.digest)
            self._users += 1
            return self._fd

    def _unuse(self):
        with self._lock:
            self._users -= 1
            last = self._closing and self._users == 0
        if last:
            self._close_now()

    def _close_now(self):
        with self._lock:
            fds, self._fd, self._read_fd = (self._fd, self._read_fd), None, None
        for fd in fds:
            if fd is not None:
                os.close(fd)
