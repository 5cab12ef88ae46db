"""SPEC §2 through the command: every way of storing (a small file, a large
one, a large one written around the page cache, a directory, standard input)
has made its objects durable before it prints their URL.

kachery-store runs as a subprocess under a wrapper that logs, in order, the
flushes (fsync with the path flushed, syncfs), the renames of temp files to
object names and what the command prints. For every object, the log must
show: its temp file flushed (or a syncfs) before its rename, and its directory
flushed (or a syncfs) after the rename, all before the first URL is printed.
"""

import json
import os
import subprocess
import sys

import pytest

from kachery_core.store import LocalStore

WRAPPER = r"""
import os, sys, threading
import click
from kachery_core import durability, ingest

log_path = os.environ["KACHERY_TEST_EVENTS"]
lock = threading.Lock()

def event(*fields):
    with lock, open(log_path, "a") as log:
        log.write("\t".join(fields) + "\n")

real_fsync, real_rename, real_syncfs = os.fsync, os.rename, durability.flush_filesystem

def fsync(fd):
    real_fsync(fd)
    event("fsync", os.readlink(f"/proc/self/fd/{fd}"))

def rename(source, target, *args, **kwargs):
    real_rename(source, target, *args, **kwargs)
    event("rename", os.fspath(source), os.fspath(target))

def flush_filesystem(path):
    real_syncfs(path)
    event("syncfs", os.fspath(path))

real_echo = click.echo

def echo(message=None, *args, **kwargs):
    if not kwargs.get("err"):
        event("print", str(message))
    return real_echo(message, *args, **kwargs)

os.fsync, os.rename, durability.flush_filesystem, click.echo = fsync, rename, flush_filesystem, echo
ingest.DIRECT_MIN = int(os.environ.get("KACHERY_TEST_DIRECT_MIN", ingest.DIRECT_MIN))
sys.argv[0] = "kachery-store"
from kachery_cli.commands import store_main
store_main()
"""


def run_logged_store(tmp_path, args, stdin=None, direct_min=None):
    """Run kachery-store under the wrapper; return (stdout, events)."""
    events = tmp_path / "events.log"
    env = dict(os.environ, KACHERY_STORAGE_DIR=str(tmp_path / "storage"),
               KACHERY_CONFIG=str(tmp_path / "none.toml"), KACHERY_TEST_EVENTS=str(events))
    if direct_min is not None:
        env["KACHERY_TEST_DIRECT_MIN"] = str(direct_min)
    result = subprocess.run([sys.executable, "-c", WRAPPER, *map(str, args)], input=stdin,
                            capture_output=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode(), [line.split("\t") for line in events.read_text().splitlines()]


def assert_durable_before_printed(events, storage):
    first_print = next(index for index, fields in enumerate(events) if fields[0] == "print")
    before = events[:first_print]
    renames = [(index, fields[1], fields[2]) for index, fields in enumerate(before) if fields[0] == "rename"]
    objects = {path for _, path in LocalStore(storage).iter_objects("sha1")}
    objects |= {path for _, path in LocalStore(storage).iter_objects("md5")}
    assert objects and objects == {target for _, _, target in renames}, "an object not published before the URL"

    def flushed(path, start, stop):
        return any(fields[0] == "syncfs" or (fields[0] == "fsync" and fields[1] == path)
                   for fields in before[start:stop])

    for index, temp, target in renames:
        assert flushed(temp, 0, index), f"{target} renamed before its data was flushed"
        assert flushed(os.path.dirname(target), index + 1, first_print), \
            f"{target}: URL printed before its directory entry was flushed"


def test_small_file(tmp_path):
    (tmp_path / "small.txt").write_bytes(b"small")
    out, events = run_logged_store(tmp_path, [tmp_path / "small.txt"])
    assert out.startswith("sha1://")
    assert_durable_before_printed(events, tmp_path / "storage")


@pytest.mark.parametrize("direct_min", [None, 0], ids=["buffered", "direct"])
def test_large_file(tmp_path, direct_min):
    (tmp_path / "big.bin").write_bytes(os.urandom(9 << 20))
    out, events = run_logged_store(tmp_path, [tmp_path / "big.bin"], direct_min=direct_min)
    assert "?manifest=" in out  # the file and its manifest: two objects
    assert_durable_before_printed(events, tmp_path / "storage")


def test_directory_of_many_files(tmp_path):
    tree = tmp_path / "tree"
    for index in range(40):  # more than durability.FEW_FILES: one syncfs
        (tree / f"d{index % 4}").mkdir(parents=True, exist_ok=True)
        (tree / f"d{index % 4}" / f"f{index}").write_bytes(os.urandom(100 + index))
    (tree / "big.bin").write_bytes(os.urandom(5 << 20))
    out, events = run_logged_store(tmp_path, [tree], direct_min=0)
    assert out.startswith("sha1dir://")
    assert_durable_before_printed(events, tmp_path / "storage")


@pytest.mark.parametrize("size", [10, 6 << 20])
def test_standard_input(tmp_path, size):
    out, events = run_logged_store(tmp_path, ["-"], stdin=os.urandom(size))
    assert out.startswith("sha1://")
    assert_durable_before_printed(events, tmp_path / "storage")


def test_json_output_too(tmp_path):
    (tmp_path / "a").write_bytes(b"a" * 3000)
    out, events = run_logged_store(tmp_path, ["--json", tmp_path / "a"])
    assert json.loads(out)["url"].startswith("sha1://")
    assert_durable_before_printed(events, tmp_path / "storage")
