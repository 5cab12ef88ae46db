#!/usr/bin/env python3
"""Benchmark the kachery mount against native access and a pass-through floor.

Side by side in one run (issue 3), printed as a Markdown table:

- sequential read of a 1 GiB stored file through the mount vs native ``cat``
  of the object file, with a cold page cache and repeated;
- a 100,000-file snapshot in 100 directories: ``find -type f`` on a fresh
  mount vs native ``find`` (cold); ``ls -lR`` on a fresh mount vs the floor;
  second runs vs native ``ls -lR`` and vs the floor's second ``find``;
- daemon RSS after browsing, and the time from ``kachery-mount`` to a usable mount.

The floor is a minimal pass-through file system over the original tree on the
same binding (mfusepy on libfuse 3) with the same mount options: the cost of
the binding and the kernel round trips, so ratios against it show what
kachery's own code adds. It is defined in this file (``--serve-floor``).

Cold means ``sync; echo 3 > /proc/sys/vm/drop_caches`` (needs root). Run with
the shared benchmark lock, e.g.::

    flock /tmp/kachery-bench.lock python scripts/bench_mount.py

Test data is created once under --workdir (about 1.5 GB) and reused.
"""

import argparse
import collections
import ctypes.util
import json
import os
import stat
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import tool, unmount  # noqa: E402

GIB = 1 << 30


# ----------------------------------------------------------------- test data

def prepare(workdir, files, dirs):
    """Create and store the 1 GiB file and the many-file tree once; return their hashes."""
    state_path = os.path.join(workdir, "state.json")
    if os.path.exists(state_path):
        with open(state_path) as state:
            return json.load(state)
    from kachery_core.client import Kachery
    from kachery_core.config import Config

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


def kachery_mount(workdir):
    mountpoint = os.path.join(workdir, "mnt")
    command = [tool("kachery-mount"), mountpoint, "--storage-dir", os.path.join(workdir, "storage")]
    return Daemon(command, mountpoint)


def floor_mount(workdir):
    mountpoint = os.path.join(workdir, "floor")
    command = [sys.executable, os.path.abspath(__file__), "--serve-floor",
               os.path.join(workdir, "tree"), mountpoint]
    return Daemon(command, mountpoint)


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


def usable_after(workdir, digest):
    """Seconds from starting kachery-mount until (1) the mount answers, (2) the
    100,000-file snapshot can be listed (its manifest read, verified, parsed)."""
    mountpoint = os.path.join(workdir, "mnt")
    os.makedirs(mountpoint, exist_ok=True)
    started = time.perf_counter()
    process = subprocess.Popen([tool("kachery-mount"), mountpoint, "--storage-dir",
                                os.path.join(workdir, "storage")], stdout=subprocess.DEVNULL)
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


def bench_sequential(workdir, state, results, native_first=False):
    """cat of the 1 GiB file: cold and repeated, mount vs native object file
    (which goes first alternates between runs)."""
    def on_mount():
        mount = kachery_mount(workdir)
        try:
            path = os.path.join(mount.mountpoint, "sha1", state["big"])
            drop_caches()
            results["read_cold_mount"].append(timed("cat", path))
            results["read_warm_mount"].append(timed("cat", path))
        finally:
            mount.stop()

    def native():
        drop_caches()
        results["read_cold_native"].append(timed("cat", state["big_object"]))
        results["read_warm_native"].append(timed("cat", state["big_object"]))

    for step in ((native, on_mount) if native_first else (on_mount, native)):
        step()


def bench_tree_kachery(workdir, state, results):
    """find, then ls -lR, each on a fresh mount and again; RSS after browsing."""
    mount = kachery_mount(workdir)
    try:
        snap = os.path.join(mount.mountpoint, "sha1dir", state["tree"])
        drop_caches()
        results["find_fresh_mount"].append(timed("find", snap, "-type", "f"))
        results["find_second_mount"].append(timed("find", snap, "-type", "f"))
    finally:
        mount.stop()
    mount = kachery_mount(workdir)
    try:
        snap = os.path.join(mount.mountpoint, "sha1dir", state["tree"])
        drop_caches()
        results["ls_fresh_mount"].append(timed("ls", "-lR", snap))
        results["ls_second_mount"].append(timed("ls", "-lR", snap))
        timed("find", snap, "-type", "f")
        results["rss_mb"].append(mount.rss_mb())
    finally:
        mount.stop()


def bench_tree_floor(workdir, results):
    for action, key in ((("find", "-type", "f"), "find"), (("ls", "-lR"), "ls")):
        floor = floor_mount(workdir)
        try:
            drop_caches()
            command = (action[0], floor.mountpoint, *action[1:])
            results[f"{key}_fresh_floor"].append(timed(*command))
            results[f"{key}_second_floor"].append(timed(*command))
        finally:
            floor.stop()


def bench_tree_native(workdir, results):
    tree = os.path.join(workdir, "tree")
    drop_caches()
    results["find_cold_native"].append(timed("find", tree, "-type", "f"))
    results["find_second_native"].append(timed("find", tree, "-type", "f"))
    timed("ls", "-lR", tree)
    results["ls_second_native"].append(timed("ls", "-lR", tree))


# ------------------------------------------------------------------- report

ROWS = [
    # label, ours, reference, ratio kind, target, reference label
    ("1 GiB sequential read, cold page cache", "read_cold_mount", "read_cold_native",
     "throughput", 0.5, "native `cat` of the object file"),
    ("1 GiB sequential read, repeated", "read_warm_mount", "read_warm_native",
     "throughput", 0.9, "native `cat` of the object file"),
    ("`find -type f`, fresh mount (cold cache)", "find_fresh_mount", "find_cold_native",
     "time", 10, "native `find`, cold cache"),
    ("`ls -lR`, fresh mount", "ls_fresh_mount", "ls_fresh_floor",
     "time", 1.2, "floor FS, fresh mount"),
    ("`ls -lR`, second run", "ls_second_mount", "ls_second_native",
     "time", 1.5, "native `ls -lR`"),
    ("`find -type f`, second run", "find_second_mount", "find_second_floor",
     "time", 1.2, "floor FS, second run"),
]


def report(results, cold, repeat):
    median = {key: statistics.median(values) for key, values in results.items() if values}
    lines = ["| Measurement | kachery | reference | ratio | target | met |",
             "|---|---|---|---|---|---|"]
    for label, ours, theirs, kind, target, ref_label in ROWS:
        a, b = median[ours], median[theirs]
        ratio = b / a if kind == "throughput" else a / b
        met = ratio >= target if kind == "throughput" else ratio <= target
        sign = "≥" if kind == "throughput" else "≤"
        lines.append(f"| {label} | {a:.3f} s | {b:.3f} s ({ref_label}) | {ratio:.2f}× "
                     f"| {sign} {target}× | {'yes' if met else 'NO'} |")
    rss, usable = median["rss_mb"], median["usable_s"]
    lines.append(f"| Daemon RSS after browsing 100,000 files | {rss:.0f} MB | – | – | ≤ 150 MB "
                 f"| {'yes' if rss <= 150 else 'NO'} |")
    lines.append(f"| `kachery-mount` → mount answers (`ls <mnt>`) | {usable:.3f} s | – | – | < 1 s "
                 f"| {'yes' if usable < 1 else 'NO'} |")
    first = median["first_listing_s"]
    lines.append(f"| `kachery-mount` → first listing of the 100,000-file snapshot | {first:.3f} s "
                 f"| – | – | (< 1 s) | {'yes' if first < 1 else 'NO'} |")
    note = "" if cold else "\n(drop_caches not permitted: 'cold' rows ran with warm caches)"
    extra = (f"\nMedians of {repeat} runs. Floor: find {median['find_fresh_floor']:.3f} s fresh; "
             f"native find second run {median['find_second_native']:.3f} s.")
    return "\n".join(lines) + extra + note


def run(args):
    workdir = os.path.abspath(args.workdir)
    state = prepare(workdir, args.files, args.dirs)
    cold = drop_caches()
    warm_up_host(workdir, state)
    results = collections.defaultdict(list)
    for attempt in range(args.repeat):
        print(f"run {attempt + 1}/{args.repeat} ...", file=sys.stderr)
        bench_sequential(workdir, state, results, native_first=attempt % 2 == 1)
        bench_tree_kachery(workdir, state, results)
        bench_tree_floor(workdir, results)
        bench_tree_native(workdir, results)
        answers, listed = usable_after(workdir, state["tree"])
        results["usable_s"].append(answers)
        results["first_listing_s"].append(listed)
    print(report(results, cold, args.repeat))


# -------------------------------------------------------------- the floor

def serve_floor(source, mountpoint):
    """A minimal read-only pass-through FS on mfusepy, with kachery's mount options."""
    if not os.environ.get("FUSE_LIBRARY_PATH"):
        os.environ["FUSE_LIBRARY_PATH"] = ctypes.util.find_library("fuse3")
    import mfusepy

    from kachery_fs.fuse_adapter import mount_options

    class Floor(mfusepy.Operations):
        use_ns = True

        def getattr(self, path, fh=None):
            st = os.lstat(source + path)
            return {"st_mode": st.st_mode, "st_ino": st.st_ino, "st_nlink": st.st_nlink,
                    "st_uid": st.st_uid, "st_gid": st.st_gid, "st_size": st.st_size,
                    "st_atime": st.st_atime_ns, "st_mtime": st.st_mtime_ns,
                    "st_ctime": st.st_ctime_ns}

        def readdir(self, path, fh):
            # Names with inode and type from the directory itself (scandir: no
            # stat per entry); with use_ino, libfuse needs the inode numbers.
            own = os.lstat(source + path)
            dots = [(name, {"st_ino": own.st_ino, "st_mode": own.st_mode}, 0) for name in (".", "..")]
            return dots + [(entry.name, {"st_ino": entry.inode(), "st_mode": _dtype_mode(entry)}, 0)
                           for entry in os.scandir(source + path)]

        def open(self, path, flags):
            return os.open(source + path, os.O_RDONLY)

        def read(self, path, size, offset, fh):
            return os.pread(fh, size, offset)

        def release(self, path, fh):
            os.close(fh)
            return 0

    options = dict(mount_options(), fsname="floor", subtype="floor")
    mfusepy.FUSE(Floor(), mountpoint, foreground=True, **options)


def _dtype_mode(entry):
    return stat.S_IFDIR if entry.is_dir(follow_symlinks=False) else stat.S_IFREG


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="/tmp/kachery-bench")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--dirs", type=int, default=100)
    parser.add_argument("--serve-floor", nargs=2, metavar=("SOURCE", "MOUNTPOINT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_floor:
        serve_floor(*args.serve_floor)
    else:
        run(args)


if __name__ == "__main__":
    main()
