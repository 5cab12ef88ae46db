"""Issue 11: hostile requests to a real kachery-server: no input gives a 500,
and floods of large bodies neither grow its memory nor stall other requests."""

import json
import socket
import time

import pytest
import requests

from server_helpers import put_local, servers  # noqa: F401  (fixture)

pytestmark = pytest.mark.server


def raw_request(url, head, body=b""):
    """Send raw bytes (anything, however malformed); return the status code."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head + body)
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    return int(answer.split(b" ", 2)[1])


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def test_a_token_that_is_not_utf8_is_401(servers):
    server = servers.kachery(private=True)
    head = (b"GET /sha1/00/00/00/" + b"0" * 40 + b" HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer \xff\xfe\xfa\r\nConnection: close\r\n\r\n")
    assert raw_request(server.url, head) == 401
    assert "Traceback" not in server.log()


@pytest.mark.parametrize("route", ["api/has", "api/download"])
@pytest.mark.parametrize("depth", [50_000, 100_000])
def test_json_nested_too_deep_is_400(servers, route, depth):
    server = servers.kachery()
    body = b"[" * depth + b"]" * depth
    response = requests.post(f"{server.url}/{route}", data=body,
                             headers={"Content-Type": "application/json"}, timeout=30)
    assert response.status_code == 400
    assert "Traceback" not in server.log()


def test_bodies_over_the_bound_are_413_with_or_without_a_length(servers):
    server = servers.kachery()
    hashes = ["%040x" % number for number in range(100_000)]  # 4.5 MB of JSON
    body = json.dumps({"sha1": hashes}).encode()
    assert requests.post(f"{server.url}/api/has", data=body, timeout=30).status_code == 413
    chunked = requests.post(f"{server.url}/api/has", data=iter([body[i:i + 65536] for i in
                                                                range(0, len(body), 65536)]),
                            timeout=30)
    assert chunked.status_code == 413


#: 8 clients in another process (so their work does not slow this one's
#: requests), each sending 1.5 million hashes (66 MB) over and over, with a
#: Content-Length and chunked (no length to refuse up front).
FLOODER = """
import json, sys, threading, requests
url = sys.argv[1]
flood = json.dumps({"sha1": ["%040x" % n for n in range(1_500_000)]}).encode()
def parts():
    return iter([flood[i:i + (1 << 20)] for i in range(0, len(flood), 1 << 20)])
def run():
    while True:
        for data in (flood, None):
            try:
                requests.post(url + "/api/has", data=data if data else parts(), timeout=30)
            except requests.RequestException:
                pass
for _ in range(8):
    threading.Thread(target=run, daemon=True).start()
print("flooding", flush=True)
threading.Event().wait()
"""


def test_a_flood_of_large_has_requests_keeps_memory_bounded_and_gets_answered(servers):
    """RSS stays under 200 MB and an unrelated GET is answered quickly."""
    import subprocess
    import sys

    server = servers.kachery()
    digest = put_local(server.storage, b"an unrelated object")
    url = f"{server.url}/sha1/{digest[:2]}/{digest[2:4]}/{digest[4:6]}/{digest}"
    flooder = subprocess.Popen([sys.executable, "-c", FLOODER, server.url], stdout=subprocess.PIPE)
    peak, latencies = 0.0, []
    try:
        assert flooder.stdout.readline() == b"flooding\n"
        deadline = time.monotonic() + 8
        session = requests.Session()
        while time.monotonic() < deadline:
            started = time.monotonic()
            response = session.get(url, timeout=10)
            latencies.append(time.monotonic() - started)
            assert response.content == b"an unrelated object"
            peak = max(peak, rss_mb(server.popen.pid))
            time.sleep(0.05)
    finally:
        flooder.kill()
        flooder.wait()
    latencies.sort()
    print(f"flood: peak RSS {peak:.0f} MB, GET median {latencies[len(latencies) // 2] * 1000:.1f} ms, "
          f"max {latencies[-1] * 1000:.1f} ms over {len(latencies)} GETs")
    assert peak < 200, peak
    # The bound: every unrelated GET under 0.2 s. Measured max 15-18 ms
    # on the 2-core test machine, also with two more processes spinning on it.
    assert latencies[-1] < 0.2, latencies
    errors = [line for line in server.log().splitlines() if " 500 " in line or "Error" in line]
    assert not errors, "\n".join(errors[:20])
