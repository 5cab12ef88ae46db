"""Large downloads spliced in the kernel (kachery_core.zerocopy), against a
real kachery-server and small misbehaving servers on 127.0.0.1: exact bytes
across hash-window and step edges, connection reuse, a stalled or cut body,
and the fall-backs for kernels and file systems that refuse splice(2)."""

import errno
import hashlib
import http.server
import os
import random
import socket
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kachery_core import http_remote as remote_module
from kachery_core import zerocopy
from kachery_core.settings import Remote
from kachery_core.errors import HashMismatch, RemoteUnavailable
from kachery_core.remote import RemoteSet
from kachery_core.store import LocalStore
from server_helpers import put_local, servers, sha1, shared_server, stored_objects  # noqa: F401

pytestmark = pytest.mark.server

MIB = 1024 * 1024


def remote_set(*urls, **options):
    options.setdefault("backoff", 0.01)
    options.setdefault("timeout", 5)
    return RemoteSet([Remote(url) for url in urls], **options)


@pytest.fixture
def small_steps(monkeypatch):
    """Windows and steps far smaller than the bodies, so every edge case occurs."""
    monkeypatch.setattr(zerocopy, "HASH_WINDOW", 64 * 1024)
    monkeypatch.setattr(zerocopy, "STEP", 48 * 1024)


@pytest.fixture
def spliced(monkeypatch):
    """Counts bodies that took the splice path (and keeps it enabled)."""
    monkeypatch.setattr(zerocopy, "_enabled", True)
    calls = []
    real = zerocopy.receive

    def counting(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(zerocopy, "receive", counting)
    return calls


def assert_clean(store, digest):
    assert not store.has("sha1", digest)
    assert stored_objects(store.root) == []
    tmp = os.path.join(store.root, "tmp")
    assert not os.path.isdir(tmp) or os.listdir(tmp) == []


def read(path):
    with open(path, "rb") as file:
        return file.read()


@pytest.mark.parametrize("size", [MIB, 3 * MIB + 17, 2 * MIB - 1, 64 * 1024 * 20])
def test_spliced_download_is_exact(shared_server, tmp_path, small_steps, spliced, size):
    data = os.urandom(size)
    digest = put_local(shared_server.storage, data)
    store = LocalStore(tmp_path / "local")
    seen = []
    path = remote_set(shared_server.url).download("sha1", digest, store, progress=seen.append)
    assert read(path) == data
    assert len(spliced) == 1, "a 1 MiB+ plain-HTTP body must be spliced"
    assert sum(seen) == size


def test_spliced_download_reuses_the_connection(shared_server, tmp_path, spliced):
    blobs = [os.urandom(2 * MIB + n) for n in range(3)]
    digests = [put_local(shared_server.storage, blob) for blob in blobs]
    remotes = remote_set(shared_server.url)
    store = LocalStore(tmp_path / "local")
    for digest, blob in zip(digests, blobs):
        assert read(remotes.download("sha1", digest, store)) == blob
    assert len(spliced) == 3
    pool = remotes.transport(remotes.remotes[0]).direct_pool().connection_from_url(shared_server.url)
    assert pool.num_connections == 1


def test_splice_refused_by_the_kernel_falls_back(shared_server, tmp_path, spliced, monkeypatch):
    data = os.urandom(3 * MIB + 5)
    digest = put_local(shared_server.storage, data)

    def refuse(*args, **kwargs):
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(zerocopy.os, "splice", refuse, raising=False)
    store = LocalStore(tmp_path / "local")
    assert read(remote_set(shared_server.url).download("sha1", digest, store)) == data
    assert zerocopy._enabled is False  # later bodies skip the attempt
    other = os.urandom(2 * MIB)
    assert read(remote_set(shared_server.url).download(
        "sha1", put_local(shared_server.storage, other), store)) == other
    assert len(spliced) == 1


def test_file_system_without_splice_gets_plain_writes(shared_server, tmp_path, small_steps,
                                                      spliced, monkeypatch):
    data = os.urandom(2 * MIB + 3)
    digest = put_local(shared_server.storage, data)
    real = os.splice

    def no_file_splice(source, target, count, offset_src=None, offset_dst=None, flags=0):
        if offset_dst is not None:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(source, target, count, offset_src, offset_dst, flags)

    monkeypatch.setattr(zerocopy.os, "splice", no_file_splice)
    store = LocalStore(tmp_path / "local")
    assert read(remote_set(shared_server.url).download("sha1", digest, store)) == data
    assert len(spliced) == 1


# ------------------------------------------------- misbehaving servers

class _Body(http.server.BaseHTTPRequestHandler):
    """Serves ``body``. The first ``cuts`` answers announce it all but send
    only ``sent`` bytes, then close (``stall`` False) or go quiet until
    released. Later answers honour ``Range`` (206) when ``ranges`` is set,
    with ``tamper`` applied to the bytes sent; ``start_shift`` makes them
    start elsewhere than asked. ``asked`` records each request's Range."""

    protocol_version = "HTTP/1.1"
    body = b""
    sent = 0
    cuts = 1_000_000
    stall = False
    ranges = False
    start_shift = 0
    tamper = staticmethod(lambda data: data)

    def do_GET(self):  # noqa: N802 (http.server naming)
        cls = type(self)
        cls.asked = getattr(cls, "asked", []) + [self.headers.get("Range")]
        if len(cls.asked) <= cls.cuts:
            self.send_response(200)
            self.send_header("Content-Length", str(len(cls.body)))
            self.end_headers()
            self.wfile.write(cls.body[:cls.sent])
            self.wfile.flush()
            if cls.stall:
                cls.release.wait(20)
            self.close_connection = True
            return
        start = 0
        if cls.ranges and self.headers.get("Range"):
            start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-")) + cls.start_shift
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(cls.body) - 1}/{len(cls.body)}")
        else:
            self.send_response(200)
        part = cls.tamper(cls.body[start:])
        self.send_header("Content-Length", str(len(part)))
        self.end_headers()
        self.wfile.write(part)

    def log_message(self, *args):
        pass


@pytest.fixture
def body_server():
    handler = type("Handler", (_Body,), {"release": threading.Event()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    handler.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield handler
    handler.release.set()
    server.shutdown()
    server.server_close()


def test_body_cut_short_is_unavailable_and_leaves_nothing(body_server, tmp_path, spliced):
    body_server.body = os.urandom(4 * MIB)
    body_server.sent = 3 * MIB
    store = LocalStore(tmp_path / "local")
    digest = hashlib.sha1(body_server.body).hexdigest()
    with pytest.raises(RemoteUnavailable, match="body ended after"):
        remote_set(body_server.url, retries=1).download("sha1", digest, store)
    assert spliced
    assert_clean(store, digest)


def test_stalled_body_times_out_and_leaves_nothing(body_server, tmp_path, spliced):
    body_server.body = os.urandom(4 * MIB)
    body_server.sent = MIB + 100
    body_server.stall = True
    store = LocalStore(tmp_path / "local")
    digest = hashlib.sha1(body_server.body).hexdigest()
    started = time.monotonic()
    with pytest.raises(RemoteUnavailable, match="timed out"):
        remote_set(body_server.url, retries=1, timeout=1).download("sha1", digest, store)
    attempts = remote_module.RESUMES + 1  # each made progress, so each was resumed
    assert len(body_server.asked) == attempts
    assert time.monotonic() - started < attempts * 1 + 3
    assert spliced
    assert_clean(store, digest)


# ------------------------------------------------------------ resuming

@pytest.mark.parametrize("size", [4 * MIB + 3, 300_000])  # spliced, and through the pump
def test_a_cut_transfer_resumes_where_it_stopped(body_server, tmp_path, size):
    body_server.body = os.urandom(size)
    body_server.sent = size // 3
    body_server.cuts, body_server.ranges = 1, True
    store = LocalStore(tmp_path / "local")
    digest = hashlib.sha1(body_server.body).hexdigest()
    path = remote_set(body_server.url, retries=1).download("sha1", digest, store)
    assert read(path) == body_server.body
    first, resumed = body_server.asked
    start = int(resumed.removeprefix("bytes=").rstrip("-"))
    assert first is None and 0 < start <= size // 3  # the pump keeps whole 64 KiB steps only
    if size >= remote_module.FAST_READ_MIN:
        assert start == size // 3  # spliced: every byte that arrived was kept


def test_a_server_without_ranges_sends_it_all_again(body_server, tmp_path):
    body_server.body = os.urandom(3 * MIB)
    body_server.sent = MIB
    body_server.cuts = 2  # cut twice, then whole
    store = LocalStore(tmp_path / "local")
    digest = hashlib.sha1(body_server.body).hexdigest()
    assert read(remote_set(body_server.url, retries=1).download("sha1", digest, store)) == body_server.body
    assert body_server.asked == [None, f"bytes={MIB}-", f"bytes={MIB}-"]


def test_a_corrupt_resumed_part_is_a_hash_mismatch(body_server, tmp_path):
    body_server.body = os.urandom(3 * MIB)
    body_server.sent = MIB
    body_server.cuts, body_server.ranges = 1, True
    body_server.tamper = staticmethod(lambda data: data[:-1] + bytes([data[-1] ^ 1]))
    store = LocalStore(tmp_path / "local")
    digest = hashlib.sha1(body_server.body).hexdigest()
    with pytest.raises(HashMismatch):
        remote_set(body_server.url, retries=1).download("sha1", digest, store)
    assert_clean(store, digest)


def test_a_resumed_answer_from_the_wrong_byte_is_refused(body_server, tmp_path):
    body_server.body = os.urandom(3 * MIB)
    body_server.sent = MIB
    body_server.cuts, body_server.ranges, body_server.start_shift = 1, True, 5
    store = LocalStore(tmp_path / "local")
    digest = hashlib.sha1(body_server.body).hexdigest()
    with pytest.raises(RemoteUnavailable, match="from byte"):
        remote_set(body_server.url, retries=1).download("sha1", digest, store)
    assert_clean(store, digest)


def test_corrupt_spliced_body_is_a_hash_mismatch(body_server, tmp_path, spliced):
    body_server.body = os.urandom(2 * MIB)
    body_server.sent = len(body_server.body)
    store = LocalStore(tmp_path / "local")
    wrong = hashlib.sha1(b"something else").hexdigest()
    with pytest.raises(HashMismatch):
        remote_set(body_server.url, retries=1).download("sha1", wrong, store)
    assert spliced
    assert_clean(store, wrong)


def test_receive_body_uses_the_pump_for_small_bodies(shared_server, tmp_path, spliced):
    data = os.urandom(remote_module.FAST_READ_MIN - 1)
    digest = put_local(shared_server.storage, data)
    store = LocalStore(tmp_path / "local")
    assert read(remote_set(shared_server.url).download("sha1", digest, store)) == data
    assert spliced == []


# ------------------------------------------------------- the splicer alone

@given(size=st.integers(0, 300_000), prefix=st.integers(0, 5000),
       step=st.sampled_from([4096, 12_345, 65_536, 1 << 20]),
       window=st.sampled_from([4096, 65_536, 200_000, 8 << 20]))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_splicer_lands_and_hashes_every_byte(tmp_path, monkeypatch, size, prefix, step, window):
    """Any body size, offset, splice step and hash window: the file holds the
    body after the prefix, and the hash covers exactly the body."""
    monkeypatch.setattr(zerocopy, "STEP", step)
    monkeypatch.setattr(zerocopy, "HASH_WINDOW", window)
    body = random.Random(size).randbytes(size)
    ours, theirs = socket.socketpair()
    sender = threading.Thread(target=lambda: (theirs.sendall(body), theirs.shutdown(socket.SHUT_WR)))
    path = tmp_path / f"landed-{size}-{prefix}-{step}-{window}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    try:
        os.pwrite(fd, b"p" * prefix, 0)
        hasher = hashlib.sha1()
        sender.start()
        with zerocopy._Splicer(ours, fd, offset=prefix, count=size, hasher=hasher) as splicer:
            splicer.run(None)
        assert splicer.landed == prefix + size
        assert hasher.hexdigest() == hashlib.sha1(body).hexdigest()
        assert os.pread(fd, prefix + size + 1, 0) == b"p" * prefix + body
    finally:
        sender.join()
        os.close(fd)
        ours.close()
        theirs.close()
        path.unlink()


def test_download_onto_a_file_system_that_cannot_map_files(shared_server, tmp_path, small_steps,
                                                           spliced, monkeypatch):
    data = os.urandom(2 * MIB + 11)
    digest = put_local(shared_server.storage, data)

    def no_mapping(*args, **kwargs):
        raise OSError(errno.ENODEV, "No such device")

    monkeypatch.setattr(zerocopy.mmap, "mmap", no_mapping)
    store = LocalStore(tmp_path / "local")
    assert read(remote_set(shared_server.url).download("sha1", digest, store)) == data
    assert len(spliced) == 1
