"""Helpers for the mount tests: a realistic source tree and a real mount process.

:class:`Mount` starts ``kachery-mount`` in the foreground as a subprocess,
waits for the mount, and always unmounts and stops the process on close,
even when the test failed (a stale mount is detached lazily).
"""

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from kachery_core.manifest import DirEntry
from kachery_fs.mount import is_stale  # noqa: F401  (also used by the tests)

#: Size of the large file in the test tree (the issue's 200 MB, scaled down for runtime).
LARGE_FILE_SIZE = 50 * 1024 * 1024
SMALL_FILES = 10_000
MOUNT_TIMEOUT = 15.0

needs_fuse = pytest.mark.skipif(
    not (os.path.exists("/dev/fuse") and shutil.which("fusermount3")),
    reason="needs /dev/fuse and fusermount3",
)


def command_path(name):
    """The installed console script next to the running interpreter."""
    candidate = os.path.join(os.path.dirname(sys.executable), name)
    return candidate if os.path.exists(candidate) else name


# ----------------------------------------------------------------- the tree

def make_tree(root, large_size=LARGE_FILE_SIZE, small_files=SMALL_FILES):
    """Build a directory tree with the shapes the issue lists; return ``root``."""
    os.makedirs(os.path.join(root, "nested", "deeper", "deepest"))
    _write(root, "hello.txt", b"hello world\nneedle in a haystack\n")
    _write(root, "empty.bin", b"")
    _write(root, "nested/deeper/deepest/leaf.txt", b"a leaf\nneedle\n")
    _write(root, "nested/empty-too", b"")
    _write(root, "ünïcødé ✓ name.txt", "grüße, 世界\n".encode())
    os.makedirs(os.path.join(root, "dír with späces"))
    _write(root, "dír with späces/файл.txt", b"cyrillic name\n")
    _write_large(os.path.join(root, "large.bin"), large_size)
    _write_npy(os.path.join(root, "array.npy"))
    _write_sqlite(os.path.join(root, "db.sqlite"))
    _write_many(os.path.join(root, "many"), small_files)
    return root


def _write(root, relpath, data):
    with open(os.path.join(root, relpath), "wb") as file:
        file.write(data)


def _write_large(path, size):
    """Deterministic, incompressible-looking bytes (so offsets are distinguishable)."""
    block = os.urandom(1 << 20)
    with open(path, "wb") as file:
        for index in range(size // len(block)):
            file.write(index.to_bytes(8, "little") + block[8:])
        file.write(block[: size % len(block)])


def _write_npy(path):
    import numpy

    numpy.save(path, numpy.arange(250_000, dtype=numpy.float64).reshape(500, 500))


def _write_sqlite(path):
    with sqlite3.connect(path) as db:
        db.execute("create table items (id integer primary key, name text)")
        db.executemany("insert into items (name) values (?)", [(f"item {i}",) for i in range(5000)])
    db.close()


def _write_many(root, count, per_dir=1000):
    for index in range(count):
        directory = os.path.join(root, f"group{index // per_dir:02d}")
        if index % per_dir == 0:
            os.makedirs(directory)
        _write(directory, f"file{index:05d}.txt", f"small file {index}\n".encode())


def manifest_files(directory, prefix=""):
    """{relative path: FileEntry} of every file in a parsed manifest (DirEntry)."""
    assert isinstance(directory, DirEntry)
    files = {prefix + name: entry for name, entry in directory.files.items()}
    for name, sub in directory.dirs.items():
        files.update(manifest_files(sub, f"{prefix}{name}/"))
    return files


def tree_files(root):
    """{relative path: bytes} of every file under ``root``."""
    found = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as file:
                found[os.path.relpath(path, root)] = file.read()
    return found


# ---------------------------------------------------------------- the mount

class Mount:
    """A ``kachery-mount`` subprocess in the foreground. Use as a context manager."""

    def __init__(self, mountpoint, storage_dir, extra_args=()):
        self.mountpoint = str(mountpoint)
        self.storage_dir = str(storage_dir)
        self.extra_args = list(extra_args)
        self.process = None
        self.log_path = os.path.join(os.path.dirname(self.mountpoint), "mount-stderr.log")

    def start(self, timeout=MOUNT_TIMEOUT):
        """Start the daemon; return once the mount is usable."""
        os.makedirs(self.mountpoint, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [command_path("kachery-mount"), self.mountpoint, "--storage-dir", self.storage_dir,
             *self.extra_args],
            stdout=self._log, stderr=self._log,
        )
        deadline = time.monotonic() + timeout
        while not (os.path.ismount(self.mountpoint) and not is_stale(self.mountpoint)):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"mount did not come up: {self.log()}")
            time.sleep(0.01)
        return self

    def log(self):
        with open(self.log_path, "rb") as file:
            return file.read().decode("utf-8", "replace")

    def close(self):
        """Unmount and stop the daemon, whatever state they are in."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        force_unmount(self.mountpoint)
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.close()

    def path(self, *parts):
        return os.path.join(self.mountpoint, *parts)


def force_unmount(mountpoint):
    """Detach whatever is (or was) mounted at ``mountpoint``."""
    if os.path.ismount(mountpoint) or is_stale(mountpoint):
        subprocess.run(["fusermount3", "-u", "-z", mountpoint], capture_output=True)


def child_pids(pid):
    """Pids of the direct children of ``pid`` (read from /proc)."""
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as stat_file:
                    fields = stat_file.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                children.append(int(entry))
    return children
