"""Storing a large file (issue 15): the copy around the page cache, its
fallback to buffered writes, and a source that changes while it is stored."""

import errno
import hashlib
import os

import pytest

from kachery_core import direct_write, ingest
from kachery_core.manifest import parse_file_manifest
from kachery_core.store import LocalStore, WriteBatch
from kachery_core.transport import SourceChanged

#: Small blocks (= chunks) in these tests, so that a few hundred KiB cross
#: many block edges and wrap the ring of buffers.
BLOCK = 64 * 1024
ALIGN = direct_write.ALIGN


@pytest.fixture
def disk_store(tmp_path):
    """A store on the disk under the test's temp dir, not on tmpfs: the
    direct path needs a file system that does O_DIRECT."""
    return LocalStore(tmp_path / "storage")


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(ingest, "CHUNK_SIZE", BLOCK)
    monkeypatch.setattr(ingest, "SMALL_FILE", 0)  # every file takes the large path
    monkeypatch.setattr(ingest, "DIRECT_MIN", 0)  # ... and goes around the cache


@pytest.fixture
def direct_opens(monkeypatch):
    """Descriptors the writers opened with O_DIRECT (None: refused)."""
    opened = []
    real = direct_write._open_direct

    def recording(path):
        fd = real(path)
        opened.append(fd)
        return fd

    monkeypatch.setattr(direct_write, "_open_direct", recording)
    return opened


def store_file(store, path, algorithm="sha1"):
    with WriteBatch(store) as batch:
        return ingest.store_path(batch, path, algorithm)


def expected_chunks(data, block=BLOCK):
    return [(start, min(start + block, len(data)), hashlib.sha1(data[start:start + block]).hexdigest())
            for start in range(0, len(data), block)]


def stored_chunks(store, stored):
    if stored.manifest is None:
        return []
    manifest = parse_file_manifest(store.read_bytes("sha1", stored.manifest))
    return [(chunk.start, chunk.end, chunk.sha1) for chunk in manifest.chunks]


SIZES = [1, ALIGN - 1, ALIGN, ALIGN + 1, BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK + ALIGN,
         2 * BLOCK + ALIGN + 1, (ingest.PIPELINE_DEPTH + 3) * BLOCK - 1]


@pytest.mark.parametrize("size", SIZES)
def test_direct_copy_is_exact_and_chunked_like_the_buffered_copy(disk_store, tmp_path, small_blocks,
                                                                direct_opens, monkeypatch, size):
    data = os.urandom(size)
    path = tmp_path / "f"
    path.write_bytes(data)
    stored = store_file(disk_store, path)
    if direct_opens[0] is None:
        pytest.skip("this file system refuses O_DIRECT")
    assert disk_store.read_bytes("sha1", stored.digest) == data
    assert (stored.size, stored.digest) == (size, hashlib.sha1(data).hexdigest())
    direct_chunks = stored_chunks(disk_store, stored)
    assert direct_chunks == (expected_chunks(data) if size > BLOCK else [])

    monkeypatch.setattr(ingest, "DIRECT_MIN", 1 << 62)  # the buffered path, in a fresh store
    buffered_store = LocalStore(tmp_path / "buffered")
    buffered = store_file(buffered_store, path)
    assert len(direct_opens) == 1  # the second store did not ask for O_DIRECT
    assert buffered == stored and stored_chunks(buffered_store, buffered) == direct_chunks
    assert os.listdir(os.path.join(disk_store.root, "tmp")) == []


def test_md5_has_no_chunks_on_the_direct_path(disk_store, tmp_path, small_blocks):
    data = os.urandom(3 * BLOCK + 5)
    path = tmp_path / "f"
    path.write_bytes(data)
    stored = store_file(disk_store, path, "md5")
    assert stored.manifest is None and stored.digest == hashlib.md5(data).hexdigest()
    assert disk_store.read_bytes("md5", stored.digest) == data


@pytest.mark.parametrize("where", ["open", "first write"])
@pytest.mark.parametrize("refusal", [errno.EINVAL, errno.EOPNOTSUPP])
def test_refused_direct_io_falls_back_to_buffered_writes(disk_store, tmp_path, small_blocks, monkeypatch,
                                                         where, refusal):
    real_open, real_pwrite = os.open, os.pwrite
    direct_fds, buffered_writes = set(), []

    def refusing_open(path, flags, *args, **kwargs):
        if flags & os.O_DIRECT and where == "open":
            raise OSError(refusal, os.strerror(refusal), path)
        fd = real_open(path, flags, *args, **kwargs)
        if flags & os.O_DIRECT:
            direct_fds.add(fd)
        return fd

    def refusing_pwrite(fd, data, offset):
        if fd in direct_fds:
            raise OSError(refusal, os.strerror(refusal))
        buffered_writes.append((offset, len(data)))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "open", refusing_open)
    monkeypatch.setattr(os, "pwrite", refusing_pwrite)
    data = os.urandom(3 * BLOCK + 123)
    path = tmp_path / "f"
    path.write_bytes(data)
    stored = store_file(disk_store, path)
    assert disk_store.read_bytes("sha1", stored.digest) == data
    assert stored_chunks(disk_store, stored) == expected_chunks(data)
    # every block went through the page cache, the first one included
    assert sorted(buffered_writes) == [(start, min(BLOCK, len(data) - start))
                                       for start in range(0, len(data), BLOCK)]


def test_other_errors_of_a_direct_write_fail_the_store_and_leave_nothing(disk_store, tmp_path,
                                                                        small_blocks, monkeypatch):
    real_pwrite = os.pwrite
    calls = []

    def failing_pwrite(fd, data, offset):
        calls.append(offset)
        if offset >= 2 * BLOCK:
            raise OSError(errno.EIO, "Input/output error (simulated)")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", failing_pwrite)
    path = tmp_path / "f"
    path.write_bytes(os.urandom(4 * BLOCK))
    with pytest.raises(OSError, match="simulated"):
        store_file(disk_store, path)
    assert os.listdir(os.path.join(disk_store.root, "tmp")) == []
    assert list(disk_store.iter_objects("sha1")) == []


# ------------------------------------------------ a source that changes meanwhile

def _change_after_first_block(path, change):
    done = []

    def progress(count):
        if not done:
            done.append(count)
            change(path)

    return progress


def _append(path):
    with open(path, "ab") as file:
        file.write(b"more")


def _truncate(path):
    os.truncate(path, BLOCK + 10)


def _touch_later(path):  # same size, rewritten in place
    info = os.stat(path)
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000_000))


@pytest.mark.parametrize("change", [_append, _truncate, _touch_later])
@pytest.mark.parametrize("direct", [True, False])
def test_a_source_changed_while_stored_is_refused(disk_store, tmp_path, small_blocks, monkeypatch,
                                                  change, direct):
    if not direct:
        monkeypatch.setattr(ingest, "DIRECT_MIN", 1 << 62)
    path = tmp_path / "f"
    path.write_bytes(os.urandom(8 * BLOCK))
    with pytest.raises(SourceChanged, match="changed while it was being stored"):
        with WriteBatch(disk_store) as batch:
            ingest.store_path(batch, path, progress=_change_after_first_block(path, change))
    assert os.listdir(os.path.join(disk_store.root, "tmp")) == []
    assert list(disk_store.iter_objects("sha1")) == []


def test_a_source_changed_while_stored_is_one_line_exit_6(run_cli, tmp_path):
    """Through the command: a file cut short under the store."""
    import threading
    import time

    path = tmp_path / "moving.bin"
    data = os.urandom(48 << 20)
    path.write_bytes(data)
    stop = threading.Event()

    def cut_and_restore():
        while not stop.is_set():
            os.truncate(path, len(data) // 3)
            time.sleep(0.001)
            with open(path, "r+b") as file:
                file.seek(len(data) // 3)
                file.write(data[len(data) // 3:])

    thread = threading.Thread(target=cut_and_restore, daemon=True)
    thread.start()
    env = {"KACHERY_STORAGE_DIR": str(tmp_path / "storage"), "KACHERY_CONFIG": str(tmp_path / "none.toml")}
    try:
        results = [run_cli("kachery-store", path, env=env, timeout=60) for _ in range(3)]
    finally:
        stop.set()
        thread.join()
    failed = [result for result in results if result.returncode]
    assert failed, "the file never changed under the store"
    for result in failed:
        assert result.returncode == 6, result.stderr
        lines = result.stderr.decode().strip().splitlines()
        assert len(lines) == 1 and "changed while it was being stored" in lines[0], lines
    for digest, object_path in LocalStore(tmp_path / "storage").iter_objects("sha1"):
        with open(object_path, "rb") as file:
            assert hashlib.sha1(file.read()).hexdigest() == digest
