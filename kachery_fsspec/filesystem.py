"""Read-only fsspec file systems over a Kachery client.

One class per protocol (fsspec maps a protocol to a class): ``sha1://H[/name]``
and ``md5://H[/name]`` are single files (``?manifest=M`` lets a large remote
file be read chunk by chunk), ``sha1dir://H[.label]/path`` is a snapshot's
directory or file. Paths are the URLs without their scheme, as fsspec
expects; ``ls`` returns them that way too.

Reads go through :meth:`Kachery.read_range`: a file on this machine is read
from its object (size-checked, cache entries re-hashed before their first
use), a remote file with a trusted file manifest fetches only the chunks a
range touches (each verified; the whole checked when it is complete), any
other remote file is downloaded whole and verified first. A byte that fails
verification is never returned: the read raises.

The client is shared by every instance and thread of a process and rebuilt
after a fork (its pools and threads do not survive one).
"""

import os
import threading

from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

from kachery_core.client import DirTarget, Kachery
from kachery_core.settings import load_config
from kachery_core.errors import InvalidURL
from kachery_core.urls import parse_url

#: Read size of an open file: one chunk as kachery stores them (SPEC §4, docs).
BLOCK_SIZE = 4 * 1024 * 1024
#: Blocks an open file keeps in memory (32 MiB).
CACHED_BLOCKS = 8
_clients = {}
_clients_lock = threading.Lock()


def client(storage_dir=None, remotes=None):
    """The process's Kachery client for these settings (None: the configuration)."""
    key = (os.getpid(), storage_dir, tuple(remotes) if remotes is not None else None)
    with _clients_lock:
        found = _clients.get(key)
        if found is None:
            if any(other[0] != key[0] for other in _clients):
                _clients.clear()  # a forked child: its parent's clients are not usable here
            config = load_config()
            if remotes is not None:
                config = config.with_remote_urls(list(remotes))
            found = _clients[key] = Kachery(config.with_overrides(storage_dir=storage_dir))
        return found


class KacheryFileSystem(AbstractFileSystem):
    """The common part of the three protocols (use a subclass)."""

    protocol = ("sha1", "md5", "sha1dir")
    root_marker = ""

    def __init__(self, storage_dir=None, remotes=None, **kwargs):
        """``storage_dir`` and ``remotes`` override the configuration (the same
        settings as every command: KACHERY_STORAGE_DIR, KACHERY_REMOTE, the
        config file)."""
        super().__init__(**kwargs)
        self.storage_dir = storage_dir
        self.remotes = remotes

    @property
    def kachery(self):
        return client(self.storage_dir, self.remotes)

    # ---------------------------------------------------------------- paths

    @classmethod
    def _strip_protocol(cls, path):
        if isinstance(path, list):
            return [cls._strip_protocol(one) for one in path]
        path = str(path)
        for scheme in ("sha1dir", "sha1", "md5"):
            if path.startswith(scheme + "://"):
                path = path[len(scheme) + 3:]
                break
        return path.rstrip("/")

    def _url(self, path):
        return f"{self.protocol[0]}://{self._strip_protocol(path)}"

    def _resolve(self, path):
        url = self._url(path)
        try:
            return self.kachery.resolve(parse_url(url))
        except InvalidURL as error:
            raise FileNotFoundError(f"{url}: {error}") from None

    # ------------------------------------------------------------- metadata

    def info(self, path, **kwargs):
        path = self._strip_protocol(path)
        target = self._resolve(path)
        if isinstance(target, DirTarget):
            return {"name": path, "size": 0, "type": "directory"}
        return _file_info(path, target.size, target.algorithm, target.digest)

    def ls(self, path, detail=True, **kwargs):
        path = self._strip_protocol(path)
        target = self._resolve(path)
        if not isinstance(target, DirTarget):
            entries = [_file_info(path, target.size, target.algorithm, target.digest)]
        else:
            node = target.entry
            entries = [_file_info(f"{path}/{name}", entry.size, *entry.algorithm_and_hash)
                       for name, entry in node.files.items()]
            entries += [{"name": f"{path}/{name}", "size": 0, "type": "directory"}
                        for name in node.dirs]
        return entries if detail else [entry["name"] for entry in entries]

    def ukey(self, path):
        """The content hash: equal keys mean equal bytes (a directory: its URL)."""
        info = self.info(path)
        return info.get(info.get("algorithm", ""), info["name"])

    # Hash URLs are literal: "?" in "?manifest=" is not a glob character, and
    # such a path is its own expansion (dask and open_mfdataset expand paths).

    def glob(self, path, maxdepth=None, **kwargs):
        if "?manifest=" in str(path):
            stripped = self._strip_protocol(path)
            return [stripped] if self.exists(stripped) else []
        return super().glob(path, maxdepth=maxdepth, **kwargs)

    def expand_path(self, path, recursive=False, maxdepth=None, **kwargs):
        paths = [path] if isinstance(path, str) else list(path)
        if any("?manifest=" in str(one) for one in paths):
            literal = [self._strip_protocol(one) for one in paths]
            for one in literal:
                self.info(one)  # FileNotFoundError for a missing one, as fsspec does
            return literal
        return super().expand_path(path, recursive=recursive, maxdepth=maxdepth, **kwargs)

    # ---------------------------------------------------------------- bytes

    def cat_file(self, path, start=None, end=None, **kwargs):
        target = self._resolve(path)
        if isinstance(target, DirTarget):
            raise IsADirectoryError(self._url(path))
        start, end = _clip(start, end, target.size)
        return self.kachery.read_range(target, start, end - start) if end > start else b""

    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None,
              **kwargs):
        if mode != "rb":
            raise PermissionError(f"{self._url(path)}: hash URLs are read-only (mode {mode!r})")
        target = self._resolve(path)
        if isinstance(target, DirTarget):
            raise IsADirectoryError(self._url(path))
        # Blocks aligned with the chunks kachery stores: a small read anywhere
        # fetches (and verifies) the one chunk under it, and a few recent
        # blocks stay in memory for readers that go back and forth.
        kwargs.setdefault("cache_type", "blockcache")
        if kwargs["cache_type"] == "blockcache" and cache_options is None:
            cache_options = {"maxblocks": CACHED_BLOCKS}
        return KacheryFile(self, self._strip_protocol(path), target,
                           block_size=block_size or BLOCK_SIZE, cache_options=cache_options,
                           **kwargs)


class KacheryFile(AbstractBufferedFile):
    """An open hash URL: random access, each range read through the core."""

    def __init__(self, fs, path, target, **kwargs):
        self.target = target
        super().__init__(fs, path, mode="rb", size=target.size, **kwargs)

    def _fetch_range(self, start, end):
        start, end = _clip(start, end, self.target.size)
        return self.fs.kachery.read_range(self.target, start, end - start) if end > start else b""


class Sha1FileSystem(KacheryFileSystem):
    """``sha1://<hash>[/<name>][?manifest=<hash>]``: one stored file."""

    protocol = ("sha1",)


class Md5FileSystem(KacheryFileSystem):
    """``md5://<hash>[/<name>]``: one stored file."""

    protocol = ("md5",)


class Sha1DirFileSystem(KacheryFileSystem):
    """``sha1dir://<hash>[.<label>]/<path>``: a snapshot's directories and files."""

    protocol = ("sha1dir",)


def _file_info(name, size, algorithm, digest):
    return {"name": name, "size": size, "type": "file", "algorithm": algorithm, algorithm: digest}


def _clip(start, end, size):
    """[start, end) of a file of ``size`` bytes; negative values count from the end."""
    start = 0 if start is None else (start + size if start < 0 else start)
    end = size if end is None else (end + size if end < 0 else end)
    return max(0, min(start, size)), max(0, min(end, size))
