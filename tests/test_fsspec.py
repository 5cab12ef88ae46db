"""Hash URLs through fsspec with no mount and an EMPTY local store: pandas,
xarray + zarr and plain fsspec read snapshots that live on a real
kachery-server; a ranged read of a large remote file fetches only the chunks
it touches (counted at a mirror); corrupt remote bytes give an error, never
data. The pandas/xarray part runs as a user would: a fresh Python process,
configured by the environment, with no kachery import at all."""

import gzip
import hashlib
import json
import os
import random
import subprocess
import sys

import pytest

from kachery_core.errors import HashMismatch

from mirror_helpers import Mirror, object_rel
from server_helpers import command_path, servers  # noqa: F401  (fixture)

pytestmark = pytest.mark.server

CHUNK = 4 * 1024 * 1024


def store(storage, path):
    env = dict(os.environ, KACHERY_STORAGE_DIR=str(storage), KACHERY_CONFIG="/nonexistent")
    return subprocess.run([command_path("kachery-store"), str(path)], env=env, check=True,
                          capture_output=True, text=True).stdout.strip()


def test_the_protocols_are_registered_through_the_entry_point():
    import fsspec

    from kachery_fsspec import Md5FileSystem, Sha1DirFileSystem, Sha1FileSystem

    assert fsspec.get_filesystem_class("sha1") is Sha1FileSystem
    assert fsspec.get_filesystem_class("md5") is Md5FileSystem
    assert fsspec.get_filesystem_class("sha1dir") is Sha1DirFileSystem


_USER_SCRIPT = r"""
import json, sys
import fsspec, pandas, xarray
snapshot, table = sys.argv[1], sys.argv[2]
result = {"modules_kachery_fs": None}
frame = pandas.read_csv(f"sha1dir://{snapshot}/tables/t.csv")
result["csv"] = frame["value"].tolist()
result["csv_gz"] = pandas.read_csv(f"{table}").shape[0]
dataset = xarray.open_zarr(f"sha1dir://{snapshot}/data.zarr")
result["zarr_sum"] = float(dataset["temperature"].sum())
fs = fsspec.filesystem("sha1dir")
result["ls"] = sorted(fs.ls(f"{snapshot}/tables", detail=False))
with fsspec.open(f"sha1dir://{snapshot}/tables/t.csv") as file:
    file.seek(11)
    result["seek_read"] = file.read(5).decode()
result["modules_kachery_fs"] = sorted(m for m in sys.modules if m.startswith(("kachery_fs.", "mfusepy")))
print(json.dumps(result))
"""


def test_pandas_and_xarray_read_a_snapshot_on_a_server_with_no_mount(tmp_path, servers):  # noqa: F811
    pytest.importorskip("pandas")
    xarray = pytest.importorskip("xarray")
    numpy = pytest.importorskip("numpy")
    tree = tmp_path / "tree"
    (tree / "tables").mkdir(parents=True)
    (tree / "tables" / "t.csv").write_text("name,value\n" + "".join(f"n{i},{i * i}\n" for i in range(50)))
    (tree / "tables" / "t.csv.gz").write_bytes(gzip.compress(b"a,b\n1,2\n3,4\n5,6\n"))
    temperature = numpy.arange(24, dtype="float64").reshape(4, 6)
    xarray.Dataset({"temperature": (("y", "x"), temperature)}).to_zarr(tree / "data.zarr")
    server_storage = tmp_path / "server-storage"
    snapshot = store(server_storage, tree).split("://", 1)[1]
    table = store(server_storage, tree / "tables" / "t.csv.gz")
    server = servers.kachery(storage=server_storage)
    env = dict(os.environ, KACHERY_STORAGE_DIR=str(tmp_path / "empty"), KACHERY_REMOTE=server.url,
               KACHERY_CONFIG="/nonexistent")
    result = subprocess.run([sys.executable, "-c", _USER_SCRIPT, snapshot, table], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["csv"] == [i * i for i in range(50)]
    assert report["csv_gz"] == 3  # compression from the name in the URL
    assert report["zarr_sum"] == float(temperature.sum())
    assert report["ls"] == [f"{snapshot}/tables/t.csv", f"{snapshot}/tables/t.csv.gz"]
    assert report["seek_read"] == "n0,0\n"
    assert report["modules_kachery_fs"] == []  # no FUSE layer imported


@pytest.fixture
def big_file(tmp_path):
    """(server storage, sha1dir URL of a tree with a 9-chunk file, its bytes)."""
    data = random.Random(3).randbytes(9 * CHUNK + 777)
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "big.bin").write_bytes(data)
    storage = tmp_path / "server-storage"
    return storage, store(storage, tree), data


def test_a_ranged_read_fetches_only_the_chunks_it_touches(tmp_path, big_file):
    import fsspec

    storage, url, data = big_file
    mirror = Mirror(storage)
    try:
        options = {"storage_dir": str(tmp_path / "empty"), "remotes": [mirror.url]}
        fs = fsspec.filesystem("sha1dir", **options)
        path = url.split("://", 1)[1] + "/big.bin"
        assert fs.info(path)["size"] == len(data)
        start = 5 * CHUNK + 1000
        assert fs.cat_file(path, start, start + 4096) == data[start:start + 4096]
        big = object_rel(hashlib.sha1(data).hexdigest())
        assert 0 < mirror.sent.get(big, 0) <= CHUNK  # one chunk of nine
        with fsspec.open(f"{url}/big.bin", **options) as file:  # random access through open()
            file.seek(8 * CHUNK + 10)
            assert file.read(100) == data[8 * CHUNK + 10:8 * CHUNK + 110]
        assert mirror.sent[big] <= 2 * CHUNK
        assert fs.ukey(path) == hashlib.sha1(data).hexdigest()
    finally:
        mirror.close()


def test_corrupt_remote_bytes_raise_and_are_never_returned(tmp_path, big_file, servers):  # noqa: F811
    import fsspec

    storage, url, data = big_file
    mirror = Mirror(storage, corrupt=True)
    try:
        fs = fsspec.filesystem("sha1dir", storage_dir=str(tmp_path / "empty"), remotes=[mirror.url])
        path = url.split("://", 1)[1] + "/big.bin"
        with pytest.raises(HashMismatch):
            fs.cat_file(path, CHUNK, CHUNK + 10)
    finally:
        mirror.close()
    # A whole small object that a real server holds corrupt: an error too.
    small = b"small and sound\n"
    (tmp_path / "small.txt").write_bytes(small)
    server_storage = tmp_path / "server2"
    small_url = store(server_storage, tmp_path / "small.txt")
    digest = hashlib.sha1(small).hexdigest()
    (server_storage / object_rel(digest).lstrip("/")).write_bytes(b"small and SOUND\n")
    server = servers.kachery(storage=server_storage)
    fs = fsspec.filesystem("sha1", storage_dir=str(tmp_path / "empty2"), remotes=[server.url])
    with pytest.raises(HashMismatch):
        fs.cat_file(small_url)


def test_glob_and_expand_path_keep_manifest_urls_literal(tmp_path, big_file):
    import fsspec

    storage, url, data = big_file
    fs = fsspec.filesystem("sha1dir", storage_dir=str(storage))
    snapshot = url.split("://", 1)[1]
    assert fs.glob(f"{snapshot}/*.bin") == [f"{snapshot}/big.bin"]
    # a sha1:// URL with its file manifest, as kachery-store prints for large files
    digest = hashlib.sha1(data).hexdigest()
    entry = fs.kachery.resolve_file(__import__("kachery_core.urls", fromlist=["x"]).parse_url(
        f"{url}/big.bin"))
    literal = f"{digest}/big.bin?manifest={entry.manifest}"
    files = fsspec.filesystem("sha1", storage_dir=str(storage))
    assert files.glob(f"sha1://{literal}") == [literal]
    assert files.expand_path(f"sha1://{literal}") == [literal]
    assert files.cat_file(literal, 0, 10) == data[:10]
    with pytest.raises(FileNotFoundError):
        files.info("0" * 40)


_HDF5_AND_DASK_SCRIPT = r"""
import json, sys
import dask.dataframe, fsspec, h5py
snapshot, h5_url = sys.argv[1], sys.argv[2]
result = {}
with fsspec.open(h5_url).open() as raw, h5py.File(raw, "r") as h5:
    result["h5"] = h5["group/values"][10:15].tolist()
frame = dask.dataframe.read_csv(f"sha1dir://{snapshot}/parts/*.csv")
result["dask_rows"] = int(frame.shape[0].compute())
result["dask_sum"] = int(frame["x"].sum().compute())
print(json.dumps(result))
"""


def test_h5py_and_dask_read_through_fsspec(tmp_path, servers):  # noqa: F811
    h5py = pytest.importorskip("h5py")
    pytest.importorskip("dask.dataframe")
    numpy = pytest.importorskip("numpy")
    tree = tmp_path / "tree"
    (tree / "parts").mkdir(parents=True)
    for part in range(3):
        rows = "".join(f"{part * 100 + i},{i}\n" for i in range(100))
        (tree / "parts" / f"p{part}.csv").write_text("x,y\n" + rows)
    with h5py.File(tmp_path / "values.h5", "w") as h5:
        h5.create_dataset("group/values", data=numpy.arange(1000, dtype="int64") * 3)
    server_storage = tmp_path / "server-storage"
    snapshot = store(server_storage, tree).split("://", 1)[1]
    h5_url = store(server_storage, tmp_path / "values.h5")
    server = servers.kachery(storage=server_storage)
    env = dict(os.environ, KACHERY_STORAGE_DIR=str(tmp_path / "empty"), KACHERY_REMOTE=server.url,
               KACHERY_CONFIG="/nonexistent")
    result = subprocess.run([sys.executable, "-c", _HDF5_AND_DASK_SCRIPT, snapshot, h5_url],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["h5"] == [30, 33, 36, 39, 42]
    assert report["dask_rows"] == 300
    assert report["dask_sum"] == sum(range(300))


def test_one_client_per_process_shared_by_threads_and_rebuilt_after_a_fork(tmp_path, big_file):
    import threading

    import fsspec

    storage, url, data = big_file
    mirror = Mirror(storage)
    try:
        options = {"storage_dir": str(tmp_path / "empty"), "remotes": [mirror.url]}
        fs = fsspec.filesystem("sha1dir", **options)
        path = url.split("://", 1)[1] + "/big.bin"
        assert fs.cat_file(path, 0, 10) == data[:10]  # the client's pools are running now
        parent_client, seen = fs.kachery, []
        threads = [threading.Thread(target=lambda: seen.append(
            fsspec.filesystem("sha1dir", skip_instance_cache=True, **options).kachery))
            for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(seen) == 8 and all(client is parent_client for client in seen)
        pid = os.fork()
        if pid == 0:  # the child: a client of its own that works
            ok = False
            try:
                ok = (fs.kachery is not parent_client
                      and fs.cat_file(path, 7 * CHUNK, 7 * CHUNK + 10) == data[7 * CHUNK:7 * CHUNK + 10])
            finally:
                os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert fs.kachery is parent_client
    finally:
        mirror.close()
