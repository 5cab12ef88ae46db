"""Lazy, verified fetching from remotes into the download cache.

:class:`Fetcher` is what the mount reads through when content is not local:

- whole objects (files without a trusted file manifest) are downloaded once,
  verified, and kept in the cache;
- large files with a trusted file manifest (SPEC §4) are fetched chunk by
  chunk: a read fetches only the chunks it touches, each verified against its
  chunk sha1 by the remote layer before it enters the cache;
- concurrent requests for the same object or chunk share one fetch
  (single flight), and sequential reading fetches the next chunks ahead in
  parallel;
- once every chunk of a file is cached it is assembled into the whole object
  (verified against the file's own hash) and the chunks are dropped.

The remote side is injected: ``fetch_chunk(target, chunk) -> bytes`` (verified)
and ``download(algorithm, digest, cache) -> path``, so tests can pass fakes.
"""

import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

from .errors import HashMismatch
from .hashing import new_hasher
from .stats import Stats

log = logging.getLogger("kachery")

#: Chunks fetched ahead of a sequential reader.
READAHEAD_CHUNKS = 4
#: Bytes read in order before a reader counts as sequential.
SEQUENTIAL_RUN = 1024 * 1024


class Fetcher:
    """Single-flight, read-ahead fetching of objects and chunks. Thread safe."""

    def __init__(self, cache, fetch_chunk, download, workers=8, stats=None):
        self.cache = cache
        self._fetch_chunk = fetch_chunk
        self._download = download
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kachery-fetch")
        self._lock = threading.Lock()
        self._in_flight = {}  # key -> Future
        self._runs = {}  # target digest -> (offset a sequential read asks next, bytes in order)
        self._chunks_done = {}  # target digest -> set of chunk indices cached
        self.stats = stats or Stats()

    # ------------------------------------------------------ single flight

    def _shared(self, key, work):
        """A Future for ``work()``; callers asking for the same key share one."""
        with self._lock:
            future = self._in_flight.get(key)
            if future is not None:
                return future
            future = Future()
            self._in_flight[key] = future
        self._pool.submit(self._run, key, future, work)
        return future

    def _run(self, key, future, work):
        try:
            future.set_result(work())
        except BaseException as error:  # handed to every waiter
            future.set_exception(error)
        finally:
            with self._lock:
                self._in_flight.pop(key, None)

    # ------------------------------------------------------- whole objects

    def object_path(self, algorithm, digest):
        """Path of a whole object in the cache, downloading it (once) if needed."""
        path = self.cache.find(algorithm, digest)
        if path is not None:
            self.stats.add("cache_hits")
            self.cache.touch(algorithm, digest)
            return path
        self.stats.add("cache_misses")
        return self._shared(("object", algorithm, digest),
                            lambda: self._download_counted(algorithm, digest)).result()

    def prefetch(self, algorithm, digest):
        """Start downloading an object in the background (no wait, errors logged)."""
        if not self.cache.has(algorithm, digest):
            self._shared(("object", algorithm, digest),
                         lambda: self._download_counted(algorithm, digest, quiet=True))

    def _download_counted(self, algorithm, digest, quiet=False):
        try:
            started = time.monotonic()
            path = self._download(algorithm, digest, self.cache)
            log.debug("fetched %s://%s whole in %.3f s", algorithm, digest,
                      time.monotonic() - started)
        except HashMismatch:
            self.stats.add("verification_failures")
            raise
        except Exception as error:
            if quiet:
                log.debug("prefetch of %s://%s failed: %s", algorithm, digest, error)
                return None
            raise
        self.stats.add("bytes_fetched", os.path.getsize(path))
        return path

    # -------------------------------------------------------------- chunks

    def read(self, target, manifest, offset, size):
        """Bytes [offset, offset+size) of a FileTarget with a trusted FileManifest."""
        log.debug("read %s://%s offset %d size %d", target.algorithm, target.digest, offset, size)
        end = min(offset + size, target.size)
        if offset >= end:
            return b""
        first, last = manifest.chunk_range(offset, end)
        futures = [self._chunk_future(target, manifest, index) for index in range(first, last)]
        self._read_ahead(target, manifest, offset, end, last)
        pieces = [self._slice(target, manifest, index, future, offset, end)
                  for index, future in zip(range(first, last), futures)]
        return b"".join(pieces)

    def _chunk_future(self, target, manifest, index):
        chunk = manifest.chunks[index]
        if self._have_chunk(target, chunk):
            self.stats.add("cache_hits")
            self.cache.touch("sha1", chunk.sha1)
            done = Future()
            done.set_result(None)
            return done
        self.stats.add("cache_misses")
        return self._shared(("chunk", chunk.sha1),
                            lambda: self._fetch_and_keep(target, manifest, index))

    def _have_chunk(self, target, chunk):
        return self.cache.has("sha1", chunk.sha1) or self.cache.has(target.algorithm, target.digest)

    def _fetch_and_keep(self, target, manifest, index):
        chunk = manifest.chunks[index]
        if self._have_chunk(target, chunk):  # a fetch that just finished got it
            return
        started = time.monotonic()
        try:
            data = self._fetch_chunk(target, chunk)
        except HashMismatch:
            self.stats.add("verification_failures")
            raise
        log.debug("fetched %s://%s bytes %d-%d (chunk %d) in %.3f s", target.algorithm,
                  target.digest, chunk.start, chunk.end, index, time.monotonic() - started)
        self.stats.add("bytes_fetched", len(data))
        self.cache.put(data, "sha1", chunk.sha1)
        self._note_chunk(target, manifest, index)

    def _slice(self, target, manifest, index, future, offset, end):
        future.result()
        chunk = manifest.chunks[index]
        start = max(offset, chunk.start)
        stop = min(end, chunk.end)
        for _attempt in range(3):  # a chunk may be evicted or assembled meanwhile
            data = self._pread_cached(target, chunk, start, stop)
            if data is not None:
                return data
            self._chunk_future(target, manifest, index).result()
        raise OSError(f"chunk {chunk.sha1} of {target.digest} keeps disappearing from the cache")

    def _pread_cached(self, target, chunk, start, stop):
        """Read from the cached chunk, or from the assembled whole object."""
        for algorithm, digest, base in (("sha1", chunk.sha1, chunk.start),
                                        (target.algorithm, target.digest, 0)):
            try:
                fd = os.open(self.cache.object_path(algorithm, digest), os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                return os.pread(fd, stop - start, start - base)
            finally:
                os.close(fd)
        return None

    def _read_ahead(self, target, manifest, offset, end, next_index):
        """Fetch the next chunks once a reader has gone SEQUENTIAL_RUN bytes in
        order. (Not sooner: the kernel's own read-ahead makes even a single
        small random read look sequential for a request or two.)"""
        with self._lock:
            expected, run = self._runs.get(target.digest, (None, 0))
            run = run + (end - offset) if expected == offset else end - offset
            self._runs[target.digest] = (end, run)
        if run < SEQUENTIAL_RUN:
            return
        for index in range(next_index, min(next_index + READAHEAD_CHUNKS, len(manifest.chunks))):
            self._chunk_future(target, manifest, index)

    # ---------------------------------------------------------- assembling

    def _note_chunk(self, target, manifest, index):
        with self._lock:
            done = self._chunks_done.setdefault(target.digest, set())
            done.add(index)
            complete = len(done) == len(manifest.chunks)
            if complete:
                del self._chunks_done[target.digest]
        if complete and self._fits(target.size):
            self._pool.submit(self._assemble_quietly, target, manifest)

    def _fits(self, size):
        """Assemble only when the whole file and its chunks fit the quota together."""
        return self.cache.max_bytes is None or 2 * size <= self.cache.max_bytes // 2

    def _assemble_quietly(self, target, manifest):
        try:
            self.assemble(target, manifest)
        except Exception as error:  # the chunks still serve reads
            log.warning("could not assemble %s://%s: %s", target.algorithm, target.digest, error)

    def assemble(self, target, manifest):
        """Join cached chunks into the whole object, verify it, drop the chunks."""
        if self.cache.has(target.algorithm, target.digest):
            return
        fd, temp_path = self.cache.create_temp()
        try:
            got = _concatenate(self.cache, manifest, fd, target.algorithm)
        except BaseException:
            os.close(fd)
            os.unlink(temp_path)
            raise
        os.close(fd)
        if got != target.digest:
            os.unlink(temp_path)
            self.stats.add("verification_failures")
            raise HashMismatch(target.digest, got, "assembled file")
        self.cache.publish(temp_path, target.algorithm, target.digest)
        for chunk in manifest.chunks:
            self.cache.discard("sha1", chunk.sha1)


def _concatenate(cache, manifest, fd, algorithm):
    """Write every cached chunk of ``manifest`` to ``fd``; return the whole hash."""
    hasher = new_hasher(algorithm)
    for chunk in manifest.chunks:
        with open(cache.object_path("sha1", chunk.sha1), "rb") as file:
            data = file.read()
        hasher.update(data)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    return hasher.hexdigest()
