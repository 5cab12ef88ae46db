"""The download cache: verified objects and chunks fetched from remotes.

Lives in ``<storage>/cache/`` with the store's own layout
(``cache/sha1/ab/cd/ef/<h>``). A chunk of a large file (SPEC §4) is named by
its own sha1, so chunks and whole objects are both simply objects here.
Objects the user stored (``<storage>/sha1/...``) are never touched; only this
area is evicted, least recently used first, down to a low-water mark when a
size quota is set or the disk is full.

Verification at rest: every cached object is re-hashed before a process
(a command, a script, a mount) first serves it, and dropped if it no longer
matches its name; after that the process trusts it (``_checked``). What a
process downloads and verifies itself counts as checked. This also covers
durability: downloads are not flushed one by one (an fsync per small file
would cap a cold `cat dir/*` at the disk's flush rate), so an object torn by
a crash is found and dropped by the next process that uses it. A chunk (at
most 4 MiB) costs about 3 ms to check; a 1 GiB object about 0.7 s, once per
process (docs/reliability.md).
"""

import errno
import logging
import os
import threading
from collections import OrderedDict

from .store import LocalStore

log = logging.getLogger("kachery")

CACHE_DIR = "cache"
#: Eviction stops when usage is at or below this fraction of the quota.
LOW_WATER = 0.8


class CacheArea(LocalStore):
    """A LocalStore whose content may be evicted. Thread safe.

    ``max_bytes`` is the quota (None: unbounded, evicted only when the disk
    is full). Usage is learned by one scan on first use and then kept up to
    date in memory; ``touch`` records use so eviction takes the least
    recently used first.
    """

    durable_writes = False  # see the module docstring

    def __init__(self, storage_root, max_bytes=None):
        super().__init__(os.path.join(os.fspath(storage_root), CACHE_DIR))
        self.max_bytes = max_bytes
        self._checked = set()  # (algorithm, digest) verified by this process
        self._lock = threading.RLock()
        self._entries = None  # (algorithm, digest) -> size, oldest use first
        self._usage = 0

    # ------------------------------------------------------------- lookups

    def has(self, algorithm, digest):
        """True when a trustworthy copy of the object is in the cache."""
        return self.find(algorithm, digest) is not None

    def find(self, algorithm, digest):
        """Path of a cached object verified by this process, or None (see the
        module docstring: the first find of an object in a process hashes it)."""
        path = self.object_path(algorithm, digest)
        if (algorithm, digest) in self._checked:
            if os.path.exists(path):
                return path
            self._forget(algorithm, digest)  # evicted, or removed by another process
            return None
        if not os.path.exists(path):
            return None
        return self._recheck(algorithm, digest, path)

    def _recheck(self, algorithm, digest, path):
        from .verify import hash_file

        try:
            got = hash_file(path, algorithm)
        except FileNotFoundError:
            return None
        if got != digest:
            log.warning("cache: %s://%s is damaged (its bytes hash to %s); dropped",
                        algorithm, digest, got)
            self.discard(algorithm, digest)
            return None
        self._remember(algorithm, digest)
        return path

    def _remember(self, algorithm, digest):
        with self._lock:
            self._checked.add((algorithm, digest))

    def _forget(self, algorithm, digest):
        with self._lock:
            self._checked.discard((algorithm, digest))

    # ----------------------------------------------------------- accounting

    def _index(self):
        """The LRU index, built from the files' mtimes on first use."""
        if self._entries is None:
            found = []
            for algorithm in ("sha1", "md5"):
                for digest, path in self.iter_objects(algorithm):
                    try:
                        info = os.stat(path)
                    except FileNotFoundError:
                        continue
                    found.append((info.st_mtime, (algorithm, digest), info.st_size))
            found.sort()
            self._entries = OrderedDict((key, size) for _, key, size in found)
            self._usage = sum(self._entries.values())
        return self._entries

    def usage(self):
        """(number of objects, bytes) in the cache."""
        with self._lock:
            entries = self._index()
            return len(entries), self._usage

    def touch(self, algorithm, digest):
        """Record a use of an object (moves it to the young end of the LRU).

        Only once the index exists: building it walks the whole cache (a
        directory open per object), which a command that just reads cached
        objects must not pay; the index built later orders by mtime.
        """
        with self._lock:
            entries = self._entries
            if entries is not None and (algorithm, digest) in entries:
                entries.move_to_end((algorithm, digest))

    # -------------------------------------------------------------- writing

    def publish(self, temp_path, algorithm, digest):
        size = os.path.getsize(temp_path)
        self.make_room(size)
        final = super().publish(temp_path, algorithm, digest)
        self._record(algorithm, digest, size)
        self._remember(algorithm, digest)  # the caller verified what it publishes
        os.utime(final)  # the LRU order survives a restart through mtimes
        return final

    def put(self, data, algorithm, digest):
        """Store bytes that the caller has verified to hash to ``digest``.

        The room is reserved in the accounting before the bytes are written,
        so concurrent puts cannot together overshoot the quota.
        """
        if self.has(algorithm, digest):
            self.touch(algorithm, digest)
            return self.object_path(algorithm, digest)
        self.reserve(algorithm, digest, len(data))
        fd, temp_path = self.create_temp()
        try:
            try:
                _write_or_evict(self, fd, data)
            finally:
                os.close(fd)
            final = LocalStore.publish(self, temp_path, algorithm, digest)
            self._remember(algorithm, digest)
            return final
        except BaseException:
            _unlink_quietly(temp_path)
            self.discard(algorithm, digest)
            raise

    def reserve(self, algorithm, digest, size):
        """Count an object that is about to be written (evicting others to fit)."""
        with self._lock:
            self.make_room(size)
            self._record(algorithm, digest, size)

    def publish_reserved(self, temp_path, algorithm, digest):
        """Publish a verified temp file whose room ``reserve`` already counted."""
        size = os.path.getsize(temp_path)
        final = LocalStore.publish(self, temp_path, algorithm, digest)
        self._record(algorithm, digest, size)  # (counted again if evicted meanwhile)
        self._remember(algorithm, digest)
        return final

    def discard(self, algorithm, digest):
        """Remove one object from the cache (if there)."""
        with self._lock:
            size = self._entries.pop((algorithm, digest), None) if self._entries is not None else None
            if size is not None:
                self._usage -= size
            self._checked.discard((algorithm, digest))
        _unlink_quietly(self.object_path(algorithm, digest))

    remove = discard  # kachery rm: as for the store, and the LRU index kept right

    def _record(self, algorithm, digest, size):
        """Count an object in the LRU index, as the youngest, if the index is
        kept: always under a quota, else once something needed it (eviction,
        ``usage``). Building it walks the whole cache, a directory open per
        object, which a download without a quota must not pay."""
        with self._lock:
            if self._entries is None and self.max_bytes is None:
                return
            entries = self._index()
            if (algorithm, digest) not in entries:
                self._usage += size
            entries[(algorithm, digest)] = size
            entries.move_to_end((algorithm, digest))

    def make_room(self, incoming):
        """Evict until ``incoming`` more bytes fit under the quota."""
        if self.max_bytes is None:
            return
        with self._lock:
            self._index()
            if self._usage + incoming > self.max_bytes:
                self.evict(max(int(self.max_bytes * LOW_WATER) - incoming, 0))

    def evict(self, target_bytes=0):
        """Remove least recently used objects until usage ≤ target; return bytes freed."""
        freed = 0
        with self._lock:
            entries = self._index()
            while entries and self._usage > target_bytes:
                (algorithm, digest), size = entries.popitem(last=False)
                _unlink_quietly(self.object_path(algorithm, digest))
                self._usage -= size
                freed += size
        if freed:
            log.debug("cache: evicted %d bytes", freed)
        return freed

    def clear(self):
        """Remove everything from the cache; return bytes freed."""
        return self.evict(0)


def evicting_when_full(store, action):
    """``action()``; when the disk is full and ``store`` is a CacheArea, evict
    the whole download cache and run ``action`` once more (whole downloads,
    which cannot resume a body half-written: see _write_or_evict for puts)."""
    try:
        return action()
    except OSError as error:
        if error.errno != errno.ENOSPC or not isinstance(store, CacheArea):
            raise
        log.info("cache: disk full, evicting the download cache")
        if not store.evict(0):
            raise  # nothing to free: the object does not fit
    return action()


def _write_or_evict(cache, fd, data):
    """Write all of ``data``; a full disk evicts the whole cache and retries once."""
    view = memoryview(data)
    retried = False
    while view:
        try:
            view = view[os.write(fd, view):]
        except OSError as error:
            if error.errno != errno.ENOSPC or retried:
                raise
            retried = True
            log.info("cache: disk full, evicting the download cache")
            cache.evict(0)


def _unlink_quietly(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
