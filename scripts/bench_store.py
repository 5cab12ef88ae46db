#!/usr/bin/env python3
"""Benchmark of issue 2: kachery-store / kachery-cat against cp, openssl, cat.

Runs every measurement side by side (alternating, median of --repeat runs) and
prints a Markdown table of times and ratios. Usage:

    python3 scripts/bench_store.py [--size-mib 1024] [--files 10000] [--repeat 5]

Files are made in a scratch directory (default: a temp dir under /var/tmp, the
same file system as the store) and removed afterwards.
"""

import argparse
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
from benchlib import markdown_table, median_times, run_measured, tool  # noqa: E402


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


def bench_big_store(big, small, store, copy, env, repeat):
    runners = {
        "kachery-store": lambda: run_measured([tool("kachery-store"), big], env=env),
        "openssl sha1": lambda: run_measured(["openssl", "dgst", "-sha1", big]),
        "cp": lambda: run_measured(["cp", big, copy]),
        "cp+sync": lambda: run_measured(f"cp {big} {copy} && sync", shell=True),
    }
    result = median_times(runners, repeat, before_each=lambda name: (fresh(store), fresh(copy)))
    kachery, rss = result["kachery-store"]
    limit = max(result["openssl sha1"][0], result["cp"][0])
    rows = [["store 1 GiB file vs max(openssl sha1, cp)", f"{kachery:.2f}", f"{limit:.2f}",
             f"{kachery / limit:.2f}", "≤ 1.2", f"{rss:.0f}"]]
    durable = max(result["openssl sha1"][0], result["cp+sync"][0])
    rows.append(["  same, baseline cp+sync (both durable)", f"{kachery:.2f}", f"{durable:.2f}",
                 f"{kachery / durable:.2f}", "(info)", ""])
    return rows


def bench_small_store(big, small, store, copy, env, repeat):
    runners = {
        "kachery-store": lambda: run_measured([tool("kachery-store"), small], env=env),
        "cp -r": lambda: run_measured(["cp", "-r", small, copy]),
    }
    result = median_times(runners, repeat, before_each=lambda name: (fresh(store), fresh(copy)))
    kachery, rss = result["kachery-store"]
    base = result["cp -r"][0]
    return [["store dir of small files vs cp -r", f"{kachery:.2f}", f"{base:.2f}",
             f"{kachery / base:.2f}", "≤ 3", f"{rss:.0f}"]]


def bench_cat(big, small, store, copy, env, repeat):
    fresh(store)
    url = run_output([tool("kachery-store"), big], env)
    obj = run_output([tool("kachery-info"), "--json", url], env, json_key="path")
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
