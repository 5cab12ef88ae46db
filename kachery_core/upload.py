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
small objects are kept in memory (up to a budget); a large regular file is
hashed in place (ingest calls :meth:`RecordingBatch.hash_in_place`): its
whole-file and chunk hashes in one pass on two threads, so its upload starts,
straight from the source, about when `openssl dgst` would have finished.
"""

import os
import stat
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass

from . import ingest
from .transport import source_size
from .errors import ConfigError
from .store import WriteBatch

#: Parallel upload requests.
UPLOAD_WORKERS = 8
#: Small objects per POST /api/upload, and bytes per such request.
BATCH_COUNT = 1000
BATCH_BYTES = 8 * 1024 * 1024
#: Objects up to this size go in batches (must not exceed http_remote.BATCH_OBJECT_MAX).
SMALL_OBJECT = 1024 * 1024
#: With keep_local=False, small objects up to this many bytes in all stay in memory.
MEMORY_BUDGET = 256 * 1024 * 1024


class UploadCancelled(Exception):
    """Raised inside an early upload whose batch was discarded."""


class RecordingBatch(WriteBatch):
    """A WriteBatch that also remembers every object the action produced.

    ``recorded`` maps (algorithm, digest) to where its bytes are: a temp file
    path, the bytes themselves, or None when the object was already stored
    (or is referenced in place). Insertion order is write order.

    With ``remotes`` (a Future of the RemoteSet: keep_local=False) small
    objects stay in memory and large regular files are hashed in place and
    uploaded early (ingest sees ``by_reference``).
    """

    def __init__(self, store, remotes=None, progress=None):
        super().__init__(store)
        self.progress = progress
        self.recorded = {}
        self.committed = False
        self.by_reference = remotes is not None
        self._remotes = remotes
        self._references = {}
        self._early = {}  # (algorithm, digest) -> Future of its upload
        self._stop = threading.Event()  # set by discard: running early uploads give up
        self._pool = None
        self._memory_left = MEMORY_BUDGET if remotes is not None else 0
        # Snapshots store their files from several threads (ingest.snapshot_dir).
        self._lock = threading.Lock()

    def add(self, temp_path, algorithm, digest):
        super().add(temp_path, algorithm, digest)
        self.recorded.setdefault((algorithm, digest), temp_path)

    def write_bytes(self, data, algorithm, digest):
        key = (algorithm, digest)
        if key in self.recorded:
            return
        if self.store.has(algorithm, digest):
            self.recorded[key] = None
        elif self._take_memory(len(data)):
            self.recorded[key] = bytes(data)
        else:
            super().write_bytes(data, algorithm, digest)

    def _take_memory(self, size):
        """Reserve room for a small object kept in memory; False when over budget."""
        with self._lock:
            if size > min(SMALL_OBJECT, self._memory_left):
                return False
            self._memory_left -= size
            return True

    # ------------------------------------------------------ large files

    def hash_in_place(self, source, algorithm, path, progress=None):
        """Ingest's hook for a large file ``source`` opened from ``path``:
        (size, digest, chunks) without a copy.

        One pass computes the whole-file hash and the chunk hashes of its
        file manifest on two threads (ingest.hash_once);
        the upload then starts in the background, with the machine to itself
        (hashing chunks during the upload competed with the server's own
        hashing for the two cores). A pipe or other non-regular file is copied
        to a temp file instead. Raises OSError if the file changes meanwhile.
        """
        before = os.fstat(source.fileno())
        if not stat.S_ISREG(before.st_mode):
            return ingest._copy_to_temp(self, source, algorithm, progress)
        size, digest, chunks = ingest.hash_once(source, algorithm, progress)
        key = (algorithm, digest)
        self._references.setdefault(key, os.path.abspath(path))
        self.recorded.setdefault(key, None)
        self._upload_early(key)
        after = os.fstat(source.fileno())
        unchanged = (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
        if not unchanged or size != before.st_size:
            raise OSError(f"{path} changed while it was being stored")
        return size, digest, chunks

    def _upload_early(self, key):
        remotes = self._remotes.result()
        with self._lock:
            if key in self._early:
                return
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="kachery-early")
            _expect(self.progress, os.path.getsize(self._references[key]))
            self._early[key] = self._pool.submit(_upload_if_missing, remotes, *key,
                                                 self._references[key], self._early_progress)

    def _early_progress(self, count):
        """Progress of an early upload; also where it learns that it must stop."""
        if self._stop.is_set():
            raise UploadCancelled()
        if self.progress:
            self.progress(count)

    def wait_early(self):
        """Wait for the early uploads; raise the first failure; return their keys."""
        for future in self._early.values():
            future.result()
        return set(self._early)

    # -------------------------------------------------------- lifecycle

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
        self._stop.set()  # e.g. Ctrl-C: do not wait for a large upload to finish
        for future in self._early.values():
            future.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self.recorded, self._references, self._early = {}, {}, {}

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


@dataclass
class UploadSummary:
    """What an upload sent and what the remote had already."""

    sent: int = 0
    sent_bytes: int = 0
    skipped: int = 0

    def __str__(self):
        from .settings import format_size

        return (f"uploaded {self.sent} object(s), {format_size(self.sent_bytes)}; "
                f"{self.skipped} already on the remote")


def store_and_upload(kachery, action, keep_local=True, progress=None, workers=UPLOAD_WORKERS,
                     summary=None):
    """Run ``action(batch)``, upload what it stored that the remote lacks; return its result.
    ``summary``, an UploadSummary, is filled in with what was sent and skipped.

    ``progress(bytes)``, if given, is called (from several threads, serialized)
    as upload bytes are sent. Raises ConfigError without remotes, and the
    upload errors of RemoteSet (AccessDenied, RemoteRejected,
    RemoteUnavailable). With ``keep_local`` the objects are committed locally
    before uploading; without it nothing new stays in the local store.
    """
    if not kachery.config.remotes and not kachery.remotes:
        raise ConfigError("no remote to upload to: set KACHERY_REMOTE or [[remotes]] in the config file")
    # Importing the HTTP client takes ~0.3 s: do it while the action hashes.
    remotes = _in_background(lambda: kachery.remotes)
    progress = _serialized(progress)
    with RecordingBatch(kachery.store, None if keep_local else remotes, progress) as batch:
        try:
            result = action(batch)
            if keep_local:
                batch.commit()
            upload_recorded(remotes.result(), batch, progress, workers, summary)
        finally:
            if not keep_local:
                batch.discard()
    return result


def upload_recorded(remotes, batch, progress=None, workers=UPLOAD_WORKERS, summary=None):
    """Upload the batch's objects the remote lacks; the last-written one goes last."""
    summary = UploadSummary() if summary is None else summary
    done = batch.wait_early()
    objects = [obj for obj in batch.recorded if obj not in done]
    present = remotes.has_many(objects) if objects else set()
    missing = [obj for obj in objects if obj not in present]
    sizes = sum(source_size(batch.source_of(*obj)) for obj in missing)
    summary.sent = len(done) + len(missing)
    summary.sent_bytes = sum(source_size(batch.source_of(*obj)) for obj in done) + sizes
    summary.skipped = len(present)
    if not missing:
        return
    _expect(progress, sizes)
    last = missing.pop() if missing[-1] == list(batch.recorded)[-1] else None
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


def _upload_if_missing(remotes, algorithm, digest, path, progress):
    if (algorithm, digest) not in remotes.has_many([(algorithm, digest)]):
        remotes.upload(algorithm, digest, path, progress)


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


def _in_background(function):
    """Start ``function()`` on a thread; return a Future of its result."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kachery-prepare")
    future = pool.submit(function)
    pool.shutdown(wait=False)
    return future


def _serialized(progress):
    """A thread-safe wrapper of the caller's progress callback."""
    if progress is None:
        return None
    lock = threading.Lock()

    def report(count):
        with lock:
            progress(count)

    # A progress that shows a total learns it as the uploads are decided.
    report.expect = getattr(progress, "expect", lambda count: None)
    return report


def _expect(progress, count):
    if progress is not None:
        progress.expect(count)
