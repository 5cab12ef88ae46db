"""Issue 5: a mount over an EMPTY storage directory reads snapshots that live
only on remotes — lazily, chunk by chunk, verified, under a cache quota, and
surviving a dead server. Real mounts, a real kachery-server process, and a
small Range-capable mirror in the test that counts and can corrupt bytes."""

import errno
import hashlib
import json
import os
import random
import subprocess
import sys
import time

import pytest

from fs_helpers import Mount, needs_fuse
from mirror_helpers import Mirror, object_rel
from server_helpers import command_path, free_port, servers  # noqa: F401  (fixture)

pytestmark = [pytest.mark.fuse, pytest.mark.server, needs_fuse,
              pytest.mark.usefixtures("fuse_backend")]

CHUNK = 4 * 1024 * 1024
BIG = 16 * CHUNK + 12345


def store_snapshot(storage, tree):
    env = dict(os.environ, KACHERY_STORAGE_DIR=str(storage), KACHERY_CONFIG="/nonexistent")
    result = subprocess.run([command_path("kachery-store"), str(tree)], env=env, check=True,
                            capture_output=True, text=True)
    return result.stdout.strip()


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    """(server storage dir, sha1dir URL, {relpath: bytes}) of a small tree and a big file."""
    base = tmp_path_factory.mktemp("lazy")
    tree = base / "tree"
    rng = random.Random(5)
    files = {
        "big.bin": rng.randbytes(BIG),
        "empty": b"",
        "nested/deeper/note.txt": "ünïcode ✓\n".encode(),
        **{f"small/s{i:02d}.dat": rng.randbytes(rng.randrange(1, 60_000)) for i in range(40)},
    }
    for relpath, data in files.items():
        (tree / relpath).parent.mkdir(parents=True, exist_ok=True)
        (tree / relpath).write_bytes(data)
    storage = base / "server-storage"
    return storage, store_snapshot(storage, tree), files


def snapshot_path(mount, url, relpath=""):
    return os.path.join(mount.mountpoint, "sha1dir", url.split("://", 1)[1], relpath)


def cache_files(storage):
    """{name: size} of the objects in the client's download cache."""
    found = {}
    for algorithm in ("sha1", "md5"):  # (not the temp area)
        walked = os.walk(os.path.join(storage, "cache", algorithm))
        for directory, _, names in walked:
            for name in names:
                try:
                    found[name] = os.path.getsize(os.path.join(directory, name))
                except FileNotFoundError:
                    pass
    return found


def assert_counters_shown(client_storage, at_least):
    """`kachery cache` shows the running mount's fetch counters (refreshed each second)."""
    deadline = time.monotonic() + 5
    while True:
        report = json.loads(subprocess.run(
            [command_path("kachery"), "cache", "--json", "--storage-dir", str(client_storage)],
            check=True, capture_output=True, text=True).stdout)
        counters = report["mounts"][0] if report["mounts"] else {}
        if counters.get("bytes_fetched", 0) >= at_least or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert counters["bytes_fetched"] >= at_least
    assert counters["cache_misses"] > 0 and counters.get("verification_failures", 0) == 0
    assert report["bytes"] >= at_least


def test_commands_print_mount_paths(run_cli, tmp_path, snapshot):
    storage, url, _ = snapshot
    mount_point = str(tmp_path / "m")
    expected = os.path.join(mount_point, "sha1dir", url.split("://", 1)[1], "nested")
    info = run_cli("kachery-info", "--json", f"{url}/nested", "--mount-point", mount_point,
                   "--storage-dir", storage, check=True)
    assert json.loads(info.stdout)["mount_path"] == expected
    (tmp_path / "f.txt").write_bytes(b"x")
    stored = run_cli("kachery-store", "--mount-path", tmp_path / "f.txt",
                     env={"KACHERY_MOUNT": mount_point, "KACHERY_STORAGE_DIR": str(tmp_path / "s")},
                     check=True)
    digest = hashlib.sha1(b"x").hexdigest()
    assert stored.stdout.decode().strip() == os.path.join(mount_point, "sha1", digest)


# ------------------------------------------------------------------ tests

def test_snapshot_only_on_a_server_reads_back_exactly(tmp_path, servers, snapshot):  # noqa: F811
    storage, url, files = snapshot
    server = servers.kachery(storage=storage)
    with Mount(tmp_path / "mnt", tmp_path / "client", ["--remote", server.url]) as mount:
        listing = subprocess.run(["ls", "-lR", snapshot_path(mount, url)], check=True,
                                 capture_output=True, text=True).stdout
        assert "big.bin" in listing and "note.txt" in listing
        for relpath, data in files.items():
            path = snapshot_path(mount, url, relpath)
            assert os.path.getsize(path) == len(data), relpath
            digest = subprocess.run(["sha1sum", path], check=True, capture_output=True,
                                    text=True).stdout.split()[0]
            assert digest == hashlib.sha1(data).hexdigest(), relpath
        cat = subprocess.run(["cat", snapshot_path(mount, url, "nested/deeper/note.txt")],
                             check=True, capture_output=True).stdout
        assert cat == files["nested/deeper/note.txt"]
        assert_counters_shown(tmp_path / "client", sum(map(len, files.values())))
    assert not os.path.exists(os.path.join(tmp_path, "client", "sha1"))  # nothing in the user's store


def test_a_4k_read_at_a_random_offset_fetches_one_chunk(tmp_path, snapshot):
    storage, url, files = snapshot
    mirror = Mirror(storage)
    try:
        with Mount(tmp_path / "mnt", tmp_path / "client", ["--remote", mirror.url]) as mount:
            offset = random.Random(9).randrange(BIG - 4096)
            # Unbuffered: Python's buffered reader would ask for st_blksize (1 MiB).
            fd = os.open(snapshot_path(mount, url, "big.bin"), os.O_RDONLY)
            try:
                assert os.pread(fd, 4096, offset) == files["big.bin"][offset:offset + 4096]
            finally:
                os.close(fd)
            big = object_rel(hashlib.sha1(files["big.bin"]).hexdigest())
            assert 0 < mirror.sent.get(big, 0) <= CHUNK
    finally:
        mirror.close()


#: A reader in its own process: an mmap page fault holds the GIL of the
#: faulting process, which would starve the test's in-process mirror.
SMALL_READ = """
import mmap, sys
path, offset, how = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with open(path, "rb") as file:
    if how == "buffered":
        file.seek(offset)
        data = file.read(4096)
    else:
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            data = mapped[offset:offset + 4096]
sys.stdout.buffer.write(data)
"""


@pytest.mark.parametrize("how", ["buffered", "mmap"])
def test_small_reads_of_ordinary_readers_fetch_one_chunk(tmp_path, snapshot, how):
    """What numpy, HDF5 and sqlite do: Python's buffered open() (which asks for
    st_blksize) and an mmap page fault; the kernel adds its read-ahead."""
    storage, url, files = snapshot
    data = files["big.bin"]
    big = object_rel(hashlib.sha1(data).hexdigest())
    mirror = Mirror(storage)
    try:
        with Mount(tmp_path / "mnt", tmp_path / "client", ["--remote", mirror.url]) as mount:
            path = snapshot_path(mount, url, "big.bin")
            for chunk_index in (3, 9):  # two separate random reads, mid-chunk
                before = mirror.sent.get(big, 0)
                offset = chunk_index * CHUNK + CHUNK // 3
                read = subprocess.run([sys.executable, "-c", SMALL_READ, path, str(offset), how],
                                      capture_output=True, timeout=60)
                assert read.returncode == 0, read.stderr
                assert read.stdout == data[offset:offset + 4096]
                fetched = mirror.sent.get(big, 0) - before
                assert 0 < fetched <= CHUNK, [r for r in mirror.ranges if r[0] == big]
    finally:
        mirror.close()


def test_a_sequential_reader_still_gets_read_ahead(tmp_path, snapshot):
    storage, url, files = snapshot
    data = files["big.bin"]
    big = object_rel(hashlib.sha1(data).hexdigest())
    mirror = Mirror(storage)
    try:
        with Mount(tmp_path / "mnt", tmp_path / "client", ["--remote", mirror.url]) as mount:
            with open(snapshot_path(mount, url, "big.bin"), "rb") as file:
                assert file.read(3 * CHUNK) == data[:3 * CHUNK]
                deadline = time.monotonic() + 10
                while mirror.sent.get(big, 0) <= 4 * CHUNK and time.monotonic() < deadline:
                    time.sleep(0.05)  # read-ahead runs in the background
                assert mirror.sent.get(big, 0) > 4 * CHUNK  # chunks beyond what was read
    finally:
        mirror.close()


def test_corrupt_chunks_give_eio_never_wrong_bytes(tmp_path, snapshot):
    storage, url, files = snapshot
    bad, good = Mirror(storage, corrupt=True), Mirror(storage)
    try:
        with Mount(tmp_path / "mnt1", tmp_path / "client1", ["--remote", bad.url]) as mount:
            with pytest.raises(OSError) as raised:
                with open(snapshot_path(mount, url, "big.bin"), "rb") as file:
                    file.read(4096)
            assert raised.value.errno == errno.EIO
            assert os.listdir(snapshot_path(mount, url))  # the mount is still up
            assert not any(size == CHUNK for size in cache_files(tmp_path / "client1").values())
        with Mount(tmp_path / "mnt2", tmp_path / "client2",
                   ["--remote", bad.url, "--remote", good.url]) as mount:
            with open(snapshot_path(mount, url, "big.bin"), "rb") as file:
                file.seek(CHUNK - 10)
                assert file.read(20) == files["big.bin"][CHUNK - 10:CHUNK + 10]
    finally:
        bad.close()
        good.close()


def test_cache_quota_holds_while_reading_three_times_its_size(tmp_path, servers, snapshot):  # noqa: F811
    storage, url, files = snapshot
    server = servers.kachery(storage=storage)
    quota = 5 * CHUNK + CHUNK // 2  # BIG is more than three times this
    client = tmp_path / "client"
    args = ["--remote", server.url, "--cache-max", str(quota)]
    with Mount(tmp_path / "mnt", client, args) as mount:
        data = files["big.bin"]
        with open(snapshot_path(mount, url, "big.bin"), "rb") as file:
            for offset in range(0, BIG, CHUNK // 2):
                assert file.read(CHUNK // 2) == data[offset:offset + CHUNK // 2]
                assert sum(cache_files(client).values()) <= quota + CHUNK


def test_dead_server_gives_eio_in_bounded_time_and_recovers(tmp_path, snapshot):
    storage, url, files = snapshot
    port = free_port()
    server_url = f"http://127.0.0.1:{port}"

    def start_server():
        process = subprocess.Popen(
            [command_path("kachery-server"), "--storage", str(storage), "--port", str(port),
             "--config", str(tmp_path / "server.toml")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while subprocess.run(["curl", "-s", "-o", "/dev/null", server_url],
                             capture_output=True).returncode != 0:
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.05)
        return process

    server = start_server()
    args = ["--remote", server_url, "--remote-timeout", "2"]
    try:
        with Mount(tmp_path / "mnt", tmp_path / "client", args) as mount:
            path = snapshot_path(mount, url, "big.bin")
            with open(path, "rb") as file:
                assert file.read(100) == files["big.bin"][:100]
                server.kill()
                server.wait()
                started = time.monotonic()
                with pytest.raises(OSError) as raised:
                    file.seek(12 * CHUNK)
                    file.read(100)
                assert raised.value.errno == errno.EIO
                assert time.monotonic() - started < 15
                assert file.seek(0) == 0 and file.read(100) == files["big.bin"][:100]  # cached
                server = start_server()
                file.seek(12 * CHUNK)
                assert file.read(100) == files["big.bin"][12 * CHUNK:12 * CHUNK + 100]
    finally:
        server.kill()
        server.wait()
