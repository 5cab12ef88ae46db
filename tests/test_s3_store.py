"""The test object store itself: what the S3 tests rely on holds."""

import pytest


def test_store_puts_gets_and_verifies_sha1_checksums(seaweed, s3_bucket):
    import base64
    import hashlib

    client = seaweed.client()
    client.put_object(Bucket=s3_bucket, Key="a/b", Body=b"hello")
    assert client.get_object(Bucket=s3_bucket, Key="a/b", Range="bytes=1-3")["Body"].read() == b"ell"
    right = base64.b64encode(hashlib.sha1(b"hello").digest()).decode()
    client.put_object(Bucket=s3_bucket, Key="c", Body=b"hello", ChecksumSHA1=right)
    with pytest.raises(Exception, match="BadDigest|Invalid|checksum"):
        client.put_object(Bucket=s3_bucket, Key="d", Body=b"hellO", ChecksumSHA1=right)
    keys = [item["Key"] for item in client.list_objects_v2(Bucket=s3_bucket).get("Contents", [])]
    assert keys == ["a/b", "c"]
