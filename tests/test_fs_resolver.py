"""The mount's resolver and errno mapping, tested without mounting anything."""

import errno
import os
import stat
import subprocess
import sys
import threading

import pytest

from kachery_core.client import Kachery
from kachery_core.errors import HashMismatch, InvalidManifest, InvalidURL, ObjectNotFound
from kachery_fs.locate import mount_path
from kachery_fs.resolver import ROOT_INODE, Resolver, path_inode

from fs_helpers import manifest_files


@pytest.fixture
def snapshot(storage_dir, tmp_path):
    """A small snapshot: (resolver, manifest hash, source root)."""
    source = tmp_path / "src"
    (source / "a" / "b").mkdir(parents=True)
    (source / "a" / "b" / "x.txt").write_bytes(b"hello\n")
    (source / "ünï.txt").write_bytes("grüße\n".encode())
    (source / "empty").write_bytes(b"")
    (source / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    kachery = Kachery()
    digest, _ = kachery.store_dir(str(source))
    return Resolver(kachery), digest, source


def _file_sha1(resolver, digest, relpath):
    return manifest_files(resolver.kachery.dir_manifest(digest))[relpath].sha1


def test_root_and_top_directories(snapshot):
    resolver, _, _ = snapshot
    root = resolver.lookup("/")
    assert root.is_dir and root.inode == ROOT_INODE and root.mode == stat.S_IFDIR | 0o555
    assert [name for name, _ in resolver.list_dir("/")] == ["sha1", "md5", "sha1dir"]
    for top in ("sha1", "md5", "sha1dir"):
        assert resolver.lookup(f"/{top}").is_dir
        assert resolver.list_dir(f"/{top}") == []  # hashes are not enumerable


def test_snapshot_paths_resolve_with_any_label(snapshot):
    resolver, digest, _ = snapshot
    plain = resolver.lookup(f"/sha1dir/{digest}/a/b/x.txt")
    labelled = resolver.lookup(f"/sha1dir/{digest}.my.label/a/b/x.txt")
    upper = resolver.lookup(f"/sha1dir/{digest.upper()}/a/b/x.txt")
    assert plain.size == labelled.size == upper.size == 6
    assert plain.mode == stat.S_IFREG | 0o444 and plain.nlink == 1
    assert plain.target == labelled.target


def test_directory_entries_sizes_and_nlink(snapshot):
    resolver, digest, _ = snapshot
    top = resolver.lookup(f"/sha1dir/{digest}")
    assert top.is_dir and top.nlink == 3  # 2 + one subdirectory
    listing = dict(resolver.list_dir(f"/sha1dir/{digest}"))
    assert set(listing) == {"a", "ünï.txt", "empty", "big.bin"}
    assert listing["empty"].size == 0 and listing["big.bin"].size == 3 * 1024 * 1024 + 17
    assert listing["a"].is_dir and not listing["ünï.txt"].is_dir
    assert listing["ünï.txt"].inode == resolver.lookup(f"/sha1dir/{digest}/ünï.txt").inode


def test_inodes_are_stable_and_distinct(snapshot):
    resolver, digest, _ = snapshot
    paths = [f"/sha1dir/{digest}/{name}" for name, _ in resolver.list_dir(f"/sha1dir/{digest}")]
    inodes = [resolver.lookup(path).inode for path in paths]
    assert len(set(inodes)) == len(inodes)
    assert inodes == [path_inode(path) for path in paths]  # a pure function of the path


def test_plain_object_paths(snapshot):
    resolver, digest, source = snapshot
    sha1 = _file_sha1(resolver, digest, "a/b/x.txt")
    entry = resolver.lookup(f"/sha1/{sha1}")
    assert entry.size == 6 and not entry.is_dir
    handle = resolver.open(f"/sha1/{sha1}")
    try:
        assert resolver.read(handle, 100, 0) == b"hello\n"
        assert resolver.read(handle, 3, 2) == b"llo"
        assert resolver.read(handle, 10, 6) == b""
    finally:
        resolver.release(handle)


@pytest.mark.parametrize("path", [
    "/nothing", "/sha1/" + "0" * 40, "/sha1/xyz", "/sha1/" + "0" * 39, "/md5/" + "0" * 40,
    "/sha1dir/" + "0" * 40, "/sha1dir/nothex", "/sha1/" + "0" * 40 + "/deeper",
])
def test_unknown_or_invalid_names_are_not_found(snapshot, path):
    resolver, _, _ = snapshot
    with pytest.raises((FileNotFoundError, InvalidURL)):
        resolver.lookup(path)


def test_missing_path_inside_snapshot(snapshot):
    resolver, digest, _ = snapshot
    with pytest.raises(ObjectNotFound):
        resolver.lookup(f"/sha1dir/{digest}/a/nope")
    with pytest.raises(FileNotFoundError):
        resolver.lookup(f"/sha1dir/{digest}/empty/below-a-file")
    with pytest.raises(NotADirectoryError):
        resolver.list_dir(f"/sha1dir/{digest}/empty")


def test_reads_match_the_source(snapshot):
    resolver, digest, source = snapshot
    original = (source / "big.bin").read_bytes()
    handle = resolver.open(f"/sha1dir/{digest}/big.bin")
    try:
        for offset in (0, 1, 4096, len(original) - 5, len(original)):
            assert resolver.read(handle, 65536, offset) == original[offset:offset + 65536]
    finally:
        resolver.release(handle)


def test_concurrent_reads_of_one_handle(snapshot):
    resolver, digest, source = snapshot
    original = (source / "big.bin").read_bytes()
    handle = resolver.open(f"/sha1dir/{digest}/big.bin")
    failures = []

    def reader(seed):
        for step in range(50):
            offset = (seed * 7919 + step * 104729) % len(original)
            if resolver.read(handle, 4096, offset) != original[offset:offset + 4096]:
                failures.append((seed, offset))

    threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    resolver.release(handle)
    assert failures == []


def test_open_directory_is_an_error(snapshot):
    resolver, digest, _ = snapshot
    with pytest.raises(IsADirectoryError):
        resolver.open(f"/sha1dir/{digest}/a")


def test_corrupted_manifest_is_refused(snapshot):
    resolver, digest, _ = snapshot
    path = resolver.kachery.store.object_path("sha1", digest)
    os.chmod(path, 0o644)
    with open(path, "wb") as file:
        file.write(b"{not json")
    fresh = Resolver(Kachery())  # a client that has not cached the manifest
    with pytest.raises((InvalidManifest, HashMismatch)):  # both are EIO
        fresh.lookup(f"/sha1dir/{digest}/a")


def test_object_with_wrong_size_is_refused(snapshot):
    resolver, digest, _ = snapshot
    sha1 = _file_sha1(resolver, digest, "a/b/x.txt")
    path = resolver.kachery.store.object_path("sha1", sha1)
    os.chmod(path, 0o644)
    with open(path, "ab") as file:
        file.write(b"extra")
    with pytest.raises(HashMismatch):
        resolver.open(f"/sha1dir/{digest}/a/b/x.txt")


# ------------------------------------------------------------ errno mapping

def test_errno_mapping():
    from kachery_fs.errnos import errno_for

    assert errno_for(ObjectNotFound("x")) == errno.ENOENT
    assert errno_for(InvalidURL("x", "bad")) == errno.ENOENT
    assert errno_for(InvalidManifest("x", "bad")) == errno.EIO
    assert errno_for(HashMismatch("a", "b")) == errno.EIO
    assert errno_for(NotADirectoryError("x")) == errno.ENOTDIR
    assert errno_for(IsADirectoryError("x")) == errno.EISDIR
    assert errno_for(PermissionError(errno.EACCES, "no")) == errno.EACCES
    assert errno_for(RuntimeError("surprise")) == errno.EIO


def test_operations_map_errors_and_refuse_writes(snapshot):
    import mfusepy

    from kachery_fs.fuse_adapter import KacheryOperations

    resolver, digest, _ = snapshot
    operations = KacheryOperations(resolver)
    with pytest.raises(mfusepy.FuseOSError) as missing:
        operations.getattr("/sha1/" + "0" * 40)
    assert missing.value.errno == errno.ENOENT
    with pytest.raises(mfusepy.FuseOSError) as refused:
        operations.open(f"/sha1dir/{digest}/empty", os.O_WRONLY)
    assert refused.value.errno == errno.EROFS
    for write_op in (operations.mkdir, operations.unlink, operations.write, operations.truncate):
        with pytest.raises(mfusepy.FuseOSError) as refused:
            write_op(f"/sha1dir/{digest}/new", 0)
        assert refused.value.errno == errno.EROFS


def test_listing_is_packed_once_and_has_dots(snapshot):
    from kachery_fs.fuse_adapter import KacheryOperations

    resolver, digest, _ = snapshot
    operations = KacheryOperations(resolver)
    handle = operations.opendir(f"/sha1dir/{digest}")
    _, packed = operations.listing(handle)
    assert packed.names[:2] == [b".", b".."]
    assert sorted(operations.readdir(None, handle)[2:]) == sorted(["a", "ünï.txt", "empty", "big.bin"])
    assert operations.listing(handle)[1] is packed
    operations.releasedir(None, handle)


# ----------------------------------------------------------------- layering

def test_core_does_not_import_the_fuse_binding():
    code = (
        "import sys, kachery_core, kachery_core.client, kachery_core.api, kachery_fs.resolver, "
        "kachery_fs.locate, kachery_fs.mount, kachery_fs.cli\n"
        "bad = [m for m in ('mfusepy', 'fuse', 'kachery_fs.fuse_adapter') if m in sys.modules]\n"
        "print(*bad)\n"
        "sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mount_path_of_urls(monkeypatch):
    h = "a" * 40
    assert mount_path(f"sha1://{h}/x.csv?manifest={'b' * 40}", "/mnt") == f"/mnt/sha1/{h}"
    assert mount_path(f"sha1dir://{h}.lbl/a//b/", "/mnt") == f"/mnt/sha1dir/{h}.lbl/a/b"
    assert mount_path(f"md5://{'c' * 32}", "/m") == f"/m/md5/{'c' * 32}"
    monkeypatch.setenv("KACHERY_MOUNT", "/from/env")
    assert mount_path(f"sha1dir://{h}") == f"/from/env/sha1dir/{h}"


@pytest.mark.parametrize("zero_copy", [True, False])
def test_read_into_a_c_buffer(snapshot, monkeypatch, zero_copy):
    import ctypes

    from kachery_fs.fuse_adapter import KacheryOperations

    resolver, digest, source = snapshot
    original = (source / "big.bin").read_bytes()
    if not zero_copy:  # a reader without a local file (issue 5's chunked reads)
        monkeypatch.setattr(resolver, "span", lambda *args: None)
    operations = KacheryOperations(resolver)
    handle = resolver.open(f"/sha1dir/{digest}/big.bin")
    buffer = ctypes.create_string_buffer(1 << 20)
    try:
        for offset in (0, 12345, len(original) - 100, len(original)):
            count = operations.read_into(handle, ctypes.addressof(buffer), 1 << 20, offset)
            assert buffer.raw[:count] == original[offset:offset + (1 << 20)]
    finally:
        resolver.release(handle)
