"""The local content-addressed store (SPEC §2).

    <root>/sha1/<h[0:2]>/<h[2:4]>/<h[4:6]>/<h>
    <root>/md5/<h[0:2]>/<h[2:4]>/<h[4:6]>/<h>
    <root>/tmp/                  temporary files, renamed into place when complete

The layout is kachery 0.6.x's, so an existing storage directory works as is.
"""

import os
import socket
import time
import uuid

from .durability import flush_paths
from .errors import ObjectNotFound
from .hashing import is_valid_hash, validate_hash

TEMP_DIR = "tmp"
#: Batches with at least this many objects are published by several threads.
PARALLEL_PUBLISH = 64
#: Host part of temp names (no dots: the name's fields are dot-separated).
_HOST = socket.gethostname().replace(".", "_") or "localhost"


class LocalStore:
    """Objects on the local disk, named by their hash."""

    #: Objects are flushed to disk before they get their name (SPEC §2).
    durable_writes = True

    def __init__(self, root):
        self.root = os.path.abspath(os.fspath(root))

    def __repr__(self):
        return f"LocalStore({self.root!r})"

    def object_path(self, algorithm, digest):
        """Path of an object; the hash is validated before it is joined."""
        digest = validate_hash(algorithm, digest)
        return os.path.join(self.root, algorithm, digest[0:2], digest[2:4], digest[4:6], digest)

    def size(self, algorithm, digest):
        """Size in bytes of a stored object, or None when it is not here."""
        try:
            return os.stat(self.object_path(algorithm, digest)).st_size
        except FileNotFoundError:
            return None

    def has(self, algorithm, digest):
        return self.size(algorithm, digest) is not None

    def open(self, algorithm, digest):
        """Open a stored object for binary reading; raise ObjectNotFound."""
        try:
            return open(self.object_path(algorithm, digest), "rb")
        except FileNotFoundError:
            raise ObjectNotFound(f"{algorithm}://{digest}", self.root) from None

    def read_bytes(self, algorithm, digest):
        with self.open(algorithm, digest) as file:
            return file.read()

    # ------------------------------------------------------------- writing

    def temp_path(self):
        """A fresh path in the store's temp area (same file system as objects)."""
        temp_dir = os.path.join(self.root, TEMP_DIR)
        os.makedirs(temp_dir, exist_ok=True)
        return os.path.join(temp_dir, f"{_HOST}.{os.getpid()}.{uuid.uuid4().hex}.part")

    def create_temp(self):
        """Create a new temp file; return (fd, path). The caller owns both.

        Opened for reading too: a download hashes what it spliced into the
        file through a mapping of it (zerocopy.py).
        """
        path = self.temp_path()
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), path

    def publish(self, temp_path, algorithm, digest):
        """Rename a complete, verified temp file to its object name.

        Idempotent and safe under concurrent writers: if the object is already
        there the temp file is dropped (same hash, same bytes).
        """
        final = self.object_path(algorithm, digest)
        if os.path.exists(final):
            _remove_quietly(temp_path)
            return final
        try:
            os.rename(temp_path, final)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(final), exist_ok=True)
            os.rename(temp_path, final)
        return final

    def remove_stale_temps(self, older_than=24 * 3600):
        """Delete temp files left by killed processes; return how many.

        Temp names are ``<host>.<pid>.<random>.part``. A temp of this host is
        removed when its process is gone (whatever its age: a live process may
        still publish it); a temp of another host, or with an unknown name, is
        removed only when it has not been written for ``older_than`` seconds,
        since its process cannot be checked from here.
        """
        cutoff = time.time() - older_than
        removed = 0
        for entry in _scandir_or_empty(os.path.join(self.root, TEMP_DIR)):
            if _is_stale_temp(entry, cutoff):
                _remove_quietly(entry.path)
                removed += 1
        return removed

    def iter_objects(self, algorithm):
        """Yield (digest, path) of every object stored under ``algorithm``.

        Only files named by a valid hash count: kachery 0.x kept bookkeeping
        files beside its objects (``<h>.hints.json``, ``<h>.record.json``,
        ``*.lock``, leftover ``<h>.copying.XXXXXX``), which are not objects.
        """
        base = os.path.join(self.root, algorithm)
        for level1 in _scandir_or_empty(base):
            for level2 in _scandir_or_empty(level1.path):
                for level3 in _scandir_or_empty(level2.path):
                    for entry in _scandir_or_empty(level3.path):
                        if is_valid_hash(algorithm, entry.name) and entry.is_file():
                            yield entry.name, entry.path


class WriteBatch:
    """Objects written by one command, published together (see durability.py).

    Use as a context manager: on success ``commit()`` flushes the data once,
    renames every temp file to its object name and flushes the directories
    once; on an exception the temp files are removed and nothing is published.
    """

    def __init__(self, store):
        self.store = store
        self._pending = []  # (temp_path, algorithm, digest)

    def add(self, temp_path, algorithm, digest):
        self._pending.append((temp_path, algorithm, digest))

    def write_bytes(self, data, algorithm, digest):
        """Queue ``data`` (already hashed to ``digest``) unless already stored."""
        if self.store.has(algorithm, digest):
            return
        fd, path = self.store.create_temp()
        try:
            with os.fdopen(fd, "wb", closefd=True) as file:
                file.write(data)
        except BaseException:
            _remove_quietly(path)
            raise
        self.add(path, algorithm, digest)

    def commit(self):
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        flush_paths([temp for temp, _, _ in pending], self.store.root)
        finals = self._publish_all(pending)
        flush_paths(sorted({os.path.dirname(final) for final in finals}), self.store.root)

    def _publish_all(self, pending):
        """Rename every temp file into place; many renames run on a few threads
        (each is a system call or two that releases the GIL)."""
        def publish(item):
            return self.store.publish(*item)

        if len(pending) < PARALLEL_PUBLISH:
            return [publish(item) for item in pending]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=4, thread_name_prefix="kachery-publish") as pool:
            return list(pool.map(publish, pending))

    def discard(self):
        for temp_path, _, _ in self._pending:
            _remove_quietly(temp_path)
        self._pending = []

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.commit()
        else:
            self.discard()
        return False


def _remove_quietly(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _scandir_or_empty(path):
    try:
        return list(os.scandir(path))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _is_stale_temp(entry, cutoff):
    host, _, rest = entry.name.partition(".")
    pid = rest.split(".", 1)[0]
    if host == _HOST and pid.isdigit():
        return not pid_alive(int(pid))
    try:
        return entry.stat().st_mtime < cutoff
    except FileNotFoundError:
        return False


def pid_alive(pid):
    """True when a process with this pid exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

