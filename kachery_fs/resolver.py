"""The mount's namespace as plain Python (SPEC §6): no FUSE import here.

    /                                   sha1/  md5/  sha1dir/
    /sha1/<h40>                         the object's bytes
    /md5/<h32>                          the object's bytes
    /sha1dir/<h40>[.<label>]/<path>     the snapshot's directories and files

:class:`Resolver` answers the questions a file system is asked — what is at a
path (:meth:`Resolver.lookup`), what is in a directory (:meth:`Resolver.list_dir`),
and the bytes of a file (:meth:`Resolver.open` / :meth:`Resolver.read`) — by
asking the :class:`~kachery_core.client.Kachery` client. Tests call it without
mounting anything; ``fuse_adapter`` is a thin layer that turns its answers and
exceptions into what the kernel expects.

Errors (all from kachery_core): a name that is unknown or invalid raises a
``FileNotFoundError`` (``ObjectNotFound``) or ``InvalidURL``/``InvalidHash``;
an invalid manifest raises ``InvalidManifest``; data that fails verification
raises ``HashMismatch``. Nothing is cached per path: snapshot manifests are
parsed once and kept by the client, so memory stays proportional to the
snapshots in use, not to the paths browsed.
"""

import hashlib
import os
import stat
import threading
import time
from dataclasses import dataclass

from cachetools import LRUCache

from kachery_core.client import DirTarget, FileTarget
from kachery_core.errors import InvalidURL, ObjectNotFound
from kachery_core.hashing import is_valid_hash
from kachery_core.manifest import DirEntry
from kachery_core.urls import parse_url

from .prefetch import SiblingPrefetcher
from .readers import open_reader

FILE_MODE = stat.S_IFREG | 0o444
DIR_MODE = stat.S_IFDIR | 0o555
#: Advertised I/O size (st_blksize). Python's buffered open() reads a whole
#: st_blksize at a time, so a 4 KiB read of a lazily fetched file must not
#: become a read that reaches into the next chunk: 128 KiB, which is also
#: what cp and cat use at least (they size their buffers by it).
BLOCK_SIZE = 128 * 1024
#: The fixed top-level directories; listing them shows nothing (hashes are not enumerable).
TOP_DIRS = ("sha1", "md5", "sha1dir")
ROOT_INODE = 1


@dataclass(slots=True)
class Entry:
    """What one path is: the attributes the kernel needs, and what backs it.

    ``target`` is the client's FileTarget (algorithm, digest, size, file
    manifest) of a file returned by :meth:`Resolver.lookup`; listings leave it
    None to stay cheap (open() looks the path up). ``children`` (snapshot
    directories only) is the manifest's DirEntry. Treat entries as read-only.
    """

    is_dir: bool
    size: int
    inode: int
    mtime_ns: int
    nlink: int
    target: object = None
    children: DirEntry | None = None

    @property
    def mode(self):
        return DIR_MODE if self.is_dir else FILE_MODE


def path_inode(path):
    """A stable inode number for a mount path: the same on every mount.

    Derived from the path (label included), not the content, so two files with
    equal bytes are not taken for hard links by tar, du or cp.
    """
    if path in _ROOT_PATHS:
        return ROOT_INODE
    digest = _blake2b(path.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    inode = int.from_bytes(digest, "little") >> 1
    return inode if inode > ROOT_INODE else ROOT_INODE + 1


_ROOT_PATHS = frozenset(("", "/"))
_blake2b = hashlib.blake2b


def split_path(path):
    """'/sha1dir/H.x/a' → ['sha1dir', 'H.x', 'a'] (empty segments dropped)."""
    return [part for part in path.split("/") if part]


class Resolver:
    """Path → entry, directory listing and reads, over a Kachery client.

    Thread-safe: the only shared state is the client's manifest cache, a
    small cache of snapshot times, and the table of open files, each guarded.
    """

    def __init__(self, kachery, clock_ns=time.time_ns):
        self.kachery = kachery
        self.started_ns = clock_ns()
        self._snapshot_times = LRUCache(maxsize=4096)
        self._times_lock = threading.Lock()
        self._readers = {}
        self._readers_lock = threading.Lock()
        self._prefetcher = SiblingPrefetcher(kachery)

    # ------------------------------------------------------------- lookup

    def lookup(self, path):
        """The :class:`Entry` at ``path`` (absolute, '/'-separated)."""
        parts = split_path(path)
        if len(parts) <= 1:
            return self._fixed_dir(path, parts)
        if parts[0] in ("sha1", "md5"):
            return self._object_entry(path, parts)
        if parts[0] == "sha1dir":
            return self._snapshot_entry(path, parts)
        raise ObjectNotFound(path, "the mount")

    def _fixed_dir(self, path, parts):
        if parts and parts[0] not in TOP_DIRS:
            raise ObjectNotFound(path, "the mount")
        subdirs = len(TOP_DIRS) if not parts else 0
        return Entry(True, 0, path_inode(path), self.started_ns, 2 + subdirs)

    def _object_entry(self, path, parts):
        algorithm, name = parts[0], parts[1]
        if len(parts) != 2 or not is_valid_hash(algorithm, name):
            raise ObjectNotFound(path, "the mount")
        digest = name.lower()
        size, mtime_ns = self._object_size_and_time(algorithm, digest)
        if size is None:  # not local: the client asks the remotes (or raises ObjectNotFound)
            size = self.kachery.object_size(algorithm, digest)
        target = FileTarget(algorithm, digest, size)
        return Entry(False, size, path_inode(path), mtime_ns, 1, target)

    def _object_size_and_time(self, algorithm, digest):
        """(size, mtime) of an object on this machine (store or download cache);
        (None, mount time) when it is not here."""
        path = self.kachery.find_local(algorithm, digest)
        try:
            info = os.stat(path) if path else None
        except FileNotFoundError:  # evicted from the cache meanwhile
            info = None
        if info is None:
            return None, self.started_ns
        return info.st_size, info.st_mtime_ns

    def _snapshot_entry(self, path, parts):
        try:
            url = parse_url("sha1dir://" + "/".join(parts[1:]))
        except InvalidURL:
            raise ObjectNotFound(path, "the mount") from None
        target = self.kachery.resolve(url)
        mtime_ns = self._snapshot_time(url.hash)
        if isinstance(target, DirTarget):
            return _dir_entry(path, target.entry, mtime_ns)
        return Entry(False, target.size, path_inode(path), mtime_ns, 1, target)

    def _snapshot_time(self, digest):
        """When the snapshot was stored here (its manifest's mtime), so times are stable."""
        with self._times_lock:
            cached = self._snapshot_times.get(digest)
        if cached is None:
            _, cached = self._object_size_and_time("sha1", digest)
            with self._times_lock:
                self._snapshot_times[digest] = cached
        return cached

    def xattrs(self, path):
        """{name: value} of the extended attributes at ``path``: each file's and
        snapshot directory's hash URL (``user.kachery.url``) and a file's
        content hash (``user.kachery.sha1`` / ``user.kachery.md5``)."""
        parts = split_path(path)
        if len(parts) < 2:
            return {}
        entry = self.lookup(path)
        if parts[0] == "sha1dir":
            if entry.is_dir:
                return {"user.kachery.url": "sha1dir://" + "/".join(parts[1:])}
        target = entry.target
        url = f"{target.algorithm}://{target.digest}"
        if parts[0] == "sha1dir":
            url += "/" + parts[-1]
        return {"user.kachery.url": url, f"user.kachery.{target.algorithm}": target.digest}

    # ------------------------------------------------------------ listing

    def list_dir(self, path):
        """[(name, Entry)] of a directory, in a stable order; raises NotADirectoryError."""
        entry = self.lookup(path)
        if not entry.is_dir:
            raise NotADirectoryError(path)
        return self.children(path, entry)

    def children(self, path, entry):
        """The (name, Entry) pairs of the directory ``entry`` found at ``path``."""
        prefix = path.rstrip("/") + "/"
        if entry.children is None:
            names = TOP_DIRS if path.strip("/") == "" else ()
            return [(name, self._fixed_dir(prefix + name, [name])) for name in names]
        return _snapshot_children(prefix, entry)

    # -------------------------------------------------------------- reads

    def open(self, path):
        """Open the file at ``path`` for reading; return a handle number for read()."""
        entry = self.lookup(path)
        if entry.is_dir:
            raise IsADirectoryError(path)
        parent, _, name = path.rpartition("/")
        if parent.startswith("/sha1dir/"):
            self._prefetcher.opened(self.lookup(parent).children, name, entry.target)
        reader = open_reader(self.kachery, entry.target)
        with self._readers_lock:
            self._readers[reader.handle] = (reader, entry)
        return reader.handle

    def read(self, handle, size, offset):
        """Up to ``size`` bytes at ``offset`` of an open file (fewer only at its end).

        The single read path of the mount: every byte served goes through the
        reader that ``readers.open_reader`` chose at open().
        """
        return self._readers[handle][0].read(size, offset)

    def span(self, handle, size, offset):
        """Where those bytes lie in a local file: (fd, offset, length), or None.

        The same read path as read(), for callers that can copy from a file
        descriptor themselves; None means "call read()".
        """
        return self._readers[handle][0].span(size, offset)

    def local_fd(self, handle):
        """The descriptor of the local object file an open handle reads, or None
        (a remote file read lazily or held in memory)."""
        return getattr(self._readers[handle][0], "fd", None)

    def entry_of(self, handle):
        """The Entry an open handle was opened on (for fstat on an open file)."""
        return self._readers[handle][1]

    def release(self, handle):
        """Close a handle returned by open(); unknown handles are ignored."""
        with self._readers_lock:
            opened = self._readers.pop(handle, None)
        if opened is not None:
            opened[0].close()

    def close_all(self):
        """Close every open handle (on unmount)."""
        with self._readers_lock:
            opened, self._readers = list(self._readers.values()), {}
        for reader, _ in opened:
            reader.close()


def _dir_entry(path, node, mtime_ns):
    return Entry(True, 0, path_inode(path), mtime_ns, 2 + len(node.dirs), None, node)


def _snapshot_children(prefix, entry):
    """Entries of a snapshot directory: files first, then directories (manifest order).

    The loop of a fresh listing of a large snapshot (a list comprehension,
    path_inode inlined: a directory's entries are never the root).
    """
    mtime_ns = entry.mtime_ns
    head = prefix.encode("utf-8", "surrogateescape")
    files = [(name, Entry(False, node.size, _child_inode(head, name), mtime_ns, 1))
             for name, node in entry.children.files.items()]
    return files + [(name, _dir_entry(prefix + name, node, mtime_ns))
                    for name, node in entry.children.dirs.items()]


def _child_inode(head, name):
    inode = int.from_bytes(_blake2b(head + name.encode("utf-8", "surrogateescape"),
                                    digest_size=8).digest(), "little") >> 1
    return inode if inode > ROOT_INODE else ROOT_INODE + 1
