"""Many writers of the same content at once, and a writer killed mid-store (SPEC §2)."""

import hashlib
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import _command_path
from tree_helpers import storage_dir  # noqa: F401  (tmpfs store)
from tree_helpers import list_objects, tree_sha1, write_tree

WRITERS = 8
KILL_SIZE = 300 * 1000 * 1000


def sha1_of_file(path):
    hasher = hashlib.sha1()
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            hasher.update(block)
    return hasher.hexdigest()


def assert_every_object_matches_its_name(root):
    for algorithm in ("sha1", "md5"):
        for relpath, digest in list_objects(root, algorithm):
            hasher = hashlib.new(algorithm)
            with open(os.path.join(root, algorithm, relpath), "rb") as file:
                hasher.update(file.read())
            assert hasher.hexdigest() == digest, relpath


def temp_files(root):
    temp_dir = os.path.join(root, "tmp")
    return os.listdir(temp_dir) if os.path.isdir(temp_dir) else []


def test_concurrent_writers_of_the_same_content(run_cli, storage_dir, tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(8 * 1024 * 1024 + 77))  # three chunks: file + manifest objects
    spec = {f"d{d}": {f"f{i}": b"%d-%d\n" % (d, i) * i for i in range(25)} for d in range(3)}
    spec["same"] = {"a": b"shared", "b": b"shared"}
    src = tmp_path / "tree"
    write_tree(src, spec)

    procs = [
        subprocess.Popen([_command_path("kachery-store"), str(big), str(src)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(WRITERS)
    ]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err.decode()
    assert len({out for out, _ in outputs}) == 1
    file_url, dir_url = outputs[0][0].decode().splitlines()
    assert file_url.startswith(f"sha1://{sha1_of_file(big)}/big.bin?manifest=")
    assert dir_url == f"sha1dir://{tree_sha1(spec)}.tree"

    def contents(tree):
        for value in tree.values():
            yield from contents(value) if isinstance(value, dict) else [hashlib.sha1(value).hexdigest()]

    expected = set(contents(spec)) | {tree_sha1(spec), sha1_of_file(big), file_url.rsplit("=", 1)[1]}
    names = [digest for _, digest in list_objects(storage_dir)]
    assert sorted(names) == sorted(expected)  # one object each, nothing else
    assert temp_files(storage_dir) == []
    assert_every_object_matches_its_name(storage_dir)
    verify = run_cli("kachery-verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr


@pytest.fixture(scope="module")
def random_300mb(tmp_path_factory):
    path = tmp_path_factory.mktemp("kill") / "random.bin"
    with open("/dev/urandom", "rb") as source, open(path, "wb") as target:
        remaining = KILL_SIZE
        while remaining:
            block = source.read(min(remaining, 8 << 20))
            target.write(block)
            remaining -= len(block)
    yield path
    os.unlink(path)


def _growing_temp(root, deadline, min_size=1):
    """Wait until a temp file under <root>/tmp/ holds min_size bytes; return its path."""
    temp_dir = os.path.join(root, "tmp")
    while time.monotonic() < deadline:
        for name in temp_files(root):
            path = os.path.join(temp_dir, name)
            try:
                if os.path.getsize(path) >= min_size:
                    return path
            except FileNotFoundError:
                pass
        time.sleep(0.002)
    return None


def test_sigkill_mid_store_leaves_no_object(run_cli, storage_dir, random_300mb):
    proc = subprocess.Popen([_command_path("kachery-store"), str(random_300mb)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        temp = _growing_temp(storage_dir, time.monotonic() + 60)
        assert temp is not None, "no temp file appeared"
        proc.send_signal(signal.SIGKILL)
    finally:
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the store finished before it could be killed"
    assert out == b""
    # Nothing under a valid object name; the partial data only under <root>/tmp/
    # (and the dead writer's lock in <root>/locks/, by which cleaners know it).
    assert list_objects(storage_dir, "sha1") == [] and list_objects(storage_dir, "md5") == []
    assert temp_files(storage_dir) != []
    for dirpath, _, filenames in os.walk(storage_dir):
        for name in filenames:
            assert os.path.relpath(dirpath, storage_dir) in ("tmp", "locks"), os.path.join(dirpath, name)
    from kachery_core.store import LocalStore

    left = len(temp_files(storage_dir))
    assert LocalStore(storage_dir).remove_stale_temps() == left > 0
    assert temp_files(storage_dir) == [] and os.listdir(os.path.join(storage_dir, "locks")) == []

    verify = run_cli("kachery", "verify", "--clean-temp")
    assert verify.returncode == 0, verify.stderr
    assert temp_files(storage_dir) == []
    assert run_cli("kachery-verify").returncode == 0


def test_sigkill_between_objects_of_a_directory(run_cli, storage_dir, tmp_path, random_300mb):
    """Killed while storing a directory: small files may be published, all of them intact."""
    src = tmp_path / "src"
    write_tree(src, {"a": {f"f{i}": b"x%d" % i for i in range(50)}})
    os.symlink(random_300mb, src / "z-big")  # stored after the small files
    proc = subprocess.Popen([_command_path("kachery-store"), str(src)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert _growing_temp(storage_dir, time.monotonic() + 60, min_size=4 << 20) is not None
        proc.send_signal(signal.SIGKILL)
    finally:
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL and out == b""
    assert_every_object_matches_its_name(storage_dir)
    sizes = [os.path.getsize(os.path.join(storage_dir, "sha1", rel)) for rel, _ in list_objects(storage_dir)]
    assert KILL_SIZE not in sizes  # the interrupted big file was not published
    assert run_cli("kachery-verify", "--clean-temp").returncode == 0
    assert temp_files(storage_dir) == []



def _interrupt_a_store(storage_dir, path):
    proc = subprocess.Popen([_command_path("kachery-store"), str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert _growing_temp(storage_dir, time.monotonic() + 60) is not None
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)  # a hang at exit fails here
    finally:
        proc.kill()
        proc.wait()
    return proc.returncode, out, err.decode()


def test_sigint_mid_store_cleans_up(storage_dir, random_300mb):
    """Ctrl-C: a short message, a failure status, no object and no temp file left."""
    status, out, err = _interrupt_a_store(storage_dir, random_300mb)
    assert status != 0 and out == b""
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert list_objects(storage_dir, "sha1") == []
    assert temp_files(storage_dir) == []


def test_sigint_exit_status_is_130(storage_dir, random_300mb):
    status, _, err = _interrupt_a_store(storage_dir, random_300mb)
    assert status == 130, err


def _peak_rss_mib(args):
    """Run a command in a fresh parent; return (returncode, stdout, its peak RSS in MiB)."""
    code = (
        "import resource, subprocess, sys\n"
        "result = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE)\n"
        "print(result.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,"
        " result.stdout.decode()[:200])\n"
    )
    result = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                            timeout=120, check=True)
    out = result.stdout.decode().split()
    assert result.stderr == b"", result.stderr.decode()
    return int(out[0]), out[2:], int(out[1]) / 1024


def test_peak_memory_of_store_and_cat_is_bounded(storage_dir, random_300mb):
    """Issue 2: peak memory of any command stays under 100 MB whatever the file size."""
    status, (url,), store_mib = _peak_rss_mib([_command_path("kachery-store"), random_300mb])
    assert status == 0
    assert store_mib < 100, f"kachery-store of 300 MB peaked at {store_mib:.0f} MiB"
    status, _, cat_mib = _peak_rss_mib(["sh", "-c", f'{_command_path("kachery-cat")} "$0" | wc -c', url])
    assert status == 0 and _ == [str(KILL_SIZE)]
    assert cat_mib < 100, f"kachery-cat of 300 MB peaked at {cat_mib:.0f} MiB"
