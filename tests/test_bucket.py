"""kachery_core.bucket against a real S3 store (SeaweedFS)."""

import hashlib
import os

import pytest

from kachery_core.bucket import Bucket, parse_bucket_url
from kachery_core.errors import HashMismatch, InvalidURL, RemoteRejected


def test_bucket_urls_name_bucket_and_prefix():
    assert parse_bucket_url("s3://b/some/prefix/") == ("b", "some/prefix")
    assert parse_bucket_url("s3://b") == ("b", "")
    for bad in ("s3:///x", "http://b/x", "s3://a b/x"):
        with pytest.raises(InvalidURL):
            parse_bucket_url(bad)


def test_put_read_range_and_keys_follow_the_store_layout(seaweed, s3_bucket):
    bucket = Bucket(f"s3://{s3_bucket}/lab/store")
    data = os.urandom(100_000)
    digest = hashlib.sha1(data).hexdigest()
    assert bucket.size("sha1", digest) is None
    assert bucket.put("sha1", digest, data) is True
    assert bucket.put("sha1", digest, data) is False
    assert bucket.size("sha1", digest) == len(data)
    assert bucket.read("sha1", digest, 10, 20) == data[10:20]
    assert bucket.hash_object("sha1", digest) == digest
    key = f"lab/store/sha1/{digest[:2]}/{digest[2:4]}/{digest[4:6]}/{digest}"
    assert seaweed.client().head_object(Bucket=s3_bucket, Key=key)["ContentLength"] == len(data)
    assert list(bucket.iter_objects("sha1")) == [(digest, len(data))]


def test_the_store_refuses_bytes_that_are_not_the_name(seaweed, s3_bucket):
    bucket = Bucket(f"s3://{s3_bucket}/p")
    for algorithm in ("sha1", "md5"):
        name = hashlib.new(algorithm, b"right").hexdigest()
        with pytest.raises(RemoteRejected):
            bucket.put(algorithm, name, b"wrong")
        assert bucket.size(algorithm, name) is None


def test_a_large_file_changed_while_read_is_never_completed(seaweed, s3_bucket, tmp_path, monkeypatch):
    import kachery_core.bucket as module

    monkeypatch.setattr(module, "SINGLE_PUT_MAX", 1 << 20)
    monkeypatch.setattr(module, "PART_SIZE", 5 << 20)
    path = tmp_path / "big"
    data = os.urandom(11 << 20)
    path.write_bytes(data)
    digest = hashlib.sha1(data).hexdigest()
    bucket = Bucket(f"s3://{s3_bucket}/p")
    path.write_bytes(data[:-1] + b"x")  # changed after it was hashed
    with pytest.raises(HashMismatch):
        bucket.put("sha1", digest, str(path))
    assert bucket.size("sha1", digest) is None
    path.write_bytes(data)
    assert bucket.put("sha1", digest, str(path)) is True
    assert bucket.hash_object("sha1", digest) == digest


@pytest.mark.parametrize("count", [5, 300])
def test_has_many_by_heads_and_by_merged_listing(seaweed, s3_bucket, count, monkeypatch):
    import kachery_core.bucket as module

    monkeypatch.setattr(module, "LIST_MIN", 32)
    monkeypatch.setattr(module, "LIST_PAGE", 7)  # many pages: the merge is exercised
    bucket = Bucket(f"s3://{s3_bucket}/p")
    other = Bucket(f"s3://{s3_bucket}/p-other")  # a sibling prefix must not count
    blobs = [os.urandom(64) for _ in range(count)]
    stored = blobs[::3]
    for data in stored:
        bucket.put("sha1", hashlib.sha1(data).hexdigest(), data)
    for data in blobs[1::3]:
        other.put("sha1", hashlib.sha1(data).hexdigest(), data)
    asked = [("sha1", hashlib.sha1(data).hexdigest()) for data in blobs]
    asked += [("md5", hashlib.md5(b"absent").hexdigest())]
    expected = {("sha1", hashlib.sha1(data).hexdigest()) for data in stored}
    assert bucket.has_many(asked) == expected
