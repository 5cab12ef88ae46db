"""One contract for every kind of server storage (kachery_server/storage.py):
a local storage directory and an S3 bucket (a real SeaweedFS). The same tests
run against both: publishing verified temp files, sizes and presence, small
reads, re-hashing, the upload-conflict rule, quarantine and listing."""

import asyncio
import hashlib
import os

import pytest

from kachery_server.storage import open_storage, verify_storage

pytestmark = pytest.mark.server


@pytest.fixture(params=["directory", "bucket"])
def storage(request, tmp_path):
    if request.param == "bucket":
        bucket = request.getfixturevalue("s3_bucket")
        return open_storage(f"s3://{bucket}/contract", spool_dir=str(tmp_path / "spool"))
    return open_storage(str(tmp_path / "storage"))


def publish(storage, data, algorithm="sha1"):
    """Receive ``data`` as an upload would (a temp file) and publish it."""
    digest = hashlib.new(algorithm, data).hexdigest()
    fd, temp = storage.create_temp()
    with os.fdopen(fd, "wb") as file:
        file.write(data)
    [created] = asyncio.run(storage.publish_many([(temp, algorithm, digest)]))
    assert not os.path.exists(temp)  # the temp file is consumed either way
    return digest, created


def test_published_objects_have_sizes_presence_and_small_reads(storage):
    digest, created = publish(storage, b"first object\n")
    assert created
    md5, _ = publish(storage, b"by md5\n", "md5")
    assert storage.size("sha1", digest) == len(b"first object\n")
    assert storage.size("sha1", "0" * 40) is None
    wanted = {"sha1": [digest, "0" * 40], "md5": [md5]}
    assert storage.present(wanted) == {"sha1": [digest], "md5": [md5]}
    assert storage.read_small("sha1", digest, 100) == b"first object\n"
    assert storage.read_small("sha1", digest, 5) is None  # over the limit: left to a GET
    assert storage.read_small("sha1", "0" * 40, 100) is None
    assert storage.hash_object("sha1", digest) == digest
    listed = {(alg, d): size for alg, d, size in storage.iter_objects()}
    assert listed == {("sha1", digest): 13, ("md5", md5): 7}


def test_publishing_again_keeps_one_copy(storage):
    digest, _ = publish(storage, b"twice\n")
    publish(storage, b"twice\n")
    assert storage.check_present("sha1", digest, 6)
    assert [d for _, d, _ in storage.iter_objects()] == [digest]


def test_a_corrupt_copy_is_quarantined_and_replaced(storage, tmp_path):
    data = b"sound bytes\n"
    digest, _ = publish(storage, data)
    corrupt_in_place(storage, digest, b"SOUND bytes\n")
    checked, total, corrupt = verify_storage(storage, quarantine=False)
    assert (checked, total, corrupt) == (1, len(data), 1)
    # an upload of the right bytes finds the copy unsound: it is moved aside ...
    assert not storage.check_present("sha1", digest, len(data))
    assert storage.size("sha1", digest) is None
    # ... and the upload puts the right bytes back
    publish(storage, data)
    assert storage.hash_object("sha1", digest) == digest
    assert verify_storage(storage)[2] == 0


def corrupt_in_place(storage, digest, wrong):
    """Overwrite a stored object by the storage's own means (not through kachery)."""
    path = storage.local_path("sha1", digest)
    if path is not None:
        os.chmod(path, 0o644)
        with open(path, "wb") as file:
            file.write(wrong)
        return
    bucket = storage.bucket
    bucket.client.put_object(Bucket=bucket.name, Key=bucket.key("sha1", digest), Body=wrong)
