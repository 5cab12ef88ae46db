#!/usr/bin/env python3
"""What verification costs: kachery-cat of a stored object (hashed while it
streams, exit 3 on a mismatch) against plain `cat` of the object file and
`sha1sum` of it, alternating in one run.

    python3 scripts/bench_verify.py [--size 1024] [--repeat 5]
"""

import argparse
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import markdown_table, median_times, run_measured, tool  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="MiB")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-verify-", dir="/var/tmp") as work:
        source = os.path.join(work, "f.bin")
        with open(source, "wb") as file:
            for _ in range(args.size):
                file.write(os.urandom(1 << 20))
        env = dict(os.environ, KACHERY_STORAGE_DIR=f"{work}/store", KACHERY_CONFIG="/nonexistent",
                   KACHERY_REMOTE="")
        url = subprocess.run([tool("kachery-store"), source], env=env, check=True,
                             capture_output=True, text=True).stdout.strip()
        digest = url.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0]
        obj = f"{work}/store/sha1/{digest[:2]}/{digest[2:4]}/{digest[4:6]}/{digest}"
        os.unlink(source)
        runners = {
            "cat object > /dev/null": lambda: run_measured(["cat", obj]),
            "kachery-cat URL > /dev/null (hashes while streaming)":
                lambda: run_measured([tool("kachery-cat"), url], env=env),
            "sha1sum object": lambda: run_measured(["sha1sum", obj]),
        }
        results = median_times(runners, args.repeat)
    base = results["cat object > /dev/null"][0]
    rows = [[name, f"{seconds:.2f}", f"{seconds / base:.2f}"] for name, (seconds, _) in results.items()]
    print(f"{args.size} MiB stored object, page cache warm, median of {args.repeat} alternations:\n")
    print(markdown_table(["reader", "seconds", "time vs cat"], rows))


if __name__ == "__main__":
    main()
