"""Fetching the next files of a snapshot directory while one is being read.

Opening a remote file in a snapshot starts fetching the files that follow it
(in name order) in the background, so that ``cat dir/*``, ``grep -r`` or a
data loader walking a folder do not wait for one round trip per file. Small
files go to the fetcher's memory tier; larger files without a file manifest
are downloaded whole into the cache; files with one are read lazily by chunk
and are not prefetched.
"""

import bisect
import threading

from cachetools import LRUCache

from kachery_core.fetching import SMALL_MAX

#: Files fetched ahead of the one being opened ...
PREFETCH_FILES = 64
#: ... as long as they add up to at most this many bytes.
PREFETCH_BYTES = 32 * 1024 * 1024


class SiblingPrefetcher:
    """Thread safe. ``opened`` costs a few dictionary lookups once a
    directory is being read: names already asked for are remembered."""

    def __init__(self, kachery, window=PREFETCH_FILES):
        self.kachery = kachery
        self.window = window
        self._lock = threading.Lock()
        self._sorted = LRUCache(maxsize=64)  # id of a DirEntry -> (DirEntry, sorted file names)
        self._asked = LRUCache(maxsize=100_000)  # (algorithm, digest) -> True

    def opened(self, directory, name, target):
        """``name`` (FileTarget ``target``) of the snapshot DirEntry ``directory`` was opened.

        Asks for the files ahead once a quarter of them have not been asked
        for, so small files go in batches, not one per open.
        """
        fetcher = self.kachery.fetcher
        if fetcher is None or target.manifest:
            return
        key = (target.algorithm, target.digest)
        if not self._asked_before(key) and self.kachery.find_local(*key) is not None:
            return  # read from this machine: the directory probably is too
        ahead = self._ahead(directory, name)
        with self._lock:
            todo = [entry for entry in ahead if entry.algorithm_and_hash not in self._asked]
            if not todo or (len(todo) < len(ahead) // 4 and todo[0] is not ahead[0]):
                return
            for entry in todo:
                self._asked[entry.algorithm_and_hash] = True
        todo = [entry for entry in todo if self.kachery.find_local(*entry.algorithm_and_hash) is None]
        fetcher.prefetch_small([entry.algorithm_and_hash for entry in todo
                                if entry.size <= SMALL_MAX])
        for entry in todo:
            if entry.size > SMALL_MAX:
                fetcher.prefetch(*entry.algorithm_and_hash)

    def _ahead(self, directory, name):
        """The entries after ``name`` to have fetched: up to ``window`` files
        and PREFETCH_BYTES (files with a file manifest are read lazily by chunk)."""
        names = self._names(directory)
        ahead, total = [], 0
        for other in names[bisect.bisect_right(names, name):]:
            entry = directory.files[other]
            if entry.manifest:
                continue
            total += entry.size
            if len(ahead) == self.window or (ahead and total > PREFETCH_BYTES):
                break
            ahead.append(entry)
        return ahead

    def _asked_before(self, key):
        """True when ``key`` was seen before; remembers it otherwise."""
        with self._lock:
            if key in self._asked:
                return True
            self._asked[key] = True
            return False

    def _names(self, directory):
        with self._lock:
            cached = self._sorted.get(id(directory))
            if cached is not None and cached[0] is directory:
                return cached[1]
        names = sorted(directory.files)
        with self._lock:
            self._sorted[id(directory)] = (directory, names)
        return names
