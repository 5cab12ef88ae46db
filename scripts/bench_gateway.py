#!/usr/bin/env python3
"""Benchmark of issue 13: fsspec and the web gateway against their baselines.

Both sides of each pair run alternately in one invocation (--repeat pairs);
the ratio reported is the median of the per-pair ratios. Heavy: run it under
the shared benchmark lock,

    flock /tmp/kachery-bench.lock python3 scripts/bench_gateway.py

Measurements:
  fsspec     fsspec cat_file of a 1 GiB object in the local store (in the page
             cache) vs open().read() of the object file     target >= 0.8x
  gateway    GET /sha1dir/<h>.<label>/big.bin of the same 1 GiB file from
             kachery-server vs nginx serving the object file (curl -o /dev/null)
                                                             target >= 0.7x
  listing    the HTML page of a 10,000-entry directory: first request (the
             manifest parsed) and median of the next ones     target < 0.5 s
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from bench_remote import (  # noqa: E402
    MIB,
    kachery_server,
    make_big_file,
    nginx_server,
    object_rel,
)
from benchlib import markdown_table, tool  # noqa: E402


def store(storage, path):
    env = dict(os.environ, KACHERY_STORAGE_DIR=storage, KACHERY_CONFIG=os.devnull)
    return subprocess.run([tool("kachery-store"), path], env=env, check=True,
                          capture_output=True, text=True).stdout.strip()


def pairs(ours, theirs, repeat):
    """Alternate ``ours()`` and ``theirs()`` (each returns seconds); return
    (median ours, median theirs, median of per-pair theirs/ours)."""
    mine, baseline, ratios = [], [], []
    for _ in range(repeat):
        a, b = ours(), theirs()
        mine.append(a), baseline.append(b), ratios.append(b / a)
    return statistics.median(mine), statistics.median(baseline), statistics.median(ratios)


def timed(function):
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def bench_fsspec(storage, digest, size, repeat):
    import fsspec

    fs = fsspec.filesystem("sha1", storage_dir=storage)
    path = os.path.join(storage, object_rel(digest))

    def ours():
        return timed(lambda: len(fs.cat_file(digest)) == size or sys.exit("short read"))

    def theirs():
        def read():
            with open(path, "rb") as file:
                return len(file.read()) == size or sys.exit("short read")
        return timed(read)

    theirs()  # both read from the page cache
    mine, baseline, ratio = pairs(ours, theirs, repeat)
    return [("fsspec cat_file of a cached 1 GiB object vs open().read()",
             f"{size / mine / MIB:.0f} MiB/s", f"{size / baseline / MIB:.0f} MiB/s",
             f"{ratio:.2f}x", ">= 0.8x", ratio >= 0.8)]


def curl_seconds(url):
    started = time.perf_counter()
    subprocess.run(["curl", "-sf", "-o", "/dev/null", url], check=True)
    return time.perf_counter() - started


def bench_gateway_get(server, nginx, snapshot, digest, size, repeat):
    ours_url = f"{server.url}/sha1dir/{snapshot.split('://', 1)[1]}/big.bin"
    theirs_url = f"{nginx.url}/{object_rel(digest)}"
    curl_seconds(theirs_url)
    mine, baseline, ratio = pairs(lambda: curl_seconds(ours_url), lambda: curl_seconds(theirs_url),
                                  repeat)
    return [("gateway GET of a 1 GiB file vs nginx (curl -o /dev/null)",
             f"{size / mine / MIB:.0f} MiB/s", f"{size / baseline / MIB:.0f} MiB/s",
             f"{ratio:.2f}x", ">= 0.7x", ratio >= 0.7)]


def bench_listing(server, snapshot, repeat):
    page = f"{server.url}/sha1dir/{snapshot.split('://', 1)[1]}/many/"
    first = curl_seconds(page)
    later = statistics.median(curl_seconds(page) for _ in range(repeat))
    size = len(subprocess.run(["curl", "-sf", page], check=True, capture_output=True).stdout)
    return [(f"listing page of a 10,000-entry directory, first request ({size / MIB:.1f} MiB HTML)",
             f"{first:.3f} s", "-", "-", "< 0.5 s", first < 0.5),
            ("listing page of a 10,000-entry directory, later requests (median)",
             f"{later:.3f} s", "-", "-", "< 0.5 s", later < 0.5)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--entries", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--scratch", default="/var/tmp")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(dir=args.scratch, prefix="kachery-bench-gateway.") as scratch:
        tree = os.path.join(scratch, "share")
        os.makedirs(os.path.join(tree, "many"))
        big = os.path.join(tree, "big.bin")
        digest = make_big_file(big, args.size_mib)
        size = os.path.getsize(big)
        for index in range(args.entries):
            with open(os.path.join(tree, "many", f"entry {index:05d}.txt"), "w") as file:
                file.write(f"entry {index}\n")
        storage = os.path.join(scratch, "storage")
        snapshot = store(storage, tree)
        rows += bench_fsspec(storage, digest, size, args.repeat)
        server, _ = kachery_server(storage, scratch)
        with server, nginx_server(storage, scratch) as nginx:
            rows += bench_gateway_get(server, nginx, snapshot, digest, size, args.repeat)
            rows += bench_listing(server, snapshot, args.repeat)
    header = ["measurement", "kachery", "baseline", "ratio", "target", "met"]
    print(markdown_table(header, [(*row[:5], "yes" if row[5] else "NO") for row in rows]))


if __name__ == "__main__":
    main()
