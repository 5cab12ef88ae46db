"""What a new user trips over (issue 14), each through the real commands:
information about remote files never downloads them; an interrupted
transfer stops at once, leaves nothing partial and exits 130 (SIGTERM: 143)."""

import hashlib
import json
import os
import random
import signal
import subprocess
import time

import pytest

from mirror_helpers import Mirror, object_rel
from server_helpers import command_path, servers  # noqa: F401  (fixture)

pytestmark = pytest.mark.server

CHUNK = 4 * 1024 * 1024


def env_for(storage, remote=None):
    env = dict(os.environ, KACHERY_STORAGE_DIR=str(storage), KACHERY_CONFIG="/nonexistent",
               KACHERY_TOKEN="")
    env.pop("KACHERY_REMOTE", None)
    if remote:
        env["KACHERY_REMOTE"] = remote
    return env


def run(command, storage, *args, remote=None):
    return subprocess.run([command_path(command), *map(str, args)], env=env_for(storage, remote),
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def remote_files(tmp_path):
    """A mirror over a storage holding a large file (with a manifest), a small
    one and a snapshot of both; yields (mirror, {name: url}, {name: bytes})."""
    data = {"big.bin": random.Random(1).randbytes(5 * CHUNK + 3), "small.txt": b"small\n"}
    tree = tmp_path / "tree"
    tree.mkdir()
    for name, content in data.items():
        (tree / name).write_bytes(content)
    storage = tmp_path / "remote-storage"
    urls = {name: run("kachery-store", storage, tree / name).stdout.strip() for name in data}
    urls["tree"] = run("kachery-store", storage, tree).stdout.strip()
    mirror = Mirror(storage)
    yield mirror, urls, data
    mirror.close()


def content_bytes_sent(mirror, data):
    return sum(mirror.sent.get(object_rel(hashlib.sha1(content).hexdigest()), 0)
               for content in data.values())


def test_info_and_ls_of_remote_files_fetch_no_content(tmp_path, remote_files):
    mirror, urls, data = remote_files
    empty = tmp_path / "empty"
    for url in (urls["big.bin"], urls["small.txt"], urls["tree"] + "/big.bin"):
        result = run("kachery-info", empty, "--json", url, remote=mirror.url)
        assert result.returncode == 0, result.stderr
        info = json.loads(result.stdout)
        assert info["size"] == len(data[url.rsplit("/", 1)[1].partition("?")[0]])
        assert info["path"] is None  # not on this machine, and not fetched to say so
    listing = run("kachery-ls", empty, "-l", urls["tree"], remote=mirror.url)
    assert listing.returncode == 0 and str(len(data["big.bin"])) in listing.stdout
    assert content_bytes_sent(mirror, data) == 0
    cached = {path.name for path in empty.rglob("*") if path.is_file()}  # manifests, not content
    assert not cached & {hashlib.sha1(content).hexdigest() for content in data.values()}
    script = ("import json, sys, kachery_core as ka; "
              "print(json.dumps(ka.get_file_info(sys.argv[1])))")
    result = subprocess.run(["python3", "-c", script, urls["big.bin"]], capture_output=True,
                            text=True, env=env_for(empty, mirror.url), timeout=60)
    assert json.loads(result.stdout)["size"] == len(data["big.bin"]), result.stderr
    assert content_bytes_sent(mirror, data) == 0


def leftovers(storage):
    """Temp files and partial objects under a storage directory."""
    return [str(path) for path in storage.rglob("*")
            if path.is_file() and (path.suffix == ".part" or "tmp" in path.relative_to(storage).parts)]


def wait_until(started, process, what, timeout=30):
    """Poll ``started()`` until it holds: the work is under way (not a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not started():
        assert process.poll() is None, f"the command ended ({process.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.005)


def interrupt(process, signum):
    """Send ``signum``; return (exit status, seconds it took to exit)."""
    started = time.monotonic()
    process.send_signal(signum)
    status = process.wait(timeout=10)
    return status, time.monotonic() - started


def stop_for_good(process):
    """A finally clause's: no process outlives its test, whatever failed."""
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)


def assert_stopped_at_once(exit_status, took, status, stderr):
    assert exit_status == status, stderr
    assert took < 0.5, took
    assert stderr.strip().splitlines()[-1] in ("kachery: interrupted", "kachery: terminated")


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
@pytest.mark.parametrize("command", ["kachery-load", "kachery-cat"])
@pytest.mark.parametrize("form", ["whole", "manifest"])
def test_an_interrupted_download_stops_at_once_and_leaves_nothing(tmp_path, command, signum, status,
                                                                  form):
    """``whole``: the object in one request; ``manifest``: a ?manifest= URL,
    fetched chunk by chunk in parallel."""
    data = random.Random(2).randbytes(48 * 1024 * 1024)
    source = tmp_path / "remote.bin"
    source.write_bytes(data)
    storage = tmp_path / "remote-storage"
    url = run("kachery-store", storage, source).stdout.strip()
    assert "?manifest=" in url
    if form == "whole":
        url = url.partition("?")[0]
    mirror = Mirror(storage, rate=16 * 1024 * 1024)  # 3 s for the whole object
    client = tmp_path / "client"
    process = subprocess.Popen([command_path(command), url], env=env_for(client, mirror.url),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: mirror.streaming >= 1024 * 1024, process, "content sent")
        exit_status, took = interrupt(process, signum)
        stderr = process.stderr.read().decode()
    finally:
        stop_for_good(process)
        mirror.close()
    assert_stopped_at_once(exit_status, took, status, stderr)
    assert mirror.streaming < len(data)  # it was stopped mid-transfer
    assert leftovers(client) == []
    assert not any(path.name == hashlib.sha1(data).hexdigest() for path in client.rglob("*"))


def test_an_interrupted_store_of_a_large_file_leaves_no_temp(tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(random.Random(7).randbytes(4 * 1024 * 1024) * 75)  # 300 MiB, not sparse
    for signum, status in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        storage = tmp_path / f"store-{signum}"

        def writing():  # the copy into the store's temp area has begun
            temps = [path for path in (storage / "tmp").glob("*.part")] if storage.exists() else []
            return any(path.stat().st_size > 0 for path in temps if path.exists())

        process = subprocess.Popen([command_path("kachery-store"), str(big)], env=env_for(storage),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            wait_until(writing, process, "a temp file being written")
            exit_status, took = interrupt(process, signum)
            stderr = process.stderr.read().decode()
        finally:
            stop_for_good(process)
        assert_stopped_at_once(exit_status, took, status, stderr)
        assert process.stdout.read() == b""
        assert leftovers(storage) == []


class TerminalProcess:
    """A command with its stderr on a pseudo-terminal, read as it draws."""

    def __init__(self, command, env):
        import pty
        import threading

        self.leader, follower = pty.openpty()
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=follower)
        os.close(follower)
        self.drawn = bytearray()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        while True:
            try:
                data = os.read(self.leader, 65536)
            except OSError:  # EIO: the process closed the terminal
                break
            if not data:
                break
            self.drawn += data

    def text(self):
        return bytes(self.drawn).decode(errors="replace")

    def close(self):
        stop_for_good(self.process)
        self.reader.join(timeout=10)
        os.close(self.leader)


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_verify_stops_at_once(tmp_path, signum, status):
    storage = tmp_path / "store"
    run("kachery-store", storage, __file__)
    big = storage / "sha1" / "aa" / "aa" / "aa" / ("a" * 40)  # 4 GiB to hash: seconds of work
    big.parent.mkdir(parents=True)
    with open(big, "wb") as file:
        file.truncate(4 * 1024 ** 3)
    terminal = TerminalProcess([command_path("kachery-verify")], env_for(storage))
    try:
        wait_until(lambda: any(line.startswith("verifying: ") and not line.startswith("verifying: 0 B")
                               for line in terminal.text().split("\r")),
                   terminal.process, "verify progress")
        exit_status, took = interrupt(terminal.process, signum)
    finally:
        terminal.close()
    assert_stopped_at_once(exit_status, took, status, terminal.text())
    assert "checked" not in terminal.text()  # it had not got through the store


class SlowSink:
    """An HTTP server that takes PUT bodies slowly (64 KiB every ``pause``
    seconds) and keeps nothing; ``received`` counts the body bytes read so far."""

    def __init__(self, pause=0.01):
        import http.server
        import threading

        sink = self
        self.received = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):  # no batch API here: the client falls back to HEAD + PUT
                self.send_error(404)

            def do_HEAD(self):
                self.send_error(404)

            def do_PUT(self):
                left = int(self.headers["Content-Length"])
                try:
                    while left and (block := self.rfile.read(min(left, 65536))):
                        left -= len(block)
                        sink.received += len(block)
                        time.sleep(pause)
                    self.send_response(201)
                    self.end_headers()
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_store_and_upload_stop_at_once_and_leave_nothing(tmp_path, signum, status):
    source = tmp_path / "big.bin"
    source.write_bytes(random.Random(3).randbytes(64 * 1024 * 1024))
    client = tmp_path / "client"
    for args in (["--upload"], ["--upload-only"]):
        sink = SlowSink()  # its own: the last one's count may still be growing
        try:
            process = subprocess.Popen([command_path("kachery-store"), *args, str(source)],
                                       env=env_for(client, sink.url), stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE)
            try:
                wait_until(lambda: sink.received > 0, process, "upload bytes at the server")
                exit_status, took = interrupt(process, signum)
            finally:
                stop_for_good(process)
            assert_stopped_at_once(exit_status, took, status, process.stderr.read().decode())
            assert process.stdout.read() == b""  # no URL for what was not uploaded
            assert sink.received < source.stat().st_size
            assert leftovers(client) == []
        finally:
            sink.close()


def run_on_a_terminal(command, env, timeout=60, stdout=subprocess.PIPE):
    """Run ``command`` with its stderr on a pseudo-terminal; return (status, what it drew)."""
    import pty

    leader, follower = pty.openpty()
    process = subprocess.Popen(command, env=env, stdout=stdout, stderr=follower)
    os.close(follower)
    drawn = bytearray()
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not data:
            break
        drawn += data
    os.close(leader)
    return process.wait(timeout=timeout), drawn.decode(errors="replace")


def test_long_operations_show_progress_with_total_percentage_and_eta(tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(random.Random(4).randbytes(4 * 1024 * 1024) * 75)  # 300 MiB
    env = env_for(tmp_path / "store")
    status, drawn = run_on_a_terminal([command_path("kachery-store"), str(big)], env)
    assert status == 0, drawn
    lines = [line for line in drawn.replace("\r", "\n").splitlines() if line.startswith("storing:")]
    assert any("/ 300.0 MiB" in line and "%" in line for line in lines), lines
    assert any("ETA" in line for line in lines[:-1]), lines  # while it runs ...
    assert "(100%)" in lines[-1]  # ... and the whole at the end
    status, drawn = run_on_a_terminal([command_path("kachery-verify")], env)
    assert status == 0 and "verifying:" in drawn and "/ 300.0 MiB" in drawn, drawn
    # Not a terminal: no progress at all (logs and pipes stay clean).
    quiet = subprocess.run([command_path("kachery-verify")], env=env, capture_output=True, text=True)
    assert "verifying:" not in quiet.stderr


def progress_lines(drawn, label):
    """The progress lines a command drew (each redraw starts with a carriage return)."""
    return [line for line in drawn.replace("\r", "\n").splitlines() if line.startswith(label + ":")]


def assert_progress_with_total_and_eta(drawn, label, total):
    lines = progress_lines(drawn, label)
    assert any(f"/ {total}" in line and "%" in line for line in lines), drawn
    assert any("ETA" in line for line in lines[:-1]), lines  # while it runs ...
    assert "(100%)" in lines[-1], lines  # ... and the whole at the end


@pytest.fixture
def slow_remote_file(tmp_path):
    """A 24 MiB file (with a file manifest) on a mirror sending 32 MiB/s per
    request; yields (mirror, URL with ?manifest=, bytes)."""
    data = random.Random(5).randbytes(24 * 1024 * 1024)
    source = tmp_path / "remote.bin"
    source.write_bytes(data)
    url = run("kachery-store", tmp_path / "remote-storage", source).stdout.strip()
    assert "?manifest=" in url
    mirror = Mirror(tmp_path / "remote-storage", rate=32 * 1024 * 1024)
    yield mirror, url, data
    mirror.close()


def test_load_and_cat_of_a_remote_file_show_progress(tmp_path, slow_remote_file):
    mirror, url, data = slow_remote_file
    status, drawn = run_on_a_terminal([command_path("kachery-load"), url],
                                      env_for(tmp_path / "loading", mirror.url))
    assert status == 0, drawn
    assert_progress_with_total_and_eta(drawn, "downloading", "24.0 MiB")
    env = env_for(tmp_path / "client", mirror.url)  # nothing cached yet
    status, drawn = run_on_a_terminal([command_path("kachery-cat"), url], env,
                                      stdout=subprocess.DEVNULL)
    assert status == 0, drawn
    assert_progress_with_total_and_eta(drawn, "reading", "24.0 MiB")
    status, drawn = run_on_a_terminal([command_path("kachery-cat"), url],  # a cached copy
                                      env_for(tmp_path / "loading", mirror.url),
                                      stdout=subprocess.DEVNULL)
    assert status == 0 and "(100%)" in progress_lines(drawn, "reading")[-1], drawn
    # -q, or stderr not a terminal: no progress at all.
    status, drawn = run_on_a_terminal([command_path("kachery-cat"), "-q", url], env,
                                      stdout=subprocess.DEVNULL)
    assert status == 0 and drawn == ""
    piped = subprocess.run([command_path("kachery-cat"), url], env=env, capture_output=True,
                           timeout=60)
    assert piped.stdout == data and piped.stderr == b""
    # Without a file manifest the whole object is downloaded before a byte is written.
    status, drawn = run_on_a_terminal([command_path("kachery-cat"), url.split("?")[0]],
                                      env_for(tmp_path / "whole", mirror.url),
                                      stdout=subprocess.DEVNULL)
    assert status == 0, drawn
    assert_progress_with_total_and_eta(drawn, "downloading", "24.0 MiB")


def test_upload_shows_progress_with_total_and_eta(tmp_path):
    source = tmp_path / "big.bin"
    source.write_bytes(random.Random(6).randbytes(24 * 1024 * 1024))
    sink = SlowSink(pause=0.002)  # about 30 MiB/s
    try:
        status, drawn = run_on_a_terminal([command_path("kachery-store"), "--upload", str(source)],
                                          env_for(tmp_path / "client", sink.url))
    finally:
        sink.close()
    assert status == 0, drawn
    assert_progress_with_total_and_eta(drawn, "uploading", "24.0 MiB")
