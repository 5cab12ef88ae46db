"""Receiving a large HTTP body into a file without copying it through Python.

On Linux, splice(2) moves the body from the socket into the file through a
pipe, inside the kernel: one copy of each byte instead of two (socket to a
Python buffer, buffer to the page cache). A second thread hashes what has
landed through a read-only mapping of the file, so hashing overlaps the
transfer on another core.

Measured on the 2-core VM, 1 GiB over loopback from kachery-server, runs
alternated: median 1.3 s this way, 1.4 s for ``curl -o``, and 1.8 s for
receive, hash and write in 64 KiB steps on one thread (receiving.pump).

Only plain-HTTP bodies with a Content-Length qualify: TLS bytes must be
decrypted in user space. Anything else, or a kernel that refuses the splice
(SpliceRefused), goes through receiving.pump.
"""

import errno
import fcntl
import mmap
import os
import select
import socket
import ssl
import threading
import time

from .durability import start_writeback
from .pace import NoPace
from .direct_write import write_at

#: Bytes moved per splice step (the pipe is enlarged to this when allowed).
STEP = 1024 * 1024
#: The hashing thread maps the file this many bytes at a time, once landed.
HASH_WINDOW = 8 * 1024 * 1024
#: errno values with which a kernel or sandbox says "no splice here".
_UNSUPPORTED = (errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.EOPNOTSUPP)

_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_enabled = hasattr(os, "splice")


def body_socket(raw):
    """The TCP socket a urllib3 response's body can be spliced from, or None.

    ``raw`` is the urllib3 response (requests' ``response.raw``). Its
    http.client response must have a known remaining length and no transfer
    or content encoding.
    """
    if not _enabled:
        return None
    body = getattr(raw, "_fp", None)  # the http.client.HTTPResponse
    if (body is None or getattr(body, "chunked", True) or not isinstance(body.length, int)
            or raw.headers.get("Content-Encoding", "identity") != "identity"):
        return None
    if not hasattr(body.fp, "peek"):
        return None
    sock = getattr(getattr(body.fp, "raw", None), "_sock", None)  # socket.SocketIO's socket
    if not isinstance(sock, socket.socket) or isinstance(sock, ssl.SSLSocket):
        return None
    if sock.type != socket.SOCK_STREAM:
        return None
    return sock


def receive(raw, sock, fd, hasher, progress=None, writeback_every=None, offset=0, pace=None):
    """Write the rest of ``raw``'s body to ``fd`` from ``offset`` on, hashing it.

    Returns the number of bytes received: less than the Content-Length when
    the body ended early (the caller reports that). Network errors raise
    ConnectionError or TimeoutError; the connection is then unusable and is
    left marked unfinished, so urllib3 drops it instead of reusing it.
    Every ``writeback_every`` bytes, disk writeback is started
    (durability.py), for a file that will be flushed at the end anyway.
    ``pace`` (pace.Pace) bounds the speed: a body too slow raises pace.TooSlow.
    """
    global _enabled
    body = raw._fp
    # http.client may hold the first bytes of the body in its buffer already.
    head = body.read(min(body.length, len(body.fp.peek(1)))) if body.length else b""
    hasher.update(head)
    write_at(fd, head, offset)
    if progress and head:
        progress(len(head))
    start = offset + len(head)
    try:
        with _Splicer(sock, fd, offset=start, count=body.length, hasher=hasher,
                      pace=pace) as splicer:
            splicer.run(progress, writeback_every)
    except _Unsupported:
        _enabled = False
        raise SpliceRefused(len(head)) from None
    # What http.client still expects: 0 after a whole body, so urllib3 may
    # reuse the connection; more after a short one, so it drops it.
    body.length -= splicer.landed - start
    return splicer.landed - offset


class SpliceRefused(Exception):
    """The kernel refused to splice from the socket: the caller receives the
    rest of the body the usual way. ``received`` bytes (those http.client had
    buffered) were already written, from the offset given, and hashed."""

    def __init__(self, received):
        super().__init__(received)
        self.received = received


class _Unsupported(Exception):
    """The first splice from the socket was refused; nothing was consumed."""


class _Splicer:
    """Moves ``count`` bytes from a socket to ``fd`` at ``offset`` and
    hashes them on a second thread as they land."""

    def __init__(self, sock, fd, offset, count, hasher, pace=None):
        self.sock, self.fd, self.hasher = sock, fd, hasher
        self.pace = pace or NoPace()
        self.start = self.landed = offset
        self.end = offset + count
        self.timeout = sock.gettimeout()
        self.changed = threading.Condition()
        self.finished = False  # set by run() when no more bytes will land
        self.stopped = False  # set on the way out, also after a failure
        self.pipe_out, self.pipe_in = os.pipe()
        try:
            fcntl.fcntl(self.pipe_in, _F_SETPIPE_SZ, STEP)
        except OSError:
            pass  # the default pipe (64 KiB) also works, in smaller steps
        self.hashing = threading.Thread(target=self._hash_landed, name="kachery-hash", daemon=True)
        self.hash_error = None

    def __enter__(self):
        self.hashing.start()
        return self

    def __exit__(self, *exc):
        with self.changed:
            self.stopped = True
            self.changed.notify()
        self.hashing.join()
        os.close(self.pipe_in)
        os.close(self.pipe_out)
        return False

    def run(self, progress, writeback_every=None):
        """Splice until the body is complete or ends; then wait for the hash."""
        while self.landed < self.end:
            moved = self._from_socket(min(STEP, self.end - self.landed))
            if not moved:
                break  # the peer closed early: the caller sees a short body
            _drain_pipe(self.pipe_out, self.fd, moved, self.landed)
            self.pace.moved(moved)
            with self.changed:
                self.landed += moved
                self.changed.notify()
            if writeback_every and self.landed // writeback_every != (self.landed - moved) // writeback_every:
                start_writeback(self.fd, 0, 0)
            if progress:
                progress(moved)
        with self.changed:
            self.finished = True
            self.changed.notify()
        self.hashing.join()
        if self.hash_error:
            raise self.hash_error

    def _from_socket(self, count):
        """Splice up to ``count`` bytes from the socket into the (empty) pipe."""
        while True:
            try:
                return os.splice(self.sock.fileno(), self.pipe_in, count)
            except BlockingIOError:  # a socket with a timeout is non-blocking
                self._wait_readable()
            except OSError as error:
                if error.errno in _UNSUPPORTED and self.landed == self.start:
                    raise _Unsupported() from None
                raise

    def _wait_readable(self):
        """Wait for bytes; TimeoutError after the socket's timeout, TooSlow
        when the pace's window ends first with too few bytes in it."""
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN)
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            wait = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            window = self.pace.time_left()
            by_pace = window is not None and (wait is None or window < wait)
            if by_pace:
                wait = window + 0.01
            if poller.poll(None if wait is None else wait * 1000):
                return
            if not by_pace:
                raise TimeoutError("timed out")
            self.pace.moved(0)  # raises TooSlow, or starts a new window

    def _hash_landed(self):
        """Hash the landed bytes window by window, each once it is complete
        (or the body has ended), until everything landed is hashed."""
        position = self.start
        try:
            while True:
                with self.changed:
                    window_end = (position // HASH_WINDOW + 1) * HASH_WINDOW
                    self.changed.wait_for(
                        lambda: self.landed >= window_end or self.finished or self.stopped)
                    upto = min(window_end, self.landed)
                    if self.stopped or upto <= position:
                        return
                hash_file_range(self.hasher, self.fd, position, upto)
                position = upto
        except BaseException as error:  # re-raised by run(): this thread must not fail silently
            self.hash_error = error


def hash_file_range(hasher, fd, start, end):
    """Feed bytes [start, end) of a file to ``hasher`` through a mapping (no
    copy), or by reading them on a file system that cannot map files."""
    base = start - start % mmap.ALLOCATIONGRANULARITY
    try:
        mapping = mmap.mmap(fd, end - base, offset=base, prot=mmap.PROT_READ)
    except OSError:
        while start < end:
            block = os.pread(fd, min(STEP, end - start), start)
            if not block:
                raise OSError(f"the download's temp file ended at byte {start}") from None
            hasher.update(block)
            start += len(block)
        return
    with mapping, memoryview(mapping) as view, view[start - base:] as part:
        hasher.update(part)


def _drain_pipe(pipe_out, fd, count, offset):
    """Move ``count`` bytes from the pipe into ``fd`` at ``offset``."""
    while count:
        try:
            moved = os.splice(pipe_out, fd, count, offset_dst=offset)
        except OSError as error:
            if error.errno not in _UNSUPPORTED:
                raise
            moved = write_at(fd, os.read(pipe_out, count), offset)  # no splice into this file system
        count -= moved
        offset += moved

