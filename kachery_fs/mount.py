"""Mount lifecycle: prepare the mount point, serve, detach, unmount.

- :func:`serve` mounts and serves in this process until unmounted or until
  SIGINT/SIGTERM/SIGHUP, on either backend (:data:`BACKENDS`).
- :func:`start_background` runs the same thing in a detached child process
  and returns once the mount is usable, or raises with the child's error.
- A mount point left "Transport endpoint is not connected" by a killed daemon
  is recovered with a lazy unmount before mounting (:func:`prepare_mountpoint`).
- The backends are imported only inside :func:`serve`, so this module (and
  the CLI's help) loads without the FUSE library.
"""

import errno
import gc
import logging
import os
import shutil
import subprocess
import sys
import threading
import time

from kachery_core.errors import KacheryError
from kachery_core.process import raise_open_file_limit

log = logging.getLogger("kachery.mount")

#: The kernel's readahead for the mount, in KiB (default 128). Larger keeps more
#: requests in flight for a sequential reader, but an mmap page fault reads
#: half of it on either side of the faulting page, and every 4 MiB chunk it
#: touches is fetched: 1 MiB keeps one fault within one chunk (unless it is
#: within 512 KiB of a chunk's edge). Local objects are read by passthrough,
#: with the readahead of the disk they are on.
READ_AHEAD_KB = 1024
#: Seconds a thread may hold the GIL while others wait (Python's default: 0.005).
SWITCH_INTERVAL = 0.0005
#: Garbage collector thresholds of the daemon (Python's default: 700, 10, 10).
GC_THRESHOLDS = (50_000, 10, 10)
#: How long start_background waits for the child to mount.
READY_TIMEOUT = 30.0


class MountError(KacheryError, OSError):
    """A mount or unmount that could not be done; the message says why."""


class BadMountPoint(KacheryError, ValueError):
    """A mount point the user must fix first (missing, not a directory, not
    empty): a usage error, exit 2."""


# ----------------------------------------------------------------- state

def is_stale(mountpoint):
    """True when ``mountpoint`` is a dead FUSE mount (its daemon is gone)."""
    try:
        os.statvfs(mountpoint)  # always asks the daemon (stat may come from the kernel's cache)
    except OSError as error:
        return error.errno == errno.ENOTCONN
    return False


def is_mounted(mountpoint):
    """True when something is mounted at ``mountpoint`` (read from the mount table)."""
    target = os.path.realpath(mountpoint)
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as table:
        return any(_unescape(line.split()[4]) == target for line in table)


def _unescape(field):
    """Mount table fields escape space, tab, newline and backslash as octal (\\040)."""
    if "\\" not in field:
        return field
    raw = field.encode("utf-8", "surrogateescape").decode("unicode_escape")
    return raw.encode("latin-1").decode("utf-8", "surrogateescape")


def prepare_mountpoint(mountpoint, allow_non_empty=False):
    """Check ``mountpoint`` can take a mount; recover it if it is stale.

    A non-empty directory is refused unless ``allow_non_empty``: the mount
    would hide its files, which looks like data loss to whoever looks next."""
    if is_stale(mountpoint):
        log.warning("%s: stale mount (transport endpoint not connected); unmounting it", mountpoint)
        unmount(mountpoint, lazy=True)
    if not os.path.lexists(mountpoint):
        raise BadMountPoint(f"mount point does not exist: {mountpoint} (mkdir it first)")
    if not os.path.isdir(mountpoint):
        raise BadMountPoint(f"mount point is not a directory: {mountpoint}")
    if is_mounted(mountpoint):
        raise MountError(errno.EBUSY, f"already mounted: {mountpoint} (kachery-unmount it first)")
    if not allow_non_empty:
        with os.scandir(mountpoint) as entries:
            if next(entries, None) is not None:
                raise BadMountPoint(f"mount point is not empty: {mountpoint} (the mount would hide "
                                    "its files; --allow-non-empty mounts over them anyway)")


def kachery_mounts():
    """The mount points of the kachery mounts of this machine (its mount table)."""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as table:
        rows = [line.split() for line in table]
    # Fields after the "-" separator: file system type, source, super options.
    return [_unescape(row[4]) for row in rows
            if "-" in row and row[row.index("-") + 1] == "fuse.kachery"]


# ---------------------------------------------------------------- unmount

def unmount(mountpoint, lazy=False):
    """Unmount a FUSE mount; ``lazy`` detaches it even while files are open."""
    if not lazy and is_stale(mountpoint):
        lazy = True
    command = _unmount_command(mountpoint, lazy)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        detail = result.stderr.strip().splitlines()[-1:] or [f"exit status {result.returncode}"]
        raise MountError(errno.EBUSY, f"cannot unmount {mountpoint}: {detail[0]}")


def _unmount_command(mountpoint, lazy):
    for helper in ("fusermount3", "fusermount"):
        if shutil.which(helper):
            return [helper, "-u"] + (["-z"] if lazy else []) + [mountpoint]
    return ["umount"] + (["-l"] if lazy else []) + [mountpoint]


# ------------------------------------------------------------------ serve

#: The FUSE backends: the kernel protocol spoken directly (passthrough, kernel-
#: cached listings), or libfuse through mfusepy.
BACKENDS = ("kernel", "libfuse")


def _runner(backend):
    if backend == "libfuse":
        from .fuse_adapter import run_fuse
        return run_fuse
    from .kernel_adapter import run_kernel
    return run_kernel


def serve(kachery, mountpoint, allow_other=False, debug=False, backend="kernel",
          allow_non_empty=False):
    """Mount the namespace at ``mountpoint`` and serve until unmounted or signalled."""
    from .resolver import Resolver

    run = _runner(backend)

    # Absolute: libfuse changes the working directory to / once mounted.
    mountpoint = os.path.abspath(mountpoint)
    prepare_mountpoint(mountpoint, allow_non_empty)
    ready = threading.Event()

    stats = _stats_file(kachery, mountpoint)
    # The HTTP client's import takes 0.15-0.25 s: pay it before the mount
    # answers, not in the first read a program times.
    _prepare_remotes(kachery)
    # Most of the daemon's threads wait on the kernel or the network and need
    # the GIL only briefly when their call returns; with the default 5 ms
    # switch interval each such wake-up can queue behind a busy thread.
    sys.setswitchinterval(SWITCH_INTERVAL)
    # Listing a large snapshot allocates an object or two per entry while the
    # parsed manifest holds 100,000 more: with the default thresholds the
    # collector runs every 700 allocations and walks them again and again
    # (a third of a fresh listing's time, measured).
    gc.set_threshold(*GC_THRESHOLDS)
    raise_open_file_limit()  # every open file of every reader holds a descriptor here

    def on_ready():  # called by the daemon once the kernel has connected
        ready.set()
        threading.Thread(target=_after_mount, args=(mountpoint,), daemon=True).start()
        stats.start()

    try:
        run(Resolver(kachery), mountpoint, allow_other=allow_other, debug=debug, on_ready=on_ready)
    except MountError:
        raise
    except (RuntimeError, OSError) as error:
        # libfuse reports a signal-ended loop as an error status too; only a
        # mount that never came up is a failure.
        if not ready.is_set():
            raise MountError(errno.EIO, f"could not mount {mountpoint} ({error})") from None
    finally:
        stats.stop()
        kachery.close()
    _ensure_unmounted(mountpoint)
    log.info("unmounted %s", mountpoint)


def _prepare_remotes(kachery):
    """Import the HTTP client and set up the connection pools (if there are remotes)."""
    if kachery.fetcher is not None:
        kachery.remotes.prepare()


def _stats_file(kachery, mountpoint):
    """The mount's fetch counters and cache usage, refreshed in
    <storage>/logs/mount-stats-<pid>.json for `kachery cache` to show."""
    from kachery_core.stats import StatsFile

    def collect():
        objects, used = kachery.cache.usage()
        return {"mountpoint": mountpoint, **kachery.stats.snapshot(),
                "cache_objects": objects, "cache_bytes": used,
                "cache_max": kachery.cache.max_bytes}

    path = os.path.join(kachery.config.storage_dir, "logs", f"mount-stats-{os.getpid()}.json")
    return StatsFile(path, collect)


def _ensure_unmounted(mountpoint, grace=2.0):
    """Return only once the mount is gone, so a caller waiting on our exit sees no mount.

    The auto_unmount helper may still be detaching it for a moment.
    """
    deadline = time.monotonic() + grace
    while is_mounted(mountpoint):
        if time.monotonic() > deadline:
            unmount(mountpoint, lazy=True)
            return
        time.sleep(0.01)


def _after_mount(mountpoint, timeout=READY_TIMEOUT):
    """Wait for the mount to appear in the mount table, then raise its readahead."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_mounted(mountpoint):
            raise_read_ahead(mountpoint)
            return
        time.sleep(0.005)


def raise_read_ahead(mountpoint, kilobytes=READ_AHEAD_KB):
    """Raise the mount's readahead (via sysfs); quietly skipped when not allowed.

    libfuse can only lower the kernel's 128 KiB default; large sequential
    reads go much faster with several 1 MiB requests in flight.
    """
    device = os.stat(mountpoint).st_dev
    path = f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb"
    try:
        with open(path, "w") as knob:
            knob.write(str(kilobytes))
    except OSError as error:
        log.debug("cannot raise readahead (%s): %s", path, error)


# ------------------------------------------------------------- background

def start_background(mountpoint, arguments, log_file, allow_non_empty=False):
    """Run ``python -m kachery_fs MOUNTPOINT ARGUMENTS`` detached; wait until mounted.

    Returns the child's pid. Raises MountError with the child's last log line
    when it exits first or does not mount within READY_TIMEOUT seconds.
    """
    prepare_mountpoint(mountpoint, allow_non_empty)
    os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
    with open(log_file, "ab") as log_stream:
        child = subprocess.Popen(
            [sys.executable, "-m", "kachery_fs", mountpoint, *arguments],
            stdin=subprocess.DEVNULL, stdout=log_stream, stderr=log_stream,
            start_new_session=True,  # survives the terminal and its Ctrl-C
        )
    _wait_for_mount(mountpoint, child, log_file)
    return child.pid


def _wait_for_mount(mountpoint, child, log_file):
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise MountError(errno.EIO, f"mount failed: {_last_line(log_file)}")
        if is_mounted(mountpoint):
            return
        time.sleep(0.01)
    child.terminate()
    raise MountError(errno.ETIMEDOUT, f"not mounted after {READY_TIMEOUT:.0f} s (see {log_file})")


def _last_line(path):
    with open(path, "rb") as stream:
        lines = stream.read().decode("utf-8", "replace").strip().splitlines()
    return lines[-1] if lines else "no message (see the log)"
