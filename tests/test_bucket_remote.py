"""An s3:// bucket in the remote list: the commands and the mount read from
it and upload to it with the user's own credentials (SeaweedFS)."""

import hashlib
import os

import pytest

from server_helpers import object_rel, sha1  # noqa: F401
from test_upload import ok, pseudo_random

pytestmark = pytest.mark.server


@pytest.fixture
def machine(tmp_path, s3_bucket):
    def make(name, remote=None):
        return {"KACHERY_STORAGE_DIR": str(tmp_path / name),
                "KACHERY_CONFIG": str(tmp_path / "no-config.toml"),
                "KACHERY_REMOTE": remote or f"s3://{s3_bucket}/lab", "KACHERY_TOKEN": ""}
    return make


def test_store_upload_to_a_bucket_and_load_from_it(machine, run_cli, tmp_path, seaweed, s3_bucket):
    files = {"small.txt": b"hello bucket\n", "empty": b"", "big.bin": pseudo_random(20_000_000)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    urls = ok(run_cli("kachery-store", "--upload-only", *(tmp_path / n for n in files),
                      env=machine("A"))).splitlines()
    assert not os.path.exists(tmp_path / "A" / "sha1")  # --upload-only kept nothing here
    keys = {item["Key"] for item in seaweed.client().list_objects_v2(
        Bucket=s3_bucket, Prefix="lab/").get("Contents", [])}
    assert f"lab/{object_rel(sha1(files['small.txt']))}" in keys
    for url, data in zip(urls, files.values()):
        path = ok(run_cli("kachery-load", url, env=machine("B")))
        with open(path, "rb") as file:
            assert file.read() == data
    result = run_cli("kachery-cat", urls[0], env=machine("C"))
    assert result.returncode == 0 and result.stdout == files["small.txt"]


def test_a_snapshot_round_trips_through_a_bucket(machine, run_cli, tmp_path):
    source = tmp_path / "snap"
    (source / "sub").mkdir(parents=True)
    for index in range(30):
        (source / "sub" / f"f{index}.txt").write_bytes(f"file {index}\n".encode())
    url = ok(run_cli("kachery-store", "--upload", source, env=machine("A")))
    listing = ok(run_cli("kachery-ls", url + "/sub", env=machine("B")))
    assert len(listing.splitlines()) == 30
    result = run_cli("kachery-cat", url + "/sub/f7.txt", env=machine("B"))
    assert result.stdout == b"file 7\n"


def test_corrupt_bytes_in_a_bucket_are_never_served(machine, run_cli, tmp_path, seaweed, s3_bucket):
    data = b"the real content " * 1000
    (tmp_path / "f").write_bytes(data)
    url = ok(run_cli("kachery-store", "--upload-only", tmp_path / "f", env=machine("A")))
    seaweed.client().put_object(Bucket=s3_bucket, Key=f"lab/{object_rel(sha1(data))}",
                                Body=data[:-1] + b"!")
    result = run_cli("kachery-cat", url, env=machine("B"))
    assert result.returncode == 3 and result.stdout == b""
    assert "Traceback" not in result.stderr.decode()


def test_a_missing_object_and_a_dead_bucket_are_one_line_errors(machine, run_cli, monkeypatch):
    missing = f"sha1://{'ab' * 20}/x"
    result = run_cli("kachery-cat", missing, env=machine("A"))
    assert result.returncode == 1 and "Traceback" not in result.stderr.decode(), result.stderr
    env = dict(machine("A"), AWS_ENDPOINT_URL="http://127.0.0.1:9")
    result = run_cli("kachery-cat", missing, env=env)
    assert result.returncode == 4, result.stderr.decode()
    assert len(result.stderr.decode().strip().splitlines()) == 1
    for wrong in ({"AWS_SECRET_ACCESS_KEY": "not-the-secret"}, {"AWS_ACCESS_KEY_ID": "nobody"}):
        result = run_cli("kachery-cat", missing, env=dict(machine("A"), **wrong))
        assert result.returncode == 5, (wrong, result.stderr.decode())  # access denied
        assert len(result.stderr.decode().strip().splitlines()) == 1
    result = run_cli("kachery-cat", missing, env=dict(machine("A", "s3://no-such-bucket-here/x")))
    assert result.returncode in (1, 5), result.stderr.decode()  # not found, or not allowed to know
    assert len(result.stderr.decode().strip().splitlines()) == 1


def test_a_changed_file_is_never_uploaded_under_its_old_name(seaweed, s3_bucket, tmp_path):
    from kachery_core.settings import Remote
    from kachery_core.remote import RemoteSet
    from kachery_core.transport import SourceChanged

    path = tmp_path / "f"
    path.write_bytes(b"first version")
    digest = hashlib.sha1(b"first version").hexdigest()
    path.write_bytes(b"other version")  # same size, other bytes
    remotes = RemoteSet([Remote(f"s3://{s3_bucket}/p")])
    with pytest.raises(SourceChanged):
        remotes.upload("sha1", digest, str(path))
    assert remotes.size("sha1", digest) is None


@pytest.mark.fuse
def test_a_mount_reads_lazily_from_a_bucket(machine, run_cli, tmp_path):
    from fs_helpers import Mount

    source = tmp_path / "snap"
    source.mkdir()
    big = pseudo_random(10_000_000, seed=3)
    (source / "big.bin").write_bytes(big)
    (source / "note.txt").write_bytes(b"note\n")
    env = machine("A")
    url = ok(run_cli("kachery-store", "--upload-only", source, env=env))
    with Mount(tmp_path / "mnt", tmp_path / "client", ["--remote", env["KACHERY_REMOTE"]]) as mount:
        root = os.path.join(mount.mountpoint, "sha1dir", url.split("://", 1)[1])
        assert sorted(os.listdir(root)) == ["big.bin", "note.txt"]
        with open(os.path.join(root, "big.bin"), "rb") as file:
            file.seek(5_000_000)
            assert file.read(1000) == big[5_000_000:5_001_000]
            file.seek(0)
            assert hashlib.sha1(file.read()).hexdigest() == hashlib.sha1(big).hexdigest()
        with open(os.path.join(root, "note.txt"), "rb") as file:
            assert file.read() == b"note\n"


def test_a_public_buckets_plain_http_url_is_a_static_mirror(machine, run_cli, tmp_path, seaweed):
    """Written with credentials as s3://, read by anyone as plain HTTP (SPEC §5):
    a snapshot lists, whole files and byte ranges of a chunked file read
    exactly, a missing object is 'not found' (exit 1)."""
    import uuid

    from s3_helpers import PUBLIC_BUCKET

    try:
        seaweed.client().create_bucket(Bucket=PUBLIC_BUCKET)
    except Exception as error:  # made by an earlier test of the session
        assert "BucketAlreadyOwnedByYou" in str(error) or "BucketAlreadyExists" in str(error)
    prefix = f"t{uuid.uuid4().hex[:8]}"
    tree = tmp_path / "tree"
    tree.mkdir()
    big = pseudo_random(10_000_000)
    (tree / "big.bin").write_bytes(big)
    (tree / "note.txt").write_bytes(b"public note\n")
    url = ok(run_cli("kachery-store", "--upload-only", tree,
                     env=machine("writer", f"s3://{PUBLIC_BUCKET}/{prefix}"))).strip()
    reader = machine("reader", f"{seaweed.endpoint}/{PUBLIC_BUCKET}/{prefix}")
    reader.update(AWS_ACCESS_KEY_ID="", AWS_SECRET_ACCESS_KEY="")  # an anonymous reader
    assert ok(run_cli("kachery-ls", url, env=reader)).split() == ["big.bin", "note.txt"]
    assert run_cli("kachery-cat", f"{url}/note.txt", env=reader).stdout == b"public note\n"
    part = run_cli("kachery-cat", f"{url}/big.bin", "--start", 6_000_000, "--end", 6_100_000,
                   env=reader)
    assert part.returncode == 0 and part.stdout == big[6_000_000:6_100_000]
    assert open(ok(run_cli("kachery-load", f"{url}/big.bin", env=reader)), "rb").read() == big
    missing = run_cli("kachery-cat", f"sha1://{'ab' * 20}/x", env=reader)
    assert missing.returncode == 1 and "not found" in missing.stderr.decode().lower()


def test_a_public_buckets_403_for_a_missing_key_means_not_found(tmp_path, run_cli):
    """S3 answers anonymous reads of missing keys with 403 + XML; as a static
    mirror that is 'not found' (exit 1), and the next remote is tried."""
    import http.server
    import threading

    class Bucketish(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"<?xml version='1.0'?><Error><Code>AccessDenied</Code></Error>"
            self.send_response(403)
            self.send_header("Content-Type", "application/xml")
            self.send_header("x-amz-request-id", "TEST")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_HEAD = do_GET

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Bucketish)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {"KACHERY_STORAGE_DIR": str(tmp_path / "s"), "KACHERY_CONFIG": str(tmp_path / "none"),
               "KACHERY_REMOTE": f"http://127.0.0.1:{server.server_address[1]}", "KACHERY_TOKEN": ""}
        result = run_cli("kachery-cat", f"sha1://{'cd' * 20}/x", env=env)
        assert result.returncode == 1, result.stderr.decode()
        assert "not found" in result.stderr.decode().lower()
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.fuse
def test_a_stopped_bucket_is_exit_4_and_eio_in_bounded_time_then_recovers(
        machine, run_cli, tmp_path, seaweed):
    import errno
    import time

    from fs_helpers import Mount

    source = tmp_path / "snap"
    source.mkdir()
    big = pseudo_random(12 * 4 * 1024 * 1024, seed=4)
    (source / "big.bin").write_bytes(big)
    env = machine("A")
    url = ok(run_cli("kachery-store", "--upload-only", source, env=env))
    args = ["--remote", env["KACHERY_REMOTE"], "--remote-timeout", "2"]
    try:
        with Mount(tmp_path / "mnt", tmp_path / "client", args) as mount:
            path = os.path.join(mount.mountpoint, "sha1dir", url.split("://", 1)[1], "big.bin")
            with open(path, "rb") as file:
                assert file.read(100) == big[:100]
                seaweed.kill()
                started = time.monotonic()
                with pytest.raises(OSError) as raised:
                    file.seek(40 * 1024 * 1024)
                    file.read(100)
                assert raised.value.errno == errno.EIO
                assert time.monotonic() - started < 20
                result = run_cli("kachery-cat", url + "/big.bin", env=machine("B"), timeout=60)
                assert result.returncode == 4, result.stderr.decode()
                assert len(result.stderr.decode().strip().splitlines()) == 1
                seaweed.start()
                file.seek(40 * 1024 * 1024)
                assert file.read(100) == big[40 * 1024 * 1024:40 * 1024 * 1024 + 100]
    finally:
        if seaweed.process.poll() is not None:
            seaweed.start()


def test_a_killed_upload_leaves_nothing_at_the_final_key(machine, tmp_path, seaweed, s3_bucket):
    import signal
    import subprocess
    import time

    from server_helpers import command_path

    data = pseudo_random(300 * 1024 * 1024, seed=5)  # over one PUT: goes up in parts
    (tmp_path / "big.bin").write_bytes(data)
    env = dict(os.environ, **machine("A"))
    process = subprocess.Popen([command_path("kachery-store"), "--upload-only", tmp_path / "big.bin"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    client = seaweed.client()
    deadline = time.monotonic() + 60
    while not client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads"):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    keys = [item["Key"] for item in client.list_objects_v2(Bucket=s3_bucket).get("Contents", [])]
    assert not any(key.endswith(sha1(data)) for key in keys), keys
