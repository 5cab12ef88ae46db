"""The kachery 0.6.x Python API on top of :class:`Kachery`.

Every function accepts per-call overrides: ``storage_dir``, ``remotes`` (a list
of base URLs to read from, replacing the configured ones; ``[]`` means local
only) and, for the store functions, ``upload`` (also send the objects to the
first remote) and ``upload_only`` (do not keep a local copy).

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

from .client import DirTarget, Kachery
from .config import load_config
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
    """A Kachery client from the configuration plus these overrides."""
    config = load_config()
    if remotes is not None:
        config = config.with_remote_urls(remotes)
    return Kachery(config.with_overrides(storage_dir=storage_dir))


# -------------------------------------------------------------------- store

def store_file(path, basename=None, algorithm="sha1", **options):
    """Store a file; return its URL (``sha1://<h>/<basename>[?manifest=...]``)."""
    kachery = client(options.get("storage_dir"), options.get("remotes"))
    stored = _store(kachery, lambda batch: kachery.store_file(path, algorithm, batch), options)
    return stored.url(basename or os.path.basename(os.fspath(path)))


def store_dir(dirpath, label=None, **options):
    """Snapshot a directory; return ``sha1dir://<h>.<label>``."""
    if label is not None and "/" in label:  # SPEC §1: it would read as a path in the URL
        raise ValueError(f"label {label!r} may not contain '/'")
    kachery = client(options.get("storage_dir"), options.get("remotes"))
    digest, _ = _store(kachery, lambda batch: kachery.store_dir(dirpath, batch), options)
    label = label if label is not None else os.path.basename(os.path.abspath(dirpath))
    return dir_url(digest, label)


def store_text(text, basename="file.txt", **options):
    return _store_bytes(text.encode("utf-8"), basename, options)


def store_object(obj, basename="file.json", **options):
    return _store_bytes(json.dumps(obj).encode("utf-8"), basename, options)


def store_npy(array, basename="file.npy", **options):
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return _store_bytes(buffer.getvalue(), basename, options)


def _store_bytes(data, basename, options):
    kachery = client(options.get("storage_dir"), options.get("remotes"))
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

@none_if_missing
def load_file(url, dest=None, **options):
    """Local path of the file at ``url`` (fetched if needed); copy to ``dest`` if given.

    Returns None when no store or remote has it (kachery 0.6.x behaviour).
    """
    kachery = client(options.get("storage_dir"), options.get("remotes"))
    target = kachery.resolve_file(url)
    if dest is None:
        return kachery.file_path(target)
    from .export import export_file  # (fetching's imports: only when copying)

    return export_file(kachery, target, dest)


@none_if_missing
def load_bytes(url, start=None, end=None, **options):
    """Bytes [start, end) of the file at ``url``; only that range is fetched when possible."""
    kachery = client(options.get("storage_dir"), options.get("remotes"))
    target = kachery.resolve_file(url)
    return b"".join(kachery.iter_bytes(target, start or 0, end))


@none_if_missing
def load_text(url, **options):
    return load_bytes.__wrapped__(url, **options).decode("utf-8")


@none_if_missing
def load_object(url, **options):
    return json.loads(load_bytes.__wrapped__(url, **options))


@none_if_missing
def load_npy(url, **options):
    import numpy as np

    return np.load(io.BytesIO(load_bytes.__wrapped__(url, **options)), allow_pickle=False)


@none_if_missing
def read_dir(url, recursive=True, **options):
    """The snapshot (sub)directory at ``url`` as {"files": {...}, "dirs": {...}}."""
    kachery = client(options.get("storage_dir"), options.get("remotes"))
    target = kachery.resolve_dir(url)
    return dir_to_dict(target.entry, recursive)


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


@none_if_missing
def get_file_info(url, **options):
    """{"path", "size", "sha1" or "md5", ["manifest"]} of the file at ``url``
    (``path`` is None when the file is not on this machine: nothing is downloaded)."""
    kachery = client(options.get("storage_dir"), options.get("remotes"))
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
    "read_dir", "get_file_info", "DirEntry", "FileEntry",
]
