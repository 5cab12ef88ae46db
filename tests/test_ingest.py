"""Storing files and snapshots: single pass over the data, chunking, snapshots."""

import hashlib
import io
import logging
import os

import pytest

from kachery_core import ingest
from kachery_core.direct_write import BlockWriter
from kachery_core.manifest import dir_manifest_bytes, parse_file_manifest
from kachery_core.store import LocalStore, WriteBatch

from tree_helpers import storage_dir  # noqa: F401  (tmpfs store)
from tree_helpers import tree_to_manifest_json, write_tree


@pytest.fixture
def store(storage_dir):
    return LocalStore(storage_dir)


class CountingFile(io.FileIO):
    """A FileIO that adds every byte read through it to ``self.reads`` (SourceReads)."""

    reads = None

    def read(self, size=-1):
        data = super().read(size)
        self.reads.bytes_read += len(data or b"")
        return data

    def readall(self):
        data = super().readall()
        self.reads.bytes_read += len(data)
        return data

    def readinto(self, buffer):
        count = super().readinto(buffer)
        self.reads.bytes_read += count or 0
        return count


class SourceReads:
    """Opens of one path and the bytes read from them, through os.open/os.read
    (small files) or a file object over the descriptor (large ones)."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.opens = 0
        self.bytes_read = 0
        self.fds = set()


@pytest.fixture
def source_reads(monkeypatch, tmp_path):
    reads = SourceReads(tmp_path / "f")
    real_open, real_read, real_close = os.open, os.read, os.close

    def counting_open(path, *args, **kwargs):
        fd = real_open(path, *args, **kwargs)
        if os.fspath(path) == reads.path:
            reads.opens += 1
            reads.fds.add(fd)
        return fd

    def counting_read(fd, size):
        data = real_read(fd, size)
        if fd in reads.fds:
            reads.bytes_read += len(data)
        return data

    def counting_close(fd):
        reads.fds.discard(fd)
        real_close(fd)

    def file_over(fd, mode="r", buffering=-1, closefd=True, **kwargs):
        assert "b" in mode and buffering == 0, "ingest reads unbuffered binary files"
        assert fd in reads.fds and not closefd, "a file object over the source's descriptor"
        counted = CountingFile(fd, mode.replace("b", ""), closefd=False)
        counted.reads = reads
        return counted

    monkeypatch.setattr(os, "open", counting_open)
    monkeypatch.setattr(os, "read", counting_read)
    monkeypatch.setattr(os, "close", counting_close)
    monkeypatch.setattr(ingest, "open", file_over, raising=False)
    return reads


@pytest.mark.parametrize("size", [0, 1000, ingest.SMALL_FILE + 1, 2 * ingest.CHUNK_SIZE + 5])
def test_single_pass_over_the_data(store, tmp_path, source_reads, size):
    data = os.urandom(size)
    path = tmp_path / "f"
    path.write_bytes(data)
    with WriteBatch(store) as batch:
        stored = ingest.store_path(batch, path)
    assert source_reads.opens == 1, "the source was opened more than once"
    assert source_reads.bytes_read == size, "the source was read more than once"
    assert stored.digest == hashlib.sha1(data).hexdigest()
    assert store.read_bytes("sha1", stored.digest) == data


def test_chunk_size_is_a_power_of_two_between_1_and_16_mib():
    assert ingest.CHUNK_SIZE & (ingest.CHUNK_SIZE - 1) == 0
    assert 1 << 20 <= ingest.CHUNK_SIZE <= 16 << 20


@pytest.mark.parametrize("extra", [0, 1, ingest.CHUNK_SIZE - 1])
def test_chunks_of_a_large_file(store, tmp_path, extra):
    size = 2 * ingest.CHUNK_SIZE + extra
    data = os.urandom(size)
    path = tmp_path / "f"
    path.write_bytes(data)
    with WriteBatch(store) as batch:
        stored = ingest.store_path(batch, path)
    manifest = parse_file_manifest(store.read_bytes("sha1", stored.manifest))
    expected_bounds = [(s, min(s + ingest.CHUNK_SIZE, size)) for s in range(0, size, ingest.CHUNK_SIZE)]
    assert [(c.start, c.end) for c in manifest.chunks] == expected_bounds
    for chunk in manifest.chunks:
        assert chunk.sha1 == hashlib.sha1(data[chunk.start:chunk.end]).hexdigest()
    assert stored.url("f") == f"sha1://{stored.digest}/f?manifest={stored.manifest}"


def test_progress_reports_bytes(store, tmp_path):
    write_tree(tmp_path / "src", {"a": b"12345", "d": {"b": b"123"}})
    seen = []
    with WriteBatch(store) as batch:
        ingest.snapshot_dir(batch, tmp_path / "src", progress=seen.append)
    assert sorted(seen) == [3, 5]


def test_snapshot_matches_independent_manifest(store, tmp_path):
    spec = {"x": b"1", "é": {"ü": b"22", "empty": {}}, "z": b""}
    write_tree(tmp_path / "src", spec)
    with WriteBatch(store) as batch:
        tree = ingest.snapshot_dir(batch, tmp_path / "src")
        digest = ingest.store_manifest(batch, tree)
    assert dir_manifest_bytes(tree) == tree_to_manifest_json(spec).encode()
    assert store.read_bytes("sha1", digest) == tree_to_manifest_json(spec).encode()


def test_special_files_skipped_with_warning(store, tmp_path, caplog):
    src = tmp_path / "src"
    write_tree(src, {"ok": b"ok"})
    os.mkfifo(src / "fifo")
    os.symlink(tmp_path / "nowhere", src / "dangling")
    import socket

    sock = socket.socket(socket.AF_UNIX)
    sock_path = src / "sock"
    try:
        sock.bind(str(sock_path))
        with caplog.at_level(logging.WARNING, logger="kachery"):
            with WriteBatch(store) as batch:
                tree = ingest.snapshot_dir(batch, src)
    finally:
        sock.close()
    assert list(tree.files) == ["ok"] and tree.dirs == {}
    warned = " ".join(record.getMessage() for record in caplog.records)
    for name in ("fifo", "sock", "dangling"):
        assert name in warned


def test_symlink_cycle_is_an_error_not_a_hang(store, tmp_path):
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    os.symlink(src, src / "a" / "b" / "back-to-top")
    with pytest.raises(OSError):
        with WriteBatch(store) as batch:
            ingest.snapshot_dir(batch, src)


def test_symlink_to_same_dir_twice_is_not_a_cycle(store, tmp_path):
    shared = tmp_path / "shared"
    write_tree(shared, {"f": b"shared"})
    src = tmp_path / "src"
    src.mkdir()
    os.symlink(shared, src / "one")
    os.symlink(shared, src / "two")
    with WriteBatch(store) as batch:
        tree = ingest.snapshot_dir(batch, src)
    assert sorted(tree.dirs) == ["one", "two"]
    assert tree.dirs["one"].files["f"] == tree.dirs["two"].files["f"]


class FailingSource:
    """A source whose reads fail after ``blocks`` full blocks."""

    def __init__(self, blocks):
        self.blocks = blocks

    def readinto(self, buffer):
        if self.blocks == 0:
            raise OSError(5, "Input/output error (simulated)")
        self.blocks -= 1
        buffer[:] = b"\x07" * len(buffer)
        return len(buffer)


def test_failed_read_leaves_no_worker_writing_to_a_closed_fd(store, monkeypatch):
    import time

    real_write = BlockWriter.write
    bad_fd_writes = []

    def slow_write(writer, buffer, count, offset):
        time.sleep(0.05)  # the reader fails while these are still queued
        try:
            return real_write(writer, buffer, count, offset)
        except OSError as error:
            bad_fd_writes.append(error)
            raise

    monkeypatch.setattr(BlockWriter, "write", slow_write)
    batch = WriteBatch(store)
    with pytest.raises(OSError, match="simulated"):
        ingest._store_large(batch, FailingSource(4), "sha1")
    time.sleep(0.3)  # any job still queued would run now
    assert bad_fd_writes == []
    assert os.listdir(os.path.join(store.root, "tmp")) == []
    # and the workers still work afterwards
    with WriteBatch(store) as batch:
        stored = ingest._store_large(batch, io.BytesIO(b"\x01" * (ingest.CHUNK_SIZE + 1)), "sha1")
    assert stored.digest == hashlib.sha1(b"\x01" * (ingest.CHUNK_SIZE + 1)).hexdigest()


def test_piped_input_is_streamed_not_slurped(store):
    """A pipe reports size 0; it must take the streaming path (bounded memory, and a
    file manifest when large), giving the same result as the same bytes in a file."""
    import threading

    data = os.urandom(2 * ingest.CHUNK_SIZE + 99)
    read_end, write_end = os.pipe()

    def feed():
        with os.fdopen(write_end, "wb") as pipe:
            pipe.write(data)

    writer = threading.Thread(target=feed)
    writer.start()
    try:
        with WriteBatch(store) as batch:
            stored = ingest.store_path(batch, f"/dev/fd/{read_end}")
    finally:
        writer.join()
        os.close(read_end)
    assert stored.digest == hashlib.sha1(data).hexdigest() and stored.size == len(data)
    assert stored.manifest is not None
    assert store.read_bytes("sha1", stored.digest) == data


def test_threads_storing_large_files_at_once(store, tmp_path):
    """The hash/copy workers are shared by the process: concurrent stores must not mix blocks."""
    from concurrent.futures import ThreadPoolExecutor

    blobs = [os.urandom(2 * ingest.CHUNK_SIZE + 1000 * i) for i in range(4)]
    paths = []
    for i, blob in enumerate(blobs):
        paths.append(tmp_path / f"big{i}")
        paths[-1].write_bytes(blob)

    def store_one(path):
        with WriteBatch(store) as batch:
            return ingest.store_path(batch, path)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(store_one, paths))
    for blob, stored in zip(blobs, results):
        assert stored.digest == hashlib.sha1(blob).hexdigest()
        assert store.read_bytes("sha1", stored.digest) == blob
        manifest = parse_file_manifest(store.read_bytes("sha1", stored.manifest))
        assert all(c.sha1 == hashlib.sha1(blob[c.start:c.end]).hexdigest() for c in manifest.chunks)


# Each block's chunk is hashed on the reader or, when the whole-hash worker is
# keeping up, on that worker: either way (and mixed) the manifest is the same.
@pytest.mark.parametrize("backlog", [-1, 1, ingest.PIPELINE_DEPTH])
@pytest.mark.parametrize("algorithm", ["sha1", "md5"])
def test_chunks_hashed_on_either_thread_give_the_same_manifest(tmp_path, monkeypatch, backlog,
                                                                algorithm):
    monkeypatch.setattr(ingest, "WORKER_BACKLOG", backlog)
    size = (ingest.PIPELINE_DEPTH + 3) * ingest.CHUNK_SIZE - 5
    data = os.urandom(size)
    for copy in (False, True):
        with io.BytesIO(data) as source:
            if copy:
                batch = WriteBatch(LocalStore(tmp_path / f"store{backlog}"))
                got_size, digest, chunks = ingest._copy_to_temp(batch, source, algorithm)
                batch.discard()
            else:
                got_size, digest, chunks = ingest.hash_once(source, algorithm)
        assert (got_size, digest) == (size, hashlib.new(algorithm, data).hexdigest())
        expected = [(start, min(start + ingest.CHUNK_SIZE, size),
                     hashlib.sha1(data[start:start + ingest.CHUNK_SIZE]).hexdigest())
                    for start in range(0, size, ingest.CHUNK_SIZE)] if algorithm == "sha1" else []
        assert [(c.start, c.end, c.sha1) for c in chunks] == expected


# ------------------------------------------- hashing without a copy (--upload-only)

@pytest.mark.parametrize("size", [ingest.CHUNK_SIZE + 1, 3 * ingest.CHUNK_SIZE - 7])
@pytest.mark.parametrize("algorithm", ["sha1", "md5"])
def test_hash_once_gives_the_size_digest_and_chunks(tmp_path, size, algorithm):
    path = tmp_path / "big.bin"
    data = os.urandom(size)
    path.write_bytes(data)
    with open(path, "rb", buffering=0) as source:
        got_size, digest, chunks = ingest.hash_once(source, algorithm)
    assert (got_size, digest) == (size, hashlib.new(algorithm, data).hexdigest())
    if algorithm == "sha1":
        assert [(c.start, c.end, c.sha1) for c in chunks] == [
            (start, min(start + ingest.CHUNK_SIZE, size),
             hashlib.sha1(data[start:start + ingest.CHUNK_SIZE]).hexdigest())
            for start in range(0, size, ingest.CHUNK_SIZE)]
