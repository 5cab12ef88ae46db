"""The kachery 0.6.x Python API names, and what kachery_core imports."""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import kachery_core as ka
from kachery_core.errors import IsADirectoryInSnapshot, NotADirectoryInSnapshot

from tree_helpers import storage_dir  # noqa: F401  (tmpfs store)
from tree_helpers import object_path, tree_sha1, tree_to_manifest_json, write_tree


def sha1(data):
    return hashlib.sha1(data).hexdigest()


@pytest.fixture(autouse=True)
def _isolated(storage_dir):
    return storage_dir


def test_store_text_and_load_text():
    text = "héllo wörld ✓\nsecond line"
    url = ka.store_text(text)
    assert url == f"sha1://{sha1(text.encode())}/file.txt"
    assert ka.load_text(url) == text
    assert ka.store_text(text, basename="x.md").endswith("/x.md")


def test_store_object_and_load_object():
    obj = {"a": 1, "b": [1, 2, 3], "c": {"nested": None, "é": 1.5}}
    url = ka.store_object(obj)
    # 0.6.x stored json.dumps(obj) (default separators): the same object, the same URL
    assert url == f"sha1://{sha1(json.dumps(obj).encode())}/file.json"
    assert ka.load_object(url) == obj


def test_store_npy_and_load_npy():
    array = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    url = ka.store_npy(array)
    assert url.endswith("/file.npy")
    loaded = ka.load_npy(url)
    assert loaded.dtype == array.dtype and np.array_equal(loaded, array)


def test_store_file_and_load_file(tmp_path, storage_dir):
    path = tmp_path / "data.bin"
    data = os.urandom(5000)
    path.write_bytes(data)
    url = ka.store_file(str(path))
    assert url == f"sha1://{sha1(data)}/data.bin"
    assert ka.store_file(path, basename="other.bin") == f"sha1://{sha1(data)}/other.bin"
    local = ka.load_file(url)
    assert local == object_path(storage_dir, "sha1", sha1(data))
    with open(local, "rb") as file:
        assert file.read() == data
    dest = tmp_path / "copy.bin"
    assert ka.load_file(url, dest=str(dest)) == str(dest)
    assert dest.read_bytes() == data


def test_store_file_md5(tmp_path):
    path = tmp_path / "m.txt"
    path.write_bytes(b"md5 api")
    url = ka.store_file(path, algorithm="md5")
    assert url == f"md5://{hashlib.md5(b'md5 api').hexdigest()}/m.txt"
    assert ka.load_bytes(url) == b"md5 api"
    info = ka.get_file_info(url)
    assert info["md5"] == hashlib.md5(b"md5 api").hexdigest() and info["size"] == 7


def test_load_bytes_ranges(tmp_path):
    data = bytes(range(256)) * 10
    url = ka.store_text(data.decode("latin-1"))  # any stored object will do
    stored = ka.load_bytes(url)
    assert stored == data.decode("latin-1").encode("utf-8")
    size = len(stored)
    for start, end in [(0, 10), (10, 0), (5, 5), (100, size + 50), (size, None), (None, 7), (size - 3, None)]:
        assert ka.load_bytes(url, start, end) == stored[start:end], (start, end)
        assert ka.load_bytes(url, start=start, end=end) == stored[start:end]


def test_store_dir_and_read_dir(tmp_path):
    spec = {"a.txt": b"A", "sub": {"b.txt": b"BB", "deep": {"c": b""}}, "empty": {}}
    src = tmp_path / "mydir"
    write_tree(src, spec)
    url = ka.store_dir(str(src))
    assert url == f"sha1dir://{tree_sha1(spec)}.mydir"
    assert ka.store_dir(src, label="lbl") == f"sha1dir://{tree_sha1(spec)}.lbl"
    assert ka.read_dir(url) == json.loads(tree_to_manifest_json(spec))
    assert ka.read_dir(url + "/sub") == json.loads(tree_to_manifest_json(spec["sub"]))
    shallow = ka.read_dir(url, recursive=False)
    assert shallow["dirs"] == {"empty": {}, "sub": {}} and set(shallow["files"]) == {"a.txt"}
    assert ka.load_text(url + "/sub/b.txt") == "BB"
    assert ka.load_bytes(url + "/sub/deep/c") == b""
    with pytest.raises(NotADirectoryInSnapshot):
        ka.read_dir(url + "/a.txt")
    with pytest.raises(IsADirectoryInSnapshot):
        ka.load_bytes(url + "/sub")


def test_store_dir_label_with_slash_is_rejected(tmp_path):
    write_tree(tmp_path / "d", {"f": b"f"})
    with pytest.raises(ValueError):
        ka.store_dir(tmp_path / "d", label="a/b")


def test_get_file_info(tmp_path, storage_dir):
    url = ka.store_text("info me")
    info = ka.get_file_info(url)
    assert info["sha1"] == sha1(b"info me") and info["size"] == 7
    assert info["path"] == object_path(storage_dir, "sha1", sha1(b"info me"))
    src = tmp_path / "d"
    write_tree(src, {"f": b"info me"})
    in_dir = ka.get_file_info(ka.store_dir(src) + "/f")
    assert (in_dir["path"], in_dir["size"], in_dir["sha1"]) == (info["path"], 7, info["sha1"])


def test_large_file_api_round_trip(tmp_path):
    data = os.urandom(9 * 1024 * 1024 + 3)
    path = tmp_path / "big"
    path.write_bytes(data)
    url = ka.store_file(path)
    assert url.startswith(f"sha1://{sha1(data)}/big?manifest=")
    info = ka.get_file_info(url)
    assert info["size"] == len(data) and info["manifest"] == url.rsplit("=", 1)[1]
    assert ka.load_bytes(url, 4194300, 4194310) == data[4194300:4194310]


def test_storage_dir_override(tmp_path):
    other = tmp_path / "other-store"
    url = ka.store_text("elsewhere", storage_dir=str(other))
    assert os.path.isfile(object_path(other, "sha1", sha1(b"elsewhere")))
    assert ka.load_text(url, storage_dir=str(other)) == "elsewhere"
    assert ka.load_text(url) is None  # not in the default store


def test_bad_url_raises_even_where_missing_gives_none():
    with pytest.raises(ValueError):
        ka.load_text("sha1://nothex")


def test_load_missing_returns_none_like_0_6():
    missing = "sha1://" + "0" * 40
    for load in (ka.load_file, ka.load_text, ka.load_object, ka.load_bytes, ka.get_file_info):
        assert load(missing) is None
    assert ka.read_dir("sha1dir://" + "0" * 40) is None


def test_core_does_not_import_the_edges():
    code = (
        "import sys, kachery_core, kachery_core.client, kachery_core.store, kachery_core.ingest, "
        "kachery_core.verify, kachery_core.export, kachery_core.urls, kachery_core.manifest\n"
        "kachery_core.store_text('x')\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('click', 'mfusepy', 'fuse', 'fusepy', 'aiohttp', 'requests', 'kachery_cli', 'kachery_fs', "
        "'kachery_server'))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().strip() == ""


def test_export_never_writes_through_a_planted_symlink(tmp_path):
    """kachery-load --dest into a shared directory: a symbolic link planted under
    the temporary name must not redirect the write to another file."""
    from kachery_core.client import Kachery
    from kachery_core.export import _partial_name, export_file

    url = ka.store_text("payload")
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    dest = tmp_path / "shared" / "out.txt"
    dest.parent.mkdir()
    os.symlink(victim, _partial_name(dest))
    kachery = Kachery()
    target = kachery.resolve_file(url)
    try:
        export_file(kachery, target, dest)
    except OSError:
        pass  # refusing is fine; writing through the link is not
    assert victim.read_bytes() == b"precious"
    export_file(kachery, target, dest)  # the planted link is gone now
    assert dest.read_bytes() == b"payload"
