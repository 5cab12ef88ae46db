"""Real server processes for the remote tests: kachery-server and a static
``python -m http.server``, on 127.0.0.1, always stopped by a fixture finalizer.

Import the fixtures into a test module with
``from server_helpers import servers  # noqa: F401``.
"""

import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import requests

from kachery_server.access import add_token

_BANNER = re.compile(rb"on (https?://127\.0\.0\.1:\d+)")
_STATIC_BANNER = re.compile(rb"port (\d+)")


def command_path(name):
    candidate = os.path.join(os.path.dirname(sys.executable), name)
    return candidate if os.path.exists(candidate) else name


def sha1(data):
    return hashlib.sha1(data).hexdigest()


def object_rel(digest, algorithm="sha1"):
    return f"{algorithm}/{digest[0:2]}/{digest[2:4]}/{digest[4:6]}/{digest}"


def put_local(root, data, algorithm="sha1"):
    """Place ``data`` under its hash in a storage directory; return the digest."""
    digest = hashlib.new(algorithm, data).hexdigest()
    path = os.path.join(root, object_rel(digest, algorithm))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as file:
        file.write(data)
    return digest


def stored_objects(root):
    """Relative paths of every object file in a storage directory (tmp excluded)."""
    found = []
    for algorithm in ("sha1", "md5"):
        for dirpath, _, files in os.walk(os.path.join(root, algorithm)):
            found += [os.path.relpath(os.path.join(dirpath, f), root) for f in files]
    return sorted(found)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Process:
    """A started server: ``url``, ``log_path``, ``stop()``, ``kill()``."""

    def __init__(self, popen, url, log_path, storage=None):
        self.popen = popen
        self.url = url
        self.log_path = log_path
        self.storage = storage
        self.write_token = None
        self.read_token = None

    def log(self):
        with open(self.log_path, "rb") as file:
            return file.read().decode(errors="replace")

    def stop(self, timeout=15):
        """SIGTERM, then SIGKILL if it does not exit in time; return the exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode

    def kill(self):
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()


def _wait_for_banner(popen, log_path, pattern, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(log_path, "rb") as file:
            match = pattern.search(file.read())
        if match:
            return match.group(1).decode()
        if popen.poll() is not None:
            break
        time.sleep(0.02)
    popen.kill()
    with open(log_path, "rb") as file:
        raise RuntimeError(f"server did not start: {file.read().decode(errors='replace')}")


def _wait_until_answering(url, timeout=10, verify=True):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            requests.get(f"{url}/sha1/00/00/00/{'0' * 40}", timeout=1, verify=verify)
            return
        except requests.ReadTimeout:  # it accepted the connection: it is listening
            return
        except requests.ConnectionError:
            time.sleep(0.02)
    raise RuntimeError(f"{url} does not answer")


class Servers:
    """Starts servers for one test and stops every one of them at the end."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.started = []
        self.count = 0

    def kachery(self, storage=None, private=False, max_upload=None, extra=(), tls_ca=None, env=None):
        """Start kachery-server with a write token and a read-only token
        (``env``: extra environment, e.g. KACHERY_REMOTE for its gateway)."""
        self.count += 1
        base = self.tmp_path / f"server{self.count}"
        base.mkdir()
        storage = str(storage or base / "storage")
        config = base / "server.toml"
        config.write_text(f"private = {'true' if private else 'false'}\n")
        write_token = add_token(str(config), "writer", write=True)
        read_token = add_token(str(config), "reader", write=False)
        args = ["--storage", storage, "--host", "127.0.0.1", "--port", "0", "--config", str(config)]
        if max_upload:
            args += ["--max-upload", str(max_upload)]
        process = self._start([command_path("kachery-server"), *args, *extra], base, _BANNER, storage,
                              env=dict(os.environ, **env) if env else None)
        process.write_token, process.read_token = write_token, read_token
        process.config = str(config)
        _wait_until_answering(process.url, verify=tls_ca or True)
        return process

    def static(self, directory):
        """A plain `python -m http.server` over ``directory`` (a read-only remote)."""
        self.count += 1
        base = self.tmp_path / f"static{self.count}"
        base.mkdir()
        command = [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1",
                   "--directory", str(directory)]
        process = self._start(command, base, _STATIC_BANNER, str(directory), stdout_too=True)
        process.url = f"http://127.0.0.1:{process.url}"
        _wait_until_answering(process.url)
        return process

    def _start(self, command, base, banner, storage, stdout_too=False, env=None):
        log_path = base / "log.txt"
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(command, stdout=log if stdout_too else subprocess.DEVNULL,
                                     stderr=log, stdin=subprocess.DEVNULL, env=env)
        process = Process(popen, None, log_path, storage)
        self.started.append(process)
        process.url = _wait_for_banner(popen, log_path, banner)
        return process

    def stop_all(self):
        for process in self.started:
            process.stop()


@pytest.fixture
def servers(tmp_path):
    """Factory of real server processes; all are stopped even when the test fails."""
    registry = Servers(tmp_path)
    yield registry
    registry.stop_all()


def dead_url():
    """A URL on which nothing listens (a port just released)."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    """One kachery-server for a whole test module (tests must not depend on an empty store)."""
    registry = Servers(tmp_path_factory.mktemp("shared"))
    yield registry.kachery()
    registry.stop_all()
