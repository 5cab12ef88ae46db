"""Storing and uploading in one command (``kachery-store --upload/--upload-only``).

The objects a store action produced (file contents, file manifests, the
directory manifest) are recorded by a :class:`RecordingBatch`. The remote is
asked once which of them it already has (``POST /api/has``); the missing ones
are uploaded in parallel — small ones many per request (``POST /api/upload``),
large ones streamed by PUT — except the last object the action wrote (the
snapshot's directory manifest, or a large file's file manifest), which goes
up only after everything it refers to is there: a URL never resolves on the
server to something the server cannot serve.

With ``keep_local=False`` nothing is published locally and nothing is copied:
small objects are kept in memory (up to a budget), large files are only hashed
(``by_reference``, a hook in ingest) and uploaded straight from the source
file; if it changes in between, the server's verification refuses it.
"""

import os
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

from .errors import ConfigError
from .store import WriteBatch

#: Parallel upload requests.
UPLOAD_WORKERS = 8
#: Small objects per POST /api/upload, and bytes per such request.
BATCH_COUNT = 1000
BATCH_BYTES = 8 * 1024 * 1024
#: Objects up to this size go in batches (must not exceed remote.BATCH_OBJECT_MAX).
SMALL_OBJECT = 1024 * 1024
#: With keep_local=False, small objects up to this many bytes in all stay in memory.
MEMORY_BUDGET = 256 * 1024 * 1024


class RecordingBatch(WriteBatch):
    """A WriteBatch that also remembers every object the action produced.

    ``recorded`` maps (algorithm, digest) to where its bytes are: a temp file
    path, the bytes themselves, or None when the object was already stored.
    Insertion order is write order. With ``upload_only`` small objects stay in
    memory and large files are referenced in place (ingest sees
    ``by_reference`` and calls ``add_reference`` instead of copying them).
    """

    def __init__(self, store, upload_only=False):
        super().__init__(store)
        self.recorded = {}
        self.committed = False
        self.by_reference = upload_only
        self._references = {}
        self._memory_left = MEMORY_BUDGET if upload_only else 0

    def add_reference(self, source_path, algorithm, digest):
        """Record a large object whose bytes stay in ``source_path`` (upload_only)."""
        key = (algorithm, digest)
        self._references.setdefault(key, os.path.abspath(os.fspath(source_path)))
        self.recorded.setdefault(key, None)

    def add(self, temp_path, algorithm, digest):
        super().add(temp_path, algorithm, digest)
        self.recorded.setdefault((algorithm, digest), temp_path)

    def write_bytes(self, data, algorithm, digest):
        key = (algorithm, digest)
        if key in self.recorded:
            return
        if self.store.has(algorithm, digest):
            self.recorded[key] = None
        elif len(data) <= min(SMALL_OBJECT, self._memory_left):
            self._memory_left -= len(data)
            self.recorded[key] = bytes(data)
        else:
            super().write_bytes(data, algorithm, digest)

    def commit(self):
        """Publish temp files and in-memory objects (for keep_local)."""
        for (algorithm, digest), source in list(self.recorded.items()):
            if isinstance(source, bytes):
                super().write_bytes(source, algorithm, digest)
        super().commit()
        self.committed = True

    def discard(self):
        """Drop everything, in-memory objects too (a later commit publishes nothing)."""
        super().discard()
        self.recorded, self._references = {}, {}

    def source_of(self, algorithm, digest):
        """The object's bytes (bytes) or a path where they can be read now."""
        if (algorithm, digest) in self._references:
            return self._references[(algorithm, digest)]
        source = self.recorded.get((algorithm, digest))
        if isinstance(source, bytes):
            return source
        if source is None or self.committed:
            return self.store.object_path(algorithm, digest)
        return source


def store_and_upload(kachery, action, keep_local=True, progress=None, workers=UPLOAD_WORKERS):
    """Run ``action(batch)``, upload what it stored that the remote lacks; return its result.

    ``progress(bytes)``, if given, is called (from several threads, serialized)
    as upload bytes are sent. Raises ConfigError without remotes, and the
    upload errors of RemoteSet (AccessDenied, RemoteRejected,
    RemoteUnavailable). With ``keep_local`` the objects are committed locally
    before uploading; without it nothing new stays in the local store.
    """
    remotes = kachery.remotes
    if not remotes:
        raise ConfigError("no remote to upload to: set KACHERY_REMOTE or [[remotes]] in the config file")
    with RecordingBatch(kachery.store, upload_only=not keep_local) as batch:
        result = action(batch)
        if keep_local:
            batch.commit()
        upload_recorded(remotes, batch, _serialized(progress), workers)
        if not keep_local:
            batch.discard()
    return result


def upload_recorded(remotes, batch, progress=None, workers=UPLOAD_WORKERS):
    """Upload the batch's objects the remote lacks; the last-written one goes last."""
    objects = list(batch.recorded)
    present = remotes.has_many(objects)
    missing = [obj for obj in objects if obj not in present]
    if not missing:
        return
    last = missing.pop() if missing[-1] == objects[-1] else None
    upload_all(remotes, [(*obj, batch.source_of(*obj)) for obj in missing], progress, workers)
    if last:
        upload_all(remotes, [(*last, batch.source_of(*last))], progress, workers=1)


def upload_all(remotes, items, progress=None, workers=UPLOAD_WORKERS):
    """Upload (algorithm, digest, source) items (source: bytes or a path) in parallel.

    Small objects travel in batches, large ones one PUT each. Raises the
    first failure (the remaining jobs are cancelled).
    """
    sized = [(item, _size(item[2])) for item in items]
    jobs = [(remotes.upload_many, group) for group in _batches(sized)]
    jobs += [(remotes.upload, *item) for item, size in sized if size > SMALL_OBJECT]
    if len(jobs) <= 1 or workers <= 1:
        for function, *args in jobs:
            function(*args, progress)
        return
    with ThreadPoolExecutor(max_workers=min(workers, len(jobs)), thread_name_prefix="kachery-upload") as pool:
        futures = [pool.submit(function, *args, progress) for function, *args in jobs]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for future in pending:
            future.cancel()
        for future in done:
            future.result()  # re-raises the first failure


def _batches(sized):
    """Groups of small items, each within BATCH_COUNT objects and BATCH_BYTES."""
    group, group_bytes = [], 0
    for item, size in sized:
        if size > SMALL_OBJECT:
            continue
        if group and (len(group) >= BATCH_COUNT or group_bytes + size > BATCH_BYTES):
            yield group
            group, group_bytes = [], 0
        group.append(item)
        group_bytes += size
    if group:
        yield group


def _size(source):
    return len(source) if isinstance(source, bytes) else os.path.getsize(source)


def _serialized(progress):
    """A thread-safe wrapper of the caller's progress callback."""
    if progress is None:
        return None
    lock = threading.Lock()

    def report(count):
        with lock:
            progress(count)

    return report
