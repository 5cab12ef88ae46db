"""End-to-end tests: the installed commands as subprocesses on real directories."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import time

import pytest

from conftest import _command_path
from tree_helpers import storage_dir  # noqa: F401  (tmpfs store)
from tree_helpers import (
    fast_root,
    files_outside,
    list_objects,
    object_path,
    put_object,
    read_tree,
    tree_sha1,
    tree_to_manifest_json,
    write_tree,
)

SHA1DIR_RE = re.compile(r"^sha1dir://([0-9a-f]{40})(?:\.(.*))?$")
LARGE = 20 * 1000 * 1000  # > 4 MiB: several chunks


def sha1(data):
    return hashlib.sha1(data).hexdigest()


def stdout_lines(result):
    return result.stdout.decode().splitlines()


def assert_clean_error(result, code, *words):
    """Exit ``code``, nothing on stdout, ONE line on stderr, no traceback."""
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == code, (result.returncode, stderr)
    assert "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert result.stdout == b""
    for word in words:
        assert word in stderr, (word, stderr)


@pytest.fixture
def store(run_cli, storage_dir):
    """store(*args) -> the lines kachery-store printed (must succeed)."""

    def run(*args):
        return stdout_lines(run_cli("kachery-store", *args, check=True))

    return run


SAMPLE = {
    "top.txt": b"top level\n",
    "empty-file": b"",
    "empty-dir": {},
    "nested": {"deeper": {"deepest": {"leaf.bin": bytes(range(256)) * 3, "also-empty": {}}},
               "sibling.txt": b"sibling"},
    "unicode": {"é-accent.txt": b"e acute", "日本語": b"japanese", "emoji-😀": b"smile",
                "Ω": {"ß": b"sharp s"}},
    "same-1": b"duplicate content",
    "same-2": b"duplicate content",
    "name with spaces & 'quotes'": b"q",
}


@pytest.fixture
def sample_dir(tmp_path):
    root = tmp_path / "sample"
    write_tree(root, SAMPLE)
    return root


# ----------------------------------------------------------------- storing

def test_store_and_load_nested_tree(store, run_cli, sample_dir, storage_dir, tmp_path):
    (url,) = store(sample_dir)
    match = SHA1DIR_RE.match(url)
    assert match, url
    assert match.group(2) == "sample"
    # The hash is the sha1 of the canonical manifest computed independently (SPEC §3).
    assert match.group(1) == tree_sha1(SAMPLE)
    with open(object_path(storage_dir, "sha1", match.group(1)), "rb") as file:
        assert file.read() == tree_to_manifest_json(SAMPLE).encode()
    # every distinct file content plus the manifest, nothing more
    contents = set()

    def collect(spec):
        for value in spec.values():
            collect(value) if isinstance(value, dict) else contents.add(sha1(value))

    collect(SAMPLE)
    assert {digest for _, digest in list_objects(storage_dir)} == contents | {match.group(1)}

    dest = tmp_path / "restored"
    result = run_cli("kachery-load", url, "--dest", dest, check=True)
    assert stdout_lines(result) == [str(dest)]
    assert read_tree(dest) == SAMPLE
    assert run_cli("kachery-verify").returncode == 0


def test_same_content_from_two_paths_gives_same_url(store, tmp_path):
    one, two = tmp_path / "one" / "data", tmp_path / "two" / "other-name"
    write_tree(one, SAMPLE)
    write_tree(two, dict(reversed(list(SAMPLE.items()))))  # different creation order
    os.utime(two / "top.txt", (0, 0))  # metadata is not content
    (url_one,) = store(one)
    (url_two,) = store(two)
    assert SHA1DIR_RE.match(url_one).group(1) == SHA1DIR_RE.match(url_two).group(1)
    assert url_one.endswith(".data") and url_two.endswith(".other-name")


def test_label_option(store, sample_dir):
    (url,) = store("--label", "my label.v2", sample_dir)
    assert url == f"sha1dir://{tree_sha1(SAMPLE)}.my label.v2"


def test_label_with_slash_is_rejected(run_cli, storage_dir, sample_dir):
    """SPEC §1: a label may contain any character but '/' (it would read as a path)."""
    assert_clean_error(run_cli("kachery-store", "--label", "a/b", sample_dir), 2, "label")
    assert not os.path.exists(storage_dir / "sha1")


def test_symlinks_are_followed(store, tmp_path):
    real = tmp_path / "real"
    write_tree(real, {"target-dir": {"x": b"inside"}, "target.txt": b"pointed at"})
    src = tmp_path / "src"
    src.mkdir()
    (src / "plain").write_bytes(b"plain")
    os.symlink(real / "target.txt", src / "file-link")
    os.symlink(real / "target-dir", src / "dir-link")
    (url,) = store(src)
    expected = {"plain": b"plain", "file-link": b"pointed at", "dir-link": {"x": b"inside"}}
    assert SHA1DIR_RE.match(url).group(1) == tree_sha1(expected)


def test_symlink_to_a_file_stored_directly(store, tmp_path):
    (tmp_path / "real.txt").write_bytes(b"real")
    os.symlink(tmp_path / "real.txt", tmp_path / "link.txt")
    assert store(tmp_path / "link.txt") == [f"sha1://{sha1(b'real')}/link.txt"]


def test_fifo_is_skipped_with_a_warning(run_cli, storage_dir, tmp_path):
    src = tmp_path / "src"
    write_tree(src, {"a": b"a", "sub": {"b": b"b"}})
    os.mkfifo(src / "sub" / "the-fifo")
    result = run_cli("kachery-store", src, timeout=30)
    assert result.returncode == 0, result.stderr
    stderr = result.stderr.decode()
    assert "the-fifo" in stderr and "Traceback" not in stderr
    (url,) = stdout_lines(result)
    assert SHA1DIR_RE.match(url).group(1) == tree_sha1({"a": b"a", "sub": {"b": b"b"}})


def test_non_utf8_file_name_round_trips(store, run_cli, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    with open(os.path.join(os.fsencode(src), b"caf\xe9-latin1.txt"), "wb") as file:
        file.write(b"latin-1 name")
    (url,) = store(src)
    dest = tmp_path / "dest"
    run_cli("kachery-load", url, "--dest", dest, check=True)
    assert os.listdir(os.fsencode(dest)) == [b"caf\xe9-latin1.txt"]


def test_ten_thousand_small_files(store, run_cli, tmp_path):
    src = tmp_path / "many"
    spec = {}
    for d in range(100):
        spec[f"d{d:03}"] = {f"f{i:03}": f"{d}/{i}\n".encode() * (i % 7) for i in range(100)}
    write_tree(src, spec)
    started = time.monotonic()
    (url,) = store(src)
    dest = tmp_path / "back"
    run_cli("kachery-load", url, "--dest", dest, check=True)
    elapsed = time.monotonic() - started
    assert SHA1DIR_RE.match(url).group(1) == tree_sha1(spec)
    assert read_tree(dest) == spec
    # generous: the machine is shared; this only catches pathological slowness
    assert elapsed < 60, f"store + load of 10,000 files took {elapsed:.1f} s"


@pytest.fixture
def large_file(tmp_path):
    path = tmp_path / "big.bin"
    block = os.urandom(1 << 20)
    data = b"".join(block[i:] + block[:i] for i in range(LARGE >> 20)) + block[: LARGE % (1 << 20)]
    path.write_bytes(data)
    return path, data


def test_large_file_gets_a_valid_file_manifest(store, storage_dir, large_file):
    path, data = large_file
    (url,) = store(path)
    match = re.match(r"^sha1://([0-9a-f]{40})/big\.bin\?manifest=([0-9a-f]{40})$", url)
    assert match, url
    digest, manifest_hash = match.groups()
    assert digest == sha1(data)
    with open(object_path(storage_dir, "sha1", digest), "rb") as file:
        assert file.read() == data
    with open(object_path(storage_dir, "sha1", manifest_hash), "rb") as file:
        manifest_bytes = file.read()
    assert sha1(manifest_bytes) == manifest_hash
    manifest = json.loads(manifest_bytes)
    assert list(manifest) == ["size", "sha1", "chunks"]
    assert manifest["size"] == len(data) and manifest["sha1"] == digest
    # serialization as in SPEC §3/§4: default separators, key order as written
    assert json.dumps(manifest).encode() == manifest_bytes
    assert len(manifest["chunks"]) >= 2
    position = 0
    for chunk in manifest["chunks"]:
        assert list(chunk) == ["start", "end", "sha1"]
        assert chunk["start"] == position and chunk["end"] > position
        assert chunk["sha1"] == sha1(data[chunk["start"]:chunk["end"]])
        position = chunk["end"]
    assert position == len(data)
    chunk_size = manifest["chunks"][0]["end"]
    assert chunk_size & (chunk_size - 1) == 0 and (1 << 20) <= chunk_size <= (16 << 20)


def test_large_file_in_a_directory_carries_its_manifest(store, run_cli, large_file, tmp_path):
    path, data = large_file
    src = tmp_path / "with-big"
    src.mkdir()
    shutil.copy(path, src / "big.bin")
    (file_url,) = store(path)
    (dir_url,) = store(src)
    listing = json.loads(run_cli("kachery-ls", "--json", dir_url, check=True).stdout)
    (entry,) = listing
    assert entry["manifest"] == file_url.rsplit("=", 1)[1]
    assert entry["sha1"] == sha1(data) and entry["size"] == len(data)
    cat = run_cli("kachery-cat", f"{dir_url}/big.bin", "--start", 4194300, "--end", 4194400, check=True)
    assert cat.stdout == data[4194300:4194400]


def test_md5_algorithm(store, storage_dir, large_file, tmp_path):
    small = tmp_path / "small.txt"
    small.write_bytes(b"hello md5")
    path, data = large_file
    urls = store("--algorithm", "md5", small, path)
    assert urls == [f"md5://{hashlib.md5(b'hello md5').hexdigest()}/small.txt",
                    f"md5://{hashlib.md5(data).hexdigest()}/big.bin"]
    assert os.path.isfile(object_path(storage_dir, "md5", hashlib.md5(data).hexdigest()))
    assert list_objects(storage_dir, "sha1") == []


def test_json_output(store, sample_dir, tmp_path):
    small = tmp_path / "x.txt"
    small.write_bytes(b"12345")
    file_record, dir_record = [json.loads(line) for line in store("--json", small, sample_dir)]
    assert file_record["url"] == f"sha1://{sha1(b'12345')}/x.txt"
    assert file_record["size"] == 5 and file_record["sha1"] == sha1(b"12345")
    assert dir_record["url"] == f"sha1dir://{tree_sha1(SAMPLE)}.sample"


def test_one_url_per_path_in_order(store, tmp_path):
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"f{i}")
        paths[-1].write_bytes(b"%d" % i)
    assert store(*paths) == [f"sha1://{sha1(b'%d' % i)}/f{i}" for i in range(3)]


def test_kachery_group_is_the_same_command(run_cli, storage_dir, sample_dir):
    grouped = run_cli("kachery", "store", sample_dir, check=True)
    assert stdout_lines(grouped) == [f"sha1dir://{tree_sha1(SAMPLE)}.sample"]


# ------------------------------------------------------------- load / info

def put_tree(root, spec):
    """Write the objects of a snapshot of ``spec`` by hand; return the manifest sha1
    (the bytes kachery-store writes, as test_store_and_load_nested_tree checks)."""
    for value in spec.values():
        put_tree(root, value) if isinstance(value, dict) else put_object(root, value)
    return put_object(root, tree_to_manifest_json(spec).encode())


@pytest.fixture
def own_sample(storage_dir):
    """SAMPLE in this test's own store (for tests that damage the store)."""
    return f"sha1dir://{put_tree(storage_dir, SAMPLE)}.sample"


@pytest.fixture(scope="module")
def _shared_sample(tmp_path_factory):
    root = fast_root() or tmp_path_factory.mktemp("shared")
    write_tree(root / "sample", SAMPLE)
    env = {"KACHERY_STORAGE_DIR": str(root / "storage"), "KACHERY_CONFIG": str(root / "none.toml")}
    result = subprocess.run([_command_path("kachery-store"), str(root / "sample")],
                            env=_clean_env(env), capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr
    yield result.stdout.decode().strip(), env
    shutil.rmtree(root, ignore_errors=True)


def _clean_env(overrides):
    env = {k: v for k, v in os.environ.items() if k not in ("KACHERY_REMOTE", "KACHERY_TOKEN")}
    env.update(overrides)
    return env


@pytest.fixture
def stored_sample(_shared_sample, monkeypatch):
    """URL of SAMPLE in a store shared by the module (read-only tests: storing
    it once saves a subprocess per test). The environment points at that store."""
    url, env = _shared_sample
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("KACHERY_REMOTE", raising=False)
    monkeypatch.delenv("KACHERY_TOKEN", raising=False)
    return url


@pytest.fixture
def sample_storage(_shared_sample):
    return _shared_sample[1]["KACHERY_STORAGE_DIR"]


def test_load_file_and_subdir(run_cli, stored_sample, sample_storage, tmp_path):
    leaf = SAMPLE["nested"]["deeper"]["deepest"]["leaf.bin"]
    result = run_cli("kachery-load", f"{stored_sample}/nested/deeper/deepest/leaf.bin", check=True)
    (path,) = stdout_lines(result)
    assert path == object_path(sample_storage, "sha1", sha1(leaf))
    dest = tmp_path / "leaf-copy"
    result = run_cli("kachery-load", f"{stored_sample}//nested/deeper/deepest/leaf.bin", "--dest", dest,
                     check=True)
    assert stdout_lines(result) == [str(dest)] and dest.read_bytes() == leaf
    sub = tmp_path / "sub"
    run_cli("kachery-load", f"{stored_sample}/unicode/", "--dest", sub, check=True)
    assert read_tree(sub) == SAMPLE["unicode"]
    url = f"sha1://{sha1(leaf)}/whatever.name"
    other = tmp_path / "by-sha1"
    run_cli("kachery-load", url, "--dest", other, check=True)
    assert other.read_bytes() == leaf


def test_load_into_existing_destination_fails_cleanly(run_cli, stored_sample, tmp_path):
    dest = tmp_path / "exists"
    dest.mkdir()
    (dest / "keep").write_bytes(b"keep")
    inside = run_cli("kachery-load", stored_sample, "--dest", dest, check=True)  # as cp -r: inside
    copy = inside.stdout.decode().strip()
    assert os.path.dirname(copy) == str(dest) and os.path.basename(copy) != "keep"
    before = read_tree(dest)
    assert before["keep"] == b"keep"
    result = run_cli("kachery-load", stored_sample, "--dest", dest)  # that name exists now
    assert result.returncode != 0
    assert_clean_error(result, result.returncode)
    assert read_tree(dest) == before


def test_info(run_cli, stored_sample, sample_storage, tmp_path):
    data = SAMPLE["unicode"]["Ω"]["ß"]
    info = json.loads(run_cli("kachery-info", "--json", f"{stored_sample}/unicode/Ω/ß", check=True).stdout)
    assert info["size"] == len(data) and info["sha1"] == sha1(data)
    assert info["path"] == object_path(sample_storage, "sha1", sha1(data))
    with open(info["path"], "rb") as file:
        assert file.read() == data
    direct = json.loads(run_cli("kachery-info", "--json", f"sha1://{sha1(data).upper()}/n", check=True).stdout)
    assert (direct["path"], direct["size"], direct["sha1"]) == (info["path"], len(data), sha1(data))


def test_info_md5(run_cli, storage_dir, tmp_path):
    path = tmp_path / "m"
    path.write_bytes(b"md5 info")
    (url,) = stdout_lines(run_cli("kachery-store", "--algorithm", "md5", path, check=True))
    info = json.loads(run_cli("kachery-info", "--json", url, check=True).stdout)
    assert info["md5"] == hashlib.md5(b"md5 info").hexdigest() and info["size"] == 8
    assert os.path.samefile(info["path"], object_path(storage_dir, "md5", info["md5"]))


# ---------------------------------------------------------------------- ls

def test_ls(run_cli, stored_sample):
    names = stdout_lines(run_cli("kachery-ls", stored_sample, check=True))
    expected = sorted(f"{n}/" if isinstance(v, dict) else n for n, v in SAMPLE.items())
    assert sorted(names) == expected
    assert stdout_lines(run_cli("kachery-ls", f"{stored_sample}/nested", check=True)) == [
        "deeper/", "sibling.txt"]
    assert stdout_lines(run_cli("kachery-ls", f"{stored_sample}/empty-dir", check=True)) == []


def test_ls_long_and_json(run_cli, stored_sample):
    long = stdout_lines(run_cli("kachery-ls", "-l", f"{stored_sample}/unicode", check=True))
    sizes = {line.split()[-1]: int(line.split()[0]) for line in long}
    assert sizes == {"é-accent.txt": 7, "日本語": 8, "emoji-😀": 5, "Ω/": 7}
    entries = json.loads(run_cli("kachery-ls", "--json", f"{stored_sample}/unicode", check=True).stdout)
    by_name = {entry["name"]: entry for entry in entries}
    assert set(by_name) == {"é-accent.txt", "日本語", "emoji-😀", "Ω"}
    assert by_name["Ω"]["type"] == "dir"
    assert by_name["日本語"]["type"] == "file" and by_name["日本語"]["size"] == 8
    assert by_name["日本語"]["sha1"] == sha1(b"japanese")


# --------------------------------------------------------------------- cat

def test_cat_whole_and_ranges(run_cli, storage_dir, tmp_path):
    data = bytes(range(256)) * 40 + b"tail"
    path = tmp_path / "c.bin"
    path.write_bytes(data)
    (url,) = stdout_lines(run_cli("kachery-store", path, check=True))
    assert run_cli("kachery-cat", url, check=True).stdout == data
    size = len(data)
    for start, end in [(5, 100), (100, size + 1000), (size - 1, None), (7, 7), (size + 10, None)]:
        args = ["--start", start] + ([] if end is None else ["--end", end])
        got = run_cli("kachery-cat", url, *args, check=True).stdout
        assert got == data[start:end], (start, end)


def test_cat_range_of_large_file(run_cli, storage_dir, large_file):
    path, data = large_file
    (url,) = stdout_lines(run_cli("kachery-store", path, check=True))
    for start, end in [(4 * 1024 * 1024 - 3, 8 * 1024 * 1024 + 3), (LARGE - 10, LARGE + 10)]:
        got = run_cli("kachery-cat", url, "--start", start, "--end", end, check=True).stdout
        assert got == data[start:end]
    assert run_cli("kachery-cat", url, check=True).stdout == data


def test_cat_into_head_exits_cleanly(run_cli, storage_dir, large_file, tmp_path):
    path, data = large_file
    (url,) = stdout_lines(run_cli("kachery-store", path, check=True))
    script = f'kachery-cat "{url}" 2>"{tmp_path}/err" | head -c 10; echo "status=${{PIPESTATUS[0]}}"'
    result = subprocess.run(["bash", "-c", script], capture_output=True, timeout=60)
    assert result.stdout == data[:10] + b"status=0\n"
    assert (tmp_path / "err").read_bytes() == b""


def test_ls_into_head_exits_cleanly(storage_dir, tmp_path):
    spec = {f"f{i:05}": b"" for i in range(5000)}  # more than a pipe buffer of names
    url = f"sha1dir://{put_tree(storage_dir, spec)}"
    script = f'kachery-ls -l "{url}" 2>"{tmp_path}/err" | head -n 1; echo "status=${{PIPESTATUS[0]}}"'
    result = subprocess.run(["bash", "-c", script], capture_output=True, timeout=60)
    assert result.stdout.decode().split() == ["0", "f00000", "status=0"]
    assert (tmp_path / "err").read_bytes() == b""


def test_load_range_writes_only_those_bytes(run_cli, storage_dir, large_file, tmp_path):
    path, data = large_file
    (url,) = stdout_lines(run_cli("kachery-store", path, check=True))
    for start, end in [(4 * 1024 * 1024 - 3, 8 * 1024 * 1024 + 3), (LARGE - 10, LARGE + 10), (7, 7)]:
        dest = tmp_path / f"part-{start}"
        result = run_cli("kachery-load", url, "--start", start, "--end", end, "--dest", dest,
                         check=True)
        assert stdout_lines(result) == [str(dest)]
        assert dest.read_bytes() == data[start:end]
    only_start = tmp_path / "tail"
    run_cli("kachery-load", url, "--start", LARGE - 4, "--dest", only_start, check=True)
    assert only_start.read_bytes() == data[-4:]


def test_load_range_usage_errors(run_cli, stored_sample, tmp_path):
    no_dest = run_cli("kachery-load", f"{stored_sample}/top.txt", "--start", 1)
    assert_clean_error(no_dest, 2, "--dest")
    backwards = run_cli("kachery-load", f"{stored_sample}/top.txt", "--start", 5, "--end", 2,
                        "--dest", tmp_path / "x")
    assert_clean_error(backwards, 2, "--end")
    directory = run_cli("kachery-load", stored_sample, "--end", 2, "--dest", tmp_path / "y")
    assert_clean_error(directory, 2, "directory")
    assert not os.path.exists(tmp_path / "x") and not os.path.exists(tmp_path / "y")


def test_cat_end_before_start_is_invalid(run_cli, stored_sample):
    result = run_cli("kachery-cat", f"{stored_sample}/top.txt", "--start", 5, "--end", 2)
    assert_clean_error(result, 2, "--end")


def test_usage_errors_are_one_line(run_cli, stored_sample):
    result = run_cli("kachery-cat", f"{stored_sample}/top.txt", "--start", -1)
    assert_clean_error(result, 2)


@pytest.mark.parametrize("command, args", [
    ("kachery-ls", ["--bogus", "x"]), ("kachery", ["bogus"]),
])
def test_more_usage_errors_are_one_line(run_cli, storage_dir, command, args):
    assert_clean_error(run_cli(command, *args), 2)


def test_store_without_paths_or_piped_input_is_a_usage_error(storage_dir):
    result = subprocess.run([_command_path("kachery-store")], stdin=subprocess.DEVNULL,
                            capture_output=True, timeout=60)
    assert_clean_error(result, 2, "standard input")


def test_help_still_works(run_cli, storage_dir):
    result = run_cli("kachery-store", "--help")
    assert result.returncode == 0 and b"--algorithm" in result.stdout


# -------------------------------------------------------- errors and codes

MISSING = "0" * 40
COMMANDS = ["kachery-load", "kachery-info", "kachery-ls", "kachery-cat"]


INVALID_URLS = [
    "sha1://1234", "sha1://" + "g" * 40, "", "sha3://" + "a" * 40, "md5://" + "a" * 40,
    f"sha1dir://{MISSING}/a/../b", "not a url", f"sha1://{MISSING}?manifest=zz",
]


# every URL with one command and every command with two URLs (subprocesses are slow)
@pytest.mark.parametrize("command, url", [
    (COMMANDS[i % len(COMMANDS)], url) for i, url in enumerate(INVALID_URLS)
])
def test_invalid_url_exits_2(run_cli, storage_dir, command, url):
    result = run_cli(command, url)
    assert_clean_error(result, 2)
    if url:
        assert url in result.stderr.decode()


@pytest.mark.parametrize("command", COMMANDS)
def test_not_found_exits_1(run_cli, storage_dir, command):
    url = f"sha1dir://{MISSING}" if command == "kachery-ls" else f"sha1://{MISSING}/x"
    assert_clean_error(run_cli(command, url), 1, MISSING)


@pytest.mark.parametrize("command", ["kachery-load", "kachery-ls"])
def test_path_missing_in_snapshot_exits_1(run_cli, stored_sample, command):
    assert_clean_error(run_cli(command, f"{stored_sample}/nested/nope"), 1, "nope")


def test_store_missing_path_exits_1(run_cli, storage_dir, tmp_path):
    assert_clean_error(run_cli("kachery-store", tmp_path / "does-not-exist"), 1, "does-not-exist")


def test_file_vs_directory_mixups_exit_2(run_cli, stored_sample):
    assert_clean_error(run_cli("kachery-cat", f"{stored_sample}/nested"), 2)
    assert_clean_error(run_cli("kachery-ls", f"{stored_sample}/top.txt"), 2)
    assert_clean_error(run_cli("kachery-ls", f"sha1://{sha1(SAMPLE['top.txt'])}"), 2)


def _manifest_hash(url):
    return SHA1DIR_RE.match(url).group(1)


def test_corrupt_manifest_not_json_exits_3(run_cli, own_sample, storage_dir):
    path = object_path(storage_dir, "sha1", _manifest_hash(own_sample))
    with open(path, "r+b") as file:
        file.truncate(20)
    for command in ("kachery-cat", "kachery-load"):
        assert_clean_error(run_cli(command, f"{own_sample}/top.txt"), 3)


def test_corrupt_manifest_still_json_exits_3(run_cli, own_sample, storage_dir):
    """A bit flip that keeps the JSON valid must not be served (its sha1 no longer matches)."""
    path = object_path(storage_dir, "sha1", _manifest_hash(own_sample))
    with open(path, "rb") as file:
        data = file.read()
    tampered = data.replace(b'"size": 10,', b'"size": 11,', 1)
    assert tampered != data
    with open(path, "wb") as file:
        file.write(tampered)
    for command in ("kachery-cat", "kachery-info"):
        assert_clean_error(run_cli(command, f"{own_sample}/top.txt"), 3)


def test_verify_reports_corrupt_object_and_quarantine(run_cli, own_sample, storage_dir):
    data = SAMPLE["nested"]["sibling.txt"]
    path = object_path(storage_dir, "sha1", sha1(data))
    with open(path, "wb") as file:
        file.write(b"SIBLING")
    result = run_cli("kachery-verify")
    assert result.returncode == 3
    assert "Traceback" not in result.stderr.decode()
    assert sha1(data) in result.stdout.decode()
    assert result.stdout.decode().count("CORRUPT") == 1
    grouped = run_cli("kachery", "verify", "--quarantine")
    assert grouped.returncode == 3
    assert not os.path.exists(path)
    assert any(sha1(data) in name for _, _, names in os.walk(storage_dir) for name in names)
    assert run_cli("kachery-verify").returncode == 0
    # the object is gone from its name: reading it is now "not found", never wrong bytes
    assert_clean_error(run_cli("kachery-cat", f"{own_sample}/nested/sibling.txt"), 1)


MALICIOUS = {
    "dotdot file": {"files": {"..": {"size": 4, "sha1": sha1(b"evil")}}, "dirs": {}},
    "traversal file": {"files": {"../../escaped": {"size": 4, "sha1": sha1(b"evil")}}, "dirs": {}},
    "absolute file": {"files": {"/tmp/escaped": {"size": 4, "sha1": sha1(b"evil")}}, "dirs": {}},
    "dotdot dir": {"files": {}, "dirs": {"..": {"files": {"escaped": {"size": 4, "sha1": sha1(b"evil")}},
                                               "dirs": {}}}},
    "nul name": {"files": {"a\u0000b": {"size": 4, "sha1": sha1(b"evil")}}, "dirs": {}},
    "slash dir": {"files": {}, "dirs": {"a/../../b": {"files": {}, "dirs": {}}}},
    "size is a string": {"files": {"f": {"size": "4", "sha1": sha1(b"evil")}}, "dirs": {}},
    "sha1 is a path": {"files": {"f": {"size": 4, "sha1": "../../../../../../../../etc/passwd"}}, "dirs": {}},
    "files is a list": {"files": ["f"], "dirs": {}},
    "dirs is a string": {"files": {}, "dirs": "x"},
    "document is a list": [{"files": {}, "dirs": {}}],
    "negative size": {"files": {"f": {"size": -4, "sha1": sha1(b"evil")}}, "dirs": {}},
}


# the parser is tested on every kind of bad manifest in test_manifest.py; here
# a representative set goes through the real command (one subprocess each)
LOAD_CASES = ["dotdot file", "traversal file", "dotdot dir", "nul name", "slash dir",
              "size is a string", "sha1 is a path", "document is a list"]


@pytest.mark.parametrize("document", [MALICIOUS[k] for k in LOAD_CASES], ids=LOAD_CASES)
def test_malicious_manifest(run_cli, storage_dir, tmp_path, document):
    put_object(storage_dir, b"evil")
    digest = put_object(storage_dir, json.dumps(document).encode())
    url = f"sha1dir://{digest}.evil"
    work = tmp_path / "work"
    work.mkdir()
    dest = work / "dest"
    result = run_cli("kachery-load", url, "--dest", dest)
    assert_clean_error(result, 3, digest)
    assert not os.path.lexists(dest)
    assert os.listdir(work) == []
    assert files_outside(tmp_path, [storage_dir, work]) == []


@pytest.mark.parametrize("command", ["kachery-ls", "kachery-info", "kachery-cat"])
def test_malicious_manifest_other_commands(run_cli, storage_dir, command):
    put_object(storage_dir, b"evil")
    for document in (MALICIOUS["traversal file"], MALICIOUS["size is a string"]):
        digest = put_object(storage_dir, json.dumps(document).encode())
        url = f"sha1dir://{digest}.evil" + ("/f" if command == "kachery-cat" else "")
        assert_clean_error(run_cli(command, url), 3, digest)


def test_existing_0_6_store_via_commands(run_cli, storage_dir, tmp_path):
    """A storage directory as kachery 0.6.x left it: objects, bookkeeping files and a
    manifest in os.listdir order with md5-only (git-annex) entries."""
    a = put_object(storage_dir, b"alpha\n")
    b = put_object(storage_dir, b"beta (md5)\n", "md5")
    with open(object_path(storage_dir, "sha1", a) + ".record.json", "w") as file:
        file.write('{"stat": {}, "sha1": "%s"}' % a)
    manifest = json.dumps({"files": {"z.txt": {"size": 6, "sha1": a}},
                           "dirs": {"sub": {"files": {"b.txt": {"size": 11, "md5": b}}, "dirs": {}}}})
    digest = put_object(storage_dir, manifest.encode())
    url = f"sha1dir://{digest}.old"
    assert stdout_lines(run_cli("kachery-ls", "-l", url + "/sub", check=True))[0].split() == ["11", "b.txt"]
    assert run_cli("kachery-cat", url + "/sub/b.txt", check=True).stdout == b"beta (md5)\n"
    dest = tmp_path / "out"
    run_cli("kachery-load", url, "--dest", dest, check=True)
    assert read_tree(dest) == {"z.txt": b"alpha\n", "sub": {"b.txt": b"beta (md5)\n"}}
    result = run_cli("kachery-verify")
    assert result.returncode == 0, result.stdout + result.stderr


def test_load_with_missing_object_leaves_nothing(run_cli, storage_dir, tmp_path):
    present = put_object(storage_dir, b"present")
    manifest = json.dumps({"files": {"a": {"size": 7, "sha1": present},
                                     "b": {"size": 3, "sha1": MISSING}}, "dirs": {}})
    digest = put_object(storage_dir, manifest.encode())
    work = tmp_path / "work"
    work.mkdir()
    result = run_cli("kachery-load", f"sha1dir://{digest}", "--dest", work / "dest")
    assert_clean_error(result, 1, MISSING)
    assert os.listdir(work) == []


def test_load_dest_in_new_parent_directory(run_cli, stored_sample, tmp_path):
    dest = tmp_path / "new" / "parent" / "dest"
    run_cli("kachery-load", f"{stored_sample}/nested", "--dest", dest, check=True)
    assert read_tree(dest) == SAMPLE["nested"]


@pytest.mark.parametrize("content", ["storage_dir = [1, 2]\n", "storage_dir = \n"])
def test_bad_config_file_is_one_line_exit_2(run_cli, storage_dir, tmp_path, content):
    config = tmp_path / "bad.toml"
    config.write_text(content)
    small = tmp_path / "f"
    small.write_bytes(b"f")
    result = run_cli("kachery-store", small, env={"KACHERY_CONFIG": str(config), "KACHERY_STORAGE_DIR": ""})
    assert_clean_error(result, 2, "config")


def test_storage_dir_option(run_cli, storage_dir, tmp_path):
    other = tmp_path / "other"
    small = tmp_path / "f"
    small.write_bytes(b"elsewhere")
    (url,) = stdout_lines(run_cli("kachery-store", "--storage-dir", other, small, check=True))
    assert os.path.isfile(object_path(other, "sha1", sha1(b"elsewhere")))
    assert not os.path.exists(storage_dir / "sha1")
    assert run_cli("kachery-cat", "--storage-dir", other, url, check=True).stdout == b"elsewhere"
    assert_clean_error(run_cli("kachery-cat", url), 1)


def test_load_default_destination_is_the_label(stored_sample, tmp_path):
    work = tmp_path / "cwd"
    work.mkdir()
    result = subprocess.run([_command_path("kachery-load"), stored_sample], cwd=work,
                            capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().strip() == str(work / "sample")
    assert read_tree(work / "sample") == SAMPLE
    sub = subprocess.run([_command_path("kachery-load"), stored_sample + "/nested/deeper"], cwd=work,
                         capture_output=True, timeout=60)
    assert sub.returncode == 0, sub.stderr
    assert read_tree(work / "deeper") == SAMPLE["nested"]["deeper"]


def test_info_of_a_directory(run_cli, stored_sample):
    info = json.loads(run_cli("kachery-info", "--json", stored_sample + "/nested", check=True).stdout)
    leaf = SAMPLE["nested"]["deeper"]["deepest"]["leaf.bin"]
    assert info["type"] == "dir" and info["sha1dir"] == _manifest_hash(stored_sample)
    assert info["files"] == 2 and info["size"] == len(leaf) + len(SAMPLE["nested"]["sibling.txt"])


@pytest.mark.parametrize("claimed", [3, 100])
def test_entry_size_that_disagrees_with_the_object(run_cli, storage_dir, claimed):
    digest = put_object(storage_dir, b"0123456789")
    manifest = json.dumps({"files": {"f": {"size": claimed, "sha1": digest}}, "dirs": {}})
    url = f"sha1dir://{put_object(storage_dir, manifest.encode())}/f"
    assert_clean_error(run_cli("kachery-cat", url), 3)


def _nested(root, depth):
    path = root
    for _ in range(depth):
        path = path / "d"
    path.mkdir(parents=True)
    (path / "leaf.txt").write_bytes(b"bottom\n")
    return "/".join(["d"] * depth) + "/leaf.txt"


def test_deep_tree_round_trips(run_cli, storage_dir, tmp_path):
    relpath = _nested(tmp_path / "deep", 300)
    url = run_cli("kachery-store", tmp_path / "deep", check=True).stdout.decode().strip()
    assert run_cli("kachery-cat", f"{url}/{relpath}", check=True).stdout == b"bottom\n"
    run_cli("kachery-load", url, "--dest", tmp_path / "copy", check=True)
    assert (tmp_path / "copy" / relpath).read_bytes() == b"bottom\n"


def test_too_deep_a_tree_is_one_clear_error(run_cli, storage_dir, tmp_path):
    _nested(tmp_path / "deep", 700)
    result = run_cli("kachery-store", tmp_path / "deep")
    assert_clean_error(result, 2, "nested too deeply")


def test_load_dest_copies_without_copy_file_range(run_cli, stored_sample, tmp_path, monkeypatch):
    """A kernel or file system that refuses copy_file_range(2) gets a plain copy."""
    import errno as errno_module

    import kachery_core as ka
    from kachery_core import api, export

    def refuse(*args, **kwargs):
        raise OSError(errno_module.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(export.os, "copy_file_range", refuse, raising=False)
    url = f"{stored_sample}/nested/deeper/deepest/leaf.bin"
    dest = tmp_path / "leaf.bin"
    assert ka.load_file(url, dest=str(dest)) == str(dest)
    assert dest.read_bytes() == SAMPLE["nested"]["deeper"]["deepest"]["leaf.bin"]
    ka.load_file(url, dest=str(dest))  # over an existing file, as kachery 0.6.x did
    assert dest.read_bytes() == SAMPLE["nested"]["deeper"]["deepest"]["leaf.bin"]
    copy = tmp_path / "tree"
    kachery = api.client()
    export.export_dir(kachery, kachery.resolve_dir(stored_sample).entry, copy)
    assert (copy / "nested" / "deeper" / "deepest" / "leaf.bin").read_bytes() == \
        SAMPLE["nested"]["deeper"]["deepest"]["leaf.bin"]
