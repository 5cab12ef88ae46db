#!/usr/bin/env python3
"""Benchmark of issue 4: the remote store against curl, openssl and nginx.

Everything runs side by side in one invocation (alternating runs, median of
--repeat) over loopback and prints a Markdown table with the ratios and the
targets. Heavy: run it under the shared benchmark lock,

    flock /tmp/kachery-bench.lock python3 scripts/bench_remote.py

Measurements:
  download   kachery-load of a 1 GiB object vs the slower of `curl -o` (same
             server) and `openssl dgst -sha1` of the file        target <= 1.25x
  GET        kachery-server vs nginx (started here, temp config), `curl -o
             /dev/null` throughput                                target >= 0.7x
  upload     kachery-store --upload-only vs `openssl dgst -sha1` then `curl -T`
             to the same server                                   target <= 1.1x
  snapshot   10,000 small files with --upload-only to an empty server (< 30 s),
             then again (< 2 s)
  memory     server RSS during 32 concurrent 1 GiB downloads      target < 150 MB
"""

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from benchlib import markdown_table, median_times, run_measured, tool  # noqa: E402

MIB = 1 << 20


# ------------------------------------------------------------------ inputs

def make_big_file(path, size_mib):
    """A file of random 64 MiB blocks (incompressible; content is irrelevant to sha1)."""
    block = os.urandom(64 * MIB)
    with open(path, "wb") as out:
        for index in range(size_mib // 64):
            out.write(block[:8] + index.to_bytes(8, "little") + block[16:])
        out.write(os.urandom((size_mib % 64) * MIB))
    hasher = hashlib.sha1()
    with open(path, "rb") as source:
        while chunk := source.read(16 * MIB):
            hasher.update(chunk)
    return hasher.hexdigest()


def make_small_files(root, count):
    for index in range(count):
        sub = os.path.join(root, f"d{index % 100:03d}")
        os.makedirs(sub, exist_ok=True)
        with open(os.path.join(sub, f"f{index:05d}.txt"), "wb") as out:
            out.write(os.urandom(64 + index % 2000))


def object_rel(digest):
    return f"sha1/{digest[0:2]}/{digest[2:4]}/{digest[4:6]}/{digest}"


def place_object(storage, source, digest):
    target = os.path.join(storage, object_rel(digest))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def remove(path):
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def fresh(*paths):
    """Remove the outputs of the last run and flush, so that every run starts
    alike: with no dirty pages of its predecessor's 1 GiB, and after the
    deletion of a synced file has been committed (this disk is mounted with
    ``discard``; the run after ``curl -o && sync`` used to pay for it)."""
    for path in paths:
        remove(path)
    os.sync()


# ----------------------------------------------------------------- servers

class Server:
    """A background process that announces its URL on stderr (or a fixed one)."""

    def __init__(self, command, log_path, pattern=None, url=None):
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
        self.url = url or self._wait_for(pattern)
        self._wait_answering()

    def _wait_for(self, pattern):
        for _ in range(500):
            with open(self.log_path, "rb") as log:
                match = re.search(pattern, log.read())
            if match:
                return match.group(1).decode()
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"server did not start, see {self.log_path}")

    def _wait_answering(self):
        for _ in range(500):
            if subprocess.run(["curl", "-s", "-o", "/dev/null", self.url + "/"]).returncode == 0:
                return
            time.sleep(0.02)
        raise RuntimeError(f"{self.url} does not answer")

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def kachery_server(storage, workdir, token_name="bench"):
    """Start kachery-server on a free port with a write token; return (server, token)."""
    config = os.path.join(workdir, f"{token_name}.toml")
    token = subprocess.run([tool("kachery-server"), "token", "add", token_name, "--write", "--config", config],
                           check=True, capture_output=True).stdout.decode().strip()
    command = [tool("kachery-server"), "--storage", storage, "--port", "0", "--config", config]
    server = Server(command, os.path.join(workdir, f"{token_name}.log"), rb"on (http://[\d.]+:\d+)")
    return server, token


def nginx_server(storage, workdir):
    """Debian's nginx, one process (like the kachery server), serving ``storage``."""
    port = _free_port()
    conf = os.path.join(workdir, "nginx.conf")
    temp = os.path.join(workdir, "nginx-temp")
    os.makedirs(temp, exist_ok=True)
    with open(conf, "w") as file:
        file.write(f"""daemon off; master_process off; worker_processes 1;
pid {workdir}/nginx.pid; error_log {workdir}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off; sendfile on; tcp_nopush on;
  client_body_temp_path {temp}/body; proxy_temp_path {temp}/proxy;
  fastcgi_temp_path {temp}/fastcgi; uwsgi_temp_path {temp}/uwsgi; scgi_temp_path {temp}/scgi;
  server {{ listen 127.0.0.1:{port}; root {storage}; }}
}}
""")
    command = ["nginx", "-c", conf, "-p", workdir, "-e", os.path.join(workdir, "nginx-error.log")]
    return Server(command, os.path.join(workdir, "nginx.log"), url=f"http://127.0.0.1:{port}")


def _free_port():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def client_env(storage, remote, token=""):
    return dict(os.environ, KACHERY_STORAGE_DIR=storage, KACHERY_REMOTE=remote,
                KACHERY_TOKEN=token, KACHERY_CONFIG=os.devnull)


# ------------------------------------------------------------ measurements

def _gib(size):
    return f"{size / (1 << 30):g} GiB"


def bench_download(scratch, big, digest, server, repeat):
    out = os.path.join(scratch, "curl.out")
    client = os.path.join(scratch, "client-store")
    url = f"{server.url}/{object_rel(digest)}"
    runners = {
        "kachery-load": lambda: run_measured([tool("kachery-load"), f"sha1://{digest}"],
                                             env=client_env(client, server.url)),
        "curl -o": lambda: run_measured(["curl", "-sf", "-o", out, url]),
        "openssl dgst -sha1": lambda: run_measured(["openssl", "dgst", "-sha1", big]),
    }
    result = median_times(runners, repeat, before_each=lambda _: fresh(out, client))
    # Not a target: what curl costs when it also makes the file durable -- the
    # disk-bound floor for a durable download. Measured apart: a run right
    # after one that flushed 1 GiB to this VM's disk was slowed down.
    result.update(median_times({"curl -o && sync": lambda: run_measured(
        ["bash", "-c", f'curl -sf -o "{out}" "{url}" && sync "{out}"'])}, repeat,
        before_each=lambda _: fresh(out, client)))
    remove(out), remove(client)
    ours = result["kachery-load"][0]
    baseline = max(result["curl -o"][0], result["openssl dgst -sha1"][0])
    slower = "curl -o" if result["curl -o"][0] >= result["openssl dgst -sha1"][0] else "openssl"
    detail = f"curl {result['curl -o'][0]:.2f} s, openssl {result['openssl dgst -sha1'][0]:.2f} s"
    durable = result["curl -o && sync"][0]
    label = f"{_gib(os.path.getsize(big))} download"
    return [(f"{label}: kachery-load vs max(curl -o, openssl sha1)",
             f"{ours:.2f} s", f"{baseline:.2f} s ({slower}; {detail})",
             f"{ours / baseline:.2f}x", "<= 1.25x", ours / baseline <= 1.25),
            (f"{label}: kachery-load vs curl -o + sync (reference: a durable download)",
             f"{ours:.2f} s", f"{durable:.2f} s", f"{ours / durable:.2f}x", "(none)", True)]


def bench_get(digest, server, nginx, size, repeat):
    runners = {
        name: (lambda u=f"{srv.url}/{object_rel(digest)}": run_measured(["curl", "-sf", "-o", "/dev/null", u]))
        for name, srv in (("kachery-server", server), ("nginx", nginx))
    }
    result = median_times(runners, repeat)
    ours, theirs = size / result["kachery-server"][0] / MIB, size / result["nginx"][0] / MIB
    return [("GET throughput: kachery-server vs nginx (curl -o /dev/null)",
             f"{ours:.0f} MiB/s", f"{theirs:.0f} MiB/s", f"{ours / theirs:.2f}x", ">= 0.7x",
             ours / theirs >= 0.7)]


def bench_upload(scratch, big, digest, repeat):
    storage = os.path.join(scratch, "upload-server")
    client = os.path.join(scratch, "upload-client")
    server, token = kachery_server(storage, scratch, "upload")
    with server:
        baseline = (f'H=$(openssl dgst -sha1 -r "{big}" | cut -c1-40) && curl -sf -o /dev/null -T "{big}" '
                    f'-H "Authorization: Bearer {token}" '
                    f'"{server.url}/sha1/${{H:0:2}}/${{H:2:2}}/${{H:4:2}}/$H"')
        runners = {
            "kachery-store --upload-only": lambda: run_measured(
                [tool("kachery-store"), "--upload-only", big], env=client_env(client, server.url, token)),
            "openssl + curl -T": lambda: run_measured(["bash", "-c", baseline]),
        }
        result = median_times(runners, repeat, before_each=lambda _: fresh(storage, client))
    remove(storage), remove(client)
    ours, theirs = result["kachery-store --upload-only"][0], result["openssl + curl -T"][0]
    return [(f"{_gib(os.path.getsize(big))} upload: kachery-store --upload-only vs openssl sha1 + curl -T",
             f"{ours:.2f} s", f"{theirs:.2f} s", f"{ours / theirs:.2f}x", "<= 1.1x", ours / theirs <= 1.1)]


def bench_snapshot(scratch, files):
    source = os.path.join(scratch, "small")
    make_small_files(source, files)
    storage = os.path.join(scratch, "snapshot-server")
    client = os.path.join(scratch, "snapshot-client")
    server, token = kachery_server(storage, scratch, "snapshot")
    with server:
        env = client_env(client, server.url, token)
        first, _ = run_measured([tool("kachery-store"), "--upload-only", source], env=env)
        second, _ = run_measured([tool("kachery-store"), "--upload-only", source], env=env)
    remove(storage), remove(client), remove(source)
    return [(f"{files} small files --upload-only, empty server", f"{first:.2f} s", "", "", "< 30 s", first < 30),
            (f"{files} small files --upload-only, second time", f"{second:.2f} s", "", "", "< 2 s", second < 2)]


def bench_memory(scratch, digest, storage, clients):
    server, _ = kachery_server(storage, scratch, "memory")
    url = f"{server.url}/{object_rel(digest)}"
    with server:
        started = time.perf_counter()
        downloads = [subprocess.Popen(["curl", "-sf", "-o", "/dev/null", url]) for _ in range(clients)]
        peak = 0
        while any(d.poll() is None for d in downloads):
            peak = max(peak, _rss_mb(server.process.pid))
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        peak = max(peak, _rss_mb(server.process.pid, "VmHWM"))
        failed = sum(d.returncode != 0 for d in downloads)
    size = os.path.getsize(os.path.join(storage, object_rel(digest)))
    note = f"{clients} x {_gib(size)} in {elapsed:.1f} s" + (f", {failed} FAILED" if failed else "")
    return [(f"server RSS, {clients} concurrent downloads", f"{peak:.0f} MB", note, "",
             "< 150 MB", peak < 150 and not failed)]


def _rss_mb(pid, field="VmRSS"):
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0


# --------------------------------------------------------------------- main

def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--files", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--scratch", default="/var/tmp")
    parser.add_argument("--only", default="download,get,upload,snapshot,memory",
                        help="comma-separated subset of the measurements")
    args = parser.parse_args()
    only = set(args.only.split(","))
    rows = []
    with tempfile.TemporaryDirectory(dir=args.scratch, prefix="kachery-bench-remote.") as scratch:
        big = os.path.join(scratch, "big.bin")
        digest = make_big_file(big, args.size_mib)
        size = os.path.getsize(big)
        storage = os.path.join(scratch, "server-storage")
        place_object(storage, big, digest)
        if only & {"download", "get"}:
            server, _ = kachery_server(storage, scratch)
            with server, nginx_server(storage, scratch) as nginx:
                if "download" in only:
                    rows += bench_download(scratch, big, digest, server, args.repeat)
                if "get" in only:
                    rows += bench_get(digest, server, nginx, size, args.repeat)
        if "upload" in only:
            rows += bench_upload(scratch, big, digest, args.repeat)
        if "snapshot" in only:
            rows += bench_snapshot(scratch, args.files)
        if "memory" in only:
            rows += bench_memory(scratch, digest, storage, args.clients)
    header = ["measurement", "kachery", "baseline", "ratio", "target", "met"]
    print(markdown_table(header, [(*row[:5], "yes" if row[5] else "NO") for row in rows]))


if __name__ == "__main__":
    main()
