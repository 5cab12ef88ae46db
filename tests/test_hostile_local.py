"""Issue 11, item 4: corruption at rest, through the real commands.

An object of the user's own store that rotted (one flipped byte, same size)
or was cut short is never printed by ``kachery-cat`` nor copied by
``kachery-load --dest``: the commands hash a whole object while they stream
it and check its size, and exit 3 in one line. The download cache is
covered by ``kachery-verify`` (and ``--quarantine``) like the store.
"""

import hashlib
import os
import random

import pytest

from tree_helpers import object_path, put_object
from tree_helpers import storage_dir  # noqa: F401  (tmpfs store)

#: Over 4 MiB, so the snapshot's entry carries a file manifest (chunks),
#: and over kachery-cat's 1 MiB blocks, so its hold-back of the last one shows.
SIZE = 9 * 1024 * 1024


def assert_one_line_error(result, code, *words):
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == code, stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    for word in words:
        assert word in stderr, stderr


def damage(path, how):
    """Flip one byte in the middle (size unchanged), or cut the object short."""
    if how == "flipped":
        with open(path, "r+b") as file:
            file.seek(SIZE // 2)
            byte = file.read(1)
            file.seek(SIZE // 2)
            file.write(bytes([byte[0] ^ 0x01]))
        assert os.path.getsize(path) == SIZE
    else:
        os.truncate(path, SIZE // 3)


@pytest.fixture
def stored_big(run_cli, storage_dir, tmp_path):
    """A 9 MiB file stored by kachery-store inside a directory: (data, URLs by form)."""
    data = random.Random(4).randbytes(SIZE)
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "big.bin").write_bytes(data)
    snapshot = run_cli("kachery-store", tmp_path / "tree", check=True).stdout.decode().strip()
    digest = hashlib.sha1(data).hexdigest()
    return data, {"plain": f"sha1://{digest}", "snapshot": f"{snapshot}/big.bin"}


@pytest.mark.parametrize("how", ["flipped", "truncated"])
@pytest.mark.parametrize("form", ["plain", "snapshot"])
def test_cat_and_load_of_a_damaged_stored_object_exit_3_and_write_nothing(
        run_cli, storage_dir, stored_big, tmp_path, how, form):
    data, urls = stored_big
    damage(object_path(storage_dir, "sha1", hashlib.sha1(data).hexdigest()), how)

    cat = run_cli("kachery-cat", urls[form])
    assert_one_line_error(cat, 3)
    assert len(cat.stdout) < min(SIZE, os.path.getsize(
        object_path(storage_dir, "sha1", hashlib.sha1(data).hexdigest())))  # the end never written

    out = tmp_path / "out"
    out.mkdir()
    load = run_cli("kachery-load", urls[form], "--dest", out / "big.bin")
    assert_one_line_error(load, 3)
    assert load.stdout == b""
    assert os.listdir(out) == []  # neither the file nor a partial copy beside it


def test_an_intact_stored_object_is_served_by_both(run_cli, stored_big, tmp_path):
    """The control for the test above: the same commands on the undamaged store."""
    data, urls = stored_big
    for url in urls.values():
        assert run_cli("kachery-cat", url, check=True).stdout == data
    run_cli("kachery-load", urls["snapshot"], "--dest", tmp_path / "copy.bin", check=True)
    assert (tmp_path / "copy.bin").read_bytes() == data


def test_verify_reports_and_quarantines_a_corrupt_download_cache_entry(run_cli, storage_dir):
    good = put_object(storage_dir / "cache", b"a verified download")
    bad_data = b"a download that rotted in the cache"
    bad = put_object(storage_dir / "cache", bad_data)
    bad_path = object_path(storage_dir / "cache", "sha1", bad)
    with open(bad_path, "r+b") as file:
        file.write(b"A")  # same size, one byte changed
    stored = put_object(storage_dir, b"an object of the store itself")

    result = run_cli("kachery-verify")
    assert result.returncode == 3, result.stderr.decode()
    lines = result.stdout.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"CORRUPT sha1://{bad}"), lines
    assert lines[0].endswith(str(bad_path)), lines
    assert "Traceback" not in result.stderr.decode()

    result = run_cli("kachery-verify", "--quarantine")
    assert result.returncode == 3
    assert not os.path.exists(bad_path)
    moved = storage_dir / "cache" / "quarantine" / "sha1" / bad
    assert moved.read_bytes() == b"A" + bad_data[1:]  # moved aside, not deleted
    assert os.path.exists(object_path(storage_dir / "cache", "sha1", good))
    assert os.path.exists(object_path(storage_dir, "sha1", stored))
    assert run_cli("kachery-verify").returncode == 0
