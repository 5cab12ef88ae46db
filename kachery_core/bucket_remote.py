"""A remote that is an S3 bucket (``s3://BUCKET/PREFIX`` in the remote list).

The transport interface of transport.py, as http_remote.py gives it for HTTP:
the RemoteSet's failover policy and verification apply unchanged. Reads and
writes use the user's own S3 credentials (kachery_core.bucket); writes are
checked by the object store against the object's name, so nothing wrong
becomes visible (see bucket.py).
"""

import threading
from concurrent.futures import ThreadPoolExecutor

from .bucket import Bucket
from .errors import HashMismatch, ObjectNotFound, RemoteRejected, RemoteUnavailable
from .hashing import new_hasher
from .receiving import TransferFailed, pump, receive_hashing, uninitialized
from .transport import (SourceChanged, TransferSettings, is_in_memory, receive_range_by_copy,
                        source_size)

#: PUTs of small objects in flight at once, per remote (a bucket has no batch API);
#: 4 beat 2 and 8 for 10,000 files on 2 cores (30 s vs 35 and 33: the GIL).
UPLOAD_THREADS = 4


class BucketRemote:
    """One ``s3://BUCKET/PREFIX`` remote (``settings.Remote``). Thread safe."""

    def __init__(self, remote, settings=None, mark=None):
        self.settings = settings or TransferSettings()
        self.bucket = Bucket(remote.url, timeout=self.settings.timeout)
        self.url = self.bucket.url
        self._lock = threading.Lock()
        self._pool = None

    def __repr__(self):
        return f"BucketRemote({self.url!r})"

    def prepare(self):
        pass

    def size(self, algorithm, digest):
        return self.bucket.size(algorithm, digest)

    def receive(self, algorithm, digest, fd, progress=None, early_writeback=True):
        _, body = self.bucket.open(algorithm, digest)
        with body:
            try:
                return pump(self.settings.pace().paced(body.readinto), fd, new_hasher(algorithm),
                            progress, early_writeback=early_writeback)[0]
            except TransferFailed as error:
                raise RemoteUnavailable(self.url, f"transfer broke: {error}") from None

    def read_range(self, algorithm, digest, start, end):
        size, body = self.bucket.open(algorithm, digest, start, end)
        if size != end - start:
            raise HashMismatch(f"{end - start} bytes", f"{size} bytes",
                               f"range of {algorithm}://{digest} from {self.url}")
        data = uninitialized(end - start)
        with body:
            try:
                return memoryview(data), receive_hashing(self.settings.pace().paced(body.readinto), data)
            except TransferFailed as error:
                raise RemoteUnavailable(self.url, f"transfer broke: {error}") from None

    def receive_range(self, algorithm, digest, start, end, fd):
        return receive_range_by_copy(self, algorithm, digest, start, end, fd)

    def read_small(self, algorithm, digest, max_size):
        size = self.bucket.size(algorithm, digest)
        if size is None:
            raise ObjectNotFound(f"{algorithm}://{digest}", self.url)
        if size > max_size:  # an oversized object cannot be the one asked for
            raise HashMismatch(digest, f"an object of {size} bytes", f"download from {self.url}")
        return self.bucket.read(algorithm, digest)

    def read_small_many(self, wanted, max_size):
        return {}  # a bucket has no batch download: the caller GETs each

    def has_many(self, objects):
        return self.bucket.has_many(objects)

    def upload(self, algorithm, digest, source, progress=None):
        """Write one object; 201 if new, 200 if already there (the HTTP answers).

        The caller hashed ``source`` to ``digest``: if the store finds other
        bytes, a file changed under the upload (SourceChanged).
        """
        try:
            return 201 if self.bucket.put(algorithm, digest, source, progress=progress) else 200
        except (RemoteRejected, HashMismatch):
            if is_in_memory(source):
                raise
            raise SourceChanged(source) from None

    def upload_many(self, items, progress=None):
        def one(item):
            algorithm, digest, source = item
            self.upload(algorithm, digest, source)
            if progress:
                progress(source_size(source))

        # One pool per remote, however many callers batch at once: more PUTs in
        # flight than boto3's connection pool (32) made it drop and reopen
        # connections, and more threads only fight over the GIL.
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="kachery-s3-put")
        for future in [self._pool.submit(one, item) for item in items]:
            future.result()


def is_bucket_url(url):
    return url.startswith("s3://")
