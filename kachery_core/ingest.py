"""Storing files and directories: hash and copy in a single pass.

A large file is read once. The reading thread hashes each block for the file
manifest (SPEC §4) as it reads it (or leaves that to the hash worker when it
keeps up); each block is then handed to two workers: the whole-file hash and
the write to the temp file (around the page cache for a large regular file,
see direct_write.py), while the next block is read. hashlib and os.pwrite release the GIL, so these really overlap.
"""

import collections
import errno
import logging
import os
import stat
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass

from .direct_write import BlockWriter, aligned_buffer
from .hashing import digest_bytes, new_hasher
from .manifest import Chunk, DirEntry, FileEntry, FileManifest, dir_manifest_bytes

log = logging.getLogger("kachery")

#: Chunk size of file manifests; files larger than this get one.
CHUNK_SIZE = 4 * 1024 * 1024
#: Files up to this size are read into memory in one go.
SMALL_FILE = 1024 * 1024
#: Regular files from this size on are written around the page cache.
DIRECT_MIN = 64 * 1024 * 1024

#: Threads that store the files of a snapshot, and the file count that uses them.
SNAPSHOT_THREADS = 4
#: Files stored by one task of those threads ...
SNAPSHOT_GROUP = 64
#: ... which are used when the first group took longer than this per file.
SLOW_FILE_SECONDS = 250e-6
PARALLEL_MIN_FILES = 16
#: Blocks in flight between the reader and the workers.
PIPELINE_DEPTH = 6
#: The reader reads and hashes a block in pieces of this size (they stay in
#: its core's cache between the read and the hash).
READ_PIECE = 512 * 1024
#: A block's chunk is hashed on the whole-hash worker instead of the reader
#: when that worker has at most this many blocks still to hash (see
#: _copy_and_hash).
WORKER_BACKLOG = 2

_workers = None


def _worker_threads():
    """Two single-thread executors (whole-file hash, writes): each runs its
    jobs in submission order."""
    global _workers
    if _workers is None:
        _workers = tuple(ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"kachery-{name}")
                         for name in ("hash", "write"))
    return _workers


@dataclass(frozen=True)
class StoredFile:
    """What storing one file produced."""

    algorithm: str
    digest: str
    size: int
    manifest: str | None = None  # sha1 of the file manifest, for large sha1 files

    def url(self, name=None):
        text = f"{self.algorithm}://{self.digest}"
        if name:
            text += f"/{name}"
        if self.manifest:
            text += f"?manifest={self.manifest}"
        return text


class HashOnly:
    """A batch that keeps nothing (``kachery-store --only-hash``): files are
    hashed in place, manifests computed, no object written anywhere."""

    by_reference = True

    def write_bytes(self, data, algorithm, digest):
        pass

    def hash_in_place(self, source, algorithm, path, progress=None):
        return hash_once(source, algorithm, progress)


def store_path(batch, path, algorithm="sha1", progress=None):
    """Hash and copy the file at ``path`` into ``batch``; return a StoredFile.
    ``progress(bytes)`` is told as the bytes are read (a large file: per block)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):  # else read(2) fails naming the descriptor, not the path
            raise IsADirectoryError(errno.EISDIR, "is a directory (store it with store_dir)",
                                    os.fspath(path))
        # A pipe (`kachery-store /dev/stdin`) reports size 0: stream it, never slurp it
        if stat.S_ISREG(info.st_mode) and info.st_size <= SMALL_FILE:
            stored = store_data(batch, _read_small(fd, info.st_size), algorithm)
            if progress:
                progress(stored.size)
        else:
            with open(fd, "rb", buffering=0, closefd=False) as source:
                stored = _store_large(batch, source, algorithm, os.fspath(path), progress)
    finally:
        os.close(fd)
    return stored


def _read_small(fd, size):
    """All of a small regular file, in one read when it still has the size
    fstat gave (a short read of a regular file is its end): four system calls
    per file in all, which matters for 10,000 files."""
    data = os.read(fd, size + 1)
    if len(data) <= size:
        return data
    parts = [data]  # it grew meanwhile: read on to its end
    while True:
        more = os.read(fd, 1 << 16)
        if not more:
            return b"".join(parts)
        parts.append(more)


def store_data(batch, data, algorithm="sha1"):
    """Store bytes already in memory (also used for manifests and text)."""
    digest = digest_bytes(algorithm, data)
    batch.write_bytes(data, algorithm, digest)
    return StoredFile(algorithm, digest, len(data))


def _store_large(batch, source, algorithm, path=None, progress=None):
    if getattr(batch, "by_reference", False) and path is not None:
        # A batch that keeps no local copy (kachery-store --upload-only, see
        # upload.py) hashes the file in place and sends it from ``path``.
        size, digest, chunks = batch.hash_in_place(source, algorithm, path, progress)
    else:
        size, digest, chunks = _copy_to_temp(batch, source, algorithm, progress, path)
    if not chunks or len(chunks) < 2:
        return StoredFile(algorithm, digest, size)
    manifest = FileManifest(size, digest, tuple(chunks))
    stored_manifest = store_data(batch, manifest.to_bytes(), "sha1")
    return StoredFile(algorithm, digest, size, stored_manifest.digest)


def _copy_to_temp(batch, source, algorithm, progress=None, path=None):
    """Copy ``source`` into a new temp file of ``batch``; return (size, digest, chunks).
    Raises SourceChanged if a regular file changed size or mtime meanwhile."""
    before = _stat_of(source)
    regular = before is not None and stat.S_ISREG(before.st_mode)
    fd, temp_path = batch.store.create_temp()
    writer = None
    try:
        writer = BlockWriter(fd, temp_path, direct=regular and before.st_size >= DIRECT_MIN)
        size, digest, chunks = _copy_and_hash(source, writer, algorithm, progress)
        writer.finish(size)
        if regular:
            _check_unchanged(source, before, size, path)
    except BaseException:
        if writer is not None:
            writer.close()
        os.close(fd)
        os.unlink(temp_path)
        raise
    os.close(fd)
    batch.add(temp_path, algorithm, digest)
    return size, digest, chunks


def _stat_of(source):
    """fstat of a file object, None for one without a descriptor (BytesIO)."""
    try:
        return os.fstat(source.fileno())
    except (AttributeError, OSError, ValueError):
        return None


def _check_unchanged(source, before, size, path):
    """A file written to, cut or grown while we read it gives a copy whose hash
    names no version of it: refuse it (SourceChanged)."""
    after = os.fstat(source.fileno())
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns) or size != before.st_size:
        from .transport import SourceChanged  # here: transport costs 2 ms of every store's start

        raise SourceChanged(path or getattr(source, "name", "the source"))


def _copy_and_hash(source, writer, algorithm, progress=None):
    """Copy ``source`` with ``writer`` (a BlockWriter; None: no copy) while
    hashing; return (size, digest, chunks). ``progress(bytes)`` is told of
    each block as it is read.

    The reading thread hashes each block's chunk (sha1; for md5, the whole
    file) as it reads it, piece by piece, while each piece is still in its
    core's cache. Two single-thread workers, decoupled from each other and
    from the reader, hash the whole file (sha1) and write the blocks; when
    the hash worker has little left to do (WORKER_BACKLOG), it also takes
    the chunk of the next block, since the reader's core does the read(2)
    copies besides. A ring of buffers lets each run ahead of the slowest; a
    buffer is reused only after every worker is done with it. Blocks are
    one chunk long, so every write but the last is aligned.

    Measured on the 2-core bench VM (1 GiB, cached, O_DIRECT writes, the
    pipeline alone, 3 rounds per alternation): the worker taking every 6th
    chunk 0.69-0.71 s, the reader hashing every chunk itself 0.75-0.80 s,
    against 0.77-0.85 s for the reader only reading and three workers
    (whole, chunks, writes) hashing 4 MiB blocks another core had filled; in
    a second alternation, this rule 0.64-0.67 s, every 6th 0.63-0.69 s.
    """
    whole_worker, write_worker = _worker_threads()
    whole = new_hasher(algorithm)
    want_chunks = algorithm == "sha1"
    free = [aligned_buffer(CHUNK_SIZE) for _ in range(PIPELINE_DEPTH)]
    in_flight = collections.deque()
    chunks = []
    offset = 0
    try:
        while True:
            buffer = free.pop() if free else _retire(in_flight, chunks)
            # The reader's core also does the read(2) copies: when the hash
            # worker is keeping up, it hashes this block's chunk as well.
            on_worker = want_chunks and _backlog(in_flight) <= WORKER_BACKLOG
            hasher = whole if not want_chunks else _NO_HASH if on_worker else new_hasher("sha1")
            count = _read_hashing(source, buffer, hasher)
            if not count:
                break
            block = memoryview(buffer)[:count]
            if on_worker:
                whole_job = whole_worker.submit(_whole_and_chunk, whole, block, offset)
            elif want_chunks:
                whole_job = whole_worker.submit(whole.update, block)
                chunks.append(Chunk(offset, offset + count, hasher.hexdigest()))
            else:
                whole_job = None
            in_flight.append((
                buffer,
                whole_job,
                write_worker.submit(writer.write, buffer, count, offset) if writer else None,
            ))
            offset += count
            if progress:
                progress(count)
        while in_flight:
            _retire(in_flight, chunks)
    except BaseException as error:
        _abandon(in_flight, interrupted=not isinstance(error, Exception))
        raise
    return offset, whole.hexdigest(), sorted(chunks, key=lambda chunk: chunk.start)


def hash_once(source, algorithm, progress=None):
    """(size, digest, chunks) of a file, read once and not copied
    (kachery-store --upload-only): the whole-file and chunk hashes run on two
    threads, as for a store.

    Read with read(2), not through memory mappings, although mapping saved a
    copy (1 GiB: 0.77 s against 0.95 s on the 2-core VM): a mapped file that
    another program truncates kills the reader with SIGBUS, which Python
    cannot catch. A read sees a short file instead, and the caller's
    before/after check of size and mtime reports "changed while it was
    being stored".
    """
    return _copy_and_hash(source, None, algorithm, progress)


def _abandon(in_flight, interrupted):
    """After a failure: let no queued job start and wait for the running ones,
    so no worker writes to the temp file after the caller closes it (its
    descriptor number could already belong to another file by then).

    After an interrupt (Ctrl-C) the executors are shut down as well: one that
    arrives inside ``submit()`` while it starts the worker thread leaves a
    thread its executor never registered, which only a shutdown wakes; without
    it the interpreter hangs at exit waiting for that thread.
    """
    global _workers
    futures = [future for _, *jobs in in_flight for future in jobs if future is not None]
    for future in futures:
        future.cancel()
    wait(futures)
    if interrupted and _workers is not None:
        workers, _workers = _workers, None
        for executor in workers:
            executor.shutdown(wait=False, cancel_futures=True)


def _retire(in_flight, chunks):
    """Wait for the oldest block's work; record a chunk hashed by the worker;
    return its buffer."""
    buffer, whole_job, write_job = in_flight.popleft()
    chunk = whole_job.result() if whole_job is not None else None
    if write_job is not None:
        write_job.result()
    if chunk is not None:
        chunks.append(chunk)
    return buffer


def _backlog(in_flight):
    """Blocks the whole-hash worker has not finished."""
    return sum(1 for _, whole_job, _ in in_flight if whole_job is not None and not whole_job.done())


def _whole_and_chunk(whole, block, offset):
    """On the hash worker: the whole-file hash of a block, and its Chunk."""
    whole.update(block)
    return Chunk(offset, offset + len(block), digest_bytes("sha1", block))


class _NoHash:
    """What the reader feeds a block whose chunk the worker hashes."""

    def update(self, data):
        pass


_NO_HASH = _NoHash()


def _read_hashing(source, buffer, hasher):
    """Fill ``buffer`` from ``source`` unless EOF comes first, feeding
    ``hasher`` each piece right after it is read; return the count."""
    view = memoryview(buffer)
    filled = 0
    while filled < len(buffer):
        got = source.readinto(view[filled:filled + READ_PIECE])
        if not got:
            break
        hasher.update(view[filled:filled + got])
        filled += got
    return filled



# ---------------------------------------------------------------- snapshots

def snapshot_dir(batch, path, progress=None):
    """Store every file under ``path``; return its DirEntry tree.

    Symbolic links are followed (a link cycle is an error); sockets, devices
    and FIFOs are skipped with a warning (SPEC §3). The tree is walked first;
    then its files are stored by a few threads at once, because storing a
    small file is mostly system calls that release the GIL.
    """
    files = []  # (DirEntry, name, path) of every regular file
    tree = _walk(os.fspath(path), files, ancestors=())
    for (node, name, _), stored in zip(files, _store_all(batch, files, progress)):
        node.files[name] = FileEntry(stored.size, stored.digest, None, stored.manifest)
    return tree


def _store_all(batch, files, progress):
    """StoredFile of each (node, name, path), in order."""
    paths = [file_path for _, _, file_path in files]

    def store_each(some_paths):
        return [store_path(batch, file_path, "sha1", progress) for file_path in some_paths]

    if len(paths) < PARALLEL_MIN_FILES:
        return store_each(paths)
    # Threads help when files wait for the disk (reads from a cold cache,
    # temp files to create), and only cost GIL hand-offs when they do not:
    # 10,000 cached small files hashed for an upload take 1.1 s on one thread
    # and 1.9 s on four, read cold 4.2-5.2 s on one and 3.0-3.6 s on four. So
    # the first group, timed on this thread, decides.
    groups = [paths[start:start + SNAPSHOT_GROUP] for start in range(0, len(paths), SNAPSHOT_GROUP)]
    started = time.monotonic()
    stored = store_each(groups[0])
    if time.monotonic() - started < len(groups[0]) * SLOW_FILE_SECONDS:
        for group in groups[1:]:
            stored += store_each(group)
        return stored
    # A task per group: a task per file costs more in the pool's own locking
    # than storing a small file does.
    with ThreadPoolExecutor(max_workers=SNAPSHOT_THREADS,
                            thread_name_prefix="kachery-snapshot") as pool:
        for group in pool.map(store_each, groups[1:]):
            stored += group
    return stored


def _walk(path, files, ancestors):
    identity = _identity(path)
    if identity in ancestors:
        raise OSError(f"symbolic link cycle at {path}")
    ancestors = ancestors + (identity,)
    result = DirEntry()
    with os.scandir(path) as entries:
        entries = list(entries)
    for entry in entries:
        kind = _kind(entry)
        if kind == "dir":
            result.dirs[entry.name] = _walk(entry.path, files, ancestors)
        elif kind == "file":
            files.append((result, entry.name, entry.path))
        else:
            log.warning("skipping %s (%s)", entry.path, kind)
    return result


def _identity(path):
    info = os.stat(path)
    return info.st_dev, info.st_ino


def _kind(entry):
    try:
        mode = entry.stat(follow_symlinks=True).st_mode
    except FileNotFoundError:
        return "broken symbolic link"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "file"
    return "special file"


def store_manifest(batch, directory):
    """Store the canonical manifest of ``directory``; return its sha1."""
    return store_data(batch, dir_manifest_bytes(directory), "sha1").digest
