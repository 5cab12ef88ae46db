"""Storing and uploading in one command (``kachery-store --upload/--upload-only``).

The objects a store action produced (file contents, file manifests, the
directory manifest) are recorded by a :class:`RecordingBatch`. The remote is
asked once which of them it already has (``POST /api/has``); the missing ones
are uploaded in parallel, except the last object the action wrote (the
snapshot's directory manifest, or a large file's file manifest), which goes
up only after everything it refers to is there: a URL never resolves on the
server to something the server cannot serve.

With ``keep_local=False`` nothing is published locally: objects are uploaded
straight from the batch's temp files, which are then discarded.
"""

import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

from .errors import ConfigError
from .store import WriteBatch

#: Parallel PUT requests (small files are latency-bound, large ones share the link).
UPLOAD_WORKERS = 8


class RecordingBatch(WriteBatch):
    """A WriteBatch that also remembers every object the action produced.

    ``recorded`` maps (algorithm, digest) to the temp file holding it, or to
    None when it was already in the store; insertion order is write order.
    """

    def __init__(self, store):
        super().__init__(store)
        self.recorded = {}
        self.committed = False

    def add(self, temp_path, algorithm, digest):
        super().add(temp_path, algorithm, digest)
        self.recorded.setdefault((algorithm, digest), temp_path)

    def write_bytes(self, data, algorithm, digest):
        if self.store.has(algorithm, digest):
            self.recorded.setdefault((algorithm, digest), None)
        super().write_bytes(data, algorithm, digest)

    def commit(self):
        super().commit()
        self.committed = True

    def path_of(self, algorithm, digest):
        """Where the object's bytes can be read now (temp file or store)."""
        temp_path = self.recorded.get((algorithm, digest))
        if temp_path is None or self.committed:
            return self.store.object_path(algorithm, digest)
        return temp_path


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
    with RecordingBatch(kachery.store) as batch:
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
    upload_all(remotes, [(*obj, batch.path_of(*obj)) for obj in missing], progress, workers)
    if last:
        remotes.upload(*last, batch.path_of(*last), progress)


def upload_all(remotes, items, progress=None, workers=UPLOAD_WORKERS):
    """Upload (algorithm, digest, path) items in parallel; raise the first failure."""
    if len(items) <= 1 or workers <= 1:
        for algorithm, digest, path in items:
            remotes.upload(algorithm, digest, path, progress)
        return
    with ThreadPoolExecutor(max_workers=min(workers, len(items)), thread_name_prefix="kachery-upload") as pool:
        futures = [pool.submit(remotes.upload, alg, digest, path, progress) for alg, digest, path in items]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for future in pending:
            future.cancel()
        for future in done:
            future.result()  # re-raises the first failure


def _serialized(progress):
    """A thread-safe wrapper of the caller's progress callback."""
    if progress is None:
        return None
    lock = threading.Lock()

    def report(count):
        with lock:
            progress(count)

    return report
