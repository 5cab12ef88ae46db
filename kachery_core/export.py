"""Copying snapshot content out of the store into ordinary files."""

import os
import shutil

from .client import FileTarget
from .manifest import DirEntry


def export_file(kachery, target, dest):
    """Copy a FileTarget's bytes to ``dest`` atomically (temp name, then rename)."""
    source = kachery.file_path(target)
    partial = _partial_name(dest)
    try:
        # Create the temp name ourselves (O_EXCL): copyfile would write through a
        # symbolic link planted under that name in a shared directory.
        os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        shutil.copyfile(source, partial)
        os.replace(partial, dest)
    except BaseException:
        _remove_tree_quietly(partial)
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
    except BaseException:
        _remove_tree_quietly(partial)
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
    except BaseException:
        _remove_tree_quietly(partial)
        raise
    return dest


def _write_tree(kachery, entry, path, progress):
    os.makedirs(path)
    for name, file_entry in entry.files.items():
        algorithm, digest = file_entry.algorithm_and_hash
        target = FileTarget(algorithm, digest, file_entry.size, file_entry.manifest)
        shutil.copyfile(kachery.file_path(target), os.path.join(path, name))
        if progress:
            progress(file_entry.size)
    for name, sub in entry.dirs.items():
        _write_tree(kachery, sub, os.path.join(path, name), progress)


def _partial_name(dest):
    dest = os.path.abspath(os.fspath(dest))
    return os.path.join(os.path.dirname(dest), f".{os.path.basename(dest)}.kachery-partial-{os.getpid()}")


def _remove_tree_quietly(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.unlink(path)
