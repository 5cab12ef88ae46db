"""A real mount of a real snapshot: every tool sees what it saw on the original.

One module-scoped mount of a tree with nested dirs, unicode names, empty files,
a large file, a numpy array, an SQLite database and 10,000 small files.
"""

import errno
import hashlib
import os
import random
import sqlite3
import subprocess
import threading

import pytest

from kachery_core.client import Kachery
from kachery_core.settings import Config

from fs_helpers import Mount, make_tree, manifest_files, needs_fuse, tree_files

pytestmark = [pytest.mark.fuse, needs_fuse, pytest.mark.usefixtures("fuse_backend")]


@pytest.fixture(scope="module")
def mounted(tmp_path_factory, fuse_backend):
    """(Mount, snapshot directory inside it, source tree, {relpath: FileEntry})."""
    base = tmp_path_factory.mktemp("fsmount")
    source = make_tree(str(base / "src"))
    kachery = Kachery(Config(storage_dir=str(base / "storage")))
    digest, tree = kachery.store_dir(source)
    mount = Mount(base / "mnt", base / "storage")
    with mount:
        yield mount, mount.path("sha1dir", digest), source, manifest_files(tree)


def _run(*command, cwd=None):
    return subprocess.run(command, capture_output=True, check=True, cwd=cwd).stdout


def test_ls_l_shows_types_sizes_and_names(mounted):
    _, snap, source, _ = mounted
    ours = _ls_entries(_run("ls", "-lR", "--time-style=+", snap), "")
    theirs = _ls_entries(_run("ls", "-lR", "--time-style=+", source), "")
    assert ours == theirs
    lines = _run("ls", "-l", snap).decode().splitlines()
    assert all(line.startswith(("-r--r--r--", "dr-xr-xr-x", "total")) for line in lines)


def _ls_entries(output, _):
    """(type, size if file, name) of every entry line of `ls -lR` (sizes of dirs differ)."""
    entries = []
    for line in output.decode().splitlines():
        fields = line.split(maxsplit=6)
        if len(fields) == 7 and fields[0][0] in "-d":
            size = fields[4] if fields[0][0] == "-" else ""
            entries.append((fields[0][0], size, fields[6]))
    return entries


def test_cat_unicode_and_empty_files(mounted):
    _, snap, source, _ = mounted
    for name in ("ünïcødé ✓ name.txt", "empty.bin", "dír with späces/файл.txt", "nested/empty-too"):
        assert _run("cat", os.path.join(snap, name)) == _read(os.path.join(source, name))


def test_find_lists_the_same_tree(mounted):
    _, snap, source, _ = mounted
    for kind in ("f", "d"):
        ours = sorted(_run("find", snap, "-type", kind, "-printf", "%P\\n").splitlines())
        theirs = sorted(_run("find", source, "-type", kind, "-printf", "%P\\n").splitlines())
        assert ours == theirs
    ours = sorted(_run("find", snap, "-type", "f", "-printf", "%P %s\\n").splitlines())
    theirs = sorted(_run("find", source, "-type", "f", "-printf", "%P %s\\n").splitlines())
    assert ours == theirs


def test_du_b_counts_the_same_file_bytes(mounted):
    _, snap, source, files = mounted
    ours = _du_files(_run("du", "-ab", snap), snap)
    theirs = _du_files(_run("du", "-ab", source), source)
    assert ours == theirs
    assert sum(int(size) for size in ours.values()) == sum(entry.size for entry in files.values())


def _du_files(output, root):
    sizes = {}
    for line in output.decode().splitlines():
        size, path = line.split("\t", 1)
        if os.path.isfile(path):
            sizes[os.path.relpath(path, root)] = size
    return sizes


def test_grep_r_finds_the_same_lines(mounted):
    _, snap, source, _ = mounted
    ours = _run("grep", "-r", "needle", ".", cwd=snap)
    theirs = _run("grep", "-r", "needle", ".", cwd=source)
    assert sorted(ours.splitlines()) == sorted(theirs.splitlines())
    assert sorted(_run("grep", "-rl", "small file 9999", ".", cwd=snap).splitlines()) == [
        b"./many/group09/file09999.txt"]


def test_cp_r_out_of_the_mount(mounted, tmp_path):
    _, snap, source, _ = mounted
    _run("cp", "-r", snap, str(tmp_path / "copy"))
    assert tree_files(str(tmp_path / "copy")) == tree_files(source)


def test_tar_c_of_the_mount(mounted, tmp_path):
    _, snap, source, _ = mounted
    archive = tmp_path / "snap.tar"
    _run("tar", "cf", str(archive), "-C", snap, ".")
    (tmp_path / "out").mkdir()
    _run("tar", "xf", str(archive), "-C", str(tmp_path / "out"))
    assert tree_files(str(tmp_path / "out")) == tree_files(source)


def test_sha1sum_of_every_file_equals_the_manifest(mounted):
    _, snap, _, files = mounted
    listing = _run("find", ".", "-type", "f", "-print0", cwd=snap).split(b"\0")[:-1]
    output = subprocess.run(["xargs", "-0", "sha1sum"], input=b"\0".join(listing),
                            capture_output=True, check=True, cwd=snap).stdout
    sums = {}
    for line in output.decode().splitlines():
        digest, path = line.split("  ", 1)
        sums[os.path.relpath(path, ".")] = digest
    assert sums == {path: entry.sha1 for path, entry in files.items()}


def test_python_open_seek_read(mounted):
    _, snap, source, _ = mounted
    original = _read(os.path.join(source, "large.bin"))
    rng = random.Random(3)
    with open(os.path.join(snap, "large.bin"), "rb") as file:
        assert os.fstat(file.fileno()).st_size == len(original)
        for _ in range(200):
            offset, size = rng.randrange(len(original)), rng.choice((1, 100, 4096, 1 << 20))
            file.seek(offset)
            assert file.read(size) == original[offset:offset + size]
        file.seek(-10, os.SEEK_END)
        assert file.read() == original[-10:]


def test_numpy_memory_map(mounted):
    import numpy

    _, snap, source, _ = mounted
    mapped = numpy.load(os.path.join(snap, "array.npy"), mmap_mode="r")
    assert numpy.array_equal(mapped, numpy.load(os.path.join(source, "array.npy")))
    assert mapped[499, 499] == 249_999


def test_sqlite_reads_a_database_read_only(mounted):
    _, snap, source, _ = mounted
    query = "select count(*), max(name) from items"
    uri = f"file:{os.path.join(snap, 'db.sqlite')}?mode=ro&immutable=1"
    with sqlite3.connect(uri, uri=True) as db:
        ours = db.execute(query).fetchall()
    with sqlite3.connect(os.path.join(source, "db.sqlite")) as db:
        assert ours == db.execute(query).fetchall() == [(5000, "item 999")]
    cli = _run("sqlite3", "-readonly", os.path.join(snap, "db.sqlite"), "select count(*) from items;")
    assert cli.strip() == b"5000"


def test_writes_fail_with_erofs(mounted):
    _, snap, _, _ = mounted
    attempts = [
        lambda: open(os.path.join(snap, "new.txt"), "wb"),
        lambda: open(os.path.join(snap, "hello.txt"), "r+b"),
        lambda: os.mkdir(os.path.join(snap, "newdir")),
        lambda: os.unlink(os.path.join(snap, "hello.txt")),
        lambda: os.rename(os.path.join(snap, "hello.txt"), os.path.join(snap, "moved")),
        lambda: os.chmod(os.path.join(snap, "hello.txt"), 0o644),
        lambda: os.truncate(os.path.join(snap, "hello.txt"), 0),
        lambda: os.symlink("x", os.path.join(snap, "link")),
    ]
    for attempt in attempts:
        with pytest.raises(OSError) as refused:
            attempt()
        assert refused.value.errno == errno.EROFS


def test_bogus_hashes_give_enoent(mounted):
    mount, _, _, _ = mounted
    for path in (mount.path("sha1", "0" * 40), mount.path("sha1dir", "f" * 40),
                 mount.path("sha1", "nothex"), mount.path("md5", "0" * 32), mount.path("other")):
        with pytest.raises(FileNotFoundError):
            os.stat(path)


def test_plain_object_path_and_labels(mounted):
    mount, snap, source, files = mounted
    entry = files["hello.txt"]
    assert _read(mount.path("sha1", entry.sha1)) == _read(os.path.join(source, "hello.txt"))
    assert _read(os.path.join(snap + ".any-label", "hello.txt")) == _read(os.path.join(source, "hello.txt"))
    assert sorted(os.listdir(mount.mountpoint)) == ["md5", "sha1", "sha1dir"]


def test_sixteen_concurrent_readers(mounted):
    _, snap, source, _ = mounted
    large = _read(os.path.join(source, "large.bin"))
    smalls = [f"many/group{i // 1000:02d}/file{i:05d}.txt" for i in range(0, 10_000, 97)]
    failures = []

    def reader(seed):
        try:
            check(seed)
        except Exception as error:  # a thread's exception would be lost
            failures.append((seed, repr(error)))

    def check(seed):
        rng = random.Random(seed)
        with open(os.path.join(snap, "large.bin"), "rb", buffering=0) as file:
            for _ in range(40):
                offset = rng.randrange(len(large))
                if os.pread(file.fileno(), 65536, offset) != large[offset:offset + 65536]:
                    failures.append(("large", seed, offset))
        for relpath in rng.sample(smalls, 20):
            if _read(os.path.join(snap, relpath)) != _read(os.path.join(source, relpath)):
                failures.append((relpath, seed))
        digest = hashlib.sha1(_read(os.path.join(snap, "large.bin"))).hexdigest()
        if digest != hashlib.sha1(large).hexdigest():
            failures.append(("whole", seed))

    threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def _read(path):
    with open(path, "rb") as file:
        return file.read()


@pytest.mark.parametrize("verify_reads", [False, True])
def test_verify_reads_rehashes_a_stored_object_at_its_first_open(tmp_path, monkeypatch, verify_reads):
    """Same-size corruption of a stored object: by default only sizes are
    checked at open (served); with verify_reads = true the open is EIO."""
    storage = tmp_path / "store"
    data = b"stored bytes\n" * 1000
    (tmp_path / "f.txt").write_bytes(data)
    digest = Kachery(Config(storage_dir=str(storage))).store_file(str(tmp_path / "f.txt")).digest
    obj = storage / "sha1" / digest[:2] / digest[2:4] / digest[4:6] / digest
    os.chmod(obj, 0o644)
    obj.write_bytes(data[:-1] + b"!")
    if verify_reads:
        (tmp_path / "config.toml").write_text("verify_reads = true\n")
    monkeypatch.setenv("KACHERY_CONFIG", str(tmp_path / "config.toml"))
    with Mount(tmp_path / "mnt", storage) as mount:
        path = os.path.join(mount.mountpoint, "sha1", digest)
        if verify_reads:
            with pytest.raises(OSError) as raised:
                open(path, "rb").read()
            assert raised.value.errno == errno.EIO
        else:
            with open(path, "rb") as file:
                assert len(file.read()) == len(data)
