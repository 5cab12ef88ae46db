"""kachery-server on an S3 bucket (SeaweedFS): redirects, proxying, verified
uploads, several servers on one bucket, and `kachery-server verify`."""

import hashlib
import os

import pytest
import requests

from server_helpers import command_path, object_rel, servers, sha1  # noqa: F401  (fixture)
from test_upload import env, ok, pseudo_random  # noqa: F401  (fixture)

pytestmark = pytest.mark.server


def key_of(prefix, digest, algorithm="sha1"):
    return f"{prefix}/{object_rel(digest, algorithm)}"


def put(server, data, digest=None, token=None):
    digest = digest or sha1(data)
    return requests.put(f"{server.url}/{object_rel(digest)}", data=data,
                        headers={"Authorization": f"Bearer {token or server.write_token}"})


def test_uploads_land_under_the_store_layout_and_reads_redirect_to_the_bucket(
        servers, seaweed, s3_bucket):
    server = servers.kachery(storage=f"s3://{s3_bucket}/lab")
    data = b"kachery on a bucket\n"
    assert put(server, data).status_code == 201
    assert put(server, data).status_code == 200  # already present
    s3 = seaweed.client()
    assert s3.get_object(Bucket=s3_bucket, Key=key_of("lab", sha1(data)))["Body"].read() == data

    url = f"{server.url}/{object_rel(sha1(data))}"
    answer = requests.get(url, allow_redirects=False)
    assert answer.status_code == 307
    assert answer.headers["Location"].startswith(seaweed.endpoint)
    assert requests.get(url, headers={"Range": "bytes=3-9"}).content == data[3:10]
    head = requests.head(url)
    assert head.status_code == 200 and int(head.headers["Content-Length"]) == len(data)
    assert head.headers["ETag"] == f'"{sha1(data)}"'
    missing = f"{server.url}/{object_rel('0' * 40)}"
    assert requests.get(missing).status_code == 404 and requests.head(missing).status_code == 404


def test_the_redirect_never_carries_the_token_to_the_bucket(servers, seaweed, s3_bucket):
    server = servers.kachery(storage=f"s3://{s3_bucket}/p", private=True)
    data = b"private bytes"
    put(server, data)
    url = f"{server.url}/{object_rel(sha1(data))}"
    assert requests.get(url).status_code == 401
    answer = requests.get(url, headers={"Authorization": f"Bearer {server.read_token}"})
    assert answer.status_code == 200 and answer.content == data
    assert answer.history and "Authorization" not in answer.request.headers


def test_proxy_mode_streams_ranges_through_the_server(servers, seaweed, s3_bucket):
    server = servers.kachery(storage=f"s3://{s3_bucket}/p", extra=["--s3-proxy"])
    data = os.urandom(3_000_000)
    put(server, data)
    url = f"{server.url}/{object_rel(sha1(data))}"
    whole = requests.get(url, allow_redirects=False)
    assert whole.status_code == 200 and whole.content == data
    part = requests.get(url, headers={"Range": "bytes=1000000-1999999"}, allow_redirects=False)
    assert part.status_code == 206 and part.content == data[1000000:2000000]
    assert part.headers["Content-Range"] == f"bytes 1000000-1999999/{len(data)}"
    assert requests.get(url, headers={"Range": f"bytes={len(data)}-"}).status_code == 416


def test_a_body_that_is_not_its_name_never_appears(servers, seaweed, s3_bucket):
    server = servers.kachery(storage=f"s3://{s3_bucket}/p")
    answer = put(server, b"the wrong bytes", digest=sha1(b"the right bytes"))
    assert answer.status_code == 400 and "mismatch" in answer.text
    listed = seaweed.client().list_objects_v2(Bucket=s3_bucket).get("Contents", [])
    assert listed == []


def test_batch_upload_has_and_batch_download_on_a_bucket(servers, seaweed, s3_bucket):
    server = servers.kachery(storage=f"s3://{s3_bucket}/p")
    blobs = [f"object {i}".encode() for i in range(5)]
    body = b"".join(f"sha1 {sha1(b)} {len(b)}\n".encode() + b for b in blobs)
    auth = {"Authorization": f"Bearer {server.write_token}"}
    answer = requests.post(f"{server.url}/api/upload", data=body, headers=auth)
    assert answer.status_code == 200 and answer.json() == {"stored": 5, "present": 0}
    asked = {"sha1": [sha1(b) for b in blobs[:3]] + ["f" * 40], "md5": []}
    assert requests.post(f"{server.url}/api/has", json=asked).json() == {
        "sha1": asked["sha1"][:3], "md5": []}
    got = requests.post(f"{server.url}/api/download", json=asked).content
    assert got == b"".join(f"sha1 {sha1(b)} {len(b)}\n".encode() + b for b in blobs[:3])


def test_two_servers_serve_one_bucket_and_the_commands_use_them(
        servers, seaweed, s3_bucket, env, run_cli, tmp_path):
    first = servers.kachery(storage=f"s3://{s3_bucket}/shared")
    second = servers.kachery(storage=f"s3://{s3_bucket}/shared")
    data = pseudo_random(20_000_000)  # several chunks: a file manifest
    (tmp_path / "big.bin").write_bytes(data)
    url = ok(run_cli("kachery-store", "--upload", tmp_path / "big.bin",
                     env=env("A", first.url, first.write_token)))
    path = ok(run_cli("kachery-load", url, env=env("B", second.url)))
    with open(path, "rb") as file:
        assert file.read() == data


def test_an_upload_replaces_a_corrupt_copy_in_a_bucket(servers, seaweed, s3_bucket):
    server = servers.kachery(storage=f"s3://{s3_bucket}/p")
    data = b"sound bytes " * 100
    seaweed.client().put_object(Bucket=s3_bucket, Key=key_of("p", sha1(data)),
                                Body=data[:-1] + b"!")  # same size, wrong bytes
    assert put(server, data).status_code == 201
    assert requests.get(f"{server.url}/{object_rel(sha1(data))}").content == data


def test_an_upload_replaces_a_corrupt_copy_in_a_directory(servers, tmp_path):
    storage = tmp_path / "storage"
    server = servers.kachery(storage=storage)
    data = b"sound bytes " * 100
    target = storage / object_rel(sha1(data))
    for corrupt in (data[:-1] + b"!", data[:50]):  # same size, then truncated
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(corrupt)
        assert put(server, data).status_code == 201
        assert target.read_bytes() == data
    assert put(server, data).status_code == 200


@pytest.mark.parametrize("kind", ["directory", "bucket"])
def test_server_verify_finds_and_quarantines_corruption(kind, request, tmp_path, run_cli):
    data, other = b"good object", b"another good object"
    if kind == "bucket":
        seaweed = request.getfixturevalue("seaweed")
        bucket = request.getfixturevalue("s3_bucket")
        location = f"s3://{bucket}/p"
        client = seaweed.client()
        client.put_object(Bucket=bucket, Key=key_of("p", sha1(data)), Body=b"bad object!")
        client.put_object(Bucket=bucket, Key=key_of("p", sha1(other)), Body=other)
    else:
        location = str(tmp_path / "storage")
        for name, body in ((sha1(data), b"bad object!"), (sha1(other), other)):
            target = tmp_path / "storage" / object_rel(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(body)
    config = ["--config", str(tmp_path / "server.toml")]
    result = run_cli("kachery-server", "verify", "--storage", location, *config)
    assert result.returncode == 3, result.stderr.decode()
    assert f"CORRUPT sha1://{sha1(data)}" in result.stdout.decode()
    assert "checked 2 object(s)" in result.stderr.decode()
    result = run_cli("kachery-server", "verify", "--quarantine", "--storage", location, *config)
    assert result.returncode == 3 and "quarantined" in result.stderr.decode()
    result = run_cli("kachery-server", "verify", "--storage", location, *config)
    assert result.returncode == 0 and "checked 1 object(s), 19 bytes, 0 corrupt" in result.stderr.decode()


def test_an_unreachable_bucket_is_503_and_a_bad_location_one_line(servers, tmp_path, run_cli, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    server = servers.kachery(storage="s3://nowhere/p")
    answer = requests.head(f"{server.url}/{object_rel('a' * 40)}", timeout=60)
    assert answer.status_code == 503
    result = run_cli("kachery-server", "verify", "--storage", "s3:///p",
                     "--config", str(tmp_path / "s.toml"))
    assert result.returncode == 2 and "Traceback" not in result.stderr.decode()


def test_a_write_the_bucket_refuses_is_503_never_stored(servers, seaweed, s3_bucket, monkeypatch):
    from s3_helpers import READ_ONLY_KEY

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", READ_ONLY_KEY)
    server = servers.kachery(storage=f"s3://{s3_bucket}/p")
    answer = put(server, b"not allowed to land")
    assert answer.status_code == 503 and "storage unavailable" in answer.text
    body = b"sha1 %s 2\nab" % sha1(b"ab").encode()
    answer = requests.post(f"{server.url}/api/upload", data=body,
                           headers={"Authorization": f"Bearer {server.write_token}"})
    assert answer.status_code == 503
    assert seaweed.client().list_objects_v2(Bucket=s3_bucket).get("Contents", []) == []


@pytest.mark.fuse
def test_a_snapshot_through_a_bucket_server_lists_cats_and_mounts(
        servers, seaweed, s3_bucket, env, run_cli, tmp_path):
    from fs_helpers import Mount

    server = servers.kachery(storage=f"s3://{s3_bucket}/lab")
    source = tmp_path / "snap"
    (source / "sub").mkdir(parents=True)
    big = pseudo_random(9_000_000, seed=7)
    (source / "sub" / "big.bin").write_bytes(big)
    (source / "note.txt").write_bytes(b"a note\n")
    url = ok(run_cli("kachery-store", "--upload-only", source,
                     env=env("A", server.url, server.write_token)))
    reader = env("B", server.url)
    assert sorted(ok(run_cli("kachery-ls", url, env=reader)).split()) == ["note.txt", "sub/"]
    assert run_cli("kachery-cat", url + "/note.txt", env=reader).stdout == b"a note\n"
    with Mount(tmp_path / "mnt", tmp_path / "C", ["--remote", server.url]) as mount:
        path = os.path.join(mount.mountpoint, "sha1dir", url.split("://", 1)[1], "sub", "big.bin")
        with open(path, "rb") as file:
            file.seek(6_000_000)
            assert file.read(4096) == big[6_000_000:6_004_096]
            file.seek(0)
            assert file.read() == big


def test_the_bucket_receives_range_and_never_the_token(servers, seaweed, s3_bucket, tmp_path):
    """Our client against a private server on a bucket, with a recording proxy
    as the bucket's endpoint: the redirected GETs the object store receives
    carry the Range asked for and no bearer token."""
    from kachery_core.client import FileTarget
    from kachery_core.settings import Remote
    from kachery_core.manifest import Chunk
    from kachery_core.remote import RemoteSet
    from kachery_core.store import LocalStore
    from s3_helpers import RecordingProxy

    proxy = RecordingProxy(int(seaweed.endpoint.rsplit(":", 1)[1]))
    try:
        server = servers.kachery(storage=f"s3://{s3_bucket}/p", private=True,
                                 env={"AWS_ENDPOINT_URL": proxy.url})
        data = os.urandom(2_000_000).replace(b"Bearer", b"bearer")
        digest = sha1(data)
        assert put(server, data).status_code == 201
        proxy.clear()  # from here on only our client's reads
        remotes = RemoteSet([Remote(server.url, server.read_token)], retries=1)
        start, end = 500_000, 700_000
        chunk = Chunk(start, end, hashlib.sha1(data[start:end]).hexdigest())
        assert remotes.fetch_chunk(FileTarget("sha1", digest, len(data)), chunk) == data[start:end]
        path = remotes.download("sha1", digest, LocalStore(str(tmp_path / "client")))
        assert open(path, "rb").read() == data
        gets = [head for head in proxy.request_heads() if head.startswith("GET ")]
        assert len(gets) == 2, gets
        assert all("bearer" not in head.lower() and server.read_token not in head for head in gets)
        assert f"range: bytes={start}-{end - 1}" in gets[0].lower()
        assert "range:" not in gets[1].lower()
    finally:
        proxy.close()
