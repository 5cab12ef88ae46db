"""A really full disk: the store and the download cache on a small tmpfs
mounted for the test (root only). The commands must fail with one line and
exit code 6, leave no object or temp file behind, and a download into a full
cache must evict the cache and succeed."""

import hashlib
import os
import subprocess

import pytest

from fs_helpers import Mount, needs_fuse
from server_helpers import put_local, servers, shared_server  # noqa: F401  (fixtures)
from test_lazy_mount import snapshot, snapshot_path  # noqa: F401  (fixture)

pytestmark = pytest.mark.server

MIB = 1024 * 1024


@pytest.fixture
def small_disk(tmp_path):
    """mount(size_mib) -> a directory on a tmpfs of that size; unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = []

    def mount(size_mib):
        point = tmp_path / f"disk{len(mounted)}"
        point.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "kachery-test", point],
                                capture_output=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs: {result.stderr.decode().strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        if subprocess.run(["umount", point], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", point], capture_output=True)


def files_under(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, names in os.walk(root) for f in names)


def assert_one_line_no_space(result):
    stderr = result.stderr.decode()
    assert result.returncode == 6, stderr
    assert "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert "no space left on device" in stderr


def env_for(storage, remote=None):
    env = {"KACHERY_STORAGE_DIR": str(storage), "KACHERY_CONFIG": os.devnull}
    if remote:
        env["KACHERY_REMOTE"] = remote
    return env


def test_store_on_a_full_disk_fails_cleanly(run_cli, small_disk, tmp_path):
    storage = small_disk(8) / "storage"
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(12 * MIB))
    result = run_cli("kachery-store", big, env=env_for(storage))
    assert_one_line_no_space(result)
    assert files_under(storage) == []


def test_snapshot_on_a_full_disk_fails_cleanly(run_cli, small_disk, tmp_path):
    storage = small_disk(4) / "storage"
    tree = tmp_path / "tree"
    tree.mkdir()
    for number in range(12):
        (tree / f"file{number:02d}.bin").write_bytes(os.urandom(MIB // 2))
    result = run_cli("kachery-store", tree, env=env_for(storage))
    assert_one_line_no_space(result)
    # Objects stored before the disk filled may stay (they are complete and
    # verified); nothing partial and no temp file does.
    for rel in files_under(storage):
        assert not rel.startswith("tmp/"), rel
        with open(storage / rel, "rb") as file:
            assert hashlib.sha1(file.read()).hexdigest() == os.path.basename(rel)


def test_download_larger_than_the_disk_fails_cleanly(run_cli, small_disk, shared_server):
    storage = small_disk(8) / "storage"
    digest = put_local(shared_server.storage, os.urandom(12 * MIB))
    result = run_cli("kachery-load", f"sha1://{digest}", env=env_for(storage, shared_server.url))
    assert_one_line_no_space(result)
    assert files_under(storage) == []


def test_download_into_a_full_cache_evicts_it_and_succeeds(run_cli, small_disk, shared_server):
    storage = small_disk(24) / "storage"
    old = [put_local(shared_server.storage, os.urandom(6 * MIB)) for _ in range(3)]
    env = env_for(storage, shared_server.url)
    for digest in old:
        run_cli("kachery-load", f"sha1://{digest}", env=env, check=True)
    data = os.urandom(10 * MIB)  # 18 MiB cached + 10 MiB > 24 MiB: fits only after eviction
    digest = put_local(shared_server.storage, data)
    result = run_cli("kachery-load", f"sha1://{digest}", env=env, check=True)
    path = result.stdout.decode().strip()
    with open(path, "rb") as file:
        assert file.read() == data
    cached = [os.path.basename(rel) for rel in files_under(storage / "cache") if not rel.startswith("tmp/")]
    assert cached == [digest]  # the old entries were evicted to make room


@needs_fuse
@pytest.mark.fuse
def test_mount_on_a_full_disk_serves_exact_bytes(small_disk, servers, snapshot):  # noqa: F811
    """The client's disk (8 MiB) is far smaller than the big file (64+ MiB):
    reads through the mount still return exactly the right bytes, from
    memory, and the daemon stays up."""
    storage, url, files = snapshot
    server = servers.kachery(storage=storage)
    disk = small_disk(8)
    with Mount(disk / "mnt", disk / "client", ["--remote", server.url]) as mount:
        for relpath in ["big.bin", "small/s00.dat", "big.bin"]:
            digest = subprocess.run(["sha1sum", snapshot_path(mount, url, relpath)], check=True,
                                    capture_output=True, text=True, timeout=60).stdout.split()[0]
            assert digest == hashlib.sha1(files[relpath]).hexdigest(), relpath
        assert mount.process.poll() is None
