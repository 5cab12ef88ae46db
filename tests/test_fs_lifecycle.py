"""Mount lifecycle with real processes: signals, stale mount points, errors, detaching."""

import errno
import os
import re
import signal
import subprocess
import time

import pytest

from kachery_core.client import Kachery
from kachery_core.settings import Config

from fs_helpers import Mount, child_pids, command_path, force_unmount, is_stale, needs_fuse

pytestmark = [pytest.mark.fuse, needs_fuse, pytest.mark.usefixtures("fuse_backend")]


@pytest.fixture
def store(tmp_path):
    """(storage dir, snapshot hash, sha1 of hello.txt) of a tiny snapshot."""
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "hello.txt").write_bytes(b"hello\n")
    (source / "sub" / "x.txt").write_bytes(b"x\n")
    storage = tmp_path / "storage"
    kachery = Kachery(Config(storage_dir=str(storage)))
    digest, tree = kachery.store_dir(str(source))
    return storage, digest, tree.files["hello.txt"].sha1


def test_sigterm_unmounts_cleanly(store, tmp_path):
    storage, digest, _ = store
    mount = Mount(tmp_path / "mount pöint", storage)  # the mount table escapes the space
    with mount:
        assert os.listdir(mount.path("sha1dir", digest)) == ["hello.txt", "sub"]
        mount.process.send_signal(signal.SIGTERM)
        assert mount.process.wait(timeout=10) == 0
        assert not os.path.ismount(mount.mountpoint)
        assert not is_stale(mount.mountpoint)


def test_sigint_unmounts_cleanly(store, tmp_path):
    storage, _, _ = store
    with Mount(tmp_path / "mnt", storage) as mount:
        mount.process.send_signal(signal.SIGINT)
        assert mount.process.wait(timeout=10) == 0
        assert not os.path.ismount(mount.mountpoint)


def test_stale_mount_point_is_recovered(store, tmp_path):
    storage, digest, _ = store
    mountpoint = tmp_path / "mnt"
    with Mount(mountpoint, storage) as first:
        # Kill the auto-unmount helper first, then the daemon: the kernel is left
        # with a mount whose daemon is gone ("Transport endpoint is not connected").
        for helper in child_pids(first.process.pid):
            os.kill(helper, signal.SIGKILL)
        first.process.kill()
        first.process.wait()
        assert _wait_until(lambda: is_stale(str(mountpoint)))
        with Mount(mountpoint, storage) as second:
            assert os.listdir(second.path("sha1dir", digest)) == ["hello.txt", "sub"]
            assert "stale mount" in second.log()


def test_corrupted_manifest_gives_eio_and_the_mount_stays_up(store, tmp_path):
    storage, digest, hello_sha1 = store
    manifest = Kachery(Config(storage_dir=str(storage))).store.object_path("sha1", digest)
    os.chmod(manifest, 0o644)
    with open(manifest, "wb") as file:
        file.write(b'{"files": {"x": {"size": -1}}}')
    with Mount(tmp_path / "mnt", storage) as mount:
        for attempt in range(2):
            with pytest.raises(OSError) as failed:
                os.listdir(mount.path("sha1dir", digest))
            assert failed.value.errno == errno.EIO
        with open(mount.path("sha1", hello_sha1), "rb") as file:
            assert file.read() == b"hello\n"
        assert mount.process.poll() is None
        assert re.search(r"EIO .*" + digest, mount.log())


def test_background_mount_and_kachery_unmount(store, tmp_path):
    storage, digest, _ = store
    mountpoint = str(tmp_path / "mnt")
    os.mkdir(mountpoint)
    pid = None
    try:
        started = time.monotonic()
        result = _cli("kachery-mount", mountpoint, "--background", "--storage-dir", storage)
        assert result.returncode == 0, result.stderr
        assert time.monotonic() - started < 5
        pid = int(re.search(rb"pid (\d+)", result.stderr).group(1))
        assert os.listdir(os.path.join(mountpoint, "sha1dir", digest)) == ["hello.txt", "sub"]
        assert _cli("kachery-unmount", mountpoint).returncode == 0
        assert not os.path.ismount(mountpoint)
        assert _wait_until(lambda: not _alive(pid))
        again = _cli("kachery-unmount", mountpoint)
        assert again.returncode != 0 and b"not mounted" in again.stderr
    finally:
        force_unmount(mountpoint)
        if pid and _alive(pid):
            os.kill(pid, signal.SIGTERM)


def test_mounting_twice_is_refused(store, tmp_path):
    storage, _, _ = store
    with Mount(tmp_path / "mnt", storage) as mount:
        result = _cli("kachery-mount", mount.mountpoint, "--storage-dir", storage)
        assert result.returncode != 0 and b"already mounted" in result.stderr
        assert mount.process.poll() is None


def test_mount_is_usable_quickly(store, tmp_path):
    storage, digest, _ = store
    started = time.monotonic()
    with Mount(tmp_path / "mnt", storage) as mount:
        os.listdir(mount.path("sha1dir", digest))
        assert time.monotonic() - started < 3  # < 1 s unloaded; slack for a busy CI machine


def _cli(name, *args):
    return subprocess.run([command_path(name), *map(str, args)], capture_output=True, timeout=60)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat", "rb") as stat_file:  # a zombie is not alive
        return stat_file.read().rsplit(b")", 1)[1].split()[0] != b"Z"


def _wait_until(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False
