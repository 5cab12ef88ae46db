"""The local content-addressed store (SPEC §2).

    <root>/sha1/<h[0:2]>/<h[2:4]>/<h[4:6]>/<h>
    <root>/md5/<h[0:2]>/<h[2:4]>/<h[4:6]>/<h>
    <root>/tmp/                  temporary files, renamed into place when complete

The layout is kachery 0.6.x's, so an existing storage directory works as is.

A temp file is named ``<host>.<pid>.<token>.<random>.part``, and while its
process lives that process holds an flock on ``locks/<host>.<pid>.<token>.lock``
(one per process and temp area, see _WriterLock; ``locks/`` is beside ``tmp/``). A temp whose lock
can be taken belongs to a dead writer and is removed — by the first
``create_temp`` of every process, by ``kachery-verify --clean-temp`` and
``kachery cache --clear`` — however young it is; a live writer's never is,
however old (a killed download is otherwise left behind at any size). The
lock is held for the process's life, not the file's, so a temp closed and
about to be renamed is never taken for dead either.
"""

import atexit
import fcntl
import os
import threading
import time
import uuid

from .durability import flush_paths
from .errors import ObjectNotFound
from .hashing import is_valid_hash, validate_hash

TEMP_DIR = "tmp"
LOCK_DIR = "locks"
#: Batches with at least this many objects are published by several threads.
PARALLEL_PUBLISH = 64
#: Host part of temp names (no dots: the name's fields are dot-separated).
#: (os.uname's node name is what gethostname(2) returns on Linux; it saves
#: importing socket at every start.)
_HOST = os.uname().nodename.replace(".", "_") or "localhost"


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

    def remove(self, algorithm, digest):
        """Delete an object (``kachery rm``); nothing happens if it is not here."""
        _remove_quietly(self.object_path(algorithm, digest))

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
        """A fresh path in the store's temp area (same file system as objects),
        owned by this process's writer lock (see the module docstring)."""
        temp_dir = os.path.join(self.root, TEMP_DIR)
        prefix = _WriterLock.prefix_for(temp_dir, self.remove_stale_temps)
        return os.path.join(temp_dir, f"{prefix}.{uuid.uuid4().hex}.part")

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
        """Delete temp files left by dead writers; return how many.

        A temp whose writer lock is free is removed at any age (see the
        module docstring); one with an older name (``<host>.<pid>.<random>.part``,
        kachery before locks) when its process is gone; a file of unknown
        name only once it has not been written for ``older_than`` seconds.
        """
        cutoff = time.time() - older_than
        temp_dir = os.path.join(self.root, TEMP_DIR)
        entries = _scandir_or_empty(temp_dir)
        dead = _DeadWriters(temp_dir)
        removed = 0
        for entry in entries:
            if dead.owns(entry.name) or (not dead.knows(entry.name) and _is_stale_temp(entry, cutoff)):
                _remove_quietly(entry.path)
                removed += 1
        dead.release()  # their lock files go last, so a temp is never left without its lock
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


def remove_own_temps():
    """Remove this process's temp files and writer locks in every temp area
    it wrote to, now (for a command ended by Ctrl-C or SIGTERM, whose worker
    threads are not waited for). A temp being renamed at that moment is
    already an object: complete and verified."""
    for (pid, temp_dir), prefix in list(_WriterLock._prefixes.items()):
        if pid != os.getpid():
            continue
        try:
            names = os.listdir(temp_dir)
        except OSError:
            continue
        for name in names:
            if name.startswith(prefix + "."):
                _remove_quietly(os.path.join(temp_dir, name))
        _remove_quietly(_lock_path(temp_dir, prefix))


class _WriterLock:
    """This process's lock in each temp area it writes to (see the module docstring)."""

    _lock = threading.Lock()
    _prefixes = {}  # (pid, temp dir) -> '<host>.<pid>.<token>'; the fds stay open

    @classmethod
    def prefix_for(cls, temp_dir, clean):
        """The temp-name prefix of this process in ``temp_dir``; on first use,
        take the lock and ``clean()`` the area of dead writers' files."""
        key = (os.getpid(), temp_dir)  # a forked child takes its own lock
        with cls._lock:
            prefix = cls._prefixes.get(key)
            if prefix is not None:
                return prefix
            os.makedirs(temp_dir, exist_ok=True)
            prefix = cls._take_new(temp_dir)
            if not any(pid == os.getpid() for pid, _ in cls._prefixes):
                atexit.register(cls._remove_own)
            cls._prefixes[key] = prefix
        try:
            clean()
        except OSError:  # cleaning is a courtesy: writing must not fail for it
            pass
        return prefix


    @classmethod
    def _remove_own(cls):
        """At a normal exit, remove this process's lock files (a killed
        process's are removed by the next cleaner)."""
        for (pid, temp_dir), prefix in list(cls._prefixes.items()):
            if pid == os.getpid():
                _remove_quietly(_lock_path(temp_dir, prefix))

    @staticmethod
    def _take_new(temp_dir):
        """Create and lock a fresh lock file; return its prefix. The fd stays
        open (and locked) until the process ends."""
        os.makedirs(os.path.join(os.path.dirname(temp_dir), LOCK_DIR), exist_ok=True)
        while True:
            prefix = f"{_HOST}.{os.getpid()}.{uuid.uuid4().hex[:12]}"
            path = _lock_path(temp_dir, prefix)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:  # a cleaner may have taken the file for a dead one's between open and flock
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    return prefix
            except FileNotFoundError:
                pass
            os.close(fd)


class _DeadWriters:
    """The writer locks of a temp area whose processes are gone, held while
    their temp files are removed."""

    def __init__(self, temp_dir):
        self.temp_dir = temp_dir
        self._checked = {}  # prefix -> fd of a lock taken (dead writer), or None (alive)

    @staticmethod
    def prefix(name):
        """'<host>.<pid>.<token>' of a locked-era temp name, or None."""
        parts = name.split(".")
        if len(parts) == 5 and parts[4] == "part" and parts[1].isdigit():
            return ".".join(parts[:3])
        return None

    def knows(self, name):
        return self.prefix(name) is not None

    def owns(self, name):
        """True when ``name`` is a temp of a writer that is gone."""
        prefix = self.prefix(name)
        if prefix is None:
            return False
        if prefix not in self._checked:
            self._checked[prefix] = self._take(prefix)
        return self._checked[prefix] is not None or not os.path.exists(self._lock_path(prefix))

    def _lock_path(self, prefix):
        return _lock_path(self.temp_dir, prefix)

    def _take(self, prefix):
        try:
            fd = os.open(self._lock_path(prefix), os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # its writer is alive
            os.close(fd)
            return None
        return fd

    def release(self):
        """Remove the lock files of every dead writer (taken or not seen yet)."""
        for entry in _scandir_or_empty(os.path.join(os.path.dirname(self.temp_dir), LOCK_DIR)):
            prefix = entry.name[:-len(".lock")] if entry.name.endswith(".lock") else None
            if prefix and prefix not in self._checked:
                self._checked[prefix] = self._take(prefix)
        for prefix, fd in self._checked.items():
            if fd is not None:
                _remove_quietly(self._lock_path(prefix))
                os.close(fd)


def _lock_path(temp_dir, prefix):
    """The writer lock of ``prefix`` for a temp area (in ``locks/`` beside it)."""
    return os.path.join(os.path.dirname(temp_dir), LOCK_DIR, prefix + ".lock")


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

