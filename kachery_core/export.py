"""Copying snapshot content out of the store into ordinary files."""

import errno
import os
import shutil

from .client import FileTarget
from .errors import HashMismatch
from .fetching import SMALL_MAX
from .manifest import DirEntry
from .store import pid_alive
from .verify import hash_file

#: Loading a snapshot, the small files fetched ahead of the one being written ...
AHEAD_FILES = 64
#: ... as long as they add up to at most this many bytes.
AHEAD_BYTES = 32 * 1024 * 1024


def export_file(kachery, target, dest):
    """Copy a FileTarget's bytes to ``dest`` atomically (temp name, then rename).

    An object of the store is hashed first (HashMismatch, nothing at ``dest``):
    it may have rotted since it was stored. Cached and downloaded objects were
    verified by this process already (cache.py)."""
    source = kachery.file_path(target)
    if kachery.store.has(target.algorithm, target.digest):
        got = hash_file(source, target.algorithm)
        if got != target.digest:
            raise HashMismatch(target.digest, got, f"stored object {source}")
    partial = _partial_name(dest)
    try:
        # Create the temp name ourselves (O_EXCL): opening it plainly would
        # write through a symbolic link planted under that name in a shared
        # directory.
        _copy_to_new_file(source, partial)
        os.replace(partial, dest)
    except BaseException as error:
        _remove_tree_quietly(partial)
        _name_destination(error, partial, dest)
        raise
    return os.fspath(dest)


def export_range(kachery, target, dest, start, end):
    """Write bytes [start, end) of a FileTarget to ``dest`` atomically.

    Only the chunks covering the range are fetched when the file is remote
    and has a trusted file manifest (see Kachery.read_range).
    """
    partial = _partial_name(dest)
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with open(fd, "wb") as out:
            for block in kachery.iter_bytes(target, start, end):
                out.write(block)
        os.replace(partial, dest)
    except BaseException as error:
        _remove_tree_quietly(partial)
        _name_destination(error, partial, dest)
        raise
    return os.fspath(dest)


def export_dir(kachery, entry: DirEntry, dest, progress=None):
    """Materialize a snapshot directory at ``dest`` (which must not exist).

    The tree is built under a temporary sibling name and renamed into place at
    the end, so ``dest`` never holds a partial copy.
    """
    dest = os.fspath(dest)
    if os.path.lexists(dest):
        raise FileExistsError(17, "destination exists", dest)
    partial = _partial_name(dest)
    try:
        _write_tree(kachery, entry, partial, progress)
        os.rename(partial, dest)
    except BaseException as error:
        _remove_tree_quietly(partial)
        _name_destination(error, partial, dest)
        raise
    return dest


def _name_destination(error, partial, dest):
    """An error about the temporary name is about ``dest`` for the user: the
    temp name is ours and is gone already."""
    if isinstance(error, OSError) and error.filename is not None:
        if os.fspath(error.filename).startswith(os.fspath(partial)):
            error.filename = os.fspath(dest) + os.fspath(error.filename)[len(os.fspath(partial)):]


def _write_tree(kachery, entry, path, progress):
    files = _make_dirs(entry, path)
    ahead = _FetchAhead(kachery, [target for _, target in files])
    for index, (dest, target) in enumerate(files):
        ahead.reached(index)
        data = ahead.fetched_bytes(index)
        if data is None:
            _copy_to_new_file(kachery.file_path(target), dest)
        else:
            with open(dest, "xb") as file:
                file.write(data)
        if progress:
            progress(target.size)


def _make_dirs(entry, path):
    """Create the snapshot's directories under ``path``; return [(file path,
    FileTarget)] in name order, depth first. A loop, not recursion: a tree
    may be nested deeper than Python's recursion limit."""
    files, pending = [], [(entry, path)]
    while pending:
        directory, where = pending.pop()
        os.makedirs(where)
        for name in sorted(directory.files):
            file_entry = directory.files[name]
            algorithm, digest = file_entry.algorithm_and_hash
            files.append((os.path.join(where, name),
                          FileTarget(algorithm, digest, file_entry.size, file_entry.manifest)))
        pending.extend((sub, os.path.join(where, name)) for name, sub in sorted(directory.dirs.items(), reverse=True))
    return files


class _FetchAhead:
    """Fetches the small remote files that come next while earlier ones are
    written, so that loading a snapshot from a remote does not wait one round
    trip per file: they arrive in batches (POST /api/download where the
    server has it) into the fetcher's memory, are written from there, and
    reach the cache in the background."""

    def __init__(self, kachery, targets):
        self.kachery = kachery
        self.targets = targets
        self.looked = 0  # targets before this index were sorted into remote or not
        self.remote = set()  # indexes of the small remote files among them

    def reached(self, index):
        """File ``index`` is about to be written."""
        if index < self.looked - AHEAD_FILES // 2:
            return
        end, total = index, 0
        while end < min(index + AHEAD_FILES, len(self.targets)):
            total += self.targets[end].size
            if end > index and total > AHEAD_BYTES:
                break
            end += 1
        new = [i for i in range(max(index, self.looked), end) if self._remote_small(self.targets[i])]
        self.looked = max(self.looked, end)
        self.remote.update(new)
        if new:
            self.kachery.fetcher.prefetch_small(
                [(self.targets[i].algorithm, self.targets[i].digest) for i in new])

    def fetched_bytes(self, index):
        """File ``index``'s bytes if it is a small remote file (from the
        fetcher's memory); None for a file to copy from this machine."""
        if index not in self.remote:
            return None
        self.remote.discard(index)
        return self.kachery.small_file_bytes(self.targets[index])

    def _remote_small(self, target):
        return (not target.manifest and target.size <= SMALL_MAX
                and self.kachery.find_local(target.algorithm, target.digest) is None
                and self.kachery.fetcher is not None)  # (only now: it imports the HTTP client)


def _copy_to_new_file(source_path, dest):
    """Copy a file to ``dest``, which must not exist yet.

    copy_file_range(2) shares the blocks where the file system can (XFS,
    btrfs: a 1 GiB object is "copied" at once, and later writes to either copy
    do not touch the other) and copies inside the kernel elsewhere; a kernel
    or file system that refuses it gets a plain copy.
    """
    with open(source_path, "rb") as source, open(dest, "xb") as target:
        if not _copied_in_kernel(source, target):
            shutil.copyfileobj(source, target, 1024 * 1024)


def _copied_in_kernel(source, target):
    """Copy ``source`` into the empty ``target`` with copy_file_range(2);
    False when it is refused before anything was copied."""
    if not hasattr(os, "copy_file_range"):
        return False
    size = os.fstat(source.fileno()).st_size
    copied = 0
    try:
        while copied < size:
            got = os.copy_file_range(source.fileno(), target.fileno(), size - copied)
            if not got:
                raise OSError(f"{source.name} ended after {copied} of {size} bytes")
            copied += got
    except OSError as error:
        if copied or error.errno not in _NO_COPY_FILE_RANGE:
            raise
        return False
    return True


#: errno values with which copy_file_range says "not here" (before copying anything).
_NO_COPY_FILE_RANGE = (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM)


#: Partial names this process has used (those still there are in progress).
_partials = set()


def remove_partials():
    """Remove this process's partial copies now (a command stopped at once
    by Ctrl-C or SIGTERM, see kachery_cli/interrupt.py)."""
    for path in list(_partials):
        _remove_tree_quietly(path)


def _partial_name(dest):
    """The hidden name a copy is written under before it becomes ``dest``.
    Partial copies of the same destination left by killed processes (their
    PID is gone) are removed first: a killed load of a large file would
    otherwise leave its bytes beside the destination for ever."""
    dest = os.path.abspath(os.fspath(dest))
    directory, prefix = os.path.dirname(dest), f".{os.path.basename(dest)}.kachery-partial-"
    try:
        names = [name for name in os.listdir(directory) if name.startswith(prefix)]
    except OSError:
        names = []
    for name in names:
        pid = name[len(prefix):]
        if pid.isdigit() and not pid_alive(int(pid)):
            _remove_tree_quietly(os.path.join(directory, name))
    partial = os.path.join(directory, f"{prefix}{os.getpid()}")
    _partials.add(partial)
    return partial


def _remove_tree_quietly(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.unlink(path)
