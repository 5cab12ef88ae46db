"""The local store (SPEC §2): layout, 0.6.x compatibility, atomic idempotent puts."""

import hashlib
import os
import subprocess
import sys

import pytest

from kachery_core import ingest
from kachery_core.client import DirTarget, Kachery
from kachery_core.settings import Config
from kachery_core.errors import InvalidHash, ObjectNotFound
from kachery_core.store import LocalStore, WriteBatch
from kachery_core.verify import verify_store

from tree_helpers import storage_dir  # noqa: F401  (tmpfs store)
from tree_helpers import list_objects, object_path, put_object

H = hashlib.sha1(b"x").hexdigest()

BAD_DIGESTS = [
    "../../etc/passwd",
    "../../../../../../../../../../../../etc/passwd",  # 40+ characters of traversal
    "/" + "a" * 39,
    "a" * 39 + "/",
    "..%2f" * 8,
    "a" * 41,
    "",
    "g" * 40,
    "a" * 38 + "\0a",
    "aa/bb/cc/" + "a" * 31,
]


@pytest.fixture
def store(storage_dir):
    return LocalStore(storage_dir)


def temp_files(store):
    temp_dir = os.path.join(store.root, "tmp")
    return os.listdir(temp_dir) if os.path.isdir(temp_dir) else []


def test_layout_is_exactly_alg_ab_cd_ef_hash(store):
    digest = hashlib.sha1(b"hello").hexdigest()
    assert store.object_path("sha1", digest) == os.path.join(
        store.root, "sha1", digest[:2], digest[2:4], digest[4:6], digest
    )
    md5 = hashlib.md5(b"hello").hexdigest()
    assert store.object_path("md5", md5) == os.path.join(store.root, "md5", md5[:2], md5[2:4], md5[4:6], md5)
    assert store.object_path("sha1", digest.upper()) == store.object_path("sha1", digest)


def test_stored_object_lands_under_its_hash(store):
    data = b"some bytes\n"
    with WriteBatch(store) as batch:
        stored = ingest.store_data(batch, data)
    digest = hashlib.sha1(data).hexdigest()
    assert stored.digest == digest and stored.size == len(data)
    with open(object_path(store.root, "sha1", digest), "rb") as file:
        assert file.read() == data
    assert list_objects(store.root) == [(os.path.join(digest[:2], digest[2:4], digest[4:6], digest), digest)]
    assert temp_files(store) == []


def test_md5_objects(store):
    data = b"md5 data"
    with WriteBatch(store) as batch:
        stored = ingest.store_data(batch, data, "md5")
    digest = hashlib.md5(data).hexdigest()
    assert stored.digest == digest
    assert os.path.isfile(object_path(store.root, "md5", digest))
    assert store.read_bytes("md5", digest) == data
    assert list_objects(store.root, "sha1") == []


@pytest.mark.parametrize("digest", BAD_DIGESTS)
@pytest.mark.parametrize("algorithm", ["sha1", "md5"])
def test_hash_validated_before_any_path_is_built(store, digest, algorithm):
    for call in (store.object_path, store.size, store.has, store.open, store.read_bytes):
        with pytest.raises(InvalidHash):
            call(algorithm, digest)
    with pytest.raises(InvalidHash):
        store.publish(store.temp_path(), algorithm, digest)


def test_unknown_algorithm_rejected(store):
    with pytest.raises(InvalidHash):
        store.object_path("sha256", "a" * 64)
    with pytest.raises(InvalidHash):
        store.object_path("..", "a" * 40)


def test_missing_object(store):
    assert store.size("sha1", H) is None and not store.has("sha1", H)
    with pytest.raises(ObjectNotFound) as info:
        store.open("sha1", H)
    assert isinstance(info.value, FileNotFoundError)
    assert H in str(info.value)


def test_storing_twice_leaves_one_object(store, tmp_path):
    data = os.urandom(3000)
    for _ in range(2):
        with WriteBatch(store) as batch:
            ingest.store_data(batch, data)
            ingest.store_data(batch, data)  # same content twice in one batch too
    assert len(list_objects(store.root)) == 1
    assert temp_files(store) == []
    assert store.read_bytes("sha1", hashlib.sha1(data).hexdigest()) == data


def test_publish_over_existing_object_drops_the_temp(store):
    digest = put_object(store.root, b"x")
    fd, temp = store.create_temp()
    os.write(fd, b"x")
    os.close(fd)
    store.publish(temp, "sha1", digest)
    assert not os.path.exists(temp)
    assert store.read_bytes("sha1", digest) == b"x"


def test_write_batch_discards_temps_on_exception(store, tmp_path):
    big = tmp_path / "big"
    big.write_bytes(os.urandom(ingest.SMALL_FILE + 10))
    with pytest.raises(RuntimeError):
        with WriteBatch(store) as batch:
            ingest.store_data(batch, b"first")
            ingest.store_path(batch, big)
            assert len(temp_files(store)) == 2  # written, not yet published
            raise RuntimeError("boom")
    assert temp_files(store) == []
    assert list_objects(store.root) == []


def test_nothing_visible_before_commit(store):
    batch = WriteBatch(store)
    stored = ingest.store_data(batch, b"pending")
    assert not store.has("sha1", stored.digest)
    batch.commit()
    assert store.has("sha1", stored.digest)
    assert temp_files(store) == []


def test_snapshot_failure_publishes_nothing(store, tmp_path):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a" / "f").write_bytes(b"data")
    os.symlink("..", src / "a" / "loop")  # cycle: snapshot must fail
    with pytest.raises(OSError):
        with WriteBatch(store) as batch:
            ingest.snapshot_dir(batch, src)
    assert list_objects(store.root) == [] and temp_files(store) == []


def test_existing_0_6_store_is_readable(tmp_path):
    """A storage directory laid out by hand, as kachery 0.6.x wrote it."""
    root = tmp_path / "old-store"
    text = b"written by kachery 0.6\n"
    sha = put_object(root, text)
    md5 = put_object(root, b"md5 object", "md5")
    # a 0.6.x manifest: extra keys, md5-only entries, arbitrary key order
    manifest = (
        '{"dirs": {}, "files": {"a.txt": {"sha1": "%s", "size": %d}, '
        '"b.bin": {"size": 10, "md5": "%s"}}}' % (sha, len(text), md5)
    ).encode()
    dir_hash = put_object(root, manifest)
    kachery = Kachery(Config(storage_dir=str(root)))
    assert kachery.store.read_bytes("sha1", sha) == text
    assert b"".join(kachery.iter_bytes(kachery.resolve(f"sha1://{sha}/x"))) == text
    assert b"".join(kachery.iter_bytes(kachery.resolve(f"md5://{md5}"))) == b"md5 object"
    target = kachery.resolve(f"sha1dir://{dir_hash}.old")
    assert isinstance(target, DirTarget)
    assert sorted(target.entry.files) == ["a.txt", "b.bin"]
    assert b"".join(kachery.iter_bytes(kachery.resolve(f"sha1dir://{dir_hash}/b.bin"))) == b"md5 object"
    assert verify_store(kachery.store).corrupt == []


def test_remove_stale_temps(store):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = store.temp_path()  # <host>.<our pid>.<random>.part: alive
    host = os.path.basename(live).split(".")[0]
    stale = os.path.join(store.root, "tmp", f"{host}.{dead.pid}.abc.part")
    for path in (stale, live):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "wb").close()
    assert store.remove_stale_temps(older_than=3600) == 1
    assert not os.path.exists(stale) and os.path.exists(live)


def test_verify_reports_and_quarantines_corrupt_objects(store):
    good = put_object(store.root, b"good")
    bad = put_object(store.root, b"bad")
    with open(object_path(store.root, "sha1", bad), "wb") as file:
        file.write(b"BAD")
    report = verify_store(store)
    assert report.checked == 2
    assert [(alg, expected) for alg, expected, _, _ in report.corrupt] == [("sha1", bad)]
    assert report.corrupt[0][2] == hashlib.sha1(b"BAD").hexdigest()
    report = verify_store(store, quarantine=True)
    assert not store.has("sha1", bad) and store.has("sha1", good)
    assert len(report.quarantined) == 1 and os.path.exists(report.quarantined[0])
    assert verify_store(store).corrupt == []


def test_large_file_single_pass_with_manifest(store, tmp_path):
    size = 2 * ingest.CHUNK_SIZE + 12345
    data = os.urandom(size)
    path = tmp_path / "big"
    path.write_bytes(data)
    with WriteBatch(store) as batch:
        stored = ingest.store_path(batch, path)
    assert stored.digest == hashlib.sha1(data).hexdigest() and stored.size == size
    assert stored.manifest is not None
    assert store.read_bytes("sha1", stored.digest) == data
    from kachery_core.manifest import parse_file_manifest

    manifest_bytes = store.read_bytes("sha1", stored.manifest)
    assert hashlib.sha1(manifest_bytes).hexdigest() == stored.manifest
    manifest = parse_file_manifest(manifest_bytes)
    assert manifest.size == size and manifest.sha1 == stored.digest
    for chunk in manifest.chunks:
        assert hashlib.sha1(data[chunk.start:chunk.end]).hexdigest() == chunk.sha1
    assert temp_files(store) == []


@pytest.mark.parametrize("size, has_manifest", [
    (0, False), (ingest.SMALL_FILE, False), (ingest.SMALL_FILE + 1, False),
    (ingest.CHUNK_SIZE, False), (ingest.CHUNK_SIZE + 1, True),
])
def test_manifest_only_for_files_larger_than_one_chunk(store, tmp_path, size, has_manifest):
    path = tmp_path / "f"
    path.write_bytes(b"\x01" * size)
    with WriteBatch(store) as batch:
        stored = ingest.store_path(batch, path)
    assert (stored.manifest is not None) == has_manifest
    assert stored.digest == hashlib.sha1(b"\x01" * size).hexdigest()
    with WriteBatch(store) as batch:
        md5 = ingest.store_path(batch, path, "md5")
    assert md5.manifest is None and md5.digest == hashlib.md5(b"\x01" * size).hexdigest()


def test_0_6_bookkeeping_files_are_not_objects(store):
    """kachery 0.x kept <h>.hints.json, <h>.record.json, *.lock and leftover
    <h>.copying.XXXXXX / <h>.downloading.XXXXXX files beside the objects."""
    digest = put_object(store.root, b"an object")
    directory = os.path.dirname(object_path(store.root, "sha1", digest))
    for suffix in (".hints.json", ".record.json", ".record.json.lock", ".copying.aB3xYz",
                   ".downloading.q1w2e3"):
        with open(os.path.join(directory, digest + suffix), "w") as file:
            file.write('{"files": []}')
    os.makedirs(os.path.join(directory, "not-an-object-dir"))
    md5 = put_object(store.root, b"md5 object", "md5")
    with open(object_path(store.root, "md5", md5) + ".hints.json", "w") as file:
        file.write("{}")
    assert sorted(store.iter_objects("sha1")) == [(digest, object_path(store.root, "sha1", digest))]
    report = verify_store(store, quarantine=True)
    assert report.checked == 2 and report.corrupt == [] and report.quarantined == []
    assert os.path.exists(os.path.join(directory, digest + ".hints.json"))


def test_temps_of_a_live_process_are_kept(store):
    live = store.temp_path()  # our own pid: alive, its batch could still publish it
    os.makedirs(os.path.dirname(live), exist_ok=True)
    open(live, "wb").close()
    two_hours_ago = os.path.getmtime(live) - 7200
    os.utime(live, (two_hours_ago, two_hours_ago))
    store.remove_stale_temps(older_than=3600)
    assert os.path.exists(live)


def test_flushes_are_batched_and_ordered(store, monkeypatch):
    """SPEC §2: file data flushed before the renames, directories after, once per
    command (not one synchronous flush per file)."""
    import kachery_core.store as store_module

    calls = []
    blobs = [b"object %d" % i for i in range(50)]
    digests = [hashlib.sha1(blob).hexdigest() for blob in blobs]

    def record(paths, root):
        published = sum(store.has("sha1", digest) for digest in digests)
        calls.append((list(paths), published))

    monkeypatch.setattr(store_module, "flush_paths", record)
    with WriteBatch(store) as batch:
        for blob in blobs:
            ingest.store_data(batch, blob)
    assert len(calls) == 2
    (data_paths, published_before), (dir_paths, published_after) = calls
    assert published_before == 0 and published_after == 50
    assert len(data_paths) == 50 and all(os.path.dirname(p).endswith("tmp") for p in data_paths)
    assert set(dir_paths) == {os.path.dirname(store.object_path("sha1", d)) for d in digests}
    with WriteBatch(store) as batch:  # nothing new to write: no flush at all
        ingest.store_data(batch, blobs[0])
    assert len(calls) == 2
