"""Issue 11: remotes that drip, lie or refuse; tokens given with --remote.

A dripping remote answers every read in time (one byte every 0.2 s) and so
passes any read timeout; only the transfer's speed bound (pace.py) ends it.
"""

import errno
import hashlib
import os
import random
import time

import pytest

from fs_helpers import Mount, needs_fuse
from hostile_helpers import HostileRemote
from server_helpers import object_rel, servers  # noqa: F401  (fixture)

pytestmark = pytest.mark.server

#: Speed bound for these tests: a body under 1,000 B/s over 2 s fails.
FAST_BOUND = 'remote_speed_limit = 1000\nremote_speed_time = 2\nremote_timeout = 3\n'


def assert_one_line_error(result, code, *words):
    stderr = result.stderr.decode()
    assert result.returncode == code, stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    for word in words:
        assert word in stderr, stderr


@pytest.fixture
def client_env(tmp_path):
    """Environment of a client with an empty store and the short speed bound."""
    config = tmp_path / "client.toml"
    config.write_text(FAST_BOUND)
    return {"KACHERY_STORAGE_DIR": str(tmp_path / "client"), "KACHERY_CONFIG": str(config),
            "KACHERY_REMOTE": "", "KACHERY_TOKEN": ""}


def one_object(size, seed=1):
    data = random.Random(seed).randbytes(size)
    digest = hashlib.sha1(data).hexdigest()
    return digest, data, {object_rel(digest): data}


@pytest.mark.parametrize("size", [3000, 2 * 1024 * 1024], ids=["pumped", "spliced"])
def test_a_dripping_remote_fails_within_the_speed_bound(run_cli, client_env, tmp_path, size):
    digest, _, objects = one_object(size)
    with HostileRemote(objects, drip=0.2) as drip:
        started = time.monotonic()
        result = run_cli("kachery-cat", f"sha1://{digest}", "--remote", drip.url,
                         env=client_env, timeout=60)
        elapsed = time.monotonic() - started
    assert_one_line_error(result, 4, drip.url, "too slow")
    assert elapsed < 12, elapsed  # 2 s window (+ a read timeout of 3 s at most) + start-up
    assert not os.listdir(tmp_path / "client" / "tmp") if (tmp_path / "client" / "tmp").exists() else True


def test_after_a_dripping_remote_the_next_one_serves(run_cli, client_env):
    digest, data, objects = one_object(3000, seed=2)
    with HostileRemote(objects, drip=0.2) as drip, HostileRemote(objects, drip=0) as good:
        result = run_cli("kachery-cat", f"sha1://{digest}", "--remote", drip.url,
                         "--remote", good.url, env=client_env, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == data


@needs_fuse
@pytest.mark.fuse
def test_a_mount_read_from_a_dripping_remote_is_eio_within_the_bound(tmp_path, client_env):
    digest, _, objects = one_object(3000, seed=3)
    config = tmp_path / "client.toml"
    with HostileRemote(objects, drip=0.2) as drip:
        mount = Mount(tmp_path / "mnt", tmp_path / "client", ["--remote", drip.url])
        os.environ["KACHERY_CONFIG"], previous = str(config), os.environ.get("KACHERY_CONFIG")
        try:
            with mount:
                started = time.monotonic()
                with pytest.raises(OSError) as raised:
                    with open(mount.path("sha1", digest), "rb") as file:
                        file.read()
                elapsed = time.monotonic() - started
        finally:
            if previous is None:
                os.environ.pop("KACHERY_CONFIG", None)
            else:
                os.environ["KACHERY_CONFIG"] = previous
    assert raised.value.errno == errno.EIO
    assert elapsed < 12, elapsed


def test_kachery_token_is_the_token_of_a_remote_given_with_the_option(servers, run_cli, tmp_path):
    server = servers.kachery()
    (tmp_path / "file.txt").write_bytes(b"uploaded with --remote and KACHERY_TOKEN")
    env = {"KACHERY_STORAGE_DIR": str(tmp_path / "A"), "KACHERY_CONFIG": str(tmp_path / "none.toml"),
           "KACHERY_REMOTE": "", "KACHERY_TOKEN": server.write_token}
    result = run_cli("kachery-store", "--upload-only", "--remote", server.url, tmp_path / "file.txt",
                     env=env)
    assert result.returncode == 0, result.stderr.decode()
    digest = hashlib.sha1(b"uploaded with --remote and KACHERY_TOKEN").hexdigest()
    assert os.path.exists(os.path.join(server.storage, object_rel(digest)))


# ------------------------------------------------- temp files of dead writers

def _temp_files(storage):
    found = []
    for area in (storage / "tmp", storage / "cache" / "tmp"):
        if area.exists():
            found += [name for name in os.listdir(area) if name.endswith(".part")]
    return found


def _killed_mid_download(run_cli, client_env, tmp_path, drip):
    """Start kachery-load from the dripping remote, kill -9 it once its temp file exists."""
    import signal
    import subprocess

    from conftest import _command_path

    digest, _, objects = one_object(5000, seed=7)
    drip.server.objects.update(objects)
    env = dict(os.environ, **client_env)
    process = subprocess.Popen([_command_path("kachery-load"), f"sha1://{digest}", "--remote", drip.url],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    storage = tmp_path / "client"
    deadline = time.monotonic() + 20
    while not _temp_files(storage):
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert _temp_files(storage)  # what a kill leaves
    return storage


@pytest.mark.parametrize("cleaner", ["cache --clear", "verify --clean-temp", "next download"])
def test_a_killed_download_leaves_no_temp_file_after_the_next_use(run_cli, client_env, tmp_path,
                                                                  cleaner):
    with HostileRemote({}, drip=0.05) as drip:
        storage = _killed_mid_download(run_cli, client_env, tmp_path, drip)
        if cleaner == "next download":
            digest, data, objects = one_object(100, seed=8)
            with HostileRemote(objects, drip=0) as good:
                result = run_cli("kachery-cat", f"sha1://{digest}", "--remote", good.url, env=client_env)
                assert result.stdout == data
        else:
            result = run_cli("kachery", *cleaner.split(), env=client_env)
            assert result.returncode == 0, result.stderr.decode()
    assert _temp_files(storage) == []


def test_a_live_writers_temp_file_is_never_removed(tmp_path):
    """Another process's open download (its lock held) survives every cleaner."""
    import subprocess
    import sys

    from kachery_core.store import LocalStore

    code = ("import sys, time; from kachery_core.store import LocalStore; "
            "fd, path = LocalStore(sys.argv[1]).create_temp(); print(path, flush=True); time.sleep(60)")
    writer = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "s")], stdout=subprocess.PIPE)
    try:
        path = writer.stdout.readline().decode().strip()
        os.utime(path, (0, 0))  # however old it looks
        assert LocalStore(tmp_path / "s").remove_stale_temps(older_than=0) == 0
        assert os.path.exists(path)
    finally:
        writer.kill()
        writer.wait()
    assert LocalStore(tmp_path / "s").remove_stale_temps() == 1
    assert not os.path.exists(path)


# ------------------------------------------ a source that changes underneath

def _truncating(path, keep, stop):
    """Truncate ``path`` to ``keep`` bytes and grow it back, over and over."""
    import threading

    full = path.read_bytes()

    def loop():
        while not stop.is_set():
            with open(path, "r+b") as file:
                file.truncate(keep)
            time.sleep(0.002)
            with open(path, "r+b") as file:
                file.seek(keep)
                file.write(full[keep:])

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def test_a_file_truncated_during_upload_only_is_changed_never_a_signal(servers, run_cli, tmp_path):
    """Hashing read through mappings died of SIGBUS; a cut under a sendfile
    upload waited 31 s for the server's timeout."""
    import threading

    size = 40 * 1024 * 1024
    server = servers.kachery()
    path = tmp_path / "moving.bin"
    path.write_bytes(random.Random(9).randbytes(size))
    env = {"KACHERY_STORAGE_DIR": str(tmp_path / "A"), "KACHERY_CONFIG": str(tmp_path / "none.toml"),
           "KACHERY_REMOTE": server.url, "KACHERY_TOKEN": server.write_token}
    outcomes = []
    for _trial in range(3):
        stop = threading.Event()
        thread = _truncating(path, size // 3, stop)
        started = time.monotonic()
        try:
            result = run_cli("kachery-store", "--upload-only", path, env=env, timeout=60)
        finally:
            stop.set()
            thread.join()
        elapsed = time.monotonic() - started
        assert result.returncode >= 0, f"killed by signal {-result.returncode}"
        if result.returncode:
            assert_one_line_error(result, 6, "changed while it was being stored")
            assert elapsed < 10, elapsed
        outcomes.append(result.returncode)
    assert any(outcomes), "the file never changed under the upload"
    # nothing of a changing file was published on the server under a wrong name
    from kachery_core.verify import verify_store
    from kachery_core.store import LocalStore

    assert verify_store(LocalStore(server.storage)).corrupt == []


@pytest.mark.parametrize("size", [32 * 1024 * 1024, 7 * 1024 * 1024 + 512 * 1024],
                         ids=["sendfile", "streamed"])
def test_a_file_truncated_during_its_put_is_changed_at_once(servers, tmp_path, size):
    """Deterministic: the PUT is held by a proxy after its first 64 KiB (the
    file hashed long before), the file is cut short, the PUT goes on. It
    ends at once with the one-line error, not at a timeout, and the server
    holds nothing under that name. Large files go up with sendfile(2),
    smaller ones through requests (http_upload.SENDFILE_MIN)."""
    import subprocess

    from conftest import _command_path
    from hostile_helpers import PausingProxy
    from kachery_core.http_upload import SENDFILE_MIN

    assert (size >= SENDFILE_MIN) == (size == 32 * 1024 * 1024)
    server = servers.kachery()
    path = tmp_path / "cut.bin"
    data = random.Random(13).randbytes(size)
    path.write_bytes(data)
    env = dict(os.environ, KACHERY_STORAGE_DIR=str(tmp_path / "A"), KACHERY_REMOTE="",
               KACHERY_CONFIG=str(tmp_path / "none.toml"), KACHERY_TOKEN=server.write_token)
    with PausingProxy(server.url) as proxy:
        process = subprocess.Popen([_command_path("kachery-store"), "--upload-only", "--remote",
                                    proxy.url, path], env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert proxy.paused.wait(30), "the upload never started"
            os.truncate(path, size // 2)
            proxy.resume()
            resumed = time.monotonic()
            stdout, stderr = process.communicate(timeout=60)
            elapsed = time.monotonic() - resumed
        finally:
            process.kill()
            process.wait()
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    assert_one_line_error(result, 6, "changed while it was being stored", str(path))
    assert elapsed < 5, elapsed  # not the server's or the client's timeout
    assert not os.path.exists(os.path.join(server.storage, object_rel(hashlib.sha1(data).hexdigest())))
    from kachery_core.store import LocalStore
    from kachery_core.verify import verify_store

    assert verify_store(LocalStore(server.storage)).checked == 0  # nothing at all was stored


@needs_fuse
@pytest.mark.fuse
def test_a_mount_serves_3000_concurrent_opens(tmp_path, run_cli):
    """The daemon raises its open-file limit: started with a soft limit of
    1,024 (the usual default) it still serves 3,000 opens at once."""
    import resource

    storage = tmp_path / "store"
    (tmp_path / "f.txt").write_bytes(b"opened many times")
    env = {"KACHERY_STORAGE_DIR": str(storage), "KACHERY_CONFIG": str(tmp_path / "none.toml")}
    url = run_cli("kachery-store", tmp_path / "f.txt", env=env, check=True).stdout.decode().strip()
    digest = url.split("://")[1].split("/")[0]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 4000:
        pytest.skip(f"hard open-file limit {hard} is below 4000")
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))  # what the daemon inherits
    try:
        mount = Mount(tmp_path / "mnt", storage).start()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    files = []
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4000), hard))
        for _ in range(3000):
            files.append(open(mount.path("sha1", digest), "rb"))
        assert files[-1].read() == b"opened many times"
    finally:
        for file in files:
            file.close()
        mount.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_file_manifest_with_a_huge_chunk_is_invalid():
    import json

    from kachery_core.errors import InvalidManifest
    from kachery_core.manifest import parse_file_manifest

    size = 512 * 1024 * 1024
    document = {"size": size, "sha1": "a" * 40, "chunks": [{"start": 0, "end": size, "sha1": "b" * 40}]}
    with pytest.raises(InvalidManifest, match="over the 64 MiB"):
        parse_file_manifest(json.dumps(document).encode())


def test_a_load_removes_partial_copies_of_killed_loads_beside_its_destination(run_cli, tmp_path):
    import subprocess

    (tmp_path / "f.txt").write_bytes(b"loaded")
    env = {"KACHERY_STORAGE_DIR": str(tmp_path / "s"), "KACHERY_CONFIG": str(tmp_path / "none.toml")}
    url = run_cli("kachery-store", tmp_path / "f.txt", env=env, check=True).stdout.decode().strip()
    dead = subprocess.Popen(["true"])
    dead.wait()  # a PID that is gone
    stale = tmp_path / f".out.txt.kachery-partial-{dead.pid}"
    stale.write_bytes(b"x" * 1000)
    run_cli("kachery-load", url, "--dest", tmp_path / "out.txt", env=env, check=True)
    assert (tmp_path / "out.txt").read_bytes() == b"loaded"
    assert not stale.exists()


# ------------------------------- chunks that verify, a whole that does not

@pytest.fixture
def lying_manifest(servers, tmp_path):
    """A server holding a file manifest that claims the hash of Y while its
    chunks (each correct) are those of X; returns (server, URL)."""
    from kachery_core.manifest import Chunk, FileManifest
    from server_helpers import put_local

    step = 4 * 1024 * 1024
    x = random.Random(11).randbytes(2 * step + 1000)
    y = random.Random(12).randbytes(len(x))
    storage = tmp_path / "server-storage"
    chunks = []
    for start in range(0, len(x), step):
        piece = x[start:start + step]
        chunks.append(Chunk(start, start + len(piece), put_local(storage, piece)))
    manifest = FileManifest(len(y), hashlib.sha1(y).hexdigest(), tuple(chunks)).to_bytes()
    lie = storage / object_rel(hashlib.sha1(y).hexdigest())  # Range reads of "Y" give X's chunks
    lie.parent.mkdir(parents=True, exist_ok=True)
    lie.write_bytes(x)
    server = servers.kachery(storage=storage)
    return server, f"sha1://{hashlib.sha1(y).hexdigest()}/y.bin?manifest={put_local(storage, manifest)}"


def test_kachery_cat_of_a_whole_that_fails_its_hash_exits_3(run_cli, client_env, lying_manifest):
    server, url = lying_manifest
    result = run_cli("kachery-cat", url, "--remote", server.url, env=client_env)
    assert_one_line_error(result, 3, "corrupt")
    assert len(result.stdout) < 2 * 4 * 1024 * 1024 + 1000  # the end of it was never written


def test_kachery_load_of_a_whole_that_fails_its_hash_writes_nothing(run_cli, client_env, lying_manifest,
                                                                     tmp_path):
    server, url = lying_manifest
    dest = tmp_path / "out.bin"
    result = run_cli("kachery-load", url, "--dest", dest, "--remote", server.url, env=client_env)
    assert_one_line_error(result, 3, "corrupt")
    assert not dest.exists()
    assert not [name for name in os.listdir(tmp_path) if "kachery-partial" in name]


@needs_fuse
@pytest.mark.fuse
def test_a_mount_refuses_a_whole_that_fails_its_hash(tmp_path, lying_manifest):
    server, url = lying_manifest
    digest = url.split("://")[1].split("/")[0]
    snapshot_dir = tmp_path / "tree"
    with Mount(tmp_path / "mnt", tmp_path / "client", ["--remote", server.url]) as mount:
        path = mount.path("sha1", digest)  # no manifest in a sha1/ path: use the snapshot route
        del path
        import json

        from kachery_core.manifest import parse_file_manifest  # noqa: F401
        from server_helpers import put_local

        manifest_digest = url.split("manifest=")[1]
        size = 2 * 4 * 1024 * 1024 + 1000
        listing = {"files": {"y.bin": {"size": size, "sha1": digest, "manifest": manifest_digest}},
                   "dirs": {}}
        snapshot = put_local(server.storage, json.dumps(listing).encode())
        with pytest.raises(OSError) as raised:
            with open(mount.path("sha1dir", snapshot, "y.bin"), "rb") as file:
                while file.read(1 << 20):
                    pass
        assert raised.value.errno == errno.EIO
        # and nothing of it is served any more, not even from the kernel's cache
        with pytest.raises(OSError):
            with open(mount.path("sha1dir", snapshot, "y.bin"), "rb") as file:
                file.read(4096)
    del snapshot_dir
