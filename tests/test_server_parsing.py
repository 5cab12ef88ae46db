"""Parsing of request bodies (pure): the api/upload object headers and the
api/has document, with Hypothesis over arbitrary input; and how a PUT body
lands in its temp file."""

import asyncio
import hashlib
import os
import random
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kachery_server.batch import MAX_OBJECT, BadBatch, parse_header, write_verified
from kachery_server.handlers import _parse_hash_lists
from kachery_core.store import LocalStore

SHA1 = hashlib.sha1(b"x").hexdigest()


def test_valid_headers():
    assert parse_header(f"sha1 {SHA1} 12\n".encode()) == ("sha1", SHA1, 12)
    assert parse_header(f"sha1 {SHA1.upper()} 0\n".encode()) == ("sha1", SHA1, 0)
    md5 = hashlib.md5(b"x").hexdigest()
    assert parse_header(f"md5 {md5} {MAX_OBJECT}\n".encode()) == ("md5", md5, MAX_OBJECT)


@pytest.mark.parametrize("line", [
    b"\n", b"sha1\n", f"sha1 {SHA1}\n".encode(), f"sha1 {SHA1} -1\n".encode(),
    f"sha1 {SHA1} 1e3\n".encode(), f"sha1 {SHA1} {MAX_OBJECT + 1}\n".encode(),
    f"sha256 {SHA1} 1\n".encode(), f"md5 {SHA1} 1\n".encode(), b"sha1 ../../etc/passwd 1\n",
    f"sha1 {SHA1} 1 extra\n".encode(), "sha1 {} ١\n".format(SHA1).encode(),
])
def test_invalid_headers(line):
    with pytest.raises(BadBatch):
        parse_header(line)


@given(st.binary(max_size=120))
def test_any_header_line_parses_or_is_refused(line):
    try:
        algorithm, digest, size = parse_header(line)
    except BadBatch:
        return
    assert algorithm in ("sha1", "md5") and digest == digest.lower() and 0 <= size <= MAX_OBJECT
    assert "/" not in digest and "." not in digest


@given(st.lists(st.binary(max_size=50), max_size=5), st.booleans())
def test_write_verified_is_all_or_nothing(tmp_path_factory, blobs, corrupt):
    store = LocalStore(tmp_path_factory.mktemp("store"))
    items = [("sha1", hashlib.sha1(b).hexdigest(), b) for b in blobs]
    if corrupt and items:
        items[-1] = ("sha1", items[-1][1], items[-1][2] + b"!")
        with pytest.raises(BadBatch):
            write_verified(store, items)
        temp_area = os.path.join(store.root, "tmp")
        assert not os.path.isdir(temp_area) or os.listdir(temp_area) == []
        return
    written, present = write_verified(store, items)
    assert len(written) + present == len(items)
    for temp_path, _, digest in written:
        with open(temp_path, "rb") as file:
            assert hashlib.sha1(file.read()).hexdigest() == digest


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                    lambda children: st.lists(children, max_size=3)
                    | st.dictionaries(st.sampled_from(["sha1", "md5", "x"]), children, max_size=3),
                    max_leaves=8))
def test_has_request_parses_or_is_refused(document):
    from aiohttp import web

    try:
        wanted = _parse_hash_lists(document)
    except web.HTTPBadRequest:
        return
    assert set(wanted) == {"sha1", "md5"}
    assert all(isinstance(d, str) and d == d.lower() for ds in wanted.values() for d in ds)


def test_temp_upload_writes_every_block_in_order(tmp_path):
    """More blocks than one writev takes (UIO_MAXIOV), of all sizes, empty ones included."""
    from kachery_server.receive import TempUpload

    rng = random.Random(3)
    blocks = [rng.randbytes(rng.choice([0, 1, 7, 4096, 70_000])) for _ in range(2500)]
    upload = TempUpload(LocalStore(tmp_path / "store"), "sha1")
    upload.absorb(blocks[:1500])
    upload.absorb(blocks[1500:])
    data = b"".join(blocks)
    assert upload.finish() == hashlib.sha1(data).hexdigest()
    assert upload.size == len(data)
    with open(upload.path, "rb") as file:
        assert file.read() == data
    upload.abort()


class _TricklingRequest:
    """What JsonBodies reads of a request whose body comes one byte at a time."""

    content_length = 1000

    def __init__(self, pause):
        self.content = self
        self.pause = pause

    async def iter_any(self):
        for _ in range(1000):
            await asyncio.sleep(self.pause)
            yield b" "


def test_a_body_that_trickles_is_408_and_frees_its_slot():
    from aiohttp import web

    from kachery_server.limits import JsonBodies

    async def scenario():
        bodies = JsonBodies(concurrent=2, body_seconds=0.2)
        started = time.monotonic()
        results = await asyncio.gather(*(bodies.read(_TricklingRequest(0.05)) for _ in range(2)),
                                       return_exceptions=True)
        assert all(isinstance(result, web.HTTPRequestTimeout) for result in results), results
        assert time.monotonic() - started < 2
        assert not bodies._slots.locked()  # the slots are free for the next requests

    asyncio.run(scenario())
