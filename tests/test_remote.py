"""RemoteSet (kachery_core.remote) against real servers on 127.0.0.1: a
kachery-server, a static `python -m http.server`, dead ports, and small
misbehaving servers (5xx, truncated and corrupt bodies)."""

import hashlib
import http.server
import os
import time
import threading

import pytest

from kachery_core.settings import Remote
from kachery_core.errors import (
    AccessDenied,
    HashMismatch,
    ObjectNotFound,
    RemoteRejected,
    RemoteUnavailable,
)
from kachery_core.manifest import Chunk
from kachery_core.client import FileTarget
from kachery_core.remote import RemoteSet
from kachery_core.store import LocalStore
from kachery_core.transport import SourceChanged
from server_helpers import (  # noqa: F401  (fixtures)
    dead_url, object_rel, put_local, servers, sha1, shared_server, stored_objects,
)

pytestmark = pytest.mark.server

DATA = os.urandom(3 * 1024 * 1024 + 17)


def remote_set(*remotes, **options):
    """RemoteSet over (url) or (url, token) items, with fast retries for tests."""
    items = [Remote(*r) if isinstance(r, tuple) else Remote(r) for r in remotes]
    options.setdefault("backoff", 0.01)
    options.setdefault("timeout", 5)
    return RemoteSet(items, **options)


def assert_store_clean(store, digest=None):
    """No partial or corrupt object: only verified objects, an empty tmp area."""
    for rel in stored_objects(store.root):
        with open(os.path.join(store.root, rel), "rb") as file:
            assert hashlib.new(rel.split("/")[0], file.read()).hexdigest() == rel.rsplit("/", 1)[1]
    if digest:
        assert not store.has("sha1", digest)
    tmp = os.path.join(store.root, "tmp")
    assert not os.path.isdir(tmp) or os.listdir(tmp) == []


def corrupt_copy(root, data):
    """Put wrong bytes under ``data``'s name in a storage directory."""
    digest = sha1(data)
    path = os.path.join(root, object_rel(digest))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as file:
        file.write(data[:-1] + bytes([data[-1] ^ 1]))
    return digest


# -------------------------------------------------------------- downloads

def test_download_is_verified_and_published(shared_server, tmp_path):
    digest = put_local(shared_server.storage, DATA)
    store = LocalStore(tmp_path / "local")
    remotes = remote_set(shared_server.url)
    assert remotes.size("sha1", digest) == len(DATA)
    path = remotes.download("sha1", digest, store)
    assert path == store.object_path("sha1", digest)
    with open(path, "rb") as file:
        assert file.read() == DATA
    assert_store_clean(store)


def test_missing_object(shared_server, tmp_path):
    remotes = remote_set(shared_server.url)
    missing = sha1(b"nobody has this")
    assert remotes.size("sha1", missing) is None
    with pytest.raises(ObjectNotFound):
        remotes.download("sha1", missing, LocalStore(tmp_path / "local"))


def test_first_remote_down_second_serves(shared_server, tmp_path):
    digest = put_local(shared_server.storage, DATA)
    store = LocalStore(tmp_path / "local")
    remotes = remote_set(dead_url(), shared_server.url)
    assert remotes.size("sha1", digest) == len(DATA)
    with open(remotes.download("sha1", digest, store), "rb") as file:
        assert file.read() == DATA


def test_all_remotes_down_is_remote_unavailable(tmp_path):
    remotes = remote_set(dead_url(), dead_url())
    with pytest.raises(RemoteUnavailable):
        remotes.download("sha1", sha1(b"x"), LocalStore(tmp_path / "local"))
    with pytest.raises(RemoteUnavailable):
        remotes.size("sha1", sha1(b"x"))


def test_corrupt_first_remote_second_serves_nothing_corrupt_cached(servers, shared_server, tmp_path):
    data = os.urandom(100000)
    bad_root = tmp_path / "bad"
    digest = corrupt_copy(bad_root, data)
    static = servers.static(bad_root)
    put_local(shared_server.storage, data)
    store = LocalStore(tmp_path / "local")
    path = remote_set(static.url, shared_server.url).download("sha1", digest, store)
    with open(path, "rb") as file:
        assert file.read() == data
    assert_store_clean(store)


def test_only_corrupt_copies_is_hash_mismatch(servers, tmp_path):
    data = os.urandom(100000)
    digest = corrupt_copy(tmp_path / "bad", data)
    static = servers.static(tmp_path / "bad")
    store = LocalStore(tmp_path / "local")
    with pytest.raises(HashMismatch):
        remote_set(static.url).download("sha1", digest, store)
    assert_store_clean(store, digest)


def test_private_server_without_token_is_access_denied(servers, tmp_path):
    server = servers.kachery(private=True)
    digest = put_local(server.storage, DATA)
    store = LocalStore(tmp_path / "local")
    with pytest.raises(AccessDenied):
        remote_set(server.url).download("sha1", digest, store)
    with pytest.raises(AccessDenied):
        remote_set(server.url).size("sha1", digest)
    assert remote_set((server.url, server.read_token)).download("sha1", digest, store)


def test_static_server_is_a_read_only_remote(servers, tmp_path):
    root = tmp_path / "static-store"
    digest = put_local(root, DATA)
    static = servers.static(root)
    remotes = remote_set(static.url)
    store = LocalStore(tmp_path / "local")
    assert remotes.size("sha1", digest) == len(DATA)
    with open(remotes.download("sha1", digest, store), "rb") as file:
        assert file.read() == DATA
    assert remotes.has_many([("sha1", digest), ("sha1", sha1(b"no"))]) == {("sha1", digest)}
    assert "POST /api/has" in static.log()  # asked once, then fell back to HEAD


def test_concurrent_downloads_from_many_threads(shared_server, tmp_path):
    blobs = [os.urandom(200000 + i) for i in range(16)]
    digests = [put_local(shared_server.storage, blob) for blob in blobs]
    store = LocalStore(tmp_path / "local")
    remotes = remote_set(shared_server.url)
    results = {}

    def fetch(digest):
        results[digest] = remotes.download("sha1", digest, store)

    threads = [threading.Thread(target=fetch, args=(d,)) for d in digests + digests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for blob, digest in zip(blobs, digests):
        with open(results[digest], "rb") as file:
            assert file.read() == blob
    assert_store_clean(store)


# ------------------------------------------------------------------ chunks

def chunk_of(data, start, end):
    return Chunk(start, end, sha1(data[start:end]))


@pytest.mark.parametrize("kind", ["kachery", "static"])
def test_fetch_chunk_reads_one_verified_chunk(servers, tmp_path, kind):
    root = tmp_path / "remote-store"
    digest = put_local(root, DATA)
    server = servers.kachery(storage=root) if kind == "kachery" else servers.static(root)
    target = FileTarget("sha1", digest, len(DATA))
    remotes = remote_set(server.url)
    for start, end in [(0, 1 << 20), (1 << 20, 2 << 20), (3 << 20, len(DATA))]:
        assert remotes.fetch_chunk(target, chunk_of(DATA, start, end)) == DATA[start:end]
    wrong = Chunk(0, 1 << 20, sha1(b"something else"))
    with pytest.raises(HashMismatch):
        remotes.fetch_chunk(target, wrong)


def test_fetch_chunk_fails_over_from_a_corrupt_remote(servers, shared_server, tmp_path):
    data = os.urandom(300000)
    digest = corrupt_copy(tmp_path / "bad", data)
    static = servers.static(tmp_path / "bad")
    put_local(shared_server.storage, data)
    chunk = chunk_of(data, 200000, 300000)  # the corrupt byte is in this chunk
    target = FileTarget("sha1", digest, len(data))
    assert remote_set(static.url, shared_server.url).fetch_chunk(target, chunk) == data[200000:]


# ----------------------------------------------------------------- uploads

def test_upload_and_has_many(servers, tmp_path):
    server = servers.kachery()
    path = tmp_path / "blob"
    path.write_bytes(DATA)
    digest = sha1(DATA)
    remotes = remote_set((server.url, server.write_token))
    assert remotes.has_many([("sha1", digest)]) == set()
    sent = []
    assert remotes.upload("sha1", digest, str(path), sent.append) == 201
    assert sum(sent) == len(DATA)
    assert remotes.upload("sha1", digest, str(path)) == 200
    assert remotes.has_many([("sha1", digest), ("sha1", sha1(b"no"))]) == {("sha1", digest)}
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert remotes.upload("sha1", sha1(b""), str(empty)) == 201


def test_upload_refusals_map_to_errors(servers, tmp_path):
    server = servers.kachery(max_upload=1000)
    small, big = tmp_path / "small", tmp_path / "big"
    small.write_bytes(b"hello")
    big.write_bytes(DATA)
    with pytest.raises(AccessDenied, match="401"):
        remote_set(server.url).upload("sha1", sha1(b"hello"), str(small))
    with pytest.raises(AccessDenied, match="403"):
        remote_set((server.url, server.read_token)).upload("sha1", sha1(b"hello"), str(small))
    writer = remote_set((server.url, server.write_token))
    with pytest.raises(RemoteRejected, match="413"):
        writer.upload("sha1", sha1(DATA), str(big))
    with pytest.raises(RemoteRejected, match="digest mismatch"):
        writer.upload("sha1", sha1(b"other"), b"hello")
    with pytest.raises(SourceChanged):  # a file we hashed to another digest: it changed since
        writer.upload("sha1", sha1(b"other"), str(small))
    with pytest.raises(RemoteUnavailable):
        remote_set((dead_url(), "t")).upload("sha1", sha1(b"hello"), str(small))
    assert stored_objects(server.storage) == []


# ------------------------------------------------- misbehaving servers

class _Misbehaving(http.server.BaseHTTPRequestHandler):
    """Serves ``body`` for every GET, misbehaving as ``mode`` says."""

    body = b""
    mode = "ok"
    failures_left = 0
    requests = 0

    def do_GET(self):  # noqa: N802 (http.server naming)
        cls = type(self)
        cls.requests += 1
        if cls.failures_left > 0:
            cls.failures_left -= 1
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(cls.body)))
        self.end_headers()
        if cls.mode == "truncate":
            self.wfile.write(cls.body[: len(cls.body) // 2])
            self.close_connection = True
            return
        self.wfile.write(cls.body)

    def do_POST(self):  # noqa: N802  (a server without the batch API)
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_PUT(self):  # noqa: N802
        cls = type(self)
        data = self.rfile.read(int(self.headers["Content-Length"]))
        cls.received = getattr(cls, "received", []) + [(self.path, data)]
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def misbehaving():
    handler = type("Handler", (_Misbehaving,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    handler.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield handler
    server.shutdown()
    server.server_close()


def test_5xx_answers_are_retried_with_backoff(misbehaving, tmp_path):
    misbehaving.body = DATA
    misbehaving.failures_left = 2
    store = LocalStore(tmp_path / "local")
    path = remote_set(misbehaving.url, retries=3).download("sha1", sha1(DATA), store)
    assert misbehaving.requests == 3
    with open(path, "rb") as file:
        assert file.read() == DATA


def test_persistent_5xx_is_remote_unavailable(misbehaving, tmp_path):
    misbehaving.body = DATA
    misbehaving.failures_left = 100
    with pytest.raises(RemoteUnavailable, match="503"):
        remote_set(misbehaving.url, retries=3).download("sha1", sha1(DATA), LocalStore(tmp_path / "l"))
    assert misbehaving.requests == 3


def test_truncated_download_fails_over_and_leaves_nothing(misbehaving, shared_server, tmp_path):
    data = os.urandom(2 * 1024 * 1024)
    misbehaving.body = data
    misbehaving.mode = "truncate"
    store = LocalStore(tmp_path / "local")
    with pytest.raises(RemoteUnavailable):
        remote_set(misbehaving.url).download("sha1", sha1(data), store)
    assert_store_clean(store, sha1(data))
    put_local(shared_server.storage, data)
    path = remote_set(misbehaving.url, shared_server.url).download("sha1", sha1(data), store)
    with open(path, "rb") as file:
        assert file.read() == data


def test_upload_many_falls_back_to_put_without_the_batch_api(misbehaving, tmp_path):
    blobs = [b"one", b"two", b""]
    path = tmp_path / "three"
    path.write_bytes(b"from a file")
    items = [("sha1", sha1(b), b) for b in blobs] + [("sha1", sha1(b"from a file"), str(path))]
    remotes = remote_set((misbehaving.url, "token"))
    remotes.upload_many(items)
    assert sorted(misbehaving.received) == sorted(
        [(f"/{object_rel(sha1(b))}", b) for b in blobs + [b"from a file"]])


def test_upload_many_through_the_batch_api(servers, tmp_path):
    server = servers.kachery()
    blobs = [os.urandom(1000 + i) for i in range(30)]
    remotes = remote_set((server.url, server.write_token))
    sent = []
    remotes.upload_many([("sha1", sha1(b), b) for b in blobs], sent.append)
    assert sum(sent) >= sum(map(len, blobs))
    assert len(stored_objects(server.storage)) == 30
    deadline = time.monotonic() + 5  # the access log line is written after the answer
    while "POST /api/upload" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "POST /api/upload" in server.log() and "PUT /" not in server.log()


def test_large_uploads_use_sendfile_and_map_refusals(servers, tmp_path):
    server = servers.kachery(max_upload=20 * 1024 * 1024)
    big, huge = tmp_path / "big", tmp_path / "huge"
    big.write_bytes(os.urandom(9 * 1024 * 1024))
    huge.write_bytes(os.urandom(30 * 1024 * 1024))
    digest = sha1(big.read_bytes())
    with pytest.raises(AccessDenied, match="403"):
        remote_set((server.url, server.read_token)).upload("sha1", digest, str(big))
    writer = remote_set((server.url, server.write_token))
    with pytest.raises(RemoteRejected, match="413"):
        writer.upload("sha1", sha1(huge.read_bytes()), str(huge))
    with pytest.raises(SourceChanged):  # (the caller hashed the file: it changed since)
        writer.upload("sha1", sha1(b"not it"), str(big))
    sent = []
    assert writer.upload("sha1", digest, str(big), sent.append) == 201
    assert sum(sent) == big.stat().st_size
    assert stored_objects(server.storage) == [object_rel(digest)]


def test_a_corrupt_copy_while_another_remote_is_down_is_an_outage_not_corruption():
    from kachery_core.settings import Remote
    from kachery_core.errors import HashMismatch, RemoteUnavailable
    from kachery_core.remote import _Outcome

    outcome = _Outcome("sha1://x")
    outcome.note(HashMismatch("a" * 40, "b" * 40, "download from http://bad"))
    outcome.unavailable.append(RemoteUnavailable("http://down", "connection refused"))
    error = outcome.failure([Remote("http://bad"), Remote("http://down")])
    assert isinstance(error, RemoteUnavailable) and "http://bad" in str(error)
    alone = _Outcome("sha1://x")
    alone.note(HashMismatch("a" * 40, "b" * 40))
    assert isinstance(alone.failure([Remote("http://bad")]), HashMismatch)
