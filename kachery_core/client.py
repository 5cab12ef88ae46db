"""The Kachery client: one object that stores and resolves hash URLs.

It combines the local store with the configured remotes. Commands, the mount
and the Python API are thin layers over it.
"""

import os
import threading
from dataclasses import dataclass

from cachetools import LRUCache

from . import ingest
from .config import load_config
from .hashing import digest_bytes
from .errors import (
    HashMismatch,
    IsADirectoryInSnapshot,
    NotADirectoryInSnapshot,
    ObjectNotFound,
)
from .manifest import DirEntry, FileEntry, parse_dir_manifest, parse_file_manifest
from .store import LocalStore, WriteBatch
from .urls import HashURL, parse_url

#: Copy granularity when streaming an object.
STREAM_BLOCK = 1024 * 1024


@dataclass(frozen=True)
class FileTarget:
    """A file a URL resolves to: its content hash, size and file manifest (if any)."""

    algorithm: str
    digest: str
    size: int
    manifest: str | None = None


@dataclass(frozen=True)
class DirTarget:
    """A directory inside a snapshot."""

    url: HashURL
    entry: DirEntry


class Kachery:
    """Stores and resolves content by hash.

    ``remotes`` is an object with the interface of ``remote.RemoteSet`` (or None
    for the local store alone); by default it is built from ``config``.
    """

    def __init__(self, config=None, remotes=None):
        self.config = config or load_config()
        self.store = LocalStore(self.config.storage_dir)
        self._remotes = remotes
        self._lock = threading.Lock()
        self._dir_manifests = LRUCache(maxsize=32)
        self._file_manifests = LRUCache(maxsize=1024)

    @classmethod
    def from_config(cls, **overrides):
        return cls(load_config().with_overrides(**overrides))

    @property
    def remotes(self):
        """The configured remotes (built on first use: it imports the HTTP client)."""
        if self._remotes is None and self.config.remotes:
            from .remote import RemoteSet

            self._remotes = RemoteSet.from_config(self.config)
        return self._remotes

    # ------------------------------------------------------------ storing

    def batch(self):
        """A WriteBatch for storing several objects with one pair of flushes."""
        return WriteBatch(self.store)

    def store_file(self, path, algorithm="sha1", batch=None, progress=None):
        """Store one file; return an ingest.StoredFile."""
        with _batch_or(self, batch) as active:
            return ingest.store_path(active, path, algorithm, progress)

    def store_data(self, data, algorithm="sha1", batch=None):
        with _batch_or(self, batch) as active:
            return ingest.store_data(active, data, algorithm)

    def store_dir(self, path, batch=None, progress=None):
        """Snapshot a directory; return (manifest sha1, DirEntry)."""
        with _batch_or(self, batch) as active:
            tree = ingest.snapshot_dir(active, path, progress)
            return ingest.store_manifest(active, tree), tree

    # ---------------------------------------------------------- resolving

    def resolve(self, url):
        """Resolve a URL (string or HashURL) to a FileTarget or DirTarget.

        Raises InvalidURL, ObjectNotFound, InvalidManifest, HashMismatch.
        """
        url = parse_url(url) if isinstance(url, str) else url
        if not url.is_dir:
            size = self.object_size(url.algorithm, url.hash)
            return FileTarget(url.algorithm, url.hash, size, url.manifest)
        node = self.dir_manifest(url.hash).lookup(url.path_parts)
        if node is None:
            raise ObjectNotFound(str(url), "the snapshot")
        if isinstance(node, FileEntry):
            algorithm, digest = node.algorithm_and_hash
            return FileTarget(algorithm, digest, node.size, node.manifest)
        return DirTarget(url, node)

    def resolve_file(self, url):
        target = self.resolve(url)
        if isinstance(target, DirTarget):
            raise IsADirectoryInSnapshot(str(url))
        return target

    def resolve_dir(self, url):
        target = self.resolve(url)
        if not isinstance(target, DirTarget):
            raise NotADirectoryInSnapshot(str(url))
        return target

    def dir_manifest(self, digest):
        """The parsed directory manifest with sha1 ``digest`` (cached)."""
        cached = self._dir_manifests.get(digest)
        if cached is None:
            data = self.read_manifest_object(digest)
            cached = parse_dir_manifest(data, f"sha1dir://{digest}")
            with self._lock:
                self._dir_manifests[digest] = cached
        return cached

    def file_manifest(self, digest):
        """The parsed file manifest with sha1 ``digest`` (cached)."""
        cached = self._file_manifests.get(digest)
        if cached is None:
            data = self.read_manifest_object(digest)
            cached = parse_file_manifest(data, f"sha1://{digest}")
            with self._lock:
                self._file_manifests[digest] = cached
        return cached

    # ------------------------------------------------------------ objects

    def object_size(self, algorithm, digest):
        """Size of an object, asking the remotes when it is not local."""
        size = self.store.size(algorithm, digest)
        if size is None and self.remotes:
            size = self.remotes.size(algorithm, digest)
        if size is None:
            raise ObjectNotFound(f"{algorithm}://{digest}", self._where())
        return size

    def local_path(self, algorithm, digest):
        """Path of the object in the local store, downloading it (verified) if needed."""
        path = self.store.object_path(algorithm, digest)
        if os.path.exists(path):
            return path
        if self.remotes:
            return self.remotes.download(algorithm, digest, self.store)
        raise ObjectNotFound(f"{algorithm}://{digest}", self._where())

    def read_manifest_object(self, digest):
        """A manifest's bytes, checked against its sha1: a manifest decides which
        bytes get served, so a corrupt one must not be trusted (it is small)."""
        data = self.read_object("sha1", digest)
        got = digest_bytes("sha1", data)
        if got != digest.lower():
            raise HashMismatch(digest, got, "manifest")
        return data

    def read_object(self, algorithm, digest):
        """Whole object as bytes (for manifests and other small objects)."""
        with open(self.local_path(algorithm, digest), "rb") as file:
            return file.read()

    def iter_bytes(self, target, start=0, end=None):
        """Yield the bytes [start, end) of a FileTarget in blocks."""
        end = target.size if end is None else min(end, target.size)
        if start >= end:
            return
        remote_range = getattr(self.remotes, "iter_range", None)
        if not self.store.has(target.algorithm, target.digest) and target.manifest and remote_range:
            yield from remote_range(target, start, end, self)
            return
        with open(self.local_path(target.algorithm, target.digest), "rb") as file:
            file.seek(start)
            remaining = end - start
            while remaining:
                block = file.read(min(STREAM_BLOCK, remaining))
                if not block:
                    break
                remaining -= len(block)
                yield block

    def _where(self):
        names = [self.store.root] + [remote.url for remote in self.config.remotes]
        return ", ".join(names)


class _batch_or:
    """Use the caller's batch, or a fresh one committed on exit."""

    def __init__(self, kachery, batch):
        self.own = batch is None
        self.batch = kachery.batch() if self.own else batch

    def __enter__(self):
        return self.batch

    def __exit__(self, exc_type, exc, tb):
        if self.own:
            return self.batch.__exit__(exc_type, exc, tb)
        return False
