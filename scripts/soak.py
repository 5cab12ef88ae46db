#!/usr/bin/env python3
"""Soak test (not in CI): real processes under chaos for N minutes.

A kachery-server, a mount and 8 clients store, upload, load and read for
``--minutes`` while a chaos loop kill -9s the server and restarts it. Readers
have two hostile mirrors before the server in their remote list: one drips
its answers a byte at a time, one flips a byte of every answer. At the end:

- every byte read matched what was stored (any mismatch fails at once);
- `kachery-verify` of every client store and `kachery-server verify` of the
  server's find nothing corrupt;
- no temp file is left in any store's or cache's tmp/;
- the peak RSS of the server and the mount daemon stayed bounded.

    python3 scripts/soak.py [--minutes 10] [--clients 8]

Prints a summary table (docs/reliability.md has the latest).
"""

import argparse
import hashlib
import http.server
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import markdown_table, tool  # noqa: E402

#: Exit codes a client may see while the server is being killed: retried.
TRANSIENT = {4, 5, 7}


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def hostile_mirror(storage, mode):
    """An HTTP mirror of ``storage`` that drips (1 byte per 0.5 s) or corrupts its answers."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            path = os.path.join(storage, self.path.lstrip("/"))
            if ".." in self.path or not os.path.isfile(path):
                self.send_error(404)
                return
            with open(path, "rb") as file:
                data = file.read()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            try:
                if mode == "corrupt":
                    flipped = bytearray(data)
                    if flipped:
                        flipped[len(flipped) // 2] ^= 1
                    self.wfile.write(bytes(flipped))
                else:
                    for index in range(len(data)):
                        self.wfile.write(data[index:index + 1])
                        self.wfile.flush()
                        time.sleep(0.5)
            except OSError:
                pass

        do_HEAD = do_GET

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


class Soak:
    def __init__(self, work, clients):
        self.work = work
        self.clients = clients
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.counts = {"stored": 0, "loaded": 0, "mount reads": 0, "transient errors": 0,
                       "server kills": 0}
        self.failures = []
        self.peak = {"server": 0.0, "mount": 0.0}
        self.server_storage = os.path.join(work, "server-storage")
        self.port = free_port()
        self.server_url = f"http://127.0.0.1:{self.port}"
        self.server = None
        self.config = os.path.join(work, "server.toml")
        token = subprocess.run([tool("kachery-server"), "token", "add", "soak", "--write",
                                "--config", self.config], check=True, capture_output=True,
                               text=True).stdout.strip()
        self.token = token
        client_config = os.path.join(work, "client.toml")
        with open(client_config, "w") as file:
            file.write("remote_timeout = 2\nremote_speed_limit = \"16K\"\nremote_speed_time = 2\n")
        self.client_config = client_config

    def env(self, name, remotes):
        return dict(os.environ, KACHERY_STORAGE_DIR=os.path.join(self.work, name),
                    KACHERY_CONFIG=self.client_config, KACHERY_REMOTE=" ".join(remotes),
                    KACHERY_TOKEN=self.token)

    def note(self, key):
        with self.lock:
            self.counts[key] += 1

    def fail(self, message):
        with self.lock:
            self.failures.append(message)
        self.stop.set()

    # ------------------------------------------------------------ processes

    def start_server(self):
        self.server = subprocess.Popen(
            [tool("kachery-server"), "--storage", self.server_storage, "--port", str(self.port),
             "--config", self.config], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def chaos(self):
        rng = random.Random(1)
        while not self.stop.wait(rng.uniform(5, 15)):
            self.server.kill()
            self.server.wait()
            self.note("server kills")
            time.sleep(rng.uniform(0.5, 3))
            self.start_server()

    def sample_memory(self, mount_pid):
        while not self.stop.wait(0.5):
            for name, pid in (("server", self.server.pid), ("mount", mount_pid)):
                try:
                    with open(f"/proc/{pid}/status") as status:
                        for line in status:
                            if line.startswith("VmRSS:"):
                                self.peak[name] = max(self.peak[name], int(line.split()[1]) / 1024)
                except OSError:
                    pass

    # --------------------------------------------------------------- clients

    def client(self, number, readers_remotes, mountpoint):
        rng = random.Random(number)
        source = os.path.join(self.work, f"source{number}")
        while not self.stop.is_set():
            data = rng.randbytes(rng.choice([1000, 50_000, 3_000_000, 12_000_000]))
            with open(source, "wb") as file:
                file.write(data)
            digest = hashlib.sha1(data).hexdigest()
            stored = subprocess.run([tool("kachery-store"), "--upload", source], capture_output=True,
                                    env=self.env(f"client{number}", [self.server_url]))
            if stored.returncode in TRANSIENT:
                self.note("transient errors")
                continue
            if stored.returncode != 0:
                return self.fail(f"store exited {stored.returncode}: {stored.stderr.decode()[-300:]}")
            self.note("stored")
            url = stored.stdout.decode().strip()
            reader = f"reader{number}"
            shutil.rmtree(os.path.join(self.work, reader), ignore_errors=True)
            loaded = subprocess.run([tool("kachery-cat"), url], capture_output=True,
                                    env=self.env(reader, readers_remotes), timeout=300)
            if loaded.returncode in TRANSIENT:
                self.note("transient errors")
            elif loaded.returncode != 0 or loaded.stdout != data:
                return self.fail(f"cat of {url}: exit {loaded.returncode}, "
                                 f"{len(loaded.stdout)} bytes, {loaded.stderr.decode()[-300:]}")
            else:
                self.note("loaded")
            try:
                with open(os.path.join(mountpoint, "sha1", digest), "rb") as file:
                    if file.read() != data:
                        return self.fail(f"mount read of {digest} returned wrong bytes")
                self.note("mount reads")
            except OSError:  # EIO while the server is down: allowed, never wrong bytes
                self.note("transient errors")

    # ------------------------------------------------------------------- run

    def run(self, minutes):
        corrupt, corrupt_url = hostile_mirror(self.server_storage, "corrupt")
        drip, drip_url = hostile_mirror(self.server_storage, "drip")
        remotes = [corrupt_url, drip_url, self.server_url]
        self.start_server()
        time.sleep(1)
        mountpoint = os.path.join(self.work, "mnt")
        os.makedirs(mountpoint)
        mount = subprocess.Popen([tool("kachery-mount"), mountpoint], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, env=self.env("mount-store", remotes))
        while not os.path.ismount(mountpoint):
            time.sleep(0.05)
        threads = [threading.Thread(target=self.chaos), threading.Thread(
            target=self.sample_memory, args=(mount.pid,))]
        threads += [threading.Thread(target=self.client, args=(n, remotes, mountpoint))
                    for n in range(self.clients)]
        for thread in threads:
            thread.start()
        self.stop.wait(minutes * 60)
        self.stop.set()
        for thread in threads:
            thread.join()
        mount.send_signal(signal.SIGTERM)
        mount.wait(timeout=60)
        self.server.send_signal(signal.SIGTERM)
        self.server.wait(timeout=60)
        corrupt.shutdown()
        drip.shutdown()
        return self.final_checks()

    def final_checks(self):
        rows = []
        stores = sorted(name for name in os.listdir(self.work)  # (not client.toml)
                        if name.startswith(("client", "reader", "mount-store"))
                        and os.path.isdir(os.path.join(self.work, name)))
        corrupt_found = 0
        for name in stores:
            result = subprocess.run([tool("kachery-verify"), "--clean-temp"], capture_output=True,
                                    env=self.env(name, []))
            if result.returncode != 0:
                corrupt_found += 1
                self.failures.append(f"kachery-verify of {name} (exit {result.returncode}): "
                                     f"{(result.stdout + result.stderr).decode()[-300:]}")
        result = subprocess.run([tool("kachery-server"), "verify", "--storage", self.server_storage,
                                 "--config", self.config], capture_output=True)
        if result.returncode != 0:
            corrupt_found += 1
            self.failures.append(f"kachery-server verify: {result.stdout.decode()[-300:]}")
        # A killed server's temp files are removed when it starts again; the
        # last one stopped cleanly: nothing may be left.
        left = []
        for root, _, files in os.walk(self.work):
            if os.path.basename(root) == "tmp":
                left += [os.path.join(root, name) for name in files]
        if left:
            self.failures.append(f"{len(left)} temp files left, e.g. {left[0]}")
        for key, value in self.counts.items():
            rows.append([key, value])
        rows.append(["stores verified corrupt", corrupt_found])
        rows.append(["temp files left", len(left)])
        rows.append(["peak server RSS MB", f"{self.peak['server']:.0f}"])
        rows.append(["peak mount daemon RSS MB", f"{self.peak['mount']:.0f}"])
        rows.append(["wrong bytes / other failures", len(self.failures)])
        return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kachery-soak-", dir="/var/tmp") as work:
        soak = Soak(work, args.clients)
        rows = soak.run(args.minutes)
        print(f"soak: {args.minutes:g} minutes, {args.clients} clients, server kill -9 every "
              "5-15 s, a dripping and a corrupting mirror before it:\n")
        print(markdown_table(["", "count"], rows))
        for failure in soak.failures:
            print("FAILURE:", failure)
    sys.exit(1 if soak.failures else 0)


if __name__ == "__main__":
    main()
