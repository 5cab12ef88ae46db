#!/usr/bin/env python3
"""Benchmark of issue 5: lazy, verified remote reads through the mount.

A kachery-server on 127.0.0.1 serves a storage directory holding the data; a
mount over an EMPTY storage directory with that server as its remote reads it.
Every measurement starts from a fresh mount with an empty cache. Usage:

    python3 scripts/bench_lazy.py [--size-mib 1024] [--repeat 3]

Prints a Markdown table of the measurements, their baselines and ratios.
"""

import argparse
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
from benchlib import markdown_table, tool, unmount  # noqa: E402

CHUNK = 4 * 1024 * 1024
MEDIUM_MIB = 64


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, storage):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [tool("kachery-server"), "--storage", storage, "--port", str(self.port),
             "--config", os.path.join(storage, "..", "server.toml")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 15
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{self.url}/sha1/00/00/00/" + "0" * 40, timeout=1)
            except urllib.error.HTTPError:
                return  # 404: it answers
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("kachery-server did not start")

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=30)


class Mount:
    """A fresh mount over an empty storage directory, with the server as remote."""

    def __init__(self, scratch, remote):
        self.storage = tempfile.mkdtemp(prefix="client-", dir=scratch)
        self.point = tempfile.mkdtemp(prefix="mnt-", dir=scratch)
        env = dict(os.environ, KACHERY_CONFIG="/nonexistent")
        self.process = subprocess.Popen(
            [tool("kachery-mount"), self.point, "--storage-dir", self.storage, "--remote", remote],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        deadline = time.time() + 10
        while not os.path.ismount(self.point):
            if time.time() > deadline or self.process.poll() is not None:
                raise RuntimeError("kachery-mount did not come up")
            time.sleep(0.02)

    def path(self, url):
        return os.path.join(self.point, "sha1dir", url.split("://", 1)[1])

    def close(self):
        unmount(self.point, self.process)
        shutil.rmtree(self.storage, ignore_errors=True)


def make_data(server_storage, scratch, size_mib):
    """Store a snapshot with one big file, 9 medium files and 600 small files."""
    tree = os.path.join(scratch, "data")
    os.makedirs(os.path.join(tree, "small"))
    os.makedirs(os.path.join(tree, "medium"))
    with open(os.path.join(tree, "big.bin"), "wb") as out:
        for _ in range(size_mib):
            out.write(os.urandom(1 << 20))
    for index in range(9):
        with open(os.path.join(tree, "medium", f"m{index}.bin"), "wb") as out:
            out.write(os.urandom(MEDIUM_MIB << 20))
    for index in range(600):
        with open(os.path.join(tree, "small", f"s{index:03d}.dat"), "wb") as out:
            out.write(os.urandom(50_000))
    env = dict(os.environ, KACHERY_STORAGE_DIR=server_storage, KACHERY_CONFIG="/nonexistent")
    url = subprocess.run([tool("kachery-store"), tree], env=env, check=True, capture_output=True,
                         text=True).stdout.strip()
    shutil.rmtree(tree)
    return url


def timed(action):
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def read_all(path, block=1 << 20):
    with open(path, "rb", buffering=0) as file:
        while file.read(block):
            pass


def bench_sequential(scratch, server, url, size_mib, repeat):
    """A fresh mount reading the whole uncached file, alternating with
    kachery-load of it into an empty store (which goes first flips each pair);
    the median of the pairs' ratios."""
    def through_mount():
        mount = Mount(scratch, server.url)
        try:
            return timed(lambda: read_all(mount.path(url) + "/big.bin"))
        finally:
            mount.close()

    def load():
        storage = tempfile.mkdtemp(dir=scratch)
        env = dict(os.environ, KACHERY_STORAGE_DIR=storage, KACHERY_REMOTE=server.url,
                   KACHERY_CONFIG="/nonexistent")
        try:
            return timed(lambda: subprocess.run([tool("kachery-load"), url + "/big.bin"], env=env,
                                                check=True, stdout=subprocess.DEVNULL))
        finally:
            shutil.rmtree(storage)

    pairs = []
    for round_ in range(repeat):
        order = (through_mount, load) if round_ % 2 == 0 else (load, through_mount)
        times = {runner: runner() for runner in order}
        pairs.append((times[through_mount], times[load]))
        print(f"sequential pair {round_ + 1}: mount {times[through_mount]:.2f} s, "
              f"load {times[load]:.2f} s", file=sys.stderr)
    mount_time = statistics.median(pair[0] for pair in pairs)
    load_time = statistics.median(pair[1] for pair in pairs)
    ratio = statistics.median(load / mount for mount, load in pairs)
    return ["sequential read of uncached file: mount vs kachery-load (throughput), "
            f"median of {repeat} pairs", f"{size_mib / mount_time:.0f} MiB/s",
            f"{size_mib / load_time:.0f} MiB/s", f"{ratio:.2f}", "≥ 0.7"]


def bench_first_byte(scratch, server, url, size_mib):
    mount = Mount(scratch, server.url)
    offset = random.Random(1).randrange(size_mib << 20)
    try:
        def first_byte():
            with open(mount.path(url) + "/big.bin", "rb", buffering=0) as file:
                file.seek(offset)
                file.read(4096)
        mount_time = timed(first_byte)
    finally:
        mount.close()
    info = manifest_info(server, url)
    start = (offset // CHUNK) * CHUNK

    def curl_chunk():
        subprocess.run(["curl", "-s", "-o", "/dev/null", "-r", f"{start}-{start + CHUNK - 1}",
                        info["object"]], check=True)
        for manifest in (info["dir_manifest"], info["file_manifest"]):
            subprocess.run(["curl", "-s", "-o", "/dev/null", manifest], check=True)
    curl_time = timed(curl_chunk)
    return ["time to first byte at a random offset (fresh mount) vs curl of chunk + manifests",
            f"{mount_time * 1000:.0f} ms", f"{curl_time * 1000:.0f} ms",
            f"{mount_time / curl_time:.2f}", "≤ 2"]


def manifest_info(server, url):
    import json

    digest = url.split("://", 1)[1].split(".", 1)[0]

    def object_url(h):
        return f"{server.url}/sha1/{h[:2]}/{h[2:4]}/{h[4:6]}/{h}"
    manifest = json.load(urllib.request.urlopen(object_url(digest)))
    entry = manifest["files"]["big.bin"]
    return {"object": object_url(entry["sha1"]), "dir_manifest": object_url(digest),
            "file_manifest": object_url(entry["manifest"])}


def bench_small_files(scratch, server, url):
    mount = Mount(scratch, server.url)
    try:
        directory = mount.path(url) + "/small"
        seconds = timed(lambda: subprocess.run(f"cat {directory}/* > /dev/null", shell=True,
                                               check=True))
    finally:
        mount.close()
    rate = 600 * 50_000 / seconds / 1e6
    return ["cold cat of 600 small files (50 KB)", f"{rate:.1f} MB/s", "20 MB/s",
            f"{rate / 20:.2f}", "≥ 1"]


def bench_parallel(scratch, server, url):
    """m0 read alone, then m1..m8 read by 8 threads at once (all uncached)."""
    mount = Mount(scratch, server.url)
    try:
        base = mount.path(url) + "/medium"
        one = timed(lambda: read_all(f"{base}/m0.bin"))
        threads = [threading.Thread(target=read_all, args=(f"{base}/m{i}.bin",))
                   for i in range(1, 9)]

        def run_all():
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        eight = timed(run_all)
    finally:
        mount.close()
    single_rate = MEDIUM_MIB / one
    parallel_rate = 8 * MEDIUM_MIB / eight
    return ["8 parallel readers of different uncached files vs one reader (throughput)",
            f"{parallel_rate:.0f} MiB/s", f"{single_rate:.0f} MiB/s",
            f"{parallel_rate / single_rate:.2f}", "≥ 1.5"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=5, help="pairs of the sequential runs")
    parser.add_argument("--scratch", default="/var/tmp")
    parser.add_argument("--only", choices=("sequential", "first-byte", "small", "parallel"),
                        action="append", help="run only these measurements (repeatable)")
    args = parser.parse_args()
    chosen = args.only or ("sequential", "first-byte", "small", "parallel")
    scratch = tempfile.mkdtemp(prefix="kachery-lazy-", dir=args.scratch)
    server_storage = os.path.join(scratch, "server-storage")
    try:
        url = make_data(server_storage, scratch, args.size_mib)
        server = Server(server_storage)
        try:
            rows = []
            benches = {
                "sequential": lambda: bench_sequential(scratch, server, url, args.size_mib, args.repeat),
                "first-byte": lambda: bench_first_byte(scratch, server, url, args.size_mib),
                "small": lambda: bench_small_files(scratch, server, url),
                "parallel": lambda: bench_parallel(scratch, server, url),
            }
            for name in chosen:
                rows.append(benches[name]())
                print(rows[-1], file=sys.stderr)
        finally:
            server.stop()
        print(markdown_table(["measurement", "kachery", "baseline", "ratio", "target"], rows))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
