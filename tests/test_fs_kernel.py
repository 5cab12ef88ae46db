"""What only the kernel-protocol backend does (kachery-mount --fuse kernel):
passthrough reads, extended attributes, interrupted readers released at once,
pages of a refuted file dropped, a non-root daemon falling back to served
reads, and no stale mount after kill -9. Real mounts, a real server."""

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from fs_helpers import Mount, child_pids, command_path, is_stale, needs_fuse
from hostile_helpers import HostileRemote
from server_helpers import object_rel, put_local, servers  # noqa: F401,F811  (fixture)

pytestmark = [pytest.mark.fuse, needs_fuse]

CHUNK = 4 * 1024 * 1024


@pytest.fixture(autouse=True)
def kernel_backend(monkeypatch):
    monkeypatch.setenv("KACHERY_FUSE", "kernel")


def store(storage, data):
    """Put ``data`` in a store by the CLI; its sha1."""
    source = os.path.join(os.path.dirname(storage), f"source-{hashlib.sha1(data).hexdigest()}")
    with open(source, "wb") as file:
        file.write(data)
    env = dict(os.environ, KACHERY_STORAGE_DIR=str(storage), KACHERY_CONFIG="/nonexistent")
    subprocess.run([command_path("kachery-store"), source], env=env, check=True, capture_output=True)
    return hashlib.sha1(data).hexdigest()


def mount_stats(mount, condition, timeout=5.0):
    """The mount's counters (refreshed each second) once ``condition(counters)`` holds."""
    path = os.path.join(mount.storage_dir, "logs", f"mount-stats-{mount.process.pid}.json")
    deadline = time.monotonic() + timeout
    counters = {}
    while time.monotonic() < deadline:
        try:
            with open(path) as file:
                counters = json.load(file)
        except (OSError, ValueError):
            counters = {}
        if condition(counters):
            return counters
        time.sleep(0.1)
    raise AssertionError(f"mount counters never satisfied the condition: {counters}")


def test_a_local_object_is_read_by_passthrough_with_no_read_reaching_the_daemon(tmp_path):
    data = random.Random(1).randbytes(8 * 1024 * 1024 + 5)
    digest = store(tmp_path / "storage", data)
    with Mount(tmp_path / "mnt", tmp_path / "storage") as mount:
        for _ in range(2):
            with open(mount.path("sha1", digest), "rb") as file:
                assert file.read() == data
        import mmap

        with open(mount.path("sha1", digest), "rb") as file:
            with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                assert hashlib.sha1(mapped).hexdigest() == digest
        counters = mount_stats(mount, lambda c: c.get("mount_passthrough_opens", 0) >= 3)
    assert counters.get("mount_reads", 0) == 0, counters
    assert counters.get("mount_served_opens", 0) == 0, counters


def test_passthrough_and_served_reads_at_once_and_a_file_that_becomes_complete(tmp_path, servers):  # noqa: F811
    local = random.Random(2).randbytes(6 * 1024 * 1024)
    remote = random.Random(3).randbytes(3 * CHUNK + 77)
    local_digest = store(tmp_path / "client", local)
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "remote.bin").write_bytes(remote)
    env = dict(os.environ, KACHERY_STORAGE_DIR=str(tmp_path / "server-storage"), KACHERY_CONFIG="/nonexistent")
    url = subprocess.run([command_path("kachery-store"), str(tree)], env=env, check=True,
                         capture_output=True, text=True).stdout.strip()
    remote_digest = hashlib.sha1(remote).hexdigest()
    server = servers.kachery(storage=tmp_path / "server-storage")
    with Mount(tmp_path / "mnt", tmp_path / "client", ["--remote", server.url]) as mount:
        results = {}
        remote_path = mount.path("sha1dir", url.split("://", 1)[1], "remote.bin")
        paths = {"local": mount.path("sha1", local_digest), "remote": remote_path}

        def read(name, rounds):
            got = []
            for _ in range(rounds):
                with open(paths[name], "rb") as file:
                    got.append(hashlib.sha1(file.read()).hexdigest())
            results[name] = got

        # The remote file is served (fetched chunk by chunk as it is read) while
        # the local one passes through.
        held = open(remote_path, "rb")
        threads = [threading.Thread(target=read, args=("local", 5)),
                   threading.Thread(target=read, args=("remote", 2))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert results == {"local": [local_digest] * 5, "remote": [remote_digest] * 2}
        # Complete in the cache now, but still open in served mode: new opens stay
        # served (one inode never in both modes), and read right.
        with open(remote_path, "rb") as file:
            assert hashlib.sha1(file.read()).hexdigest() == remote_digest
        assert hashlib.sha1(held.read()).hexdigest() == remote_digest
        held.close()
        before = mount_stats(mount, lambda c: c.get("mount_served_opens", 0) >= 4)
        # Once every served open is closed, the complete file passes through.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with open(remote_path, "rb") as file:
                assert hashlib.sha1(file.read()).hexdigest() == remote_digest
            after = mount_stats(mount, lambda c: True)
            if after.get("mount_passthrough_opens", 0) > before.get("mount_passthrough_opens", 0) + 5:
                break
            time.sleep(0.2)
    assert after.get("mount_reads", 0) > 0  # the remote file's reads were served
    assert after["mount_passthrough_opens"] > before["mount_passthrough_opens"] + 5, (before, after)


def test_extended_attributes_name_each_files_hash_url(tmp_path):
    source = tmp_path / "tree"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "a.csv").write_bytes(b"x,y\n1,2\n")
    env = dict(os.environ, KACHERY_STORAGE_DIR=str(tmp_path / "storage"), KACHERY_CONFIG="/nonexistent")
    url = subprocess.run([command_path("kachery-store"), str(source)], env=env, check=True,
                         capture_output=True, text=True).stdout.strip()
    snapshot = url.split("://", 1)[1]
    digest = hashlib.sha1(b"x,y\n1,2\n").hexdigest()
    with Mount(tmp_path / "mnt", tmp_path / "storage") as mount:
        path = mount.path("sha1dir", snapshot, "sub", "a.csv")
        assert sorted(os.listxattr(path)) == ["user.kachery.sha1", "user.kachery.url"]
        assert os.getxattr(path, "user.kachery.url") == f"sha1://{digest}/a.csv".encode()
        assert os.getxattr(path, "user.kachery.sha1") == digest.encode()
        folder = mount.path("sha1dir", snapshot, "sub")
        assert os.getxattr(folder, "user.kachery.url") == f"sha1dir://{snapshot}/sub".encode()
        assert os.getxattr(mount.path("sha1", digest), "user.kachery.url") == f"sha1://{digest}".encode()
        with pytest.raises(OSError) as missing:
            os.getxattr(path, "user.other")
        assert missing.value.errno == 61  # ENODATA
        if shutil.which("getfattr"):
            shown = subprocess.run(["getfattr", "-d", path], capture_output=True, text=True).stdout
            assert f'user.kachery.url="sha1://{digest}/a.csv"' in shown


def test_kill_9_of_the_daemon_leaves_no_stale_mount(tmp_path):
    digest = store(tmp_path / "storage", b"still here\n")
    mount = Mount(tmp_path / "mnt", tmp_path / "storage")
    with mount:
        with open(mount.path("sha1", digest), "rb") as file:
            assert file.read() == b"still here\n"
        assert _helper_names(mount.process.pid) == ["fusermount3"]
        os.kill(mount.process.pid, signal.SIGKILL)
        mount.process.wait(10)
        deadline = time.monotonic() + 5
        while os.path.ismount(mount.mountpoint) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not os.path.ismount(mount.mountpoint)
        assert not is_stale(mount.mountpoint)
    with Mount(tmp_path / "mnt", tmp_path / "storage") as again:  # and it mounts again at once
        with open(again.path("sha1", digest), "rb") as file:
            assert file.read() == b"still here\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="mount(2) needs root")
def test_without_fusermount3_root_mounts_by_mount_2(tmp_path, monkeypatch):
    tools = tmp_path / "bin"  # a PATH with umount but no fusermount3
    tools.mkdir()
    for name in ("umount", "mountpoint"):
        found = shutil.which(name)
        if found:
            os.symlink(found, tools / name)
    monkeypatch.setenv("PATH", str(tools))
    digest = store(tmp_path / "storage", b"mounted by mount(2)\n")
    with Mount(tmp_path / "mnt", tmp_path / "storage") as mount:
        with open("/proc/self/mounts") as table:
            line = next(line for line in table if line.split()[1] == mount.mountpoint)
        assert line.split()[2] == "fuse.kachery" and "ro" in line.split()[3].split(",")
        assert _helper_names(mount.process.pid) == []  # no fusermount3 waiting to auto-unmount
        with open(mount.path("sha1", digest), "rb") as file:
            assert file.read() == b"mounted by mount(2)\n"
        mount.process.send_signal(signal.SIGTERM)
        assert mount.process.wait(10) == 0
        assert not os.path.ismount(mount.mountpoint)


def _helper_names(pid):
    names = []
    for child in child_pids(pid):
        with open(f"/proc/{child}/comm") as comm:
            names.append(comm.read().strip())
    return names


def test_a_reader_killed_in_a_read_from_a_slow_remote_is_released_at_once(tmp_path):
    data = random.Random(4).randbytes(3000)
    digest = hashlib.sha1(data).hexdigest()
    with HostileRemote({object_rel(digest): data}, drip=0.2) as drip:
        with Mount(tmp_path / "mnt", tmp_path / "client", ["--remote", drip.url]) as mount:
            reader = subprocess.Popen([sys.executable, "-c",
                                       f"open({mount.path('sha1', digest)!r}, 'rb').read()"])
            deadline = time.monotonic() + 10
            while drip.requests == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(0.5)  # inside the read now, bytes dripping
            assert reader.poll() is None
            killed = time.monotonic()
            reader.kill()
            reader.wait(10)
            released = time.monotonic() - killed
            assert mount.process.poll() is None  # the daemon serves on
            assert os.listdir(mount.path())  # and answers
    assert released < 0.5, released


def test_a_refuted_whole_is_dropped_from_the_kernel_cache(tmp_path, servers):  # noqa: F811
    from kachery_core.manifest import Chunk, FileManifest

    x = random.Random(11).randbytes(2 * CHUNK + 1000)
    y = random.Random(12).randbytes(len(x))
    storage = tmp_path / "server-storage"
    chunks = [Chunk(start, min(start + CHUNK, len(x)), put_local(storage, x[start:start + CHUNK]))
              for start in range(0, len(x), CHUNK)]
    claimed = hashlib.sha1(y).hexdigest()
    lie = storage / object_rel(claimed)  # Range reads of "Y" give X's bytes
    lie.parent.mkdir(parents=True, exist_ok=True)
    lie.write_bytes(x)
    manifest = put_local(storage, FileManifest(len(y), claimed, tuple(chunks)).to_bytes())
    listing = {"files": {"y.bin": {"size": len(y), "sha1": claimed, "manifest": manifest}}, "dirs": {}}
    snapshot = put_local(storage, json.dumps(listing).encode())
    server = servers.kachery(storage=storage)
    with Mount(tmp_path / "mnt", tmp_path / "client", ["--remote", server.url]) as mount:
        fd = os.open(mount.path("sha1dir", snapshot, "y.bin"), os.O_RDONLY)
        try:
            assert os.pread(fd, 4096, 0) == x[:4096]  # a chunk verifies: served, and cached
            with pytest.raises(OSError) as refused:  # at the latest, the read that completes it
                for offset in range(4096, len(x), 1 << 20):
                    os.pread(fd, 1 << 20, offset)
            assert refused.value.errno == 5  # EIO
            deadline = time.monotonic() + 3
            while True:  # the first pages, cached before, are no longer served
                try:
                    os.pread(fd, 4096, 0)
                except OSError as error:
                    assert error.errno == 5
                    break
                assert time.monotonic() < deadline, "pages of a refuted file still served"
                time.sleep(0.05)
        finally:
            os.close(fd)


#: Run inside a user namespace: the daemon is root there but has no CAP_SYS_ADMIN
#: in the initial namespace, which is what passthrough needs.
_WITHOUT_CAP_SYS_ADMIN = r"""
import hashlib, json, os, signal, subprocess, sys, time
mount_command, mountpoint, storage, digest = sys.argv[1:5]
daemon = subprocess.Popen([mount_command, mountpoint, "--storage-dir", storage],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
deadline = time.monotonic() + 15
while not os.path.ismount(mountpoint):
    if daemon.poll() is not None or time.monotonic() > deadline:
        sys.exit("mount did not come up: " + daemon.stderr.read().decode())
    time.sleep(0.02)
try:
    path = os.path.join(mountpoint, "sha1", digest)
    with open(path, "rb") as file:
        whole = hashlib.sha1(file.read()).hexdigest()
    with open(path, "rb") as file:
        file.seek(4 << 20)
        middle = hashlib.sha1(file.read(100)).hexdigest()
    time.sleep(1.5)  # the counters are refreshed each second
    with open(os.path.join(storage, "logs", f"mount-stats-{daemon.pid}.json")) as file:
        counters = json.load(file)
finally:
    daemon.send_signal(signal.SIGTERM)
    daemon.wait(10)
print(json.dumps({"whole": whole, "middle": middle, "counters": counters, "exit": daemon.returncode}))
"""


@pytest.mark.skipif(not shutil.which("unshare"), reason="needs unshare (util-linux)")
def test_a_daemon_without_cap_sys_admin_serves_exact_bytes(tmp_path):
    data = random.Random(5).randbytes(5 * 1024 * 1024 + 3)
    digest = store(tmp_path / "storage", data)
    (tmp_path / "mnt").mkdir()
    result = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", sys.executable, "-c", _WITHOUT_CAP_SYS_ADMIN,
         command_path("kachery-mount"), str(tmp_path / "mnt"), str(tmp_path / "storage"), digest],
        capture_output=True, text=True, timeout=60)
    if result.returncode != 0 and "unshare failed" in result.stderr:
        pytest.skip(f"user namespaces not available: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["whole"] == digest
    assert report["middle"] == hashlib.sha1(data[4 << 20:(4 << 20) + 100]).hexdigest()
    assert report["exit"] == 0
    counters = report["counters"]
    assert counters.get("mount_served_opens", 0) == 2, counters
    assert counters.get("mount_passthrough_opens", 0) == 0, counters
    assert counters.get("mount_reads", 0) > 0, counters
