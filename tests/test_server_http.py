"""kachery-server as a real process on 127.0.0.1: the HTTP protocol of SPEC §5,
bad input, concurrency, and what a kill or a SIGTERM leaves behind."""

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest
import requests

from server_helpers import (  # noqa: F401  (fixtures)
    object_rel, put_local, servers, sha1, shared_server, stored_objects,
)

pytestmark = pytest.mark.server

DATA = bytes((i * 7 + 3) % 256 for i in range(1000))


def auth(token):
    return {"Authorization": f"Bearer {token}"}


def raw_request(url, payload, read=True, timeout=5, first_answer=False):
    """Send raw bytes to the server (for requests no HTTP library would make)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(payload)
        if not read:
            return b""
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            chunks.append(chunk)
            if first_answer and b"\r\n\r\n" in b"".join(chunks):
                break
        return b"".join(chunks)


def assert_nothing_stored(server, digest):
    """No object under ``digest`` and no temp file left behind."""
    assert not os.path.exists(os.path.join(server.storage, object_rel(digest)))
    tmp = os.path.join(server.storage, "tmp")
    assert not os.path.isdir(tmp) or os.listdir(tmp) == []


def status_of(answer):
    return int(answer.split(b" ", 2)[1])


# ------------------------------------------------------------------- reads

def test_get_and_head_carry_the_spec_headers(shared_server, tmp_path):
    server = shared_server
    digest = put_local(server.storage, DATA)
    url = f"{server.url}/{object_rel(digest)}"
    response = requests.get(url)
    assert response.status_code == 200 and response.content == DATA
    assert response.headers["Accept-Ranges"] == "bytes"
    assert response.headers["ETag"] == f'"{digest}"'
    assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    head = requests.head(url)
    assert head.status_code == 200 and head.headers["Content-Length"] == str(len(DATA))
    assert head.content == b""
    assert requests.get(url, headers={"If-None-Match": f'"{digest}"'}).status_code == 304


def test_missing_objects_are_404(shared_server):
    server = shared_server
    missing = sha1(b"never stored")
    assert requests.get(f"{server.url}/{object_rel(missing)}").status_code == 404
    assert requests.head(f"{server.url}/{object_rel(missing)}").status_code == 404


@pytest.mark.parametrize("header, expected", [
    ("bytes=0-0", lambda d: d[0:1]),
    ("bytes=10-", lambda d: d[10:]),
    ("bytes=-5", lambda d: d[-5:]),
    ("bytes=100-199", lambda d: d[100:200]),
    ("bytes=990-5000", lambda d: d[990:]),
    ("bytes=-5000", lambda d: d),
    ("bytes=1000-", 416),
    ("bytes=2000-3000", 416),
    ("bytes=0-1,4-5", lambda d: d),  # multi-range: whole object, 200
])
def test_range_requests_match_python_slicing(shared_server, header, expected):
    server = shared_server
    digest = put_local(server.storage, DATA)
    response = requests.get(f"{server.url}/{object_rel(digest)}", headers={"Range": header})
    if expected == 416:
        assert response.status_code == 416
        assert response.headers["Content-Range"] == f"bytes */{len(DATA)}"
        return
    want = expected(DATA)
    assert response.content == want
    if want == DATA and "," in header:
        assert response.status_code == 200
    else:
        assert response.status_code == 206
        start = len(DATA) - len(want) if header.startswith("bytes=-") else int(header[6:].split("-")[0])
        assert response.headers["Content-Range"] == f"bytes {start}-{start + len(want) - 1}/{len(DATA)}"


def test_empty_object_and_range_on_it(shared_server):
    server = shared_server
    digest = put_local(server.storage, b"")
    url = f"{server.url}/{object_rel(digest)}"
    assert requests.get(url).content == b""
    assert requests.get(url, headers={"Range": "bytes=0-0"}).status_code == 416


# -------------------------------------------------------- malformed paths

@pytest.mark.parametrize("path", [
    "/sha1/00/00/00/" + "0" * 39,                      # short digest
    "/sha1/00/00/00/" + "0" * 41,                      # long digest
    "/sha1/zz/zz/zz/" + "z" * 40,                      # not hex
    "/sha1/01/00/00/" + "0" * 40,                      # fan-out does not match
    "/md5/00/00/00/" + "0" * 40,                       # sha1 length under md5
])
def test_malformed_object_paths_are_400(shared_server, path):
    server = shared_server
    before = stored_objects(server.storage)
    assert requests.get(server.url + path).status_code == 400
    response = requests.put(server.url + path, data=b"x", headers=auth(server.write_token))
    assert response.status_code == 400
    assert stored_objects(server.storage) == before


@pytest.mark.parametrize("path", [
    "/sha1/../../../../etc/passwd",
    "/sha1/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/sha1/..%2F..%2F..%2F/x/secret.txt",
    "/../secret.txt",
    "/sha1/00/00/00/..%2f..%2f..%2f..%2fsecret.txt",
    "//etc/passwd",
    "/sha1/00/00/00/../../../../../secret.txt",
])
def test_traversal_never_serves_a_file_outside_the_store(shared_server, tmp_path, path):
    server = shared_server
    secret = os.path.join(os.path.dirname(server.storage), "secret.txt")
    with open(secret, "w") as file:
        file.write("TOP SECRET")
    for method in (b"GET", b"HEAD"):
        answer = raw_request(server.url, method + b" " + path.encode() + b" HTTP/1.1\r\n"
                             b"Host: x\r\nConnection: close\r\n\r\n")
        assert status_of(answer) in (400, 404), answer[:200]
        assert b"TOP SECRET" not in answer and b"root:" not in answer


# ------------------------------------------------------------------ uploads

def test_put_stores_verified_objects(servers):
    server = servers.kachery()
    digest = sha1(DATA)
    url = f"{server.url}/{object_rel(digest)}"
    assert requests.put(url, data=DATA, headers=auth(server.write_token)).status_code == 201
    assert requests.put(url, data=DATA, headers=auth(server.write_token)).status_code == 200
    assert stored_objects(server.storage) == [object_rel(digest)]
    with open(os.path.join(server.storage, object_rel(digest)), "rb") as file:
        assert file.read() == DATA
    assert os.listdir(os.path.join(server.storage, "tmp")) == []


def test_put_md5_and_empty_objects(shared_server):
    server = shared_server
    data = os.urandom(1000)
    md5 = hashlib.md5(data).hexdigest()
    response = requests.put(f"{server.url}/{object_rel(md5, 'md5')}", data=data,
                            headers=auth(server.write_token))
    assert response.status_code == 201
    empty = sha1(b"")
    response = requests.put(f"{server.url}/{object_rel(empty)}", data=b"",
                            headers=auth(server.write_token))
    assert response.status_code in (200, 201)
    assert requests.get(f"{server.url}/{object_rel(empty)}").content == b""


@pytest.mark.parametrize("headers, status", [
    ({}, 401),
    ({"Authorization": "Bearer not-a-token"}, 401),
    ({"Authorization": "Basic abc"}, 401),
    ("read", 403),
])
def test_put_without_write_permission_is_refused(shared_server, headers, status):
    server = shared_server
    if headers == "read":
        headers = auth(server.read_token)
    data = os.urandom(1000)
    response = requests.put(f"{server.url}/{object_rel(sha1(data))}", data=data, headers=headers)
    assert response.status_code == status
    assert_nothing_stored(server, sha1(data))


def test_wrong_digest_is_400_and_nothing_is_kept(shared_server):
    server = shared_server
    claimed = sha1(os.urandom(10))
    response = requests.put(f"{server.url}/{object_rel(claimed)}", data=DATA,
                            headers=auth(server.write_token))
    assert response.status_code == 400 and "digest mismatch" in response.text
    assert_nothing_stored(server, claimed)


def test_oversized_upload_is_413(servers):
    server = servers.kachery(max_upload=500)
    response = requests.put(f"{server.url}/{object_rel(sha1(DATA))}", data=DATA,
                            headers=auth(server.write_token))
    assert response.status_code == 413
    assert stored_objects(server.storage) == []


def test_upload_without_length_is_411(shared_server):
    server = shared_server
    data = os.urandom(1000)
    response = requests.put(f"{server.url}/{object_rel(sha1(data))}", data=iter([data]),
                            headers=auth(server.write_token))  # chunked: no Content-Length
    assert response.status_code == 411
    assert_nothing_stored(server, sha1(data))


def test_truncated_body_stores_nothing(shared_server):
    server = shared_server
    data = os.urandom(1000)
    head = (f"PUT /{object_rel(sha1(data))} HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {server.write_token}\r\nContent-Length: {len(data)}\r\n\r\n")
    raw_request(server.url, head.encode() + data[:500], read=False)  # then the client hangs up
    time.sleep(0.3)
    assert_nothing_stored(server, sha1(data))
    assert requests.get(server.url + "/" + object_rel(sha1(data))).status_code == 404


def test_expect_continue_is_refused_before_the_body(shared_server):
    server = shared_server
    head = (f"PUT /{object_rel(sha1(os.urandom(9)))} HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            f"Content-Length: {len(DATA)}\r\nConnection: close\r\n\r\n")
    assert status_of(raw_request(server.url, head.encode(), first_answer=True)) == 401


def test_eight_concurrent_uploads_leave_one_correct_object(servers):
    server = servers.kachery()
    data = os.urandom(5 * 1024 * 1024)
    url = f"{server.url}/{object_rel(sha1(data))}"
    statuses = []
    barrier = threading.Barrier(8)

    def upload():
        barrier.wait()
        statuses.append(requests.put(url, data=data, headers=auth(server.write_token)).status_code)

    threads = [threading.Thread(target=upload) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(set(statuses)) in ([200, 201], [201]) and len(statuses) == 8
    assert stored_objects(server.storage) == [object_rel(sha1(data))]
    with open(os.path.join(server.storage, object_rel(sha1(data))), "rb") as file:
        assert file.read() == data
    assert os.listdir(os.path.join(server.storage, "tmp")) == []


def _start_partial_upload(server, data, sent):
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    head = (f"PUT /{object_rel(sha1(data))} HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {server.write_token}\r\nContent-Length: {len(data)}\r\n\r\n")
    sock.sendall(head.encode() + data[:sent])
    return sock


def _wait_for_temp_file(storage):
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        temps = os.listdir(os.path.join(storage, "tmp")) if os.path.isdir(os.path.join(storage, "tmp")) else []
        if temps:
            return temps
        time.sleep(0.02)
    raise AssertionError("the upload never started")


def test_server_killed_mid_upload_leaves_no_object(servers):
    server = servers.kachery()
    data = os.urandom(8 * 1024 * 1024)
    sock = _start_partial_upload(server, data, 5 * 1024 * 1024)
    try:
        _wait_for_temp_file(server.storage)
        server.popen.send_signal(signal.SIGKILL)
        server.popen.wait()
    finally:
        sock.close()
    assert stored_objects(server.storage) == []
    again = servers.kachery(storage=server.storage)  # a restart cleans the dead process's temp
    assert os.listdir(os.path.join(again.storage, "tmp")) == []
    assert requests.head(f"{again.url}/{object_rel(sha1(data))}").status_code == 404


def test_sigterm_lets_an_inflight_upload_finish(servers):
    server = servers.kachery()
    data = os.urandom(4 * 1024 * 1024)
    sock = _start_partial_upload(server, data, 2 * 1024 * 1024)
    try:
        _wait_for_temp_file(server.storage)
        server.popen.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        sock.sendall(data[2 * 1024 * 1024:])
        answer = sock.recv(4096)
    finally:
        sock.close()
    assert status_of(answer) == 201
    assert server.popen.wait(10) == 0
    assert stored_objects(server.storage) == [object_rel(sha1(data))]


def test_sigterm_with_a_stalled_upload_leaves_nothing(servers):
    server = servers.kachery(extra=["--shutdown-grace", "0.5"])
    data = os.urandom(4 * 1024 * 1024)
    sock = _start_partial_upload(server, data, 1024 * 1024)
    try:
        _wait_for_temp_file(server.storage)
        server.popen.send_signal(signal.SIGTERM)
        assert server.popen.wait(10) == 0
    finally:
        sock.close()
    assert stored_objects(server.storage) == []
    assert os.listdir(os.path.join(server.storage, "tmp")) == []


# ---------------------------------------------------------------- api/has

def test_api_has_answers_in_one_round_trip(shared_server):
    server = shared_server
    present = put_local(server.storage, DATA)
    absent = sha1(b"absent")
    md5_present = put_local(server.storage, DATA, "md5")
    response = requests.post(f"{server.url}/api/has",
                             json={"sha1": [present, absent.upper()], "md5": [md5_present]})
    assert response.status_code == 200
    assert response.json() == {"sha1": [present], "md5": [md5_present]}


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'{"sha1": "abc"}', b'{"sha1": ["../x"]}'])
def test_api_has_rejects_bad_bodies(shared_server, body):
    server = shared_server
    assert requests.post(f"{server.url}/api/has", data=body).status_code == 400


# ------------------------------------------------------ private / logging

def test_private_server_needs_a_read_token(servers):
    server = servers.kachery(private=True)
    digest = put_local(server.storage, DATA)
    url = f"{server.url}/{object_rel(digest)}"
    assert requests.get(url).status_code == 401
    assert requests.get(url, headers=auth("wrong")).status_code == 401
    assert requests.get(url, headers=auth(server.read_token)).content == DATA
    assert requests.post(f"{server.url}/api/has", json={"sha1": [digest]}).status_code == 401


def test_one_access_log_line_per_request(servers):
    server = servers.kachery()
    digest = put_local(server.storage, DATA)
    for _ in range(3):
        requests.get(f"{server.url}/{object_rel(digest)}")
    requests.head(f"{server.url}/{object_rel(digest)}")
    server.stop()
    lines = [line for line in server.log().splitlines() if object_rel(digest) in line]
    assert len(lines) == 4
    assert all('" 200 ' in line for line in lines)


def test_token_add_prints_the_token_alone(servers, run_cli, tmp_path):
    config = tmp_path / "cli-server.toml"
    result = run_cli("kachery-server", "token", "add", "ci", "--write", "--config", config, check=True)
    token = result.stdout.decode()
    assert token.count("\n") == 1 and len(token.strip()) >= 40
    assert token.strip() not in config.read_text()
    listed = run_cli("kachery-server", "token", "list", "--config", config, check=True)
    assert listed.stdout.decode() == "ci\tread+write\n"


def test_server_start_errors_are_one_line(run_cli, tmp_path):
    result = run_cli("kachery-server", "--storage", tmp_path, "--tls-cert", tmp_path / "nope.pem",
                     "--port", "0")
    stderr = result.stderr.decode()
    assert result.returncode != 0 and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1


# ------------------------------------------------------------- api/upload

def batch_body(*objects):
    """Body of POST /api/upload for (digest, bytes) pairs."""
    return b"".join(f"sha1 {digest} {len(data)}\n".encode() + data for digest, data in objects)


def test_api_upload_stores_many_objects_in_one_request(shared_server):
    server = shared_server
    blobs = [os.urandom(100 + i) for i in range(50)]
    body = batch_body(*[(sha1(b), b) for b in blobs + blobs[:1]])  # one twice
    response = requests.post(f"{server.url}/api/upload", data=body, headers=auth(server.write_token))
    assert response.status_code == 200 and response.json() == {"stored": 50, "present": 1}
    for blob in blobs:
        assert requests.get(f"{server.url}/{object_rel(sha1(blob))}").content == blob
    again = requests.post(f"{server.url}/api/upload", data=body, headers=auth(server.write_token))
    assert again.json() == {"stored": 0, "present": 51}


@pytest.mark.parametrize("make_body", [
    lambda good, bad: batch_body(good, (sha1(b"claimed"), b"actual")),        # digest mismatch
    lambda good, bad: batch_body(good) + b"sha1 nothex 3\nabc",                # malformed header
    lambda good, bad: batch_body(good) + f"sha1 {bad} 10\nshort".encode(),   # truncated
    lambda good, bad: batch_body(good) + f"sha1 {bad} {2 << 20}\n".encode(),  # object too big
    lambda good, bad: batch_body(good) + b"x" * 70000,                          # endless header line
])
def test_api_upload_is_all_or_nothing(shared_server, make_body):
    server = shared_server
    data = os.urandom(500)
    good = (sha1(data), data)
    response = requests.post(f"{server.url}/api/upload", data=make_body(good, sha1(os.urandom(5))),
                             headers=auth(server.write_token))
    assert response.status_code == 400
    assert_nothing_stored(server, sha1(data))


def test_api_upload_needs_write_permission_and_length(shared_server):
    server = shared_server
    data = os.urandom(100)
    body = batch_body((sha1(data), data))
    assert requests.post(f"{server.url}/api/upload", data=body).status_code == 401
    assert requests.post(f"{server.url}/api/upload", data=body,
                         headers=auth(server.read_token)).status_code == 403
    assert requests.post(f"{server.url}/api/upload", data=iter([body]),
                         headers=auth(server.write_token)).status_code == 411
    assert_nothing_stored(server, sha1(data))


# --------------------------------------------------------------------- TLS

@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls_serves_and_verifies(servers, tmp_path, monkeypatch):
    from kachery_core.settings import Remote
    from kachery_core.errors import RemoteUnavailable
    from kachery_core.remote import RemoteSet
    from kachery_core.store import LocalStore

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    server = servers.kachery(extra=["--tls-cert", str(cert), "--tls-key", str(key)], tls_ca=str(cert))
    assert server.url.startswith("https://")
    digest = put_local(server.storage, DATA)
    url = f"{server.url}/{object_rel(digest)}"
    assert requests.get(url, verify=str(cert), headers={"Range": "bytes=-5"}).content == DATA[-5:]
    with pytest.raises(RemoteUnavailable, match="certificate verify failed"):
        RemoteSet([Remote(server.url)], backoff=0.01).download("sha1", digest, LocalStore(tmp_path / "a"))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    path = RemoteSet([Remote(server.url)]).download("sha1", digest, LocalStore(tmp_path / "b"))
    assert open(path, "rb").read() == DATA
    big = tmp_path / "big"
    big.write_bytes(os.urandom(9 * 1024 * 1024))  # large enough for the sendfile PUT
    writer = RemoteSet([Remote(server.url, server.write_token)])
    assert writer.upload("sha1", sha1(big.read_bytes()), str(big)) == 201


# ------------------------------------------------------ live token changes

def test_token_remove_takes_effect_on_a_running_server(run_cli, servers, tmp_path):
    server = servers.kachery()
    blob = b"uploaded with a token that is then removed"
    url = f"{server.url}/{object_rel(sha1(blob))}"
    headers = {"Authorization": f"Bearer {server.write_token}"}
    assert requests.put(url, data=blob, headers=headers).status_code == 201
    run_cli("kachery-server", "token", "remove", "writer", "--config", server.config, check=True)
    deadline = time.monotonic() + 5
    while requests.put(url, data=blob, headers=headers).status_code != 401:
        assert time.monotonic() < deadline, "the removed token is still accepted"
        time.sleep(0.1)
    fresh = run_cli("kachery-server", "token", "add", "again", "--write", "--config", server.config,
                    check=True).stdout.decode().strip()
    other = b"a second object"
    deadline = time.monotonic() + 5
    while requests.put(f"{server.url}/{object_rel(sha1(other))}", data=other,
                       headers={"Authorization": f"Bearer {fresh}"}).status_code != 201:
        assert time.monotonic() < deadline, "the new token is not accepted"
        time.sleep(0.1)
    missing = run_cli("kachery-server", "token", "remove", "nobody", "--config", server.config)
    assert missing.returncode == 2 and len(missing.stderr.decode().strip().splitlines()) == 1

