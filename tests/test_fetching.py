"""Lazy chunked reads and the download cache, with an injected fake remote."""

import hashlib
import os
import random
import threading

import pytest

from kachery_core.cache import CacheArea
from kachery_core.client import FileTarget
from kachery_core.errors import HashMismatch
from kachery_core.fetching import Fetcher
from kachery_core.manifest import Chunk, FileManifest

CHUNK = 64 * 1024


def make_file(size, seed=0):
    data = random.Random(seed).randbytes(size)
    chunks = tuple(
        Chunk(start, min(start + CHUNK, size), hashlib.sha1(data[start:start + CHUNK]).hexdigest())
        for start in range(0, size, CHUNK)
    )
    digest = hashlib.sha1(data).hexdigest()
    return data, FileTarget("sha1", digest, size, "0" * 40), FileManifest(size, digest, chunks)


class FakeRemote:
    """Serves slices of known bytes; can corrupt them; counts what it sends."""

    def __init__(self, data, corrupt=False):
        self.data = data
        self.corrupt = corrupt
        self.calls = []
        self.lock = threading.Lock()

    def fetch_chunk(self, target, chunk):
        with self.lock:
            self.calls.append(chunk.start)
        piece = self.data[chunk.start:chunk.end]
        if self.corrupt:
            piece = bytes([piece[0] ^ 1]) + piece[1:]
        got = hashlib.sha1(piece).hexdigest()
        if got != chunk.sha1:  # what RemoteSet does: verify before returning
            raise HashMismatch(chunk.sha1, got, "chunk")
        return piece

    def download(self, algorithm, digest, cache):
        return cache.put(self.data, algorithm, digest)


def fetcher_for(tmp_path, remote, quota=None):
    cache = CacheArea(tmp_path / "storage", quota)
    return Fetcher(cache, remote.fetch_chunk, remote.download)


def test_random_reads_fetch_only_touched_chunks(tmp_path):
    data, target, manifest = make_file(20 * CHUNK + 123)
    remote = FakeRemote(data)
    fetcher = fetcher_for(tmp_path, remote)
    offset = 7 * CHUNK + 100
    assert fetcher.read(target, manifest, offset, 4096) == data[offset:offset + 4096]
    assert remote.calls == [7 * CHUNK]


def test_sequential_read_matches_and_assembles_whole_object(tmp_path):
    data, target, manifest = make_file(10 * CHUNK + 5)
    remote = FakeRemote(data)
    fetcher = fetcher_for(tmp_path, remote)
    out = bytearray()
    while len(out) < len(data):
        out += fetcher.read(target, manifest, len(out), 50_000)
    assert bytes(out) == data
    assert sorted(remote.calls) == [c.start for c in manifest.chunks]  # each once
    fetcher.flush()  # assembly runs in the background
    whole = fetcher.cache.object_path("sha1", target.digest)
    assert open(whole, "rb").read() == data
    assert not any(fetcher.cache.has("sha1", c.sha1) for c in manifest.chunks)


def test_concurrent_reads_of_one_chunk_fetch_it_once(tmp_path):
    data, target, manifest = make_file(4 * CHUNK)
    remote = FakeRemote(data)
    fetcher = fetcher_for(tmp_path, remote)
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        fetcher.read(target, manifest, 10, 1000))) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [data[10:1010]] * 16
    assert remote.calls == [0]


def test_corrupt_chunk_raises_and_caches_nothing(tmp_path):
    data, target, manifest = make_file(3 * CHUNK)
    fetcher = fetcher_for(tmp_path, FakeRemote(data, corrupt=True))
    with pytest.raises(HashMismatch):
        fetcher.read(target, manifest, 0, 100)
    assert fetcher.cache.usage() == (0, 0)
    assert fetcher.stats.snapshot()["verification_failures"] == 1


def test_quota_holds_while_reading_three_times_its_size(tmp_path):
    data, target, manifest = make_file(60 * CHUNK)
    quota = 20 * CHUNK
    fetcher = fetcher_for(tmp_path, FakeRemote(data), quota=quota)
    for offset in range(0, len(data), 30_000):
        assert fetcher.read(target, manifest, offset, 30_000) == data[offset:offset + 30_000]
        assert fetcher.cache.usage()[1] <= quota
        assert _bytes_on_disk(fetcher.cache.root) <= quota + CHUNK


def _bytes_on_disk(root):
    """Bytes of every file under root (read-ahead may rename temps meanwhile)."""
    total = 0
    for directory, _, files in os.walk(root):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(directory, name))
            except FileNotFoundError:
                pass
    return total


def test_a_cached_object_is_verified_before_a_process_first_serves_it(tmp_path):
    """Corruption at rest (a flipped bit, a truncation, a crash before
    writeback) is found by the next process that uses the object."""
    writer = CacheArea(tmp_path / "storage")
    good, flipped, cut = b"good bytes", b"a bit will flip", b"this will be cut short"
    digests = {data: hashlib.sha1(data).hexdigest() for data in (good, flipped, cut)}
    for data, digest in digests.items():
        writer.put(data, "sha1", digest)
    with open(writer.object_path("sha1", digests[flipped]), "r+b") as file:
        file.write(b"A")
    os.truncate(writer.object_path("sha1", digests[cut]), 5)
    assert writer.has("sha1", digests[flipped])  # the process that verified it trusts it
    reader = CacheArea(tmp_path / "storage")  # another process
    assert reader.find("sha1", digests[good]) == reader.object_path("sha1", digests[good])
    for damaged in (flipped, cut):
        assert reader.find("sha1", digests[damaged]) is None
        assert not os.path.exists(reader.object_path("sha1", digests[damaged]))


def test_cache_without_quota_never_walks_itself_for_reads_and_writes(tmp_path, monkeypatch):
    """Building the LRU index opens every directory of the cache: only a quota,
    an eviction or a usage report may pay for that, not each command's first
    download or cache hit."""
    cache = CacheArea(tmp_path / "storage", max_bytes=None)
    blobs = [os.urandom(1000 + n) for n in range(5)]
    for blob in blobs[:3]:
        cache.put(blob, "sha1", hashlib.sha1(blob).hexdigest())

    fresh = CacheArea(tmp_path / "storage", max_bytes=None)  # another process, later
    monkeypatch.setattr(CacheArea, "iter_objects", lambda self, algorithm: pytest.fail("walked the cache"))
    for blob in blobs:
        digest = hashlib.sha1(blob).hexdigest()
        fresh.put(blob, "sha1", digest)
        assert fresh.find("sha1", digest) is not None
        fresh.touch("sha1", digest)
    fresh.discard("sha1", hashlib.sha1(blobs[0]).hexdigest())
    monkeypatch.undo()
    assert fresh.usage() == (4, sum(map(len, blobs[1:])))  # the index, built now, is right
    assert fresh.evict(0) == sum(map(len, blobs[1:]))


class IntoRemote(FakeRemote):
    """Also writes chunks straight into a file, as RemoteSet.fetch_chunk_into does."""

    def __init__(self, data):
        super().__init__(data)
        self.into_calls = []

    def fetch_chunk_into(self, target, chunk, fd):
        with self.lock:
            self.into_calls.append(chunk.start)
        piece = self.data[chunk.start:chunk.end]
        assert hashlib.sha1(piece).hexdigest() == chunk.sha1
        os.pwrite(fd, piece, chunk.start)


def test_a_file_read_from_its_start_is_built_in_place(tmp_path):
    """Every chunk lands in the one temp file (no chunk objects, no memory
    copies), in whatever order read-ahead fetches them; the whole object is
    published once its hash matches."""
    data, target, manifest = make_file(12 * CHUNK + 77)
    remote = IntoRemote(data)
    fetcher = Fetcher(CacheArea(tmp_path / "storage", None), remote.fetch_chunk, remote.download,
                      fetch_chunk_into=remote.fetch_chunk_into)
    out = bytearray()
    while len(out) < len(data):
        out += fetcher.read(target, manifest, len(out), 3 * CHUNK + 11)
    assert bytes(out) == data
    assert sorted(remote.into_calls) == [c.start for c in manifest.chunks] and remote.calls == []
    fetcher.flush()
    assert open(fetcher.cache.object_path("sha1", target.digest), "rb").read() == data
    assert not any(fetcher.cache.has("sha1", c.sha1) for c in manifest.chunks)


def test_chunks_cached_before_the_assembly_are_taken_in(tmp_path):
    """Chunks read at random first become chunk objects; a reader who then
    starts at the beginning gets the rest built in place around them."""
    data, target, manifest = make_file(8 * CHUNK)
    remote = IntoRemote(data)
    fetcher = Fetcher(CacheArea(tmp_path / "storage", None), remote.fetch_chunk, remote.download,
                      fetch_chunk_into=remote.fetch_chunk_into)
    for index in (5, 2):
        offset = index * CHUNK + 10
        assert fetcher.read(target, manifest, offset, 100) == data[offset:offset + 100]
    fetcher.flush()
    assert remote.calls == [5 * CHUNK, 2 * CHUNK]  # into memory: no assembly without chunk 0
    assert fetcher.read(target, manifest, 0, len(data)) == data
    fetcher.flush()
    assert sorted(remote.calls + remote.into_calls) == [c.start for c in manifest.chunks]
    assert open(fetcher.cache.object_path("sha1", target.digest), "rb").read() == data


def test_a_whole_that_fails_its_hash_is_refused_when_built_in_place(tmp_path):
    data, target, manifest = make_file(6 * CHUNK + 3)
    lying = FileTarget("sha1", hashlib.sha1(b"another file").hexdigest(), target.size, "0" * 40)
    remote = IntoRemote(data)
    fetcher = Fetcher(CacheArea(tmp_path / "storage", None), remote.fetch_chunk, remote.download,
                      fetch_chunk_into=remote.fetch_chunk_into)
    with pytest.raises(HashMismatch):
        fetcher.read(lying, manifest, 0, len(data))  # the read that completes the file
    with pytest.raises(HashMismatch):
        fetcher.read(lying, manifest, 0, 10)  # and every read after it
    assert not fetcher.cache.has("sha1", lying.digest)
