#!/usr/bin/env python3
"""Benchmark the kachery mount against native reads of the same files, side by side.

Every pair alternates in one run (which side goes first flips each round),
and the table reports median ratios (issue 12):

- the 1 GiB stored object through the mount vs native ``cat`` of its object
  file: cold page cache, repeated, and read through ``mmap`` one page at a
  time (what numpy.memmap, HDF5 and sqlite do), cold;
- a 100,000-file snapshot in 100 directories: ``find -type f`` on a fresh
  mount (cold caches) vs native cold ``find``; repeated ``find`` and repeated
  ``ls -lR`` vs native;
- daemon RSS after browsing the 100,000 entries, and the time from
  ``kachery-mount`` to the first answer.

``--fuse kernel`` (default) or ``--fuse libfuse`` picks the backend measured.
Cold means ``sync; echo 3 > /proc/sys/vm/drop_caches`` (needs root). Run with
the shared benchmark lock, e.g.::

    flock /tmp/kachery-bench.lock python scripts/bench_mount.py --fuse kernel

Test data is created once under --workdir (about 1.5 GB) and reused.
"""

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import tool, unmount  # noqa: E402

GIB = 1 << 30
#: Touch one byte per page of a mapping (each a page fault), as memory-mapped readers do.
MMAP_READER = """
import mmap, sys
with open(sys.argv[1], "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as view:
    total = 0
    for offset in range(0, len(view), 4096):
        total += view[offset]
"""

# ----------------------------------------------------------------- test data

def prepare(workdir, files, dirs):
    """Create and store the 1 GiB file and the many-file tree once; return their hashes."""
    state_path = os.path.join(workdir, "state.json")
    if os.path.exists(state_path):
        with open(state_path) as state:
            return json.load(state)
    from kachery_core.client import Kachery
    from kachery_core.settings import Config

    os.makedirs(workdir, exist_ok=True)
    kachery = Kachery(Config(storage_dir=os.path.join(workdir, "storage")))
    big = _make_big_file(os.path.join(workdir, "big.bin"))
    tree = _make_tree(os.path.join(workdir, "tree"), files, dirs)
    state = {"big": kachery.store_file(big).digest, "tree": kachery.store_dir(tree)[0]}
    state["big_object"] = kachery.store.object_path("sha1", state["big"])
    with open(state_path, "w") as out:
        json.dump(state, out)
    return state


def _make_big_file(path):
    block = os.urandom(1 << 20)
    with open(path, "wb") as out:
        for index in range(GIB // len(block)):
            out.write(index.to_bytes(8, "little") + block[8:])
    return path


def _make_tree(root, files, dirs):
    per_dir = files // dirs
    for d in range(dirs):
        directory = os.path.join(root, f"dir{d:03d}")
        os.makedirs(directory)
        for f in range(per_dir):
            with open(os.path.join(directory, f"file{f:05d}.txt"), "w") as out:
                out.write(f"{d} {f}\n")
    return root


# ------------------------------------------------------------------- mounts

class Daemon:
    """A mount process (kachery or the floor) in the foreground."""

    def __init__(self, command, mountpoint):
        os.makedirs(mountpoint, exist_ok=True)
        self.mountpoint = mountpoint
        started = time.perf_counter()
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        while not os.path.ismount(mountpoint):
            if self.process.poll() is not None:
                raise SystemExit(f"mount failed: {command}")
            time.sleep(0.002)
        self.mounted_after = time.perf_counter() - started

    def rss_mb(self):
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self):
        unmount(self.mountpoint, self.process)


def mount_command(workdir, backend):
    return [tool("kachery-mount"), os.path.join(workdir, "mnt"),
            "--storage-dir", os.path.join(workdir, "storage"), "--fuse", backend]


def kachery_mount(workdir, backend):
    return Daemon(mount_command(workdir, backend), os.path.join(workdir, "mnt"))


# ---------------------------------------------------------------- measuring

def drop_caches():
    """Empty the page, dentry and inode caches (root only); False when not allowed."""
    subprocess.run(["sync"])
    try:
        with open("/proc/sys/vm/drop_caches", "w") as knob:
            knob.write("3")
        return True
    except OSError:
        return False


def timed(*command):
    started = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def usable_after(workdir, digest, backend):
    """Seconds from starting kachery-mount until (1) the mount answers, (2) the
    100,000-file snapshot can be listed (its manifest read, verified, parsed)."""
    mountpoint = os.path.join(workdir, "mnt")
    os.makedirs(mountpoint, exist_ok=True)
    started = time.perf_counter()
    process = subprocess.Popen(mount_command(workdir, backend), stdout=subprocess.DEVNULL)
    snapshot = os.path.join(mountpoint, "sha1dir", digest)
    answers = _wait(lambda: "sha1dir" in os.listdir(mountpoint), process) - started
    listed = _wait(lambda: os.listdir(snapshot), process) - started
    subprocess.run(["fusermount3", "-u", mountpoint], capture_output=True)
    process.wait(timeout=20)
    return answers, listed


def _wait(condition, process):
    """The time at which ``condition()`` first holds (OSError counts as not yet)."""
    while True:
        try:
            if condition():
                return time.perf_counter()
        except OSError:
            pass
        if process.poll() is not None:
            raise SystemExit("kachery-mount exited")
        time.sleep(0.002)


# ------------------------------------------------------------- benchmarks

def object_path(workdir, digest):
    """The file of a sha1 object in the benchmark's store."""
    return os.path.join(workdir, "storage", "sha1", digest[0:2], digest[2:4], digest[4:6], digest)


def warm_up_host(workdir, state):
    """Read everything the cold runs read once, uncounted.

    "Cold" empties this machine's page cache, but a VM's disk has caches of
    its own below it: the first read of a file after a while is much slower
    than any later "cold" one (1.5 s vs 0.8 s for the 1 GiB file here), and
    would penalise whichever side happened to run first.
    """
    drop_caches()
    for command in (["cat", state["big_object"]], ["find", os.path.join(workdir, "tree")],
                    ["cat", object_path(workdir, state["tree"])]):
        subprocess.run(command, stdout=subprocess.DEVNULL, check=True)


def pair(results, name, ours, native, native_first):
    """Run one measurement on each side, in the order given; record both."""
    for side, runner in ((("native", native), ("mount", ours)) if native_first
                         else (("mount", ours), ("native", native))):
        results[f"{name}_{side}"].append(runner())


def cold(command):
    def run():
        drop_caches()
        return timed(*command)
    return run


def bench_object(workdir, state, backend, results, native_first):
    """The 1 GiB object: cold cat, repeated cat, cold mmap page by page."""
    mount = kachery_mount(workdir, backend)
    try:
        ours = os.path.join(mount.mountpoint, "sha1", state["big"])
        theirs = state["big_object"]
        pair(results, "cat_cold", cold(["cat", ours]), cold(["cat", theirs]), native_first)
        timed("cat", ours)
        timed("cat", theirs)
        pair(results, "cat_warm", lambda: timed("cat", ours), lambda: timed("cat", theirs),
             native_first)
        reader = [sys.executable, "-c", MMAP_READER]
        pair(results, "mmap_cold", cold(reader + [ours]), cold(reader + [theirs]), native_first)
    finally:
        mount.stop()


def bench_tree(workdir, state, backend, results, native_first):
    """find on a fresh mount (cold) vs cold native; repeated find and ls -lR; RSS."""
    tree = os.path.join(workdir, "tree")
    for step in ("native", "mount") if native_first else ("mount", "native"):
        if step == "native":
            drop_caches()
            results["find_cold_native"].append(timed("find", tree, "-type", "f"))
            results["find_again_native"].append(timed("find", tree, "-type", "f"))
            timed("ls", "-lR", tree)
            results["ls_again_native"].append(timed("ls", "-lR", tree))
            continue
        mount = kachery_mount(workdir, backend)
        try:
            snap = os.path.join(mount.mountpoint, "sha1dir", state["tree"])
            drop_caches()
            results["find_cold_mount"].append(timed("find", snap, "-type", "f"))
            results["find_again_mount"].append(timed("find", snap, "-type", "f"))
            timed("ls", "-lR", snap)
            results["ls_again_mount"].append(timed("ls", "-lR", snap))
            results["rss_mb"].append(mount.rss_mb())
        finally:
            mount.stop()


# ------------------------------------------------------------------- report

ROWS = [
    # label, measurement, ratio kind, target
    ("1 GiB `cat`, cold page cache", "cat_cold", "throughput", 0.9),
    ("1 GiB `cat`, repeated", "cat_warm", "throughput", 0.95),
    ("1 GiB through `mmap`, page by page, cold", "mmap_cold", "throughput", 0.9),
    ("`find -type f` of 100,000 entries, fresh mount, cold caches", "find_cold", "time", 4),
    ("`find -type f`, repeated", "find_again", "time", 1.5),
    ("`ls -lR`, repeated", "ls_again", "time", 1.1),
]


def report(results, is_cold, repeat, backend):
    median = {key: statistics.median(values) for key, values in results.items() if values}
    lines = [f"Backend `--fuse {backend}`; {repeat} alternating rounds: median times, and the "
             "median of the rounds' ratios.", "",
             "| Measurement | mount | native | ratio | target | met |",
             "|---|---|---|---|---|---|"]
    for label, name, kind, target in ROWS:
        a, b = median[f"{name}_mount"], median[f"{name}_native"]
        pairs = zip(results[f"{name}_mount"], results[f"{name}_native"])
        ratio = statistics.median(native / ours if kind == "throughput" else ours / native
                                  for ours, native in pairs)
        met = ratio >= target if kind == "throughput" else ratio <= target
        sign = "≥" if kind == "throughput" else "≤"
        lines.append(f"| {label} | {a:.3f} s | {b:.3f} s | {ratio:.2f}× "
                     f"| {sign} {target}× | {'yes' if met else 'NO'} |")
    rss, usable = median["rss_mb"], median["usable_s"]
    lines.append(f"| Daemon RSS after browsing 100,000 entries | {rss:.0f} MB | – | – | ≤ 150 MB "
                 f"| {'yes' if rss <= 150 else 'NO'} |")
    lines.append(f"| `kachery-mount` → first answer (`ls <mnt>`) | {usable:.3f} s | – | – | < 0.5 s "
                 f"| {'yes' if usable < 0.5 else 'NO'} |")
    first = median["first_listing_s"]
    lines.append(f"| `kachery-mount` → first listing of the 100,000-file snapshot | {first:.3f} s "
                 f"| – | – | – | – |")
    note = "" if is_cold else "\n(drop_caches not permitted: 'cold' rows ran with warm caches)"
    return "\n".join(lines) + note


def run(args):
    workdir = os.path.abspath(args.workdir)
    state = prepare(workdir, args.files, args.dirs)
    is_cold = drop_caches()
    warm_up_host(workdir, state)
    results = collections.defaultdict(list)
    for attempt in range(args.repeat):
        print(f"round {attempt + 1}/{args.repeat} ...", file=sys.stderr)
        native_first = attempt % 2 == 1
        bench_object(workdir, state, args.fuse, results, native_first)
        bench_tree(workdir, state, args.fuse, results, native_first)
        answers, listed = usable_after(workdir, state["tree"], args.fuse)
        results["usable_s"].append(answers)
        results["first_listing_s"].append(listed)
    print(report(results, is_cold, args.repeat, args.fuse))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="/tmp/kachery-bench")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--dirs", type=int, default=100)
    parser.add_argument("--fuse", choices=("kernel", "libfuse"), default="kernel")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
