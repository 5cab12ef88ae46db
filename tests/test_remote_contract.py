"""One contract for every kind of remote (transport.py): a static HTTP mirror
(`python -m http.server` over a storage directory), a real kachery-server and
an S3 bucket (a real SeaweedFS). The same tests run against each, first on the
transport itself, then through a RemoteSet, which must turn a corrupt copy
into an error on every kind."""

import hashlib
import os
from dataclasses import dataclass

import pytest

from kachery_core.settings import Remote
from kachery_core.errors import HashMismatch, ObjectNotFound, RemoteRejected
from kachery_core.manifest import Chunk
from kachery_core.remote import RemoteSet
from kachery_core.client import FileTarget
from kachery_core.store import LocalStore
from server_helpers import object_rel, put_local, servers  # noqa: F401  (fixture)

pytestmark = pytest.mark.server

SMALL = b"a small object for the contract\n"
LARGE = os.urandom(3 * 1024 * 1024 + 17)
ABSENT = hashlib.sha1(b"never stored anywhere").hexdigest()


@dataclass
class Kind:
    """A remote under test: its RemoteSet, how to put bytes into it by the
    remote's own means (bypassing kachery), and whether kachery may write."""

    remotes: RemoteSet
    seed: object  # seed(data, name=None) -> digest; ``name`` stores data under another name
    writable: bool

    @property
    def transport(self):
        return self.remotes.transport(self.remotes.remotes[0])


def _seed_directory(root):
    def seed(data, name=None):
        digest = put_local(root, data)
        if name:
            target = os.path.join(root, object_rel(name))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.replace(os.path.join(root, object_rel(digest)), target)
            return name
        return digest
    return seed


@pytest.fixture(params=["static", "server", "bucket"])
def kind(request, tmp_path, servers):  # noqa: F811
    if request.param == "bucket":
        seaweed = request.getfixturevalue("seaweed")
        bucket = request.getfixturevalue("s3_bucket")
        client = seaweed.client()

        def seed(data, name=None):
            digest = name or hashlib.sha1(data).hexdigest()
            client.put_object(Bucket=bucket, Key=f"contract/{object_rel(digest)}", Body=data)
            return digest

        return Kind(RemoteSet([Remote(f"s3://{bucket}/contract")], retries=1), seed, True)
    storage = tmp_path / "remote-storage"
    storage.mkdir()
    if request.param == "static":
        server = servers.static(storage)
        return Kind(RemoteSet([Remote(server.url)], retries=1), _seed_directory(storage), False)
    server = servers.kachery(storage=storage)
    remote = Remote(server.url, server.write_token)
    return Kind(RemoteSet([remote], retries=1), _seed_directory(storage), True)


# ------------------------------------------------------------- transport

def test_size_of_present_and_absent_objects(kind):
    digest = kind.seed(SMALL)
    assert kind.transport.size("sha1", digest) == len(SMALL)
    assert kind.transport.size("sha1", ABSENT) is None


def test_receive_writes_the_whole_object_and_returns_its_digest(kind, tmp_path):
    digest = kind.seed(LARGE)
    path = tmp_path / "received"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        assert kind.transport.receive("sha1", digest, fd, None, False) == digest
    finally:
        os.close(fd)
    assert path.read_bytes() == LARGE


def test_read_range_returns_the_bytes_and_their_sha1(kind):
    digest = kind.seed(LARGE)
    start, end = 1024 * 1024 + 5, 2 * 1024 * 1024 + 9
    data, got = kind.transport.read_range("sha1", digest, start, end)
    assert bytes(data) == LARGE[start:end]
    assert got == hashlib.sha1(LARGE[start:end]).hexdigest()


def test_receive_range_writes_the_bytes_at_their_offset(kind, tmp_path):
    digest = kind.seed(LARGE)
    start, end = 1_048_576 + 5, 3 * 1_048_576 + 9
    path = tmp_path / "landing"
    with open(path, "w+b") as file:  # (read too: what lands is hashed from the file)
        got = kind.transport.receive_range("sha1", digest, start, end, file.fileno())
    assert got == hashlib.sha1(LARGE[start:end]).hexdigest()
    landed = path.read_bytes()
    assert landed[start:end] == LARGE[start:end] and len(landed) == end


def test_read_small_and_read_small_many(kind):
    digest = kind.seed(SMALL)
    assert kind.transport.read_small("sha1", digest, 1000) == SMALL
    with pytest.raises(ObjectNotFound):
        kind.transport.read_small("sha1", ABSENT, 1000)
    answer = kind.transport.read_small_many([("sha1", digest), ("sha1", ABSENT)], 1000)
    assert answer in ({}, {("sha1", digest): SMALL})  # a batch API is optional


def test_has_many_is_exactly_the_present_subset(kind):
    present = [kind.seed(SMALL + bytes([n])) for n in range(3)]
    asked = [("sha1", digest) for digest in present] + [("sha1", ABSENT)]
    assert kind.transport.has_many(asked) == {("sha1", digest) for digest in present}


def test_uploads_are_new_then_present_and_verified(kind):
    if not kind.writable:
        pytest.skip("a static mirror is read-only")
    data = os.urandom(5000)
    digest = hashlib.sha1(data).hexdigest()
    assert kind.transport.upload("sha1", digest, data) == 201
    assert kind.transport.upload("sha1", digest, data) == 200
    assert kind.transport.read_small("sha1", digest, 10_000) == data
    items = [("sha1", hashlib.sha1(d).hexdigest(), d) for d in (b"one\n", b"two\n", b"three\n")]
    kind.transport.upload_many(items)
    assert kind.transport.has_many([item[:2] for item in items]) == {item[:2] for item in items}
    # bytes that do not hash to their name never appear under it
    wrong = hashlib.sha1(b"what the name says").hexdigest()
    with pytest.raises((RemoteRejected, HashMismatch)):
        kind.transport.upload("sha1", wrong, b"something else")
    assert kind.transport.size("sha1", wrong) is None


# ------------------------------------------------- through the RemoteSet

def test_a_corrupt_copy_is_an_error_on_every_path(kind, tmp_path):
    claimed = hashlib.sha1(LARGE).hexdigest()
    kind.seed(LARGE[:-1] + b"X", name=claimed)  # same size, one byte wrong
    store = LocalStore(str(tmp_path / "client-store"))
    with pytest.raises(HashMismatch):
        kind.remotes.download("sha1", claimed, store)
    assert not os.path.exists(store.object_path("sha1", claimed))
    small_claimed = hashlib.sha1(SMALL).hexdigest()
    kind.seed(SMALL.upper(), name=small_claimed)
    with pytest.raises(HashMismatch):
        kind.remotes.fetch_small("sha1", small_claimed, 1000)
    assert kind.remotes.fetch_small_many([("sha1", small_claimed)], 1000) == {}
    last = len(LARGE) - 1000
    chunk = Chunk(last, len(LARGE), hashlib.sha1(LARGE[last:]).hexdigest())
    with pytest.raises(HashMismatch):
        kind.remotes.fetch_chunk(FileTarget("sha1", claimed, len(LARGE)), chunk)
    with open(tmp_path / "landing", "w+b") as file, pytest.raises(HashMismatch):
        kind.remotes.fetch_chunk_into(FileTarget("sha1", claimed, len(LARGE)), chunk, file.fileno())


def test_sound_copies_arrive_through_the_remote_set(kind, tmp_path):
    digest = kind.seed(LARGE)
    store = LocalStore(str(tmp_path / "client-store"))
    path = kind.remotes.download("sha1", digest, store)
    assert open(path, "rb").read() == LARGE
    assert kind.remotes.size("sha1", digest) == len(LARGE)
    assert kind.remotes.size("sha1", ABSENT) is None
    with pytest.raises(ObjectNotFound):
        kind.remotes.download("sha1", ABSENT, store)
