"""Small helpers shared by the benchmark scripts: timing with peak memory,
medians of alternating runs, unmounting, and Markdown tables."""

import os
import shlex
import statistics
import subprocess
import sys
import time


# Our commands run with Python's bytecode cache, as they do when installed:
# this sandbox sets PYTHONDONTWRITEBYTECODE, which makes every start compile
# kachery's modules from source (about 45 ms).
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


def tool(name):
    """The path of our command ``name``: the script installed next to this
    interpreter when there is one, so a version manager's shim in PATH is not
    timed with it (pyenv's adds 0.2-0.4 s to every start on the bench VM).
    Baselines (curl, cp, ...) are the system's own binaries anyway."""
    candidate = os.path.join(os.path.dirname(sys.executable), name)
    return candidate if os.path.exists(candidate) else name


def run_measured(command, shell=False, env=None, stdout=subprocess.DEVNULL):
    """Run a command; return (wall seconds, peak RSS in MB of the process)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, shell=shell, env=env, stdout=stdout,
                               stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    error = process.stderr.read().decode(errors="replace")
    process.stderr.close()
    if process.returncode != 0:
        shown = command if isinstance(command, str) else shlex.join(command)
        raise RuntimeError(f"{shown} failed ({process.returncode}): {error.strip()}")
    return elapsed, usage.ru_maxrss / 1024


def unmount(mountpoint, process, timeout=20):
    """Unmount a FUSE mount and wait for its daemon; kill it (and detach the
    mount lazily) if it does not exit in time."""
    subprocess.run(["fusermount3", "-u", mountpoint], capture_output=True)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        subprocess.run(["fusermount3", "-u", "-z", mountpoint], capture_output=True)


def median_times(runners, repeat, before_each=None):
    """Run each named runner ``repeat`` times, alternating; return name -> (median s, max MB)."""
    times = {name: [] for name in runners}
    memory = {name: 0.0 for name in runners}
    for _ in range(repeat):
        for name, runner in runners.items():
            if before_each:
                before_each(name)
            seconds, megabytes = runner()
            times[name].append(seconds)
            memory[name] = max(memory[name], megabytes)
    return {name: (statistics.median(times[name]), memory[name]) for name in runners}


def drop_caches():
    """Drop the page cache (root only) so the next read comes from disk."""
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as file:
        file.write("3\n")


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
