"""The kachery 0.6.x Python API on top of :class:`Kachery`.

Every function accepts per-call overrides: ``storage_dir``, ``remotes`` (a list
of base URLs to read from, replacing the configured ones; ``[]`` means local
only) and, for the store functions, ``upload`` (also send the objects to the
first remote) and ``upload_only`` (do not keep a local copy).

Settings made with the 0.6 calls ``set_config`` / ``with config(...)``
(compat06.py) are the defaults of these options. As in 0.6, the functions
that read also take plain local paths (``load_file("data/x.csv")``,
``get_file_info(path)``, ``read_dir("data/")``, ``get_file_hash(path)``).

As in kachery 0.6.x, the load functions return None when no store or remote
has the object (old scripts test ``if ka.load_file(url) is None``); every
other failure (invalid URL, corrupt data, unreachable remote) raises. Code
that prefers an exception uses :class:`kachery_core.client.Kachery`, which
raises ``ObjectNotFound`` (a ``FileNotFoundError``).
"""

import functools
import io
import json
import os
import shutil
from dataclasses import replace

from . import compat06
from .client import DirTarget, Kachery
from .settings import Remote, load_config
from .errors import ObjectNotFound
from .manifest import DirEntry, FileEntry
from .urls import dir_url, parse_url


def none_if_missing(load):
    """kachery 0.6.x behaviour: a missing object gives None, not an exception."""

    @functools.wraps(load)
    def wrapper(*args, **kwargs):
        try:
            return load(*args, **kwargs)
        except ObjectNotFound:
            return None

    return wrapper


def client(storage_dir=None, remotes=None):
    """A Kachery client from the configuration plus these overrides
    (``remotes``: URLs, or settings.Remote entries carrying their own token)."""
    config = load_config()
    if remotes is not None:
        config = config.with_remote_urls([getattr(r, "url", r) for r in remotes])
        tokens = {r.url: r.token for r in remotes if isinstance(r, Remote) and r.token}
        if tokens:
            config = replace(config, remotes=tuple(
                replace(r, token=tokens.get(r.url, r.token)) for r in config.remotes))
    return Kachery(config.with_overrides(storage_dir=storage_dir))


def _with_defaults(function):
    """Per-call options over the 0.6 settings (compat06.defaults)."""
    @functools.wraps(function)
    def wrapper(*args, **options):
        merged = compat06.defaults()
        merged.update({key: value for key, value in options.items() if value is not None})
        return function(*args, **merged)
    return wrapper


def _client(options):
    return client(options.get("storage_dir"), options.get("remotes"))


def is_hash_url(text):
    return isinstance(text, str) and text.split("://", 1)[0] in ("sha1", "md5", "sha1dir") \
        and "://" in text


# -------------------------------------------------------------------- store

@_with_defaults
def store_file(path, basename=None, **options):
    """Store a file; return its URL (``sha1://<h>/<basename>[?manifest=...]``);
    ``algorithm="md5"`` for an md5 URL."""
    algorithm = options.get("algorithm", "sha1")
    kachery = _client(options)
    stored = _store(kachery, lambda batch: kachery.store_file(path, algorithm, batch), options)
    return stored.url(basename or os.path.basename(os.fspath(path)))


@_with_defaults
def store_dir(dirpath, label=None, **options):
    """Snapshot a directory; return ``sha1dir://<h>.<label>``."""
    if label is not None and "/" in label:  # SPEC §1: it would read as a path in the URL
        raise ValueError(f"label {label!r} may not contain '/'")
    kachery = _client(options)
    digest, _ = _store(kachery, lambda batch: kachery.store_dir(dirpath, batch), options)
    label = label if label is not None else os.path.basename(os.path.abspath(dirpath))
    return dir_url(digest, label)


@_with_defaults
def store_text(text, basename="file.txt", **options):
    return _store_bytes(text.encode("utf-8"), basename, options)


@_with_defaults
def store_object(obj, basename="file.json", **options):
    return _store_bytes(json.dumps(obj).encode("utf-8"), basename, options)


@_with_defaults
def store_npy(array, basename="file.npy", **options):
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return _store_bytes(buffer.getvalue(), basename, options)


def _store_bytes(data, basename, options):
    kachery = _client(options)
    stored = _store(kachery, lambda batch: kachery.store_data(data, "sha1", batch), options)
    return stored.url(basename)


def _store(kachery, action, options):
    """Run ``action(batch)`` and upload its objects when asked to."""
    upload = options.get("upload") or options.get("upload_only")
    if not upload:
        return action(None)
    from .upload import store_and_upload

    return store_and_upload(kachery, action, keep_local=not options.get("upload_only"))


# --------------------------------------------------------------------- load

@_with_defaults
@none_if_missing
def load_file(url, dest=None, **options):
    """Local path of the file at ``url`` (fetched if needed); copy to ``dest`` if given.

    Returns None when no store or remote has it (kachery 0.6.x behaviour).
    A plain local path is its own answer (None if there is no such file).
    """
    if not is_hash_url(url):
        if not os.path.isfile(url):
            return None
        return shutil.copyfile(url, dest) if dest is not None else os.fspath(url)
    kachery = _client(options)
    target = kachery.resolve_file(url)
    if dest is None:
        return kachery.file_path(target)
    from .export import export_file  # (fetching's imports: only when copying)

    return export_file(kachery, target, dest)


@_with_defaults
@none_if_missing
def load_bytes(url, start=None, end=None, **options):
    """Bytes [start, end) of the file at ``url``; only that range is fetched when possible."""
    return _bytes_of(url, start, end, options)


@_with_defaults
@none_if_missing
def load_text(url, **options):
    return _bytes_of(url, None, None, options).decode("utf-8")


@_with_defaults
@none_if_missing
def load_object(url, **options):
    return json.loads(_bytes_of(url, None, None, options))


@_with_defaults
@none_if_missing
def load_npy(url, **options):
    import numpy as np

    return np.load(io.BytesIO(_bytes_of(url, None, None, options)), allow_pickle=False)


def _bytes_of(url, start, end, options):
    """Bytes [start, end) of a hash URL or a local file; raise ObjectNotFound."""
    if not is_hash_url(url):
        try:
            with open(url, "rb") as file:
                file.seek(start or 0)
                return file.read() if end is None else file.read(max(0, end - (start or 0)))
        except FileNotFoundError:
            raise ObjectNotFound(os.fspath(url), "this machine") from None
    kachery = _client(options)
    target = kachery.resolve_file(url)
    return b"".join(kachery.iter_bytes(target, start or 0, end))


@_with_defaults
@none_if_missing
def read_dir(url, recursive=True, **options):
    """The snapshot (sub)directory at ``url`` as {"files": {...}, "dirs": {...}};
    a local directory the same way, each file with its sha1 (as 0.6 did)."""
    if not is_hash_url(url):
        return _local_dir_to_dict(url, recursive) if os.path.isdir(url) else None
    kachery = _client(options)
    target = kachery.resolve_dir(url)
    return dir_to_dict(target.entry, recursive)


@_with_defaults
def get_file_hash(url, **options):
    """The sha1 (or md5, for an md5 URL) of a file: from its URL, without
    fetching it, or computed for a local path. None if there is no such file."""
    info = get_file_info(url, **options)
    if info is None:
        return None
    return info.get("sha1") or info.get("md5")


def _hash_local(path, algorithm):
    from .verify import hash_file

    return hash_file(path, algorithm)


def _local_dir_to_dict(path, recursive):
    files, dirs = {}, {}
    with os.scandir(path) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.is_dir():
                dirs[entry.name] = _local_dir_to_dict(entry.path, recursive) if recursive else {}
            elif entry.is_file():
                files[entry.name] = {"size": entry.stat().st_size,
                                     "sha1": _hash_local(entry.path, "sha1")}
    return {"files": files, "dirs": dirs}


def dir_to_dict(entry, recursive=True):
    files = {name: file_entry_dict(e) for name, e in sorted(entry.files.items())}
    dirs = {
        name: dir_to_dict(sub, recursive) if recursive else {}
        for name, sub in sorted(entry.dirs.items())
    }
    return {"files": files, "dirs": dirs}


def file_entry_dict(entry):
    info = {"size": entry.size}
    for key in ("sha1", "md5", "manifest"):
        if getattr(entry, key):
            info[key] = getattr(entry, key)
    return info


@_with_defaults
@none_if_missing
def get_file_info(url, **options):
    """{"path", "size", "sha1" or "md5", ["manifest"]} of the file at ``url``
    (``path`` is None when the file is not on this machine: nothing is
    downloaded); of a local file: its path, size and hash."""
    if not is_hash_url(url):
        if not os.path.isfile(url):
            return None
        algorithm = options.get("algorithm", "sha1")
        return {"path": os.fspath(url), "size": os.path.getsize(url),
                algorithm: _hash_local(url, algorithm)}
    kachery = _client(options)
    return file_info(kachery, url)


def file_info(kachery, url):
    """Info dict of a file URL, or of a snapshot directory (no local path then).

    Answered from the manifests and a HEAD (the size), never from content:
    ``path`` is the local copy when there is one, else None."""
    parsed = parse_url(url) if isinstance(url, str) else url
    target = kachery.resolve(parsed)
    if isinstance(target, DirTarget):
        count, total = target.entry.count()
        return {"url": str(parsed), "type": "dir", "sha1dir": parsed.hash,
                "files": count, "size": total}
    info = {"url": str(parsed), "type": "file",
            "path": kachery.find_local(target.algorithm, target.digest),
            "size": target.size, target.algorithm: target.digest}
    if target.manifest:
        info["manifest"] = target.manifest
    return info


__all__ = [
    "store_file", "store_dir", "store_text", "store_object", "store_npy",
    "load_file", "load_bytes", "load_text", "load_object", "load_npy",
    "read_dir", "get_file_info", "get_file_hash", "DirEntry", "FileEntry",
]
