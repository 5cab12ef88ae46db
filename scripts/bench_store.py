#!/usr/bin/env python3
"""Benchmark of issues 2 and 15: kachery-store / kachery-cat against cp, openssl, cat.

Runs every measurement side by side (alternating, median of --repeat runs) and
prints a Markdown table of times and ratios. Usage:

    python3 scripts/bench_store.py [--size-mib 1024] [--files 10000] [--repeat 5]

Files are made in a scratch directory (default: a temp dir under /var/tmp, the
same file system as the store) and removed afterwards.

The stores are compared with durable copies (`cp F D && sync D`, `cp -r &&
sync`), as SPEC §2 makes kachery-store durable. Before every timed run the
outputs of the previous one are deleted and `sync` runs (untimed): on this
VM's disk (ext4 mounted with `discard`) a deleted 1 GiB file is discarded at
the next journal commit, and whichever run came next paid for it inside its
own flush.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
from benchlib import markdown_table, median_times, run_measured, tool  # noqa: E402

#: The least a store of a large file can cost in Python on this machine:
#: start the interpreter, then hash every byte twice (the whole file and its
#: 4 MiB chunks, SPEC §4) on two threads, each reading the cached file into
#: its own small buffer, which hashes faster than one shared buffer. No copy,
#: no kachery import.
FLOOR = """
import hashlib, sys, threading
def whole():
    h = hashlib.sha1(); b = bytearray(1 << 20); v = memoryview(b)
    with open(sys.argv[1], "rb", buffering=0) as f:
        while n := f.readinto(b):
            h.update(v[:n])
def chunks():
    b = bytearray(4 << 20); v = memoryview(b)
    with open(sys.argv[1], "rb", buffering=0) as f:
        while n := f.readinto(b):
            hashlib.sha1(v[:n]).hexdigest()
threads = [threading.Thread(target=whole), threading.Thread(target=chunks)]
[t.start() for t in threads]; [t.join() for t in threads]
"""


def make_inputs(scratch, size_mib, files):
    big = os.path.join(scratch, "big.bin")
    with open(big, "wb") as out:
        for _ in range(size_mib):
            out.write(os.urandom(1 << 20))
    small = os.path.join(scratch, "small")
    for index in range(files):
        sub = os.path.join(small, f"d{index % 100:03d}")
        os.makedirs(sub, exist_ok=True)
        with open(os.path.join(sub, f"f{index:05d}.txt"), "wb") as out:
            out.write(os.urandom(64 + index % 2000))
    return big, small


def fresh(path):
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--files", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--scratch", default="/var/tmp")
    args = parser.parse_args()
    scratch = tempfile.mkdtemp(prefix="kachery-bench-", dir=args.scratch)
    try:
        print(run_all(scratch, args))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run_all(scratch, args):
    big, small = make_inputs(scratch, args.size_mib, args.files)
    store = os.path.join(scratch, "store")
    env = dict(os.environ, KACHERY_STORAGE_DIR=store, KACHERY_CONFIG="/nonexistent")
    copy = os.path.join(scratch, "copy")
    rows = []
    for bench in (bench_big_store, bench_small_store, bench_cat, bench_startup):
        rows += bench(big, small, store, copy, env, args.repeat)
        print(rows[-1], file=sys.stderr)
    header = ["measurement", "kachery (s)", "baseline (s)", "ratio", "target", "peak RSS (MB)"]
    return markdown_table(header, rows)


def settle(store, copy):
    """Delete the previous run's outputs and let the disk finish with them."""
    fresh(store)
    fresh(copy)
    subprocess.run(["sync"], check=True)


def alternate(runners, repeat, before_each):
    """Run each named runner ``repeat`` times, alternating; return
    name -> (sorted seconds, max MB)."""
    times = {name: [] for name in runners}
    memory = {name: 0.0 for name in runners}
    for _ in range(repeat):
        for name, runner in runners.items():
            before_each()
            seconds, megabytes = runner()
            times[name].append(seconds)
            memory[name] = max(memory[name], megabytes)
    return {name: (sorted(times[name]), memory[name]) for name in runners}


def spread(seconds):
    return f"{statistics.median(seconds):.2f} ({seconds[0]:.2f}–{seconds[-1]:.2f})"


def bench_big_store(big, small, store, copy, env, repeat):
    runners = {
        "kachery-store": lambda: run_measured([tool("kachery-store"), big], env=env),
        "cp && sync": lambda: run_measured(["sh", "-c", 'cp "$1" "$2" && sync "$2"', "sh", big, copy]),
        "openssl sha1": lambda: run_measured(["openssl", "dgst", "-sha1", big]),
        "floor": lambda: run_measured([sys.executable, "-c", FLOOR, big]),
    }
    result = alternate(runners, repeat, before_each=lambda: settle(store, copy))
    median = {name: statistics.median(times) for name, (times, _) in result.items()}
    limit = max(median["cp && sync"], median["openssl sha1"])
    kachery, rss = result["kachery-store"]
    floor = result["floor"][0]
    return [
        ["store 1 GiB file vs max(`cp F D && sync D`, `openssl dgst -sha1 F`)", spread(kachery),
         f"{limit:.2f} (cp && sync {spread(result['cp && sync'][0])}, openssl {spread(result['openssl sha1'][0])})",
         f"{median['kachery-store'] / limit:.2f}", "≤ 1.2", f"{rss:.0f}"],
        ["  floor: python start + sha1 of file and of chunks on 2 threads, no copy", spread(floor),
         f"{limit:.2f}", f"{median['floor'] / limit:.2f}", "(info)", ""],
        ["  store vs floor", f"{median['kachery-store']:.2f}", f"{median['floor']:.2f}",
         f"{median['kachery-store'] / median['floor']:.2f}", "(info)", ""],
    ]


def bench_small_store(big, small, store, copy, env, repeat):
    runners = {
        "kachery-store": lambda: run_measured([tool("kachery-store"), small], env=env),
        "cp -r && sync": lambda: run_measured(["sh", "-c", 'cp -r "$1" "$2" && sync', "sh", small, copy]),
    }
    result = alternate(runners, repeat, before_each=lambda: settle(store, copy))
    kachery, rss = result["kachery-store"]
    base = result["cp -r && sync"][0]
    ratio = statistics.median(kachery) / statistics.median(base)
    count = sum(len(names) for _, _, names in os.walk(small))
    return [[f"store dir of {count:,} small files vs `cp -r && sync`", spread(kachery), spread(base),
             f"{ratio:.2f}", "≤ 2", f"{rss:.0f}"]]


def bench_cat(big, small, store, copy, env, repeat):
    fresh(store)
    url = run_output([tool("kachery-store"), big], env)
    obj = run_output([tool("kachery-info"), "--json", url], env, json_key="path")
    # The store wrote the object around the page cache: read it once, so that
    # neither side pays for the first read from the disk.
    run_measured(["cat", obj])
    runners = {
        "kachery-cat": lambda: run_measured(f"{tool('kachery-cat')} '{url}' | wc -c", shell=True, env=env),
        "cat": lambda: run_measured(f"cat {obj} | wc -c", shell=True),
    }
    result = median_times(runners, repeat)
    kachery, _ = result["kachery-cat"]
    base = result["cat"][0]
    _, rss = run_measured([tool("kachery-cat"), url], env=env)
    return [["`kachery-cat \\| wc -c` vs `cat \\| wc -c`", f"{kachery:.2f}", f"{base:.2f}",
             f"{kachery / base:.2f}", "≤ 1.3", f"{rss:.0f}"]]


def bench_startup(big, small, store, copy, env, repeat):
    sample = os.path.join(small, "d000", "f00000.txt")
    url = run_output([tool("kachery-store"), sample], env)
    rows = []
    for command in ([tool("kachery-store"), sample], [tool("kachery-cat"), url], [tool("kachery-info"), url],
                    [tool("kachery-ls"), run_output([tool("kachery-store"), os.path.dirname(sample)], env)]):
        result = median_times({"cmd": lambda c=command: run_measured(c, env=env)}, repeat)
        seconds, rss = result["cmd"]
        rows.append([f"start-up: {os.path.basename(command[0])} (small input)", f"{seconds:.3f}", "", "",
                     "< 0.25 s", f"{rss:.0f}"])
    return rows


def run_output(command, env, json_key=None):
    import json
    import subprocess

    text = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(text)[json_key] if json_key else text.strip()


if __name__ == "__main__":
    main()
