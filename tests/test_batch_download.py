"""Small objects in batches, the download way: kachery-server's ``POST
/api/download`` (kachery_server.batch.gather) as a real process, the client's
RemoteSet.fetch_small_many against it, a static server and a dead port, and
the body format (remote._batch_body / remote._parse_objects) as a property."""

import hashlib
import os
import time

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from kachery_core.settings import Remote
from kachery_core.http_remote import _parse_objects
from kachery_core.http_upload import batch_body as _batch_body
from kachery_core.remote import RemoteSet
from kachery_server import batch
from server_helpers import (  # noqa: F401  (fixtures)
    dead_url, object_rel, put_local, servers, sha1, shared_server,
)

CONTENT_TYPE = "application/x-kachery-objects"


def auth(token):
    return {"Authorization": f"Bearer {token}"}


def md5(data):
    return hashlib.md5(data).hexdigest()


def objects_body(*items):
    """The expected answer for (algorithm, digest, bytes) items, written from the spec."""
    return b"".join(f"{alg} {digest} {len(data)}\n".encode() + data for alg, digest, data in items)


def download(server, wanted, token=None, **options):
    headers = auth(token) if token else {}
    return requests.post(f"{server.url}/api/download", json=wanted, headers=headers, timeout=30,
                         **options)


def remote_set(*remotes, **options):
    """RemoteSet over (url) or (url, token) items, with fast retries for tests."""
    items = [Remote(*r) if isinstance(r, tuple) else Remote(r) for r in remotes]
    options.setdefault("backoff", 0.01)
    options.setdefault("timeout", 5)
    return RemoteSet(items, **options)


def alter_object(root, digest, algorithm="sha1"):
    """Flip a byte of a stored object file in place (damage after it was stored)."""
    path = os.path.join(root, object_rel(digest, algorithm))
    with open(path, "r+b") as file:
        first = file.read(1)
        file.seek(0)
        file.write(bytes([first[0] ^ 0xFF]))


def log_count(process, text):
    return process.log().count(text)


# ======================================================= POST /api/download

@pytest.mark.server
def test_api_download_answers_present_objects_in_request_order(shared_server):
    server = shared_server
    blobs = [os.urandom(100 + 37 * i) for i in range(5)]
    digests = [put_local(server.storage, blob) for blob in blobs]
    empty = put_local(server.storage, b"")
    md5_blob = os.urandom(321)
    md5_digest = put_local(server.storage, md5_blob, "md5")
    absent = sha1(b"absent from the server")
    wanted = {
        # Not the order they were stored in, an absent one in the middle, one upper case.
        "sha1": [digests[3], absent, digests[0], empty, digests[4].upper(), digests[1]],
        "md5": [md5(b"absent md5"), md5_digest],
    }
    response = download(server, wanted)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == CONTENT_TYPE
    assert response.content == objects_body(
        ("sha1", digests[3], blobs[3]), ("sha1", digests[0], blobs[0]), ("sha1", empty, b""),
        ("sha1", digests[4], blobs[4]), ("sha1", digests[1], blobs[1]),
        ("md5", md5_digest, md5_blob))


@pytest.mark.server
def test_api_download_with_nothing_present_is_an_empty_200(shared_server):
    response = download(shared_server, {"sha1": [sha1(b"nope")], "md5": []})
    assert response.status_code == 200 and response.content == b""
    response = download(shared_server, {})
    assert response.status_code == 200 and response.content == b""


@pytest.mark.server
def test_api_download_leaves_out_objects_over_max_object(shared_server):
    server = shared_server
    limit = os.urandom(batch.MAX_OBJECT)
    over = os.urandom(batch.MAX_OBJECT + 1)
    small = os.urandom(10)
    names = [put_local(server.storage, blob) for blob in (over, limit, small)]
    response = download(server, {"sha1": names})
    assert response.status_code == 200
    assert response.content == objects_body(("sha1", names[1], limit), ("sha1", names[2], small))


@pytest.mark.server
def test_api_download_total_is_limited_to_max_body(servers):
    server = servers.kachery()
    count = batch.MAX_BODY // batch.MAX_OBJECT + 2  # more than fits
    blobs = [bytes([i]) * batch.MAX_OBJECT for i in range(count)]
    names = [put_local(server.storage, blob) for blob in blobs]
    response = download(server, {"sha1": names})
    assert response.status_code == 200
    parsed = list(_parse_objects(response.content))
    assert sum(len(data) for _, _, data in parsed) <= batch.MAX_BODY
    fits = batch.MAX_BODY // batch.MAX_OBJECT
    assert [(alg, d) for alg, d, _ in parsed] == [("sha1", name) for name in names[:fits]]
    assert all(data == blobs[i] for i, (_, _, data) in enumerate(parsed))
    assert len(response.content) == sum(
        len(f"sha1 {name} {batch.MAX_OBJECT}\n") + batch.MAX_OBJECT for name in names[:fits])


@pytest.mark.server
def test_api_download_refuses_more_than_max_wanted_hashes(shared_server):
    server = shared_server
    present = put_local(server.storage, b"present for max_wanted")
    hashes = [sha1(str(i).encode()) for i in range(batch.MAX_WANTED - 2)] + [present]
    at_limit = download(server, {"sha1": hashes, "md5": [md5(b"one")]})
    assert at_limit.status_code == 200
    assert at_limit.content == objects_body(("sha1", present, b"present for max_wanted"))
    over = download(server, {"sha1": hashes, "md5": [md5(b"one"), md5(b"two")]})
    assert over.status_code == 400
    assert str(batch.MAX_WANTED) in over.text


@pytest.mark.server
@pytest.mark.parametrize("body", [
    b"not json",
    b"[1, 2]",
    b'"sha1"',
    b'{"sha1": "abc"}',
    b'{"sha1": ["../x"]}',
    b'{"sha1": [123]}',
    b'{"sha1": ["' + b"0" * 39 + b'"]}',
    b'{"md5": ["' + b"0" * 40 + b'"]}',                     # a sha1 length under md5
    b'{"sha1": ["' + b"0" * 40 + b'"], "md5": {"a": 1}}',
])
def test_api_download_rejects_bad_bodies(shared_server, body):
    response = requests.post(f"{shared_server.url}/api/download", data=body,
                             headers={"Content-Type": "application/json"}, timeout=10)
    assert response.status_code == 400
    assert response.headers["Content-Type"].startswith("text/plain")


@pytest.mark.server
def test_api_download_on_a_private_server_needs_a_read_token(servers):
    server = servers.kachery(private=True)
    data = os.urandom(500)
    digest = put_local(server.storage, data)
    wanted = {"sha1": [digest]}
    assert download(server, wanted).status_code == 401
    assert download(server, wanted, token="wrong").status_code == 401
    for token in (server.read_token, server.write_token):
        response = download(server, wanted, token=token)
        assert response.status_code == 200
        assert response.content == objects_body(("sha1", digest, data))


# ============================================ RemoteSet.fetch_small_many

@pytest.mark.server
def test_fetch_small_many_returns_verified_bytes_and_leaves_out_the_rest(shared_server):
    server = shared_server
    blobs = [os.urandom(1000 + i) for i in range(10)]
    keys = [("sha1", put_local(server.storage, blob)) for blob in blobs]
    md5_blob = os.urandom(77)
    md5_key = ("md5", put_local(server.storage, md5_blob, "md5"))
    large = os.urandom(5000)
    large_key = ("sha1", put_local(server.storage, large))
    absent = ("sha1", sha1(b"fetch_small_many absent"))
    remotes = remote_set(server.url)
    found = remotes.fetch_small_many(keys + [absent, md5_key, large_key, keys[0]], 4096)
    assert found == {**dict(zip(keys, blobs)), md5_key: md5_blob}  # large_key: over max_size
    assert all(type(data) is bytes for data in found.values())
    assert remotes.fetch_small_many(keys[:2] + [large_key], 10_000) == {
        keys[0]: blobs[0], keys[1]: blobs[1], large_key: large}


@pytest.mark.server
def test_fetch_small_many_leaves_out_a_corrupt_copy_without_raising(servers):
    server = servers.kachery()
    blobs = [os.urandom(2000 + i) for i in range(4)]
    keys = [("sha1", put_local(server.storage, blob)) for blob in blobs]
    md5_blob = os.urandom(300)
    md5_key = ("md5", put_local(server.storage, md5_blob, "md5"))
    alter_object(server.storage, keys[1][1])
    alter_object(server.storage, md5_key[1], "md5")
    # The server really sends the damaged bytes: the client is what leaves them out.
    sent = dict(((alg, d), data) for alg, d, data in _parse_objects(
        download(server, {"sha1": [keys[1][1]]}).content))
    assert sent[keys[1]] != blobs[1] and len(sent[keys[1]]) == len(blobs[1])
    found = remote_set(server.url).fetch_small_many(keys + [md5_key], 1 << 20)
    assert found == {keys[0]: blobs[0], keys[2]: blobs[2], keys[3]: blobs[3]}


@pytest.mark.server
def test_fetch_small_many_from_a_static_server_is_empty_and_not_asked_again(servers, tmp_path):
    root = tmp_path / "static-store"
    blobs = [os.urandom(100 + i) for i in range(3)]
    keys = [("sha1", put_local(root, blob)) for blob in blobs]
    static = servers.static(root)
    remotes = remote_set(static.url)
    assert remotes.fetch_small_many(keys, 1 << 20) == {}
    assert [t.download_api for t in map(remotes.transport, remotes.remotes)] == [False]
    assert log_count(static, "POST /api/download") == 1
    assert remotes.fetch_small_many(keys, 1 << 20) == {}
    assert remotes.fetch_small_many(keys[:1], 1 << 20) == {}
    assert log_count(static, "POST /api/download") == 1  # remembered: not asked again
    # The same objects still come one by one.
    assert remotes.fetch_small(*keys[0], 1 << 20) == blobs[0]


@pytest.mark.parametrize("status", [404, 405, 501])
def test_fetch_small_many_remembers_each_no_api_status(status):
    import http.server
    import threading

    asked = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            asked.append(self.path)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        remotes = remote_set(url)
        key = ("sha1", sha1(b"x"))
        assert remotes.fetch_small_many([key, ("md5", md5(b"y"))], 100) == {}
        assert remotes.fetch_small_many([key], 100) == {}
        assert asked == ["/api/download"]
        assert [t.download_api for t in map(remotes.transport, remotes.remotes)] == [False]
    finally:
        server.shutdown()
        server.server_close()


def test_fetch_small_many_from_a_dead_remote_is_empty_and_quick():
    remotes = remote_set(dead_url())
    started = time.monotonic()
    assert remotes.fetch_small_many([("sha1", sha1(b"a")), ("md5", md5(b"b"))], 1 << 20) == {}
    assert time.monotonic() - started < 3
    assert all(remotes.transport(r).download_api for r in remotes.remotes)  # down is not "no API": asked again later


@pytest.mark.server
def test_fetch_small_many_second_remote_fills_in_what_the_first_lacks(servers, shared_server):
    first = servers.kachery()
    blobs = [os.urandom(500 + i) for i in range(8)]
    keys = [("sha1", sha1(blob)) for blob in blobs]
    for blob in blobs[:3]:
        put_local(first.storage, blob)
    for blob in blobs[2:]:
        put_local(shared_server.storage, blob)
    remotes = remote_set(first.url, shared_server.url)
    assert remotes.fetch_small_many(keys, 1 << 20) == dict(zip(keys, blobs))
    assert log_count(first, "POST /api/download") == 1
    assert log_count(shared_server, "POST /api/download") >= 1


@pytest.mark.server
def test_fetch_small_many_after_a_dead_or_static_first_remote(servers, shared_server, tmp_path):
    blobs = [os.urandom(700 + i) for i in range(5)]
    keys = [("sha1", put_local(shared_server.storage, blob)) for blob in blobs]
    static = servers.static(tmp_path / "empty-static")
    for first in (dead_url(), static.url):
        remotes = remote_set(first, shared_server.url)
        assert remotes.fetch_small_many(keys, 1 << 20) == dict(zip(keys, blobs))


@pytest.mark.server
def test_fetch_small_many_with_and_without_a_token_on_a_private_server(servers):
    server = servers.kachery(private=True)
    blobs = [os.urandom(100), os.urandom(200)]
    keys = [("sha1", put_local(server.storage, blob)) for blob in blobs]
    assert remote_set(server.url).fetch_small_many(keys, 1 << 20) == {}
    assert remote_set((server.url, server.read_token)).fetch_small_many(keys, 1 << 20) == dict(
        zip(keys, blobs))


# ============================================== the body format, as a property

def hex_digest(length):
    return st.text(alphabet="0123456789abcdefABCDEF", min_size=length, max_size=length)


items_strategy = st.lists(
    st.one_of(
        st.tuples(st.just("sha1"), hex_digest(40), st.binary(max_size=4096)),
        st.tuples(st.just("md5"), hex_digest(32), st.binary(max_size=4096)),
    ),
    max_size=8,
)


def item_ends(items):
    """Offset in the body at which each item is complete."""
    ends, position = [], 0
    for algorithm, digest, data in items:
        position += len(f"{algorithm} {digest} {len(data)}\n") + len(data)
        ends.append(position)
    return ends


@settings(max_examples=200)
@given(items=items_strategy, as_bytearray=st.booleans())
def test_parse_objects_gives_back_the_items_of_a_batch_body(items, as_bytearray):
    sources = [(a, d, bytearray(data) if as_bytearray else data) for a, d, data in items]
    body = _batch_body(sources)
    assert body == objects_body(*items)  # the format, as written from the spec
    parsed = list(_parse_objects(body))
    assert parsed == [(a, d.lower(), data) for a, d, data in items]
    assert all(type(data) is bytes for _, _, data in parsed)


@settings(max_examples=200)
@given(items=items_strategy, data=st.data())
def test_a_truncated_body_yields_only_the_complete_items_before_the_cut(items, data):
    body = _batch_body(items)
    cut = data.draw(st.integers(min_value=0, max_value=len(body)), label="cut")
    complete = sum(1 for end in item_ends(items) if end <= cut)
    parsed = list(_parse_objects(body[:cut]))
    assert parsed == [(a, d.lower(), blob) for a, d, blob in items[:complete]]


def test_batch_body_reads_file_sources_and_parsing_stops_at_a_bad_header(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(b"from a file\n")
    first, second = sha1(b"from a file\n"), md5(b"in memory")
    body = _batch_body([("sha1", first, str(path)), ("md5", second, memoryview(b"in memory"))])
    assert list(_parse_objects(body)) == [("sha1", first, b"from a file\n"),
                                          ("md5", second, b"in memory")]
    good = list(_parse_objects(body))
    for tail in (b"sha1 nothex 3\nabc", b"sha2 " + sha1(b"").encode() + b" 0\n",
                 b"md5 " + sha1(b"").encode() + b" 0\n", b"sha1 " + sha1(b"").encode() + b" -1\n",
                 b"x" * 500):
        assert list(_parse_objects(body + tail + _batch_body([("sha1", first, b"after")]))) == good
    assert list(_parse_objects(body + b"sha1 " + sha1(b"").encode() + b" 10\nshort")) == good


@pytest.mark.server
def test_an_unreadable_object_leaves_the_rest_of_its_batch_intact(servers):
    server = servers.kachery()
    blobs = [os.urandom(500 + i) for i in range(3)]
    keys = [("sha1", put_local(server.storage, blob)) for blob in blobs]
    broken = sha1(b"a directory where an object should be")
    os.makedirs(os.path.join(server.storage, object_rel(broken)))
    answer = download(server, {"sha1": [keys[0][1], broken, keys[1][1], keys[2][1]]})
    assert answer.status_code == 200
    assert answer.content == objects_body(*[(alg, d, blob) for (alg, d), blob in zip(keys, blobs)])
    remotes = remote_set(server.url)
    assert remotes.fetch_small_many(keys + [("sha1", broken)], 4096) == dict(zip(keys, blobs))
    assert [t.url for t in remotes._live()] == [r.url for r in remotes.remotes]  # not taken for down


@pytest.mark.server
def test_fetch_small_many_answers_under_the_callers_keys(shared_server):
    """Upper-case digests come back under the caller's spelling; unknown algorithms are left out."""
    blob = os.urandom(321)
    digest = put_local(shared_server.storage, blob)
    found = remote_set(shared_server.url).fetch_small_many(
        [("sha256", "ab" * 32), ("sha1", digest.upper())], 1000)
    assert found == {("sha1", digest.upper()): blob}
