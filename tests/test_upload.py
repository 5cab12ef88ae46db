"""End to end: `kachery-store --upload` on one storage directory, the other
commands on another storage directory that reaches the objects only through
a real kachery-server (or a static http.server) on 127.0.0.1."""

import hashlib
import os
import re

import pytest

from server_helpers import object_rel, servers, sha1, stored_objects  # noqa: F401  (fixture)

pytestmark = pytest.mark.server

LARGE = 50 * 1000 * 1000  # several 4 MiB chunks: gets a file manifest


def pseudo_random(size, seed=1):
    """Deterministic incompressible-looking bytes, fast to make."""
    block = hashlib.sha512(str(seed).encode()).digest() * 2048  # 128 KiB
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(counter.to_bytes(8, "little") + block[:64]).digest() + block
        counter += 1
    return bytes(out[:size])


@pytest.fixture
def env(tmp_path):
    """Two machines' environments: A uploads, B downloads (each its own storage)."""

    def machine(name, remote, token=None):
        values = {"KACHERY_STORAGE_DIR": str(tmp_path / name),
                  "KACHERY_CONFIG": str(tmp_path / "no-config.toml"),
                  "KACHERY_REMOTE": remote, "KACHERY_TOKEN": token or ""}
        return values

    return machine


def ok(result):
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode().strip()


def assert_one_line_error(result, code, *words):
    stderr = result.stderr.decode()
    assert result.returncode == code, stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    for word in words:
        assert word in stderr, stderr


def uploaded_bytes(server):
    """Request body bytes of every upload (PUT or POST /api/upload) in the access log."""
    lengths = re.findall(r'"(?:PUT /|POST /api/upload)[^"]*" \d+ \S+ \S+ "[^"]*" (\d+)', server.log())
    return sum(map(int, lengths))


def test_files_round_trip_through_the_server(servers, env, run_cli, tmp_path):
    server = servers.kachery()
    a = env("A", server.url, server.write_token)
    b = env("B", server.url)
    contents = {"small.txt": b"hello kachery\n", "empty": b"", "large.bin": pseudo_random(LARGE)}
    for name, data in contents.items():
        (tmp_path / name).write_bytes(data)
    urls = ok(run_cli("kachery-store", "--upload", *(tmp_path / n for n in contents), env=a)).splitlines()
    assert len(urls) == 3 and "?manifest=" in urls[2]
    for url, (name, data) in zip(urls, contents.items()):
        if name == "small.txt":  # one through kachery-cat, the rest through kachery-load
            result = run_cli("kachery-cat", url, env=b)
            assert result.returncode == 0 and result.stdout == data
            continue
        path = ok(run_cli("kachery-load", url, env=b))
        with open(path, "rb") as file:
            assert file.read() == data, name
    assert stored_objects(a["KACHERY_STORAGE_DIR"])  # --upload keeps the local copy


def test_snapshot_resolves_from_the_server_alone(servers, env, run_cli, tmp_path):
    server = servers.kachery()
    source = tmp_path / "src"
    (source / "sub" / "deeper").mkdir(parents=True)
    (source / "a.txt").write_bytes(b"A")
    (source / "sub" / "empty").write_bytes(b"")
    (source / "sub" / "deeper" / "big.bin").write_bytes(pseudo_random(10 * 1000 * 1000, 2))
    for i in range(30):
        (source / "sub" / f"f{i:02}.txt").write_bytes(f"file {i}\n".encode())
    a = env("A", server.url, server.write_token)
    url = ok(run_cli("kachery-store", "--upload-only", source, env=a))
    assert url.startswith("sha1dir://")
    assert stored_objects(a["KACHERY_STORAGE_DIR"]) == []  # nothing kept locally
    tmp = os.path.join(a["KACHERY_STORAGE_DIR"], "tmp")
    assert not os.path.exists(tmp) or os.listdir(tmp) == []
    b = env("B", server.url)
    listing = ok(run_cli("kachery-ls", url + "/sub", env=b)).split()
    assert "empty" in listing and "deeper/" in listing
    dest = tmp_path / "copy"
    ok(run_cli("kachery-load", url, "--dest", dest, env=b))
    for path in source.rglob("*"):
        if path.is_file():
            assert (dest / path.relative_to(source)).read_bytes() == path.read_bytes()


def test_second_upload_sends_nothing(servers, env, run_cli, tmp_path):
    server = servers.kachery()
    source = tmp_path / "src"
    source.mkdir()
    for i in range(20):
        (source / f"f{i}").write_bytes(os.urandom(10000))
    a = env("A", server.url, server.write_token)
    first_run = run_cli("kachery-store", "--upload", source, env=a)
    first = ok(first_run)
    assert "uploaded 21 object(s)" in first_run.stderr.decode()  # it says what it sent ...
    assert len(stored_objects(server.storage)) == 21  # 20 files + the manifest
    sent = uploaded_bytes(server)
    assert sent > 200000
    (source / "new").write_bytes(b"one more")
    second_run = run_cli("kachery-store", "--upload", source, env=a)
    second = ok(second_run)
    assert "uploaded 2 object(s)" in second_run.stderr.decode()  # ... and what it skipped
    assert "20 already on the remote" in second_run.stderr.decode()
    assert second != first
    assert len(stored_objects(server.storage)) == 23  # + the new file and the new manifest
    assert uploaded_bytes(server) - sent < 5000  # only those two were sent
    assert len(re.findall(r'"POST /api/has', server.log())) == 2  # one round trip each


def test_range_reads_fetch_only_the_chunks_they_touch(servers, env, run_cli, tmp_path):
    server = servers.kachery()
    data = pseudo_random(LARGE, 3)
    (tmp_path / "large.bin").write_bytes(data)
    url = ok(run_cli("kachery-store", "--upload-only", tmp_path / "large.bin",
                     env=env("A", server.url, server.write_token)))
    b = env("B", server.url)
    for start, end in [(0, 1), (10_000_000, 10_000_100), (LARGE - 5, LARGE)]:
        result = run_cli("kachery-cat", url, "--start", start, "--end", end, env=b)
        assert result.returncode == 0 and result.stdout == data[start:end]
        dest = tmp_path / f"range-{start}"
        loaded = run_cli("kachery-load", url, "--start", start, "--end", end, "--dest", dest, env=b)
        assert loaded.returncode == 0 and loaded.stdout.decode().strip() == str(dest)
        assert dest.read_bytes() == data[start:end]
    digest = url.split("://")[1].split("/")[0]
    whole_gets = [line for line in server.log().splitlines()
                  if f"GET /{object_rel(digest)}" in line and '" 200 ' in line]
    assert whole_gets == []  # only 206 chunk requests
    assert not os.path.exists(os.path.join(b["KACHERY_STORAGE_DIR"], "cache", object_rel(digest)))
    temp_area = os.path.join(b["KACHERY_STORAGE_DIR"], "cache", "tmp")
    assert not os.path.isdir(temp_area) or os.listdir(temp_area) == []  # no partial assembly left


def test_static_http_server_is_a_read_only_remote(servers, env, run_cli, tmp_path):
    storage = tmp_path / "A"
    (tmp_path / "f.bin").write_bytes(pseudo_random(9 * 1000 * 1000, 4))
    url = ok(run_cli("kachery-store", tmp_path / "f.bin", env=env("A", "")))
    static = servers.static(storage)
    b = env("B", static.url)
    path = ok(run_cli("kachery-load", url, env=b))
    assert open(path, "rb").read() == (tmp_path / "f.bin").read_bytes()
    result = run_cli("kachery-cat", url, "--start", 5_000_000, "--end", 5_000_010, env=env("C", static.url))
    assert result.stdout == (tmp_path / "f.bin").read_bytes()[5_000_000:5_000_010]


def test_first_remote_down_or_corrupt_second_serves(servers, env, run_cli, tmp_path):
    server = servers.kachery()
    data = pseudo_random(300_000, 5)
    (tmp_path / "f.bin").write_bytes(data)
    url = ok(run_cli("kachery-store", "--upload", tmp_path / "f.bin",
                     env=env("A", server.url, server.write_token)))
    digest = sha1(data)
    bad = tmp_path / "bad-store" / object_rel(digest)
    bad.parent.mkdir(parents=True)
    bad.write_bytes(data[::-1])
    static = servers.static(tmp_path / "bad-store")
    from server_helpers import dead_url

    b = env("B", f"{dead_url()} {static.url} {server.url}")
    path = ok(run_cli("kachery-load", url, env=b))
    assert open(path, "rb").read() == data
    for rel in stored_objects(b["KACHERY_STORAGE_DIR"] + "/cache"):
        with open(os.path.join(b["KACHERY_STORAGE_DIR"], "cache", rel), "rb") as file:
            assert sha1(file.read()) == rel.rsplit("/", 1)[1]  # nothing corrupt cached


def test_errors_are_one_line_with_their_own_exit_codes(servers, env, run_cli, tmp_path):
    from server_helpers import dead_url

    server = servers.kachery()
    (tmp_path / "new.txt").write_bytes(os.urandom(64))
    (tmp_path / "other.txt").write_bytes(os.urandom(64))
    missing = "sha1://" + "1" * 40
    assert_one_line_error(run_cli("kachery-load", missing, env=env("B", dead_url())), 4, "unavailable")
    assert_one_line_error(run_cli("kachery-load", missing, env=env("B", server.url)), 1, "not found")
    assert_one_line_error(run_cli("kachery-store", "--upload", tmp_path / "new.txt",
                                  env=env("A", server.url)), 5, "401")
    assert_one_line_error(run_cli("kachery-store", "--upload-only", tmp_path / "other.txt",
                                  env=env("C", server.url, server.read_token)), 5, "403")
    assert stored_objects(str(tmp_path / "C")) == []  # --upload-only failed: nothing kept
    assert not (tmp_path / "C" / "tmp").exists() or os.listdir(tmp_path / "C" / "tmp") == []


def test_python_api_upload_and_per_call_remotes(servers, tmp_path, monkeypatch):
    import kachery_core as kc

    server = servers.kachery()
    monkeypatch.setenv("KACHERY_CONFIG", str(tmp_path / "no-config.toml"))
    monkeypatch.setenv("KACHERY_STORAGE_DIR", str(tmp_path / "A"))
    monkeypatch.setenv("KACHERY_REMOTE", server.url)
    monkeypatch.setenv("KACHERY_TOKEN", server.write_token)
    url = kc.store_text("api text", upload_only=True)
    monkeypatch.setenv("KACHERY_STORAGE_DIR", str(tmp_path / "B"))
    monkeypatch.delenv("KACHERY_REMOTE")
    assert kc.load_text(url, remotes=[server.url]) == "api text"
    # remotes=[]: local only, where it is missing (0.6.x returns None for that)
    assert kc.load_text(url, storage_dir=str(tmp_path / "C"), remotes=[]) is None


@pytest.mark.slow
def test_300_mb_file_round_trip(servers, env, run_cli, tmp_path):
    server = servers.kachery()
    size = 300 * 1000 * 1000
    big = tmp_path / "big.bin"
    with open(big, "wb") as file:
        for seed in range(size // LARGE):
            file.write(pseudo_random(LARGE, 100 + seed))
    url = ok(run_cli("kachery-store", "--upload-only", big, env=env("A", server.url, server.write_token)))
    path = ok(run_cli("kachery-load", url, env=env("B", server.url)))
    assert os.path.getsize(path) == size
    with open(path, "rb") as got, open(big, "rb") as want:
        while True:
            block = want.read(1 << 24)
            assert got.read(1 << 24) == block
            if not block:
                break


def test_upload_only_gives_the_same_url_as_a_local_store(servers, env, run_cli, tmp_path):
    server = servers.kachery()
    big = tmp_path / "big.bin"
    big.write_bytes(pseudo_random(13 * 1000 * 1000, 6))  # 4 chunks, the last one short
    local = ok(run_cli("kachery-store", big, env=env("L", "")))
    remote = ok(run_cli("kachery-store", "--upload-only", big, env=env("A", server.url, server.write_token)))
    assert remote == local and "?manifest=" in remote
    result = run_cli("kachery-cat", remote, "--start", 12_000_000, env=env("B", server.url))
    assert result.stdout == big.read_bytes()[12_000_000:]


def test_upload_only_from_a_pipe(servers, env, run_cli, tmp_path):
    server = servers.kachery()
    data = pseudo_random(6 * 1000 * 1000, 7)
    a = env("A", server.url, server.write_token)
    url = ok(run_cli("kachery-store", "--upload-only", "/dev/stdin", input=data, env=a))
    assert stored_objects(a["KACHERY_STORAGE_DIR"]) == []
    path = ok(run_cli("kachery-load", url, env=env("B", server.url)))
    assert open(path, "rb").read() == data


def test_discarding_the_batch_stops_a_running_early_upload(tmp_path):
    """Ctrl-C during --upload-only of a large file must not wait for the upload."""
    import threading
    import time
    from concurrent.futures import Future

    from kachery_core.store import LocalStore
    from kachery_core.upload import RecordingBatch, UploadCancelled

    started = threading.Event()

    class SlowRemote:
        def has_many(self, objects):
            return set()

        def upload(self, algorithm, digest, path, progress=None):
            started.set()
            for _ in range(1000):  # ten seconds unless progress() stops it
                time.sleep(0.01)
                progress(1)

    remotes = Future()
    remotes.set_result(SlowRemote())
    big = tmp_path / "big.bin"
    big.write_bytes(pseudo_random(3 * 1000 * 1000, 8))
    batch = RecordingBatch(LocalStore(tmp_path / "store"), remotes)
    with open(big, "rb", buffering=0) as source:
        batch.hash_in_place(source, "sha1", big)
    assert started.wait(5)
    begun = time.monotonic()
    batch.discard()
    assert time.monotonic() - begun < 1
    future = next(iter(batch._early.values()), None)
    assert future is None  # discard forgot it
    with pytest.raises(UploadCancelled):
        batch._early_progress(1)


def test_snapshot_load_from_a_server_fetches_small_files_in_batches(servers, env, run_cli, tmp_path):
    server = servers.kachery()
    source = tmp_path / "src"
    files = {}
    for d in range(4):
        for i in range(40):
            path = source / f"d{d}" / f"f{i:02}.bin"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(files.setdefault(path, os.urandom(1000 + 97 * i)))
    url = ok(run_cli("kachery-store", "--upload-only", source, env=env("A", server.url, server.write_token)))
    b = env("B", server.url)
    dest = tmp_path / "copy"
    ok(run_cli("kachery-load", url, "--dest", dest, env=b))
    for path, data in files.items():
        assert (dest / path.relative_to(source)).read_bytes() == data
    log = server.log()
    object_gets = re.findall(r'"GET /sha1/', log)
    assert len(re.findall(r'"POST /api/download', log)) >= 160 // 16 - 1
    assert len(object_gets) < 40, "small files must come in batches, not one GET each"
    # Everything fetched also went to the download cache (written in the background).
    again = tmp_path / "again"
    before = len(re.findall(r'"(GET|POST) ', server.log()))
    ok(run_cli("kachery-load", url, "--dest", again, env=b))
    assert len(re.findall(r'"(GET|POST) ', server.log())) == before
    assert (again / "d3" / "f39.bin").read_bytes() == files[source / "d3" / "f39.bin"]


@pytest.mark.parametrize("size", [2_000_000, 40_000_000])  # streamed, sendfile
def test_a_file_that_changed_after_its_hash_is_changed_not_rejected(servers, tmp_path, size):
    """Cut short between the hash and the PUT: the server finds other bytes
    (400); that is the file changing under the store, not a refusal."""
    from kachery_core.remote import RemoteSet
    from kachery_core.settings import Remote
    from kachery_core.transport import SourceChanged

    server = servers.kachery()
    data = pseudo_random(size)
    path = tmp_path / "data.bin"
    path.write_bytes(data[: size // 2])  # what is left of it when the upload starts
    remotes = RemoteSet([Remote(server.url, server.write_token)], retries=1)
    with pytest.raises(SourceChanged):
        remotes.upload("sha1", sha1(data), str(path))
    assert object_rel(sha1(data)).lstrip("/") not in stored_objects(server.storage)
