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


# ------------------------------------------- the concurrency bound: 429, retried

def _has_body(count, present=()):
    """A JSON body of POST /api/has with ``count`` hashes (the ``present`` ones first)."""
    hashes = list(present) + ["%040x" % number for number in range(count - len(present))]
    return json.dumps({"sha1": hashes}).encode()


class _HeldRequest:
    """A POST /api/has whose body is sent in two halves: the server's handler
    holds a slot of its JSON bound while it waits for the second."""

    def __init__(self, url, body):
        import http.client

        host, port = url.removeprefix("http://").split(":")
        self.connection = http.client.HTTPConnection(host, int(port), timeout=30)
        self.body = body
        self.connection.putrequest("POST", "/api/has")
        self.connection.putheader("Content-Type", "application/json")
        self.connection.putheader("Content-Length", str(len(body)))
        self.connection.endheaders()
        self.connection.send(body[:len(body) // 2])

    def finish(self):
        """Send the rest; return (status, parsed answer)."""
        self.connection.send(self.body[len(self.body) // 2:])
        response = self.connection.getresponse()
        return response.status, json.loads(response.read())

    def close(self):
        self.connection.close()


def _hold_every_slot(server, body):
    """Requests holding every slot of the server's JSON bound, once a heavy
    request is seen refused (429) because of them; returns (held, that answer)."""
    from kachery_server.limits import CONCURRENT_JSON

    held = [_HeldRequest(server.url, body) for _ in range(CONCURRENT_JSON)]
    deadline = time.monotonic() + 10
    while True:  # the held requests reach their handlers in a moment
        answer = requests.post(f"{server.url}/api/has", data=body, timeout=10,
                               headers={"User-Agent": "probe", "Content-Type": "application/json"})
        if answer.status_code == 429 or time.monotonic() > deadline:
            return held, answer
        assert answer.status_code == 200, answer.status_code
        time.sleep(0.05)


def _close_all(held):
    for request in held:
        request.close()


def test_heavy_has_requests_over_the_concurrency_bound_are_429_then_served(servers):
    """Bodies under the 2 MiB bound (about 43,000 hashes each), more at once
    than the server parses at a time: the extra one is 429 with Retry-After,
    the others are answered in full, and the slots are free again after."""
    from kachery_server.limits import MAX_JSON_BODY

    server = servers.kachery()
    digest = put_local(server.storage, b"present on the server")
    body = _has_body(43_000, [digest])
    assert MAX_JSON_BODY * 0.8 < len(body) < MAX_JSON_BODY  # heavy, and allowed
    held, refused = _hold_every_slot(server, body)
    try:
        assert refused.status_code == 429, refused.status_code
        assert refused.headers["Retry-After"] == "1"
        for request in held:
            assert request.finish() == (200, {"sha1": [digest], "md5": []})
    finally:
        _close_all(held)
    answer = requests.post(f"{server.url}/api/has", data=body, timeout=10)
    assert answer.status_code == 200 and answer.json()["sha1"] == [digest]
    assert "Traceback" not in server.log()


def test_the_client_retries_a_429_after_retry_after_and_succeeds(servers):
    """kachery's client (RemoteSet -> HttpRemote) gets 429 from a server whose
    slots are held, waits the 1 s the server asks for (not only its 0.2 s
    backoff), and succeeds once the slots are free."""
    import threading

    from kachery_core.remote import RemoteSet
    from kachery_core.settings import Remote

    server = servers.kachery()
    digest = put_local(server.storage, b"present on the server")
    held, refused = _hold_every_slot(server, _has_body(43_000, [digest]))
    outcome = {}

    def client():
        started = time.monotonic()
        try:
            outcome["present"] = RemoteSet([Remote(server.url)]).has_many([("sha1", digest)])
        except Exception as error:  # reported by the assertions below
            outcome["error"] = error
        outcome["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=client)
    try:
        assert refused.status_code == 429
        thread.start()
        deadline = time.monotonic() + 10
        while _client_429s(server) < 1:  # the client's first attempt was refused
            assert time.monotonic() < deadline, server.log()[-2000:]
            time.sleep(0.02)
        for request in held:
            assert request.finish()[0] == 200
    finally:
        _close_all(held)
        thread.join(timeout=30)
    assert outcome.get("present") == {("sha1", digest)}, outcome
    assert _client_429s(server) == 1
    assert 0.9 < outcome["seconds"] < 5, outcome  # Retry-After: 1, not the 0.2 s backoff


def _client_429s(server):
    """429 answers in the server's access log to requests other than the probes."""
    return sum(1 for line in server.log().splitlines()
               if '"POST /api/has' in line and '" 429 ' in line and '"probe"' not in line)


class _Busy:
    """A server that answers POST /api/has 429 (with ``retry_after``) the first
    ``refusals`` times, then 200; records when each request came."""

    def __init__(self, refusals, retry_after):
        import http.server
        import threading

        busy = self
        self.times = []

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                busy.times.append(time.monotonic())
                refused = len(busy.times) <= refusals
                body = b"busy\n" if refused else json.dumps({"sha1": [], "md5": []}).encode()
                self.send_response(429 if refused else 200)
                if refused:
                    self.send_header("Retry-After", retry_after)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def _has_many(url, **options):
    from kachery_core.remote import RemoteSet
    from kachery_core.settings import Remote

    return RemoteSet([Remote(url)], backoff=0.05, **options).has_many([("sha1", "a" * 40)])


def test_the_pause_after_a_429_is_its_retry_after():
    with _Busy(refusals=2, retry_after="1") as busy:
        assert _has_many(busy.url, retries=3) == set()
    gaps = [later - earlier for earlier, later in zip(busy.times, busy.times[1:])]
    assert len(gaps) == 2 and all(0.95 < gap < 2 for gap in gaps), gaps


def test_a_retry_after_of_an_hour_is_not_obeyed():
    """Nothing hangs on a remote's say-so: a long Retry-After is cut to
    RETRY_AFTER_MAX, and then the remote is unavailable (exit 4)."""
    from kachery_core.errors import RemoteUnavailable
    from kachery_core.http_remote import RETRY_AFTER_MAX

    started = time.monotonic()
    with _Busy(refusals=100, retry_after="3600") as busy:
        with pytest.raises(RemoteUnavailable, match="429"):
            _has_many(busy.url, retries=2)
    assert len(busy.times) == 2
    assert RETRY_AFTER_MAX - 0.1 < time.monotonic() - started < RETRY_AFTER_MAX + 2
