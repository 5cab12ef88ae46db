"""The one interface every kind of remote implements, and what they share.

A remote is one place objects can be read from (and the first remote, written
to). Two transports implement it:

- ``http_remote.HttpRemote``: a kachery server or any static HTTP server over a
  storage directory (SPEC §5);
- ``bucket_remote.BucketRemote``: an S3 bucket (``s3://BUCKET/PREFIX``).

The failover policy across the configured remotes, verification of what they
send and publication into the store are ``remote.RemoteSet``'s: a transport
only moves bytes and reports what it saw. Its operations:

    url                                        the remote's URL, for messages
    size(alg, digest) -> int | None            None: not there
    receive(alg, digest, fd, progress, early_writeback) -> hex digest
                                               the whole object into the empty
                                               file fd, hashed as it arrives
    read_range(alg, digest, start, end) -> (buffer, sha1 hex of it)
    receive_range(alg, digest, start, end, fd) -> sha1 hex
                                               bytes [start, end) written into
                                               fd (read-write) at offset start,
                                               hashed as they arrive
    read_small(alg, digest, max_size) -> bytes at most max_size + 1 bytes (one
                                               more shows an oversized answer)
    read_small_many([(alg, digest)], max_size) -> {(alg, digest): bytes}
                                               unverified; {} when unsupported
    has_many([(alg, digest)]) -> set           the pairs the remote has
    upload(alg, digest, source, progress) -> 201 | 200 (new | already there)
    upload_many([(alg, digest, source)], progress)
    prepare()                                  set-up the first request would pay

They raise the project's errors: ObjectNotFound, AccessDenied, RemoteRejected,
RemoteUnavailable (after the transport's own retries), HashMismatch for an
answer that cannot be the object (a wrong size), TooSlow (pace.py) and
SourceChanged for a file that changed while it was uploaded. Every
transport passes the same contract tests (tests/test_remote_contract.py).
"""

import os
from dataclasses import dataclass

from .hashing import validate_hash
from .pace import DEFAULT_SPEED_LIMIT, DEFAULT_SPEED_TIME, Pace
from .direct_write import write_at


@dataclass(frozen=True)
class TransferSettings:
    """How hard a transport tries: timeouts, retries, and the slowest body
    it accepts (speed_limit bytes/s over speed_time s, see pace.py)."""

    timeout: float = 10.0
    retries: int = 3
    backoff: float = 0.2
    speed_limit: float = DEFAULT_SPEED_LIMIT
    speed_time: float = DEFAULT_SPEED_TIME

    def pace(self):
        """A fresh speed check for one body."""
        return Pace(self.speed_limit, self.speed_time)


def object_path(algorithm, digest):
    """'<alg>/<h[0:2]>/<h[2:4]>/<h[4:6]>/<h>' of a validated digest (SPEC §2)."""
    digest = validate_hash(algorithm, digest)
    return f"{algorithm}/{digest[0:2]}/{digest[2:4]}/{digest[4:6]}/{digest}"


def receive_range_by_copy(transport, algorithm, digest, start, end, fd):
    """receive_range for a transport that only reads ranges into memory."""
    data, got = transport.read_range(algorithm, digest, start, end)
    write_at(fd, data, start)
    return got


def source_size(source):
    """Bytes of an upload source: bytes-like, or the path of a file."""
    return len(source) if is_in_memory(source) else os.path.getsize(source)


def is_in_memory(source):
    return isinstance(source, (bytes, bytearray, memoryview))


class SourceChanged(OSError):
    """The file being uploaded changed size while it was sent."""

    def __init__(self, path):
        super().__init__(f"{path} changed while it was being stored")
