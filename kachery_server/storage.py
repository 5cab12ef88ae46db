"""Where a server keeps its objects: a local directory or an S3 bucket.

Both give the handlers the same small interface:

    size(alg, digest) -> int | None          (blocking: call off the event loop)
    present(wanted) -> {alg: [digests]}      for POST /api/has
    create_temp() -> (fd, path)              a local file for a body being received
    await publish_many([(temp, alg, digest)]) -> [bool new]   verified temps become objects
    read_small(alg, digest, max) -> bytes | None              for POST /api/download
    hash_object(alg, digest) -> digest | None
    quarantine(alg, digest) -> where it went
    iter_objects() -> (alg, digest, size)
    local_path(alg, digest) -> path | None   (LocalStorage only: sent with sendfile)
    bucket                                   (BucketStorage only: presigned reads)

A body is always received into a local temp file while it is hashed (the
server checks every upload before anything is published), so the two differ
only in where a verified temp file goes: renamed into the directory by the
group commit, or sent to the bucket with a checksum the object store checks
once more. A bucket server keeps nothing else: any number of them can serve
one bucket.

``check_present`` is the rule for an upload of an object the storage already
has: the stored copy counts only if its size is the upload's and (once per
process) its bytes hash to its name; a corrupt copy is quarantined and the
upload replaces it.
"""

import asyncio
import logging
import os
import tempfile
import threading

from kachery_core.errors import KacheryError
from kachery_core.store import LocalStore
from kachery_core.verify import hash_file, move_to_quarantine

from .commit import GroupCommitter

log = logging.getLogger("kachery.server")

#: How many objects a process remembers as re-hashed (see check_present).
CHECKED_MAX = 100_000
ALGORITHMS = ("sha1", "md5")


class _Storage:
    """What both kinds share: the upload-conflict rule and the has-many answer."""

    def __init__(self):
        self._checked = set()
        self._checked_lock = threading.Lock()

    def present(self, wanted):
        return {alg: [d for d in digests if self.size(alg, d) is not None]
                for alg, digests in wanted.items()}

    def check_present(self, algorithm, digest, size):
        """True if a sound copy of size ``size`` is stored; a corrupt one is quarantined."""
        stored = self.size(algorithm, digest)
        if stored is None:
            return False
        with self._checked_lock:
            if stored == size and (algorithm, digest) in self._checked:
                return True
        if stored == size and self.hash_object(algorithm, digest) == digest:
            with self._checked_lock:
                if len(self._checked) >= CHECKED_MAX:
                    self._checked.clear()
                self._checked.add((algorithm, digest))
            return True
        where = self.quarantine(algorithm, digest)
        log.warning("kachery-server: stored %s://%s was corrupt (size %s, upload %s): moved to %s",
                    algorithm, digest, stored, size, where)
        return False


class LocalStorage(_Storage):
    """A storage directory (SPEC §2), published by group commit (commit.py)."""

    def __init__(self, root):
        super().__init__()
        self.store = LocalStore(root)
        self.store.remove_stale_temps()
        self._committer = None

    def describe(self):
        return self.store.root

    def size(self, algorithm, digest):
        return self.store.size(algorithm, digest)

    def local_path(self, algorithm, digest):
        return self.store.object_path(algorithm, digest)

    def create_temp(self):
        return self.store.create_temp()

    async def publish_many(self, items):
        if self._committer is None:  # made on the event loop that uses it
            self._committer = GroupCommitter(self.store)
        return await self._committer.publish_many(items)

    def read_small(self, algorithm, digest, max_size):
        try:
            with open(self.store.object_path(algorithm, digest), "rb") as file:
                size = os.fstat(file.fileno()).st_size
                if size > max_size:
                    return None
                data = file.read(size + 1)
        except OSError:  # absent or unreadable: the client's GET reports it
            return None
        return data if len(data) == size else None  # changed while read: leave it to a GET

    def hash_object(self, algorithm, digest):
        try:
            return hash_file(self.store.object_path(algorithm, digest), algorithm)
        except FileNotFoundError:
            return None

    def quarantine(self, algorithm, digest):
        try:
            return move_to_quarantine(self.store.root, algorithm,
                                      self.store.object_path(algorithm, digest))
        except FileNotFoundError:  # another request moved it first
            return None

    def iter_objects(self):
        for algorithm in ALGORITHMS:
            for digest, path in self.store.iter_objects(algorithm):
                yield algorithm, digest, os.path.getsize(path)


class BucketStorage(_Storage):
    """Objects in an S3 bucket (kachery_core.bucket); bodies spooled in ``spool_dir``.

    ``proxy``: GETs stream the bytes through the server instead of redirecting
    clients to a presigned URL of the bucket.
    """

    #: Bucket PUTs in flight at once (each holds a spooled file).
    PUT_THREADS = 8

    def __init__(self, url, spool_dir=None, proxy=False, timeout=10.0):
        from kachery_core.bucket import Bucket

        super().__init__()
        self.bucket = Bucket(url, timeout=timeout)
        self.proxy = proxy
        spool_dir = spool_dir or os.path.join(tempfile.gettempdir(), "kachery-server-spool")
        self.spool = LocalStore(spool_dir)
        self.spool.remove_stale_temps()
        self._puts = None

    def describe(self):
        return self.bucket.url + (" (proxied reads)" if self.proxy else "")

    def size(self, algorithm, digest):
        return self.bucket.size(algorithm, digest)

    def present(self, wanted):
        found = self.bucket.has_many([(alg, d) for alg, digests in wanted.items() for d in digests])
        return {alg: [d for d in digests if (alg, d) in found] for alg, digests in wanted.items()}

    def local_path(self, algorithm, digest):
        return None

    def create_temp(self):
        return self.spool.create_temp()

    async def publish_many(self, items):
        if self._puts is None:
            self._puts = asyncio.Semaphore(self.PUT_THREADS)

        async def one(temp_path, algorithm, digest):
            async with self._puts:
                try:
                    return await asyncio.to_thread(self.bucket.put, algorithm, digest, temp_path)
                finally:
                    _unlink_quietly(temp_path)

        # Every PUT runs to its end (each removes its spooled file); then the
        # first failure, if any, fails the request, as the group commit does.
        results = await asyncio.gather(*(one(*item) for item in items), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results

    def read_small(self, algorithm, digest, max_size):
        try:
            size = self.bucket.size(algorithm, digest)
            if size is None or size > max_size:
                return None
            return self.bucket.read(algorithm, digest)
        except KacheryError:
            return None

    def hash_object(self, algorithm, digest):
        return self.bucket.hash_object(algorithm, digest)

    def quarantine(self, algorithm, digest):
        return self.bucket.quarantine(algorithm, digest)

    def iter_objects(self):
        for algorithm in ALGORITHMS:
            for digest, size in self.bucket.iter_objects(algorithm):
                yield algorithm, digest, size


def open_storage(location, spool_dir=None, proxy=False):
    """LocalStorage for a directory, BucketStorage for ``s3://BUCKET/PREFIX``."""
    if str(location).startswith("s3://"):
        return BucketStorage(location, spool_dir=spool_dir, proxy=proxy)
    return LocalStorage(location)


def verify_storage(storage, quarantine=False, report_corrupt=None):
    """Re-hash every object; return (checked, bytes, corrupt count)."""
    checked = total = corrupt = 0
    for algorithm, digest, size in storage.iter_objects():
        got = storage.hash_object(algorithm, digest)
        checked += 1
        total += size
        if got is not None and got != digest:
            corrupt += 1
            where = storage.quarantine(algorithm, digest) if quarantine else None
            if report_corrupt:
                report_corrupt(algorithm, digest, got, where)
    return checked, total, corrupt


def _unlink_quietly(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
