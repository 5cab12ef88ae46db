"""Where the bytes of an open file come from: the mount's one read path.

:func:`open_reader` is the single place that decides how a file is read:

- :class:`LocalReader`: the object is in the local store or the download
  cache; reads are ``pread`` calls on its file;
- :class:`ChunkedReader`: a remote file with a trusted file manifest; each
  read fetches (and verifies) only the chunks it touches, through the
  client's Fetcher;
- :class:`MemoryReader`: a small remote file, fetched whole (and verified)
  into memory;
- any other remote file is downloaded whole and verified first, then read
  as a LocalReader.

Every reader has ``handle``, ``read(size, offset)``, ``span(size, offset)``
and ``close()``. ``span`` lets the kernel adapter hand libfuse a file
descriptor and offset instead of bytes, so the data is copied in C without
passing through Python; a reader whose bytes are not in a local file returns
None and is read with ``read`` (bytes, or a memoryview of them).
"""

import itertools
import os

from kachery_core.errors import HashMismatch
from kachery_core.fetching import SMALL_MAX

#: Handles of readers without a file descriptor: far above any fd number.
_remote_handles = itertools.count(1 << 40)


class LocalReader:
    """A file in the local store, opened once; reads are ``pread`` calls.

    ``pread`` needs no seek position, so concurrent reads of one handle from
    the mount's worker threads are safe, and it releases the GIL while the
    kernel copies.
    """

    def __init__(self, fd, size):
        self.fd = fd
        self.size = size
        #: Unique among open readers (an open file descriptor cannot repeat).
        self.handle = fd

    def read(self, size, offset):
        return os.pread(self.fd, size, offset)

    def span(self, size, offset):
        """(fd, offset, length) holding the bytes [offset, offset + size), clipped at EOF."""
        return self.fd, offset, max(0, min(size, self.size - offset))

    def close(self):
        os.close(self.fd)


class ChunkedReader:
    """A remote file read chunk by chunk (SPEC §4): each read fetches only the
    chunks it touches, verified against the trusted file manifest, through the
    client's Fetcher (single flight, read-ahead, cached under the quota)."""

    def __init__(self, fetcher, target, manifest):
        self.fetcher = fetcher
        self.target = target
        self.manifest = manifest
        self.handle = next(_remote_handles)

    def read(self, size, offset):
        return self.fetcher.read(self.target, self.manifest, offset, size)

    def span(self, size, offset):
        return None  # not in one local file: the adapter calls read()

    def close(self):
        pass


class MemoryReader:
    """A small remote file held in memory, verified (see fetching.SMALL_MAX)."""

    def __init__(self, data):
        self.data = data
        self.handle = next(_remote_handles)

    def read(self, size, offset):
        return self.data[offset:offset + size]

    def span(self, size, offset):
        return None

    def close(self):
        self.data = b""


def open_reader(kachery, target):
    """A reader for a FileTarget (algorithm, digest, size, manifest).

    A file that is on this machine (store or cache) is read from its object
    file. A remote file with a trusted file manifest is read chunk by chunk;
    a small one is fetched into memory; any other remote file is downloaded
    whole; all verified before any byte is served.

    Raises ObjectNotFound when no store has the object, and HashMismatch when
    the local object does not have the size the snapshot says (a cheap check
    that keeps a damaged store from serving wrong bytes at the end of a file).
    """
    local = kachery.find_local(target.algorithm, target.digest)
    if local is None and kachery.fetcher is not None:
        if target.manifest:
            # A file whose whole failed its hash is refused at every open (an
            # open always reaches the daemon; its pages may still be in the
            # kernel's cache from the reads before the failure).
            kachery.fetcher.raise_if_refuted(target)
            return ChunkedReader(kachery.fetcher, target, kachery.trusted_manifest(target))
        if target.size <= SMALL_MAX:
            return MemoryReader(kachery.small_file_bytes(target))
    path = local or kachery.local_path(target.algorithm, target.digest)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check_size(os.fstat(fd).st_size, target)
        if kachery.config.verify_reads:
            kachery.verify_once(target.algorithm, target.digest, path)
    except BaseException:
        os.close(fd)
        raise
    return LocalReader(fd, target.size)


def _check_size(actual, target):
    if actual != target.size:
        raise HashMismatch(
            target.digest,
            f"a file of {actual} bytes instead of {target.size}",
            f"object {target.algorithm}://{target.digest}",
        )
