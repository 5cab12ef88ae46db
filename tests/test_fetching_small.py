"""The fetcher's small-object tier (kachery_core.fetching): batched prefetch
into memory, one-by-one fallback, single flight, background writes to the
cache, and real errors after a quiet prefetch failed. Fake remotes only."""

import hashlib
import random
import threading
import time

import pytest

from kachery_core.cache import CacheArea
from kachery_core.errors import HashMismatch, ObjectNotFound
from kachery_core.fetching import BATCH_OBJECTS, Fetcher


def make_objects(count, seed=0, algorithm="sha1"):
    rng = random.Random(seed)
    blobs = [rng.randbytes(rng.randrange(1, 5000)) for _ in range(count)]
    return {(algorithm, hashlib.new(algorithm, blob).hexdigest()): blob for blob in blobs}


class FakeSmallRemote:
    """In-memory objects behind the four remote callables the Fetcher takes.

    ``left_out``: keys the batch call never returns; ``corrupt``: keys whose
    every copy fails verification (HashMismatch, as RemoteSet raises);
    keys not in ``objects`` are ObjectNotFound. ``gate``: an Event every
    single fetch waits for. Every call is recorded.
    """

    def __init__(self, objects, left_out=(), corrupt=(), gate=None):
        self.objects = dict(objects)
        self.left_out = set(left_out)
        self.corrupt = set(corrupt)
        self.gate = gate
        self.small_calls = []
        self.batch_calls = []
        self.download_calls = []
        self.lock = threading.Lock()

    def fetch_chunk(self, target, chunk):
        raise AssertionError("no chunked reads in these tests")

    def download(self, algorithm, digest, cache):
        with self.lock:
            self.download_calls.append((algorithm, digest))
        return cache.put(self._verified((algorithm, digest)), algorithm, digest)

    def fetch_small(self, algorithm, digest, max_size):
        with self.lock:
            self.small_calls.append((algorithm, digest))
        if self.gate is not None:
            assert self.gate.wait(10)
        return self._verified((algorithm, digest))

    def fetch_small_many(self, objects, max_size):
        objects = list(objects)
        with self.lock:
            self.batch_calls.append(objects)
        return {key: self.objects[key] for key in objects
                if key in self.objects and key not in self.left_out and key not in self.corrupt}

    def _verified(self, key):
        if key not in self.objects:
            raise ObjectNotFound(f"{key[0]}://{key[1]}", "the fake remote")
        if key in self.corrupt:
            raise HashMismatch(key[1], "0" * len(key[1]), "fake copy")
        return self.objects[key]

    def calls(self):
        with self.lock:
            return len(self.small_calls) + len(self.batch_calls) + len(self.download_calls)


def fetcher_for(tmp_path, remote, many=True):
    cache = CacheArea(tmp_path / "storage")
    return Fetcher(cache, remote.fetch_chunk, remote.download, fetch_small=remote.fetch_small,
                   fetch_small_many=remote.fetch_small_many if many else None)


def wait_until(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_prefetch_small_asks_in_batches_of_batch_objects(tmp_path):
    objects = make_objects(2 * BATCH_OBJECTS + 5)
    remote = FakeSmallRemote(objects)
    fetcher = fetcher_for(tmp_path, remote)
    keys = list(objects)
    fetcher.prefetch_small(keys + keys[:3])  # duplicates are asked for once
    # (Reads before the batches are under way would fetch one by one: on a
    # loaded machine the prefetch threads may start late.)
    wait_until(lambda: sum(len(asked) for asked in remote.batch_calls) == len(keys))
    for key in keys:
        assert fetcher.small_object(*key) == objects[key]
    assert sorted(len(asked) for asked in remote.batch_calls) == [5, BATCH_OBJECTS, BATCH_OBJECTS]
    asked = [key for batch in remote.batch_calls for key in batch]
    assert sorted(asked) == sorted(keys)  # each once
    assert {tuple(batch) for batch in remote.batch_calls} == {
        tuple(keys[i:i + BATCH_OBJECTS]) for i in range(0, len(keys), BATCH_OBJECTS)}
    assert remote.small_calls == [] and remote.download_calls == []


def test_objects_a_batch_leaves_out_are_fetched_one_by_one(tmp_path):
    objects = make_objects(20, seed=1)
    keys = list(objects)
    left_out = {keys[0], keys[7], keys[19]}
    remote = FakeSmallRemote(objects, left_out=left_out)
    fetcher = fetcher_for(tmp_path, remote)
    fetcher.prefetch_small(keys)
    assert [fetcher.small_object(*key) for key in keys] == [objects[key] for key in keys]
    assert sorted(remote.small_calls) == sorted(left_out)
    assert len(remote.batch_calls) == 2


def test_after_a_prefetch_small_objects_come_from_memory(tmp_path):
    objects = make_objects(10, seed=2)
    remote = FakeSmallRemote(objects)
    fetcher = fetcher_for(tmp_path, remote)
    fetcher.prefetch_small(list(objects))
    for key in objects:  # waits for the batch
        fetcher.small_object(*key)
    calls = remote.calls()
    hits = fetcher.stats.snapshot().get("cache_hits", 0)
    for _ in range(3):
        for key, blob in objects.items():
            assert fetcher.small_object(*key) == blob
    assert remote.calls() == calls
    assert fetcher.stats.snapshot()["cache_hits"] == hits + 3 * len(objects)
    fetcher.prefetch_small(list(objects))  # in memory: nothing asked again
    assert remote.calls() == calls


def test_flush_waits_until_small_objects_are_in_the_cache(tmp_path):
    objects = make_objects(40, seed=3)
    md5_objects = make_objects(5, seed=4, algorithm="md5")
    remote = FakeSmallRemote({**objects, **md5_objects})
    fetcher = fetcher_for(tmp_path, remote)
    keys = list(objects) + list(md5_objects)
    fetcher.prefetch_small(keys)
    for key in keys:
        fetcher.small_object(*key)
    fetcher.flush()
    for key in keys:
        assert fetcher.cache.has(*key), key
        assert fetcher.cache.read_bytes(*key) == remote.objects[key]
    calls = remote.calls()
    fetcher.prefetch_small(keys)  # cached now: skipped
    assert remote.calls() == calls
    assert fetcher.object_path(*keys[0]) == fetcher.cache.object_path(*keys[0])
    assert remote.calls() == calls


def test_single_object_prefetch_uses_fetch_small_and_cached_ones_are_skipped(tmp_path):
    objects = make_objects(3, seed=5)
    keys = list(objects)
    remote = FakeSmallRemote(objects)
    fetcher = fetcher_for(tmp_path, remote)
    fetcher.cache.put(objects[keys[0]], *keys[0])
    fetcher.cache.put(objects[keys[1]], *keys[1])
    fetcher.prefetch_small(keys)  # only one left to fetch: no batch
    assert fetcher.small_object(*keys[2]) == objects[keys[2]]
    assert remote.batch_calls == [] and remote.small_calls == [keys[2]]


def test_without_fetch_small_many_prefetch_fetches_one_by_one(tmp_path):
    objects = make_objects(5, seed=6)
    remote = FakeSmallRemote(objects)
    fetcher = fetcher_for(tmp_path, remote, many=False)
    fetcher.prefetch_small(list(objects))
    for key, blob in objects.items():
        assert fetcher.small_object(*key) == blob
    assert sorted(remote.small_calls) == sorted(objects) and remote.batch_calls == []


def test_concurrent_small_object_calls_fetch_once(tmp_path):
    objects = make_objects(1, seed=7)
    (key, blob), = objects.items()
    gate = threading.Event()
    remote = FakeSmallRemote(objects, gate=gate)
    fetcher = fetcher_for(tmp_path, remote)
    results = []
    threads = [threading.Thread(target=lambda: results.append(fetcher.small_object(*key)))
               for _ in range(16)]
    for thread in threads:
        thread.start()
    wait_until(lambda: remote.small_calls)
    time.sleep(0.1)  # every reader is now waiting on the one fetch
    gate.set()
    for thread in threads:
        thread.join(10)
    assert results == [blob] * 16
    assert remote.small_calls == [key]


def test_small_object_waits_for_the_batch_in_flight(tmp_path):
    objects = make_objects(8, seed=8)
    keys = list(objects)
    release = threading.Event()
    remote = FakeSmallRemote(objects)
    inner = remote.fetch_small_many

    def slow_batch(wanted, max_size):
        assert release.wait(10)
        return inner(wanted, max_size)

    fetcher = Fetcher(CacheArea(tmp_path / "storage"), remote.fetch_chunk, remote.download,
                      fetch_small=remote.fetch_small, fetch_small_many=slow_batch)
    fetcher.prefetch_small(keys)
    fetcher.prefetch_small(list(reversed(keys)))  # asked again while in flight: no new request
    results = {}
    threads = [threading.Thread(target=lambda k=k: results.__setitem__(k, fetcher.small_object(*k)))
               for k in keys]
    for thread in threads:
        thread.start()
    time.sleep(0.1)
    release.set()
    for thread in threads:
        thread.join(10)
    assert results == objects
    assert remote.small_calls == [] and len(remote.batch_calls) == 1


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("error", [ObjectNotFound, HashMismatch])
def test_a_failed_quiet_prefetch_then_small_object_raises_the_real_error(tmp_path, error, batched):
    objects = make_objects(3, seed=9)
    keys = list(objects)
    bad = ("sha1", hashlib.sha1(b"not on the remote").hexdigest())
    if error is HashMismatch:
        bad = keys[0]
        remote = FakeSmallRemote(objects, corrupt={bad})
    else:
        remote = FakeSmallRemote(objects)
    fetcher = fetcher_for(tmp_path, remote)
    fetcher.prefetch_small([bad] + keys[1:] if batched else [bad])
    wait_until(lambda: remote.small_calls)  # the quiet attempt ran ...
    wait_until(lambda: not fetcher._in_flight)  # ... and finished
    with pytest.raises(error):
        fetcher.small_object(*bad)
    assert remote.small_calls == [bad, bad]  # the quiet attempt, then the real one
    if batched:
        assert len(remote.batch_calls) == 1
        for key in keys[1:]:
            assert fetcher.small_object(*key) == objects[key]
    if error is HashMismatch:
        assert fetcher.stats.snapshot()["verification_failures"] == 2
    fetcher.flush()
    assert not fetcher.cache.has(*bad)


@pytest.mark.parametrize("error", [ObjectNotFound, HashMismatch])
def test_small_object_right_after_a_failing_prefetch_raises(tmp_path, error):
    """The reader arrives while the quiet prefetch is still in flight."""
    objects = make_objects(2, seed=10)
    bad = list(objects)[0] if error is HashMismatch else ("md5", hashlib.md5(b"nope").hexdigest())
    gate = threading.Event()
    remote = FakeSmallRemote(objects, corrupt={bad} if error is HashMismatch else (), gate=gate)
    fetcher = fetcher_for(tmp_path, remote)
    fetcher.prefetch_small([bad])
    outcome = []

    def read():
        try:
            outcome.append(fetcher.small_object(*bad))
        except Exception as raised:  # noqa: BLE001  (checked below)
            outcome.append(raised)

    thread = threading.Thread(target=read)
    thread.start()
    wait_until(lambda: remote.small_calls)
    time.sleep(0.05)
    gate.set()
    thread.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], error), outcome


def test_object_path_writes_an_object_held_in_memory(tmp_path):
    objects = make_objects(2, seed=11)
    keys = list(objects)
    remote = FakeSmallRemote(objects)
    fetcher = fetcher_for(tmp_path, remote)
    writer_blocked = threading.Event()
    fetcher._writer.submit(writer_blocked.wait, 10)  # hold the background writer back
    try:
        fetcher.prefetch_small(keys)
        for key in keys:
            assert fetcher.small_object(*key) == objects[key]
        assert not fetcher.cache.has(*keys[0])  # in memory only, so far
        calls = remote.calls()
        path = fetcher.object_path(*keys[0])
        assert path == fetcher.cache.object_path(*keys[0])
        with open(path, "rb") as file:
            assert file.read() == objects[keys[0]]
        assert fetcher.cache.has(*keys[0])
        assert remote.calls() == calls and remote.download_calls == []
        assert not fetcher.cache.has(*keys[1])
    finally:
        writer_blocked.set()
    fetcher.flush()
    assert fetcher.cache.has(*keys[1])
    assert fetcher.cache.read_bytes(*keys[0]) == objects[keys[0]]
