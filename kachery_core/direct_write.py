"""Writing a large temp file around the page cache (O_DIRECT).

Why not through the page cache: measured on the 2-core bench VM (issue 15), a
buffered copy of 1 GiB costs 0.5-2.5 s of system time just to allocate and
fill 1 GiB of fresh page-cache pages, and how much depends on whether the
hypervisor has taken those pages back (free page reporting), which is what
made the store's time swing between runs. A direct write hands the block to
the disk from our own reused buffer: no page allocation, no copy on our two
cores, and the data is on the device when the write returns (the final fsync
only flushes the device cache and the metadata). ``copy_file_range`` into
the temp file, then hashing the copy through a mapping, took 1.0-1.3 s
instead of 0.85-0.95 s: the in-kernel copy still allocates the pages, and
hashing through a 1 GiB mapping is slower than hashing a cache-warm buffer.

A file system that refuses O_DIRECT (tmpfs on older kernels, FUSE, some
network file systems: EINVAL at open or at the first write) gets ordinary
buffered writes, with disk writeback started as the copy goes.
"""

import errno
import mmap
import os

from .durability import start_writeback

#: Direct I/O wants offsets, lengths and buffers aligned to the logical block
#: size; a page covers every common one.
ALIGN = mmap.PAGESIZE
#: Start disk writeback every this many bytes of a buffered large copy.
WRITEBACK_STEP = 64 * 1024 * 1024
#: What a file system says when it does not do direct I/O (open(2), write(2)).
_REFUSALS = {errno.EINVAL, errno.EOPNOTSUPP}


def aligned_buffer(size):
    """A writable buffer of ``size`` bytes starting on a page boundary."""
    return mmap.mmap(-1, size)


class BlockWriter:
    """Writes a new file ``fd`` (opened at ``path``) block by block.

    ``write(buffer, count, offset)`` writes ``buffer[:count]`` at ``offset``;
    every block but the last must be a multiple of ALIGN long and ``buffer``
    must come from aligned_buffer. Blocks go around the page cache when
    ``direct`` and the file system allows it, else through it. ``finish(size)``
    gives the file its exact size; ``close()`` releases the direct descriptor
    (the caller keeps owning ``fd``). One thread writes at a time.
    """

    def __init__(self, fd, path, direct=True):
        self.fd = fd
        self.direct = _open_direct(path) if direct else None
        self._padded = False

    def write(self, buffer, count, offset):
        if self.direct is not None:
            try:
                self._write_direct(buffer, count, offset)
                return
            except OSError as error:
                if error.errno not in _REFUSALS:
                    raise
                self.close()  # refused: this block and the rest go through the cache
        write_at(self.fd, memoryview(buffer)[:count], offset)
        if (offset + count) // WRITEBACK_STEP != offset // WRITEBACK_STEP:
            start_writeback(self.fd, 0, 0)  # get the disk busy now, not at the final flush

    def _write_direct(self, buffer, count, offset):
        # The last block is written up to the next boundary (bytes past
        # ``count`` are left-overs of earlier blocks) and cut back in finish().
        length = -(-count // ALIGN) * ALIGN
        self._padded = self._padded or length != count
        write_at(self.direct, memoryview(buffer)[:length], offset)

    def finish(self, size):
        self.close()
        if self._padded:
            os.ftruncate(self.fd, size)

    def close(self):
        if self.direct is not None:
            direct, self.direct = self.direct, None
            os.close(direct)


def _open_direct(path):
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:  # not Linux
        return None
    try:
        return os.open(path, os.O_WRONLY | os.O_CLOEXEC | flag)
    except OSError as error:
        if error.errno in _REFUSALS:
            return None
        raise


def write_at(fd, data, offset):
    """Write all of ``data`` at ``offset`` (no seek position: safe while other
    threads write other ranges of the same file); return its length."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written
    return len(data)
