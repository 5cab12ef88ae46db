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
- a file read from its start is built in place, in one temp file as long
  as the file: chunks are received straight into it at their offsets,
  verified, served from there, and fed in order to the whole-file hash; the
  temp file becomes the whole object once all are in and the hash matches
  (assembly.py). Chunks of files read in another order are kept as chunk
  objects in the cache (fetched into memory, served from there while the
  writer stores them), and joined into the whole object once all are cached;
- small objects (at most SMALL_MAX bytes) are fetched into memory, verified,
  served from a bounded in-memory LRU, and written to the cache by a
  background thread. Creating a cache file costs four metadata operations
  (fan-out folders, temp file, rename), about 1 ms on a busy disk: more than
  fetching 50 KB over loopback, so it is kept off the reader's path.

The remote side is injected: ``fetch_chunk(target, chunk) -> bytes`` (verified),
optionally ``fetch_chunk_into(target, chunk, fd)`` (verified, written at
``chunk.start``; without it the bytes of fetch_chunk are written there),
``download(algorithm, digest, cache) -> path`` and, optionally,
``fetch_small(algorithm, digest, max_size) -> bytes`` (verified) and
``fetch_small_many([(algorithm, digest)], max_size) -> {key: bytes}``
(verified, may leave some out), so tests can pass fakes.
"""

import logging
import os
import threading
import time
import weakref
from concurrent.futures import Future, ThreadPoolExecutor

from cachetools import LRUCache

from .assembly import Assembly, AssemblyClosed
from .errors import HashMismatch, KacheryError
from .hashing import new_hasher
from .direct_write import write_at
from .stats import Stats

log = logging.getLogger("kachery")

#: Chunks fetched ahead of a sequential reader.
READAHEAD_CHUNKS = 4
#: The least run of in-order bytes that counts as sequential (a run must
#: also span more than the chunk it is in).
SEQUENTIAL_RUN = 1024 * 1024
#: How far from where the run left off a read may start and still continue it.
REORDER_WINDOW = 2 * 1024 * 1024
#: Objects up to this size are fetched into memory (see the module docstring).
SMALL_MAX = 1024 * 1024
#: Bytes of small objects kept in memory, and queued for writing to the cache.
MEMORY_BYTES = 64 * 1024 * 1024
#: Small objects asked for in one batch request.
BATCH_OBJECTS = 16
#: Seconds without assemblies after writing one failed (a full disk, say).
ASSEMBLE_RETRY = 60.0
#: Bytes of fetched chunks held in memory until the writer has stored them.
FRESH_MAX = 64 * 1024 * 1024


class Fetcher:
    """Single-flight, read-ahead fetching of objects and chunks. Thread safe."""

    def __init__(self, cache, fetch_chunk, download, workers=8, stats=None, fetch_small=None,
                 fetch_small_many=None, fetch_chunk_into=None):
        self.cache = cache
        self._fetch_chunk = fetch_chunk
        self._fetch_chunk_into = fetch_chunk_into or self._copy_chunk_into
        self._download = download
        self._fetch_small = fetch_small
        self._fetch_small_many = fetch_small_many
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kachery-fetch")
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kachery-persist")
        self._lock = threading.Lock()
        self._in_flight = {}  # key -> Future
        self._runs = {}  # target digest -> (offset a sequential read asks next, bytes in order)
        self._chunks_done = {}  # target digest -> set of chunk indices cached
        self._memory = LRUCache(MEMORY_BYTES, getsizeof=len)  # (algorithm, digest) -> bytes
        self._fresh = {}  # chunk sha1 -> bytes fetched and not yet written
        self._fresh_bytes = 0
        self._room = threading.Condition(self._lock)  # signalled as fresh bytes are written
        self._assemblies = {}  # target digest -> Assembly (hashed and published by the writer)
        self._assemble_after = 0.0  # no assemblies before (monotonic time): the disk failed
        #: digest -> HashMismatch of files whose chunks all verified but whose
        #: whole did not: nothing more is served from them (see read()).
        self._refuted = {}
        self._fetched = {}  # target digest -> chunks fetched by this Fetcher
        self._all_fetched = set()  # digests whose last chunk arrived: their next read settles them
        self._unwritten = 0  # bytes handed to the writer and not yet in the cache
        self.stats = stats or Stats()
        # A command or script that read part of a large file leaves an
        # unfinished assembly: drop its temp file when this Fetcher goes away
        # or the process ends (after the worker threads have finished).
        weakref.finalize(self, _drop_assemblies, self._assemblies, self.cache)

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
        data = self._remembered(algorithm, digest)
        if data is None:
            data = self._prefetched_small(algorithm, digest)
        if data is not None:  # fetched into memory, not yet written: write it now
            self.stats.add("cache_hits")
            return self.cache.put(data, algorithm, digest)
        self.stats.add("cache_misses")
        return _unless_quiet_failure(
            self._shared(("object", algorithm, digest),
                         lambda: self._download_counted(algorithm, digest)),
            lambda: self._download_counted(algorithm, digest))

    def prefetch(self, algorithm, digest):
        """Start downloading an object in the background (no wait, errors logged)."""
        if not self.cache.has(algorithm, digest):
            self._shared(("object", algorithm, digest),
                         lambda: self._download_counted(algorithm, digest, quiet=True))

    def _download_counted(self, algorithm, digest, quiet=False):
        started = time.monotonic()
        path = self._counted(algorithm, digest, quiet,
                             lambda: self._download(algorithm, digest, self.cache))
        if path is not None:
            log.debug("fetched %s://%s whole in %.3f s", algorithm, digest,
                      time.monotonic() - started)
            self.stats.add("bytes_fetched", os.path.getsize(path))
        return path

    def _counted(self, algorithm, digest, quiet, fetch):
        """``fetch()``, counting verification failures. With ``quiet`` (a
        prefetch) a failure is logged and gives None; the reader who then asks
        fetches again and gets the error."""
        try:
            return fetch()
        except HashMismatch:
            self.stats.add("verification_failures")
            if not quiet:
                raise
        except Exception as error:
            if not quiet:
                raise
            log.debug("prefetch of %s://%s failed: %s", algorithm, digest, error)
        return None

    # ------------------------------------------------------- small objects

    def small_object(self, algorithm, digest):
        """The verified bytes of a small object not in the cache: from memory,
        or fetched (once, however many readers ask). Raises like ``download``."""
        data = self._remembered(algorithm, digest)
        if data is not None:
            self.stats.add("cache_hits")
            return data
        self.stats.add("cache_misses")
        return _unless_quiet_failure(self._small_future(algorithm, digest),
                                     self._small_work(algorithm, digest, quiet=False))

    def prefetch_small(self, objects):
        """Start fetching small objects [(algorithm, digest)] into memory (no
        wait, errors logged), in batches of BATCH_OBJECTS when the remote can;
        those in memory, being fetched, or cached are skipped."""
        with self._lock:
            objects = [key for key in dict.fromkeys(objects)
                       if ("small",) + key not in self._in_flight and key not in self._memory]
        objects = [key for key in objects if not self.cache.has(*key)]
        if self._fetch_small_many is None or len(objects) < 2:
            for algorithm, digest in objects:
                self._small_future(algorithm, digest, quiet=True)
            return
        for index in range(0, len(objects), BATCH_OBJECTS):
            claimed = self._claim(objects[index:index + BATCH_OBJECTS])
            if claimed:
                self._pool.submit(self._fetch_batch, claimed)

    def _claim(self, objects):
        """[(key, Future)] for the objects nobody is fetching yet, now marked in flight."""
        claimed = []
        with self._lock:
            for key in objects:
                flight = ("small",) + key
                if flight not in self._in_flight:
                    self._in_flight[flight] = future = Future()
                    claimed.append((key, future))
        return claimed

    def _fetch_batch(self, claimed):
        """Fetch claimed small objects in one request; any it misses, one by one
        (in parallel: a remote without the batch API misses them all)."""
        try:
            found = self._fetch_small_many([key for key, _ in claimed], SMALL_MAX)
        except Exception as error:  # only an optimisation: fall back to single fetches
            log.debug("batch download failed: %s", error)
            found = {}
        for key, future in claimed:
            data = found.get(key)
            if data is None:
                self._pool.submit(self._settle_claim, key, future, None)
            else:
                self._settle_claim(key, future, data)

    def _settle_claim(self, key, future, data):
        """Keep (or, when None, fetch alone) a claimed object and resolve its Future."""
        try:
            if data is None:
                data = self._fetch_small_counted(*key, quiet=True)
            else:
                self._keep_small(key, data)
            future.set_result(data)
        except BaseException as error:
            future.set_exception(error)
        finally:
            with self._lock:
                self._in_flight.pop(("small",) + key, None)

    def _prefetched_small(self, algorithm, digest):
        """The bytes of a small fetch already under way (a prefetch), once it
        ends; None if there is none or it failed (the caller fetches again and
        reports the error)."""
        with self._lock:
            future = self._in_flight.get(("small", algorithm, digest))
        if future is None:
            return None
        try:
            return future.result()
        except Exception:
            return None

    def _remembered(self, algorithm, digest):
        with self._lock:  # an LRU lookup reorders it
            return self._memory.get((algorithm, digest))

    def _small_future(self, algorithm, digest, quiet=False):
        return self._shared(("small", algorithm, digest),
                            self._small_work(algorithm, digest, quiet))

    def _small_work(self, algorithm, digest, quiet):
        """A callable fetching a small object's bytes (None if it failed ``quiet``ly)."""
        if self._fetch_small is None:  # no in-memory path: whole download to the cache
            def work():
                return self.cache.read_bytes(algorithm, digest) if self._download_counted(
                    algorithm, digest, quiet) else None
        else:
            def work():
                return self._fetch_small_counted(algorithm, digest, quiet)
        return work

    def _fetch_small_counted(self, algorithm, digest, quiet):
        data = self._counted(algorithm, digest, quiet,
                             lambda: self._fetch_small(algorithm, digest, SMALL_MAX))
        if data is not None:
            self._keep_small((algorithm, digest), data)
        return data

    def _keep_small(self, key, data):
        """Serve a verified small object from memory; write it to the cache soon."""
        self.stats.add("bytes_fetched", len(data))
        with self._lock:
            self._memory[key] = data
            write = self._unwritten + len(data) <= MEMORY_BYTES
            if write:
                self._unwritten += len(data)
        if write:  # else the disk is far behind: the object stays in memory only
            self._writer.submit(self._write_to_cache, *key, data)

    def _write_to_cache(self, algorithm, digest, data):
        try:
            self.cache.put(data, algorithm, digest)
        except Exception as error:  # still served from memory; fetched again later
            log.warning("could not cache %s://%s: %s", algorithm, digest, error)
        finally:
            with self._lock:
                self._unwritten -= len(data)

    def flush(self):
        """Wait until everything fetched so far is written to the cache."""
        self._writer.submit(lambda: None).result()

    def close(self):
        """Finish writing, drop unfinished assemblies, stop the threads."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._writer.shutdown(wait=True)
        with self._lock:
            _drop_assemblies(self._assemblies, self.cache)

    # -------------------------------------------------------------- chunks

    def read(self, target, manifest, offset, size):
        """Bytes [offset, offset+size) of a FileTarget with a trusted FileManifest
        (bytes, or a read-only memoryview of them)."""
        log.debug("read %s://%s offset %d size %d", target.algorithm, target.digest, offset, size)
        end = min(offset + size, target.size)
        self.raise_if_refuted(target)
        if offset >= end:
            return b""
        first, last = manifest.chunk_range(offset, end)
        futures = [self._chunk_future(target, manifest, index) for index in range(first, last)]
        self._read_ahead(target, manifest, offset, end, last)
        pieces = [self._slice(target, manifest, index, future, offset, end)
                  for index, future in zip(range(first, last), futures)]
        if end == target.size or target.digest in self._all_fetched:
            # The read that reaches the end, and the first after the last chunk
            # arrived, wait for the file's assembly (the writer joins and
            # hashes the whole as chunks arrive): a file whose whole fails its
            # hash is refused by the read that completes it at the latest.
            self.flush()
            self._all_fetched.discard(target.digest)
            self.raise_if_refuted(target)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def raise_if_refuted(self, target):
        """Raise HashMismatch when ``target``'s chunks verified but their whole did not."""
        error = self._refuted.get(target.digest)
        if error is not None:
            raise error

    def _refute(self, target, got):
        self.stats.add("verification_failures")
        log.info("assembled %s://%s has hash %s: refused", target.algorithm, target.digest, got)
        with self._lock:
            self._refuted[target.digest] = HashMismatch(
                target.digest, got, f"{target.algorithm}://{target.digest} (its chunks were each right)")

    def _chunk_future(self, target, manifest, index):
        chunk = manifest.chunks[index]
        if index == 0:  # read from its start: build the whole object in place
            self._assembly(target, manifest, index)
        if self._have_chunk(target, manifest, index):
            self.stats.add("cache_hits")
            self.cache.touch("sha1", chunk.sha1)
            done = Future()
            done.set_result(None)
            return done
        self.stats.add("cache_misses")
        return self._shared(("chunk", chunk.sha1),
                            lambda: self._fetch_and_keep(target, manifest, index))

    def _have_chunk(self, target, manifest, index):
        chunk = manifest.chunks[index]
        with self._lock:
            if chunk.sha1 in self._fresh:
                return True
            assembly = self._assemblies.get(target.digest)
        if assembly is not None and assembly.has(index):
            return True
        return self.cache.has("sha1", chunk.sha1) or self.cache.has(target.algorithm, target.digest)

    def _fetch_and_keep(self, target, manifest, index):
        """Fetch a chunk into its file's assembly, else into memory, where
        readers get it while the writer stores it as a chunk object."""
        chunk = manifest.chunks[index]
        if self._have_chunk(target, manifest, index):  # a fetch that just finished got it
            return
        with self._lock:
            assembly = self._assemblies.get(target.digest)
        started = time.monotonic()
        try:
            if assembly is not None:
                try:
                    assembly.receive(index, lambda fd: self._fetch_chunk_into(target, chunk, fd))
                except AssemblyClosed:
                    assembly = None
                except OSError as error:
                    if isinstance(error, KacheryError):  # the remote's: failover is done
                        raise
                    self._cannot_assemble(assembly, error)  # (a full disk, say)
                    assembly = None
            if assembly is None:
                data = self._fetch_chunk(target, chunk)
        except HashMismatch:
            self.stats.add("verification_failures")
            raise
        log.debug("fetched %s://%s bytes %d-%d (chunk %d) in %.3f s", target.algorithm,
                  target.digest, chunk.start, chunk.end, index, time.monotonic() - started)
        self.stats.add("bytes_fetched", chunk.end - chunk.start)
        with self._lock:
            self._fetched[target.digest] = count = self._fetched.get(target.digest, 0) + 1
            if count == len(manifest.chunks):
                self._all_fetched.add(target.digest)
        if assembly is not None:
            self._writer.submit(self._advance, assembly)
            return
        self._hold_fresh(chunk.sha1, data)
        self._writer.submit(self._persist_chunk, target, manifest, index, data)

    def _copy_chunk_into(self, target, chunk, fd):
        """fetch_chunk_into from fetch_chunk: the verified bytes, written at their offset."""
        write_at(fd, self._fetch_chunk(target, chunk), chunk.start)

    def _hold_fresh(self, key, data):
        """Keep fetched bytes in memory until written; wait while FRESH_MAX is held."""
        with self._room:
            while self._fresh_bytes and self._fresh_bytes + len(data) > FRESH_MAX:
                self._room.wait()
            if key not in self._fresh:
                self._fresh[key] = data
                self._fresh_bytes += len(data)

    def _release_fresh(self, key):
        with self._room:
            data = self._fresh.pop(key, None)
            if data is not None:
                self._fresh_bytes -= len(data)
                self._room.notify_all()

    def _slice(self, target, manifest, index, future, offset, end):
        future.result()
        chunk = manifest.chunks[index]
        start = max(offset, chunk.start)
        stop = min(end, chunk.end)
        for _attempt in range(3):  # a chunk may be evicted or assembled meanwhile
            data = self._chunk_bytes(target, manifest, index, start, stop)
            if data is not None:
                return data
            self._chunk_future(target, manifest, index).result()
        raise OSError(f"chunk {chunk.sha1} of {target.digest} keeps disappearing from the cache")

    def _chunk_bytes(self, target, manifest, index, start, stop):
        """Bytes [start, stop) of chunk ``index`` from wherever it is now, or None:
        memory (just fetched), the file being assembled, the cached chunk, or
        the whole object."""
        chunk = manifest.chunks[index]
        with self._lock:
            data = self._fresh.get(chunk.sha1)
            assembly = self._assemblies.get(target.digest)
        if data is not None:  # (a view: the bytes are copied once, by the caller)
            return memoryview(data)[start - chunk.start:stop - chunk.start]
        if assembly is not None and assembly.has(index):
            data = assembly.read(start, stop)
            if data is not None:
                return data
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
        """Fetch chunks ahead of a reader whose run of in-order reads spans
        more than one chunk: one chunk ahead per chunk of run, up to
        READAHEAD_CHUNKS. (Not sooner: the kernel's own read-ahead, and a
        reader that fetches one aligned chunk-sized block, make a single
        random read look sequential for a request or two.)"""
        with self._lock:
            expected, run = self._runs.get(target.digest, (None, 0))
            # Requests in flight together (the kernel's read-ahead, served by
            # several threads) arrive slightly out of order: near enough counts.
            if expected is not None and abs(offset - expected) <= REORDER_WINDOW:
                self._runs[target.digest] = (max(end, expected), run + end - offset)
                run += end - offset
            else:
                self._runs[target.digest] = (end, end - offset)
                run = end - offset
        chunk = manifest.chunks[next_index - 1]
        ahead = min(READAHEAD_CHUNKS, (run - 1) // max(chunk.end - chunk.start, SEQUENTIAL_RUN))
        for index in range(next_index, min(next_index + ahead, len(manifest.chunks))):
            self._chunk_future(target, manifest, index)

    # ---------------------------------------------------------- assembling

    def _persist_chunk(self, target, manifest, index, data):
        """Writer thread: keep a chunk fetched into memory as a chunk object
        (an assembly under way takes it in when its turn comes)."""
        chunk = manifest.chunks[index]
        try:
            if not self.cache.has(target.algorithm, target.digest):  # (else published already)
                self.cache.put(data, "sha1", chunk.sha1)
                with self._lock:
                    assembly = self._assemblies.get(target.digest)
                if assembly is None:
                    self._note_chunk(target, manifest, index)
                else:
                    self._advance(assembly)
        except Exception as error:  # reads fetch the chunk again
            log.warning("could not cache chunk %d of %s://%s: %s", index, target.algorithm,
                        target.digest, error)
        finally:
            self._release_fresh(chunk.sha1)

    def _assembly(self, target, manifest, index):
        """The file's assembly; a new one when its first chunk is wanted and it fits."""
        with self._lock:
            assembly = self._assemblies.get(target.digest)
        if (assembly is None and index == 0 and self._fits(target.size)
                and time.monotonic() >= self._assemble_after
                and not self.cache.has(target.algorithm, target.digest)):
            with self._lock:  # (two readers of chunk 0 at once: one assembly)
                if target.digest in self._assemblies:
                    return self._assemblies[target.digest]
                try:
                    assembly = Assembly(self.cache, target, manifest)
                except OSError as error:
                    log.warning("cannot build %s://%s in the cache (%s): reading it into memory",
                                target.algorithm, target.digest, error)
                    self._assemble_after = time.monotonic() + ASSEMBLE_RETRY
                    return None
                self.cache.reserve(target.algorithm, target.digest, target.size)
                self._assemblies[target.digest] = assembly
                self._chunks_done.pop(target.digest, None)
        return assembly

    def _cannot_assemble(self, assembly, error):
        """A chunk could not be written into its assembly: drop it, and build
        none for a while; chunks are fetched into memory meanwhile."""
        target = assembly.target
        log.warning("cannot build %s://%s in the cache (%s): reading it into memory",
                    target.algorithm, target.digest, error)
        self._assemble_after = time.monotonic() + ASSEMBLE_RETRY
        self._drop_assembly(assembly)

    def _advance(self, assembly):
        """Writer thread: hash the chunks now in line (taking in chunk objects
        cached meanwhile); publish the whole object once all are in."""
        target = assembly.target
        with self._lock:
            if self._assemblies.get(target.digest) is not assembly:
                return  # dropped or published already
        try:
            while not assembly.hash_verified():
                if not self._take_cached_chunk(assembly, assembly.next):
                    return
            self._finish(assembly)
        except Exception as error:  # reads fetch the chunks again
            log.warning("could not assemble %s://%s: %s", target.algorithm, target.digest, error)
            self._drop_assembly(assembly)

    def _take_cached_chunk(self, assembly, index):
        """Copy chunk ``index``'s cached chunk object into the assembly; False if none."""
        chunk = assembly.manifest.chunks[index]
        try:
            source = os.open(self.cache.object_path("sha1", chunk.sha1), os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            data = os.pread(source, chunk.end - chunk.start, 0)
        finally:
            os.close(source)
        assembly.receive(index, lambda fd: write_at(fd, data, chunk.start))
        return True

    def _finish(self, assembly):
        target = assembly.target
        got = assembly.hexdigest()
        if got != target.digest:
            self._refute(target, got)
            self._drop_assembly(assembly)
            return
        self.cache.publish_reserved(assembly.temp_path, target.algorithm, target.digest)
        with self._lock:
            self._assemblies.pop(target.digest, None)
        assembly.close()
        for chunk in assembly.manifest.chunks:
            self.cache.discard("sha1", chunk.sha1)

    def _drop_assembly(self, assembly):
        target = assembly.target
        with self._lock:
            self._assemblies.pop(target.digest, None)
        assembly.abort()
        self.cache.discard(target.algorithm, target.digest)

    def _note_chunk(self, target, manifest, index):
        """Count chunks stored without an assembly; join them once all are here."""
        with self._lock:
            done = self._chunks_done.setdefault(target.digest, set())
            done.add(index)
            complete = len(done) == len(manifest.chunks)
            if complete:
                del self._chunks_done[target.digest]
        if complete and self._fits(target.size):
            self._writer.submit(self._assemble_quietly, target, manifest)

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
            self._refute(target, got)
            raise self._refuted[target.digest]
        self.cache.publish(temp_path, target.algorithm, target.digest)
        for chunk in manifest.chunks:
            self.cache.discard("sha1", chunk.sha1)


def _drop_assemblies(assemblies, cache):
    """Remove the temp files of unfinished assemblies and their reserved room."""
    for assembly in list(assemblies.values()):
        assembly.abort()
        cache.discard(assembly.target.algorithm, assembly.target.digest)
    assemblies.clear()


def _unless_quiet_failure(future, fetch):
    """The result of a shared fetch; when it was a prefetch that failed quietly
    (None), ``fetch()`` again here, so the caller gets the object or the error."""
    result = future.result()
    return result if result is not None else fetch()


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
