"""Batched flushing, after git's ``core.fsyncMethod=batch``.

Objects of one command are written to temporary files, then made durable with
one flush of the file system's data, then renamed to their object names, then
the directory entries are made durable with a second flush. That is two
``syncfs(2)`` calls per command, however many objects it wrote, instead of an
fsync per file, and it keeps the rule that an object name never points at bytes
that might not be on disk. (A command that wrote only a handful of files
fsyncs them one by one instead: as cheap, and it does not wait for unrelated
dirty data of other processes on the same file system.)
"""

import os

SYNC_FILE_RANGE_WRITE = 2

_libc = None


def _load_libc():
    global _libc
    if _libc is None:
        import ctypes.util  # here: only large buffered copies and big batches need it

        _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    return _libc


#: Up to this many files are flushed one by one; more take one syncfs(2).
FEW_FILES = 8


def flush_paths(paths, root):
    """Make ``paths`` (files or directories under ``root``) durable.

    A handful are flushed one by one with fsync, which waits for exactly their
    data; a larger batch takes one syncfs of the whole file system, which
    costs the same however many files the command wrote.
    """
    if len(paths) > FEW_FILES:
        flush_filesystem(root)
        return
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def flush_filesystem(path):
    """Flush all dirty data and metadata of the file system holding ``path``."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        syncfs = getattr(_load_libc(), "syncfs", None)
        if syncfs is None or syncfs(fd) != 0:
            os.sync()  # no syncfs(2) here (or it failed): flush everything instead
    finally:
        os.close(fd)


def start_writeback(fd, offset, length):
    """Ask the kernel to start writing a file range to disk without waiting.

    Issued while a large file is still being copied, so that the final flush
    only waits for the tail instead of the whole file.
    """
    import ctypes

    try:
        _load_libc().sync_file_range(
            fd, ctypes.c_longlong(offset), ctypes.c_longlong(length), SYNC_FILE_RANGE_WRITE
        )
    except AttributeError:  # not Linux: the final flush does all the work
        pass
