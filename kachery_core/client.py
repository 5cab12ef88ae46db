"""The Kachery client: one object that stores and resolves hash URLs.

It combines the local store with the configured remotes. Commands, the mount
and the Python API are thin layers over it.
"""

import functools
import json
import os
import threading
from dataclasses import dataclass

from .cache import CacheArea
from .settings import load_config
from .hashing import digest_bytes
from .errors import (
    HashMismatch,
    InvalidManifest,
    IsADirectoryInSnapshot,
    NotASnapshot,
    NotADirectoryInSnapshot,
    ObjectNotFound,
)
from .manifest import DirEntry, FileEntry, parse_dir_manifest, parse_file_manifest
from .stats import Stats
from .store import LocalStore, WriteBatch
from .urls import HashURL, parse_url

#: Granularity of streamed reads (a whole chunk: one fetch per block remotely).
STREAM_BLOCK = 4 * 1024 * 1024


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
        self._parse_lock = threading.Lock()
        self.cache = CacheArea(self.config.storage_dir, self.config.cache_max)
        self.stats = Stats()
        self._fetcher = None
        self._verified = set()  # (algorithm, digest) re-hashed by verify_once

    # Parsed manifests, made on first use: a command that only stores never
    # parses one, and cachetools then stays out of its start-up.
    @functools.cached_property
    def _dir_manifests(self):
        from cachetools import LRUCache

        return LRUCache(maxsize=32)

    @functools.cached_property
    def _file_manifests(self):
        from cachetools import LRUCache

        return LRUCache(maxsize=1024)

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
        from . import ingest  # its worker pools cost start-up time for read-only commands

        with _batch_or(self, batch) as active:
            return ingest.store_path(active, path, algorithm, progress)

    def store_data(self, data, algorithm="sha1", batch=None):
        from . import ingest

        with _batch_or(self, batch) as active:
            return ingest.store_data(active, data, algorithm)

    def store_dir(self, path, batch=None, progress=None):
        """Snapshot a directory; return (manifest sha1, DirEntry)."""
        from . import ingest

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
            if url.manifest:  # the URL vouches for its manifest, which gives the size
                target = FileTarget(url.algorithm, url.hash, None, url.manifest)
                return FileTarget(url.algorithm, url.hash, self.trusted_manifest(target).size,
                                  url.manifest)
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
        """The parsed directory manifest with sha1 ``digest`` (cached).

        The object's bytes are checked against ``digest`` before parsing, so
        bytes that do not parse are not corrupt: the URL names something that
        is not a snapshot (NotASnapshot)."""
        local = self.find_local("sha1", digest)
        if local is not None and self._cached(self._dir_manifests, digest) is None:
            with open(local, "rb") as file:  # a 1 GiB file is not read whole to say so
                if not file.read(64).lstrip()[:1] in (b"{", b"["):
                    raise NotASnapshot(digest, "not JSON")

        def parse(data, which):
            try:
                return parse_dir_manifest(data, which)
            except InvalidManifest as error:
                if _looks_like_a_manifest(data):
                    raise  # a broken or hostile manifest: corrupt (exit 3, EIO)
                raise NotASnapshot(digest, error.problem) from None

        return self._parsed(self._dir_manifests, digest, parse, "sha1dir")

    def file_manifest(self, digest):
        """The parsed file manifest with sha1 ``digest`` (cached)."""
        return self._parsed(self._file_manifests, digest, parse_file_manifest, "sha1")

    def _parsed(self, cache, digest, parse, scheme):
        """Parse a manifest object once; later calls get the cached result.

        Parses are serialized: when many mount threads ask for the same new
        100,000-file snapshot at once, one parses it and the others wait for
        that result instead of parsing it again.
        """
        parsed = self._cached(cache, digest)
        if parsed is None:
            with self._parse_lock:
                parsed = self._cached(cache, digest)
                if parsed is None:
                    parsed = parse(self.read_manifest_object(digest), f"{scheme}://{digest}")
                    with self._lock:
                        cache[digest] = parsed
        return parsed

    def _cached(self, cache, digest):
        with self._lock:  # an LRU lookup reorders the cache: not thread safe alone
            return cache.get(digest)

    # ------------------------------------------------------------ objects

    def object_size(self, algorithm, digest):
        """Size of an object, asking the remotes when it is not local."""
        path = self.find_local(algorithm, digest)
        if path is not None:
            return os.path.getsize(path)
        size = self.remotes.size(algorithm, digest) if self.remotes else None
        if size is None:
            raise ObjectNotFound(f"{algorithm}://{digest}", self._where())
        return size

    def find_local(self, algorithm, digest):
        """Path of the object in the store or the download cache, or None."""
        path = self.store.object_path(algorithm, digest)
        if os.path.exists(path):
            return path
        path = self.cache.find(algorithm, digest)
        if path is not None:
            self.cache.touch(algorithm, digest)
        return path

    def verify_once(self, algorithm, digest, path):
        """Re-hash a local object the first time this process serves it
        (``verify_reads``); raise HashMismatch if it is corrupt."""
        from .verify import hash_file

        with self._lock:
            if (algorithm, digest) in self._verified:
                return
        got = hash_file(path, algorithm)
        if got != digest:
            raise HashMismatch(digest, got, f"stored object {path}")
        with self._lock:
            self._verified.add((algorithm, digest))

    def local_path(self, algorithm, digest):
        """Path of the object on this machine, downloading it (verified) if needed.

        Downloads go to the cache area (``<storage>/cache``), never into the
        user's own objects, so a cache quota can evict them.
        """
        path = self.find_local(algorithm, digest)
        if path is not None:
            return path
        if self.fetcher is not None:
            return self.fetcher.object_path(algorithm, digest)
        raise ObjectNotFound(f"{algorithm}://{digest}", self._where())

    def file_path(self, target):
        """Local path of a FileTarget's object, checked to have the target's
        size (see _check_size)."""
        path = self.local_path(target.algorithm, target.digest)
        _check_size(target, os.path.getsize(path))
        return path

    def small_file_bytes(self, target):
        """The verified bytes of a small remote file (at most fetching.SMALL_MAX,
        no file manifest, not on this machine), from the fetcher's memory tier:
        fetched once however many ask, written to the cache in the background.
        Size-checked like file_path. Needs remotes."""
        data = self.fetcher.small_object(target.algorithm, target.digest)
        _check_size(target, len(data))
        return data

    @property
    def fetcher(self):
        """The Fetcher over the remotes (None without remotes)."""
        if self._fetcher is None and self.remotes:
            from .fetching import Fetcher  # threads and pools: only with remotes

            with self._lock:
                if self._fetcher is None:
                    self._fetcher = Fetcher(self.cache, self.remotes.fetch_chunk,
                                            self.remotes.download, stats=self.stats,
                                            fetch_small=self.remotes.fetch_small,
                                            fetch_small_many=self.remotes.fetch_small_many,
                                            fetch_chunk_into=self.remotes.fetch_chunk_into)
        return self._fetcher

    def close(self):
        """Let background fetching finish writing to the cache, then stop it."""
        if self._fetcher is not None:
            self._fetcher.close()

    def trusted_manifest(self, target):
        """The FileManifest of a FileTarget, checked to describe that file.
        Errors name the file too: the user gave the manifest as its ?manifest=."""
        which = f"sha1://{target.manifest} (the ?manifest= of {target.algorithm}://{target.digest})"
        try:
            manifest = self.file_manifest(target.manifest)
        except InvalidManifest as error:
            raise InvalidManifest(which, error.problem) from None
        except ObjectNotFound as error:
            raise ObjectNotFound(which, error.where) from None
        if (target.size is not None and manifest.size != target.size) or (
            target.algorithm == "sha1" and manifest.sha1 != target.digest
        ):
            raise InvalidManifest(which, f"does not describe {target.algorithm}://{target.digest}")
        return manifest

    def read_range(self, target, offset, size):
        """Bytes [offset, offset+size) of a FileTarget.

        A file that is not here but has a trusted file manifest is read chunk
        by chunk from the remotes (each chunk verified); any other file is
        located (downloaded whole and verified if needed) and read.
        """
        local = self.find_local(target.algorithm, target.digest)
        if local is None and target.manifest and self.fetcher is not None:
            return bytes(self.fetcher.read(target, self.trusted_manifest(target), offset, size))
        with open(self.file_path(target), "rb") as file:
            return os.pread(file.fileno(), size, offset)

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
        """Yield the bytes [start, end) of a FileTarget in blocks (constant memory)."""
        end = target.size if end is None else min(end, target.size)
        position = start
        while position < end:
            block = self.read_range(target, position, min(STREAM_BLOCK, end - position))
            if not block:
                raise OSError(f"{target.algorithm}://{target.digest} ended early at byte {position}")
            position += len(block)
            yield block

    def _where(self):
        names = [self.store.root] + [remote.url for remote in self.config.remotes]
        return ", ".join(names)


def _looks_like_a_manifest(data):
    """Whether bytes that failed to parse as a directory manifest try to be
    one (JSON with its keys, or a JSON list) rather than being some other
    file: the first is a bad manifest, the second a wrong URL."""
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        return False
    return not isinstance(document, dict) or "files" in document or "dirs" in document


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


def _check_size(target, actual):
    """The object's bytes match its hash, but a snapshot entry could still
    claim another size; serving it would silently truncate or overrun, so
    such an entry is an invalid manifest (exit 3, EIO), never wrong bytes."""
    if actual != target.size:
        raise InvalidManifest(
            f"{target.algorithm}://{target.digest}",
            f"the snapshot says {target.size} bytes but the object has {actual}")
