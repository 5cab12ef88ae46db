"""Helpers for tests on real directory trees and store directories.

Everything here is written from the SPEC, independently of kachery_core, so that
tests compare the implementation against a second reading of the spec.
"""

import hashlib
import json
import os
import stat


def write_tree(root, spec):
    """Create ``spec`` under ``root``: name -> bytes (a file) or dict (a directory)."""
    os.makedirs(root, exist_ok=True)
    for name, value in spec.items():
        path = os.path.join(root, name)
        if isinstance(value, dict):
            write_tree(path, value)
        else:
            with open(path, "wb") as file:
                file.write(value)


def read_tree(root):
    """The inverse of write_tree (symbolic links followed, special files left out)."""
    result = {}
    for entry in os.scandir(root):
        mode = os.stat(entry.path).st_mode
        if stat.S_ISDIR(mode):
            result[entry.name] = read_tree(entry.path)
        elif stat.S_ISREG(mode):
            with open(entry.path, "rb") as file:
                result[entry.name] = file.read()
    return result


def tree_to_manifest_json(spec):
    """SPEC §3 canonical manifest text of a write_tree spec (small files only)."""
    files = {n: v for n, v in spec.items() if not isinstance(v, dict)}
    dirs = {n: v for n, v in spec.items() if isinstance(v, dict)}
    file_parts = [
        f'{json.dumps(name)}: {{"size": {len(files[name])}, '
        f'"sha1": "{hashlib.sha1(files[name]).hexdigest()}"}}'
        for name in sorted(files)
    ]
    dir_parts = [f"{json.dumps(name)}: {tree_to_manifest_json(dirs[name])}" for name in sorted(dirs)]
    return '{"files": {' + ", ".join(file_parts) + '}, "dirs": {' + ", ".join(dir_parts) + "}}"


def tree_sha1(spec):
    return hashlib.sha1(tree_to_manifest_json(spec).encode("ascii")).hexdigest()


def object_path(root, algorithm, digest):
    """SPEC §2 layout: <root>/<alg>/ab/cd/ef/<h>."""
    return os.path.join(os.fspath(root), algorithm, digest[0:2], digest[2:4], digest[4:6], digest)


def put_object(root, data, algorithm="sha1"):
    """Write ``data`` into a store directory by hand (as kachery 0.6.x did); return its hash."""
    digest = hashlib.new(algorithm, data).hexdigest()
    path = object_path(root, algorithm, digest)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as file:
        file.write(data)
    return digest


def list_objects(root, algorithm="sha1"):
    """Every file under <root>/<alg>/ as (relative path, digest)."""
    base = os.path.join(os.fspath(root), algorithm)
    found = []
    for dirpath, _, filenames in os.walk(base):
        for name in filenames:
            found.append((os.path.relpath(os.path.join(dirpath, name), base), name))
    return sorted(found)


def files_outside(root, allowed):
    """Paths under ``root`` that are not under one of ``allowed`` (to detect escapes)."""
    allowed = [os.path.abspath(a) for a in allowed]
    bad = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.abspath(os.path.join(dirpath, name))
            if not any(path == a or path.startswith(a + os.sep) or a.startswith(path + os.sep)
                       for a in allowed):
                bad.append(path)
    return bad


# ------------------------------------------------------------------ fixtures

import pathlib  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

import pytest  # noqa: E402


def fast_root():
    """A fresh directory on tmpfs (/dev/shm) when there is one, else None.

    Every command flushes what it stored (SPEC §2), and on a disk that other
    processes keep busy each flush waits for their dirty data too; on tmpfs a
    flush costs nothing. Set KACHERY_TEST_DISK_STORE=1 to test on the disk.
    """
    if os.environ.get("KACHERY_TEST_DISK_STORE") or not os.path.isdir("/dev/shm"):
        return None
    return pathlib.Path(tempfile.mkdtemp(prefix="kachery-test-", dir="/dev/shm"))


@pytest.fixture
def storage_dir(storage_dir, monkeypatch):
    """conftest's isolated store, moved to tmpfs when possible (see fast_root).
    Import it into a test module to use it there."""
    root = fast_root()
    if root is None:
        yield storage_dir
        return
    monkeypatch.setenv("KACHERY_STORAGE_DIR", str(root / "storage"))
    yield root / "storage"
    shutil.rmtree(root, ignore_errors=True)
