"""Errors a new user makes (issue 14), through the real commands: each is one
line naming what to fix, with its own exit code, and nothing is half done."""

import hashlib
import json
import os
import subprocess
import sys

import pytest

from server_helpers import command_path, free_port
from test_new_user import env_for, run

NO_HASH = "sha1://" + "0" * 40


def assert_one_line(result, status, *words):
    assert result.returncode == status, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kachery"), result.stderr
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("remote", ["ftp://host/x", "not a url", "http://[::1", "example.org",
                                    "http://host:99999", "s3://", "http://"])
def test_an_invalid_remote_url_is_a_usage_error(tmp_path, remote):
    result = run("kachery-load", tmp_path, "--remote", remote, NO_HASH)
    assert_one_line(result, 2, "invalid remote URL", repr(remote))
    from_environment = run("kachery-cat", tmp_path, NO_HASH, remote=remote)
    assert_one_line(from_environment, 2, "invalid remote URL")


def test_remote_urls_that_are_fine_pass():
    from kachery_core.settings import valid_remote_url

    for url in ("http://127.0.0.1:8080", "https://kachery.example.org/base/", "s3://bucket/prefix",
                "http://[::1]:80"):
        assert valid_remote_url(url) == url


def test_server_usage_errors_are_one_line(tmp_path):
    env = env_for(tmp_path)
    for args, words in ((["--port", "99999"], ["--port", "99999"]),
                        (["--bogus"], ["--bogus", "kachery-server --help"]),
                        (["--host", "no-such-host.invalid", "--port", "0"], ["no-such-host.invalid"])):
        result = subprocess.run([command_path("kachery-server"), "--storage-dir", str(tmp_path), *args],
                                env=env, capture_output=True, text=True, timeout=30)
        assert_one_line(result, 2, *words)
    config = tmp_path / "server.toml"
    config.write_text("port = 70000\n")
    result = subprocess.run([command_path("kachery-server"), "--config", str(config),
                             "--storage-dir", str(tmp_path)], env=env, capture_output=True,
                            text=True, timeout=30)
    assert_one_line(result, 2, str(config), "port")


def test_server_warns_of_a_storage_directory_that_does_not_exist(tmp_path):
    missing = tmp_path / "not-yet"
    server = subprocess.Popen([command_path("kachery-server"), "--storage-dir", str(missing),
                               "--port", str(free_port())], env=env_for(tmp_path),
                              stderr=subprocess.PIPE, text=True)
    try:
        first = server.stderr.readline()
        assert first.startswith("kachery: WARNING:") and str(missing) in first
        assert "does not exist" in first
        assert "serving" in server.stderr.readline()
    finally:
        server.terminate()
        server.wait(timeout=15)


@pytest.fixture
def stored(tmp_path):
    """A store with a small file and a snapshot; yields (storage, file URL, dir URL)."""
    storage = tmp_path / "store"
    (tmp_path / "data.txt").write_bytes(b"data\n")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a.txt").write_bytes(b"a\n")
    urls = [run("kachery-store", storage, path).stdout.strip() for path in (tmp_path / "data.txt", tree)]
    return storage, urls[0], urls[1]


def test_load_into_a_directory_puts_the_file_inside_it(tmp_path, stored):
    storage, url, dir_url = stored
    target = tmp_path / "into"
    target.mkdir()
    result = run("kachery-load", storage, url, "--dest", target)
    assert result.returncode == 0, result.stderr
    assert (target / "data.txt").read_bytes() == b"data\n"
    assert result.stdout.strip() == str(target / "data.txt")
    result = run("kachery-load", storage, dir_url, "--dest", target)
    assert result.returncode == 0, result.stderr
    assert (target / "tree" / "a.txt").read_bytes() == b"a\n"


def test_load_to_stdout_and_errors_that_show_no_temp_name(tmp_path, stored):
    storage, url, dir_url = stored
    assert run("kachery-load", storage, url, "--dest", "-").stdout == "data\n"
    assert_one_line(run("kachery-load", storage, dir_url, "--dest", "-"), 2, "directory")
    missing_parent = tmp_path / "no" / "such" / "out.txt"
    line = assert_one_line(run("kachery-load", storage, url, "--dest", missing_parent), 1,
                           str(missing_parent))
    assert "partial" not in line
    assert not any("partial" in name for name in os.listdir(tmp_path))


@pytest.mark.parametrize("args", [
    ["kachery-cat", "{url}"], ["kachery-load", "{url}", "--dest", "-"], ["kachery-ls", "-l", "{dir_url}"],
    ["kachery-info", "{url}"], ["kachery-info", "--json", "{dir_url}"], ["kachery-store", "{file}"],
    ["kachery", "config"], ["kachery", "config", "--json"], ["kachery", "cache"],
])
def test_output_to_a_full_device_says_standard_output(tmp_path, stored, args):
    """Not "no space left on device" alone: that reads as the store's disk."""
    storage, url, dir_url = stored
    words = [arg.format(url=url, dir_url=dir_url, file=tmp_path / "data.txt") for arg in args]
    with open("/dev/full", "wb") as full:
        result = subprocess.run([command_path(words[0]), *words[1:]], env=env_for(storage),
                                stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
    assert_one_line(result, 6, "cannot write to standard output")


def test_cat_and_info_take_several_urls(stored):
    storage, url, dir_url = stored
    assert run("kachery-cat", storage, url, dir_url + "/a.txt", url).stdout == "data\na\ndata\n"
    bad = run("kachery-cat", storage, url, NO_HASH)
    assert bad.returncode == 1 and bad.stdout == ""  # every URL resolved before any output
    listed = json.loads(run("kachery-info", storage, "--json", url, dir_url).stdout)
    assert [item["type"] for item in listed] == ["file", "dir"]
    human = run("kachery-info", storage, url, dir_url).stdout
    assert "size:" in human and "5 B" in human and "files:" in human


def test_ls_of_a_file_hash_as_a_snapshot_is_not_corrupt(stored):
    storage, url, _ = stored
    digest = url.split("://")[1].split("/")[0]
    assert_one_line(run("kachery-ls", storage, f"sha1dir://{digest}"), 2, "not a snapshot",
                    f"sha1://{digest}")


def test_an_error_about_a_manifest_names_the_file(stored):
    storage, url, _ = stored
    file_url = "sha1://" + "1" * 40 + "/x.bin"
    other = url.split("://")[1].split("/")[0]  # an object that is no file manifest
    line = assert_one_line(run("kachery-cat", storage, f"{file_url}?manifest={other}"), 3)
    assert "?manifest= of sha1://" + "1" * 40 in line
    line = assert_one_line(run("kachery-cat", storage, f"{file_url}?manifest={'2' * 40}"), 1)
    assert "?manifest= of sha1://" + "1" * 40 in line


@pytest.mark.parametrize("content, words", [
    ("remote_timeout = -1\n", ["remote_timeout", "negative"]),
    ("remote_timeout = nan\n", ["remote_timeout", "finite", "nan"]),
    ("remote_timeout = inf\n", ["remote_timeout", "finite", "inf"]),
    ("remote_speed_time = -inf\n", ["remote_speed_time", "negative"]),
    ("remote_timeout = 'soon'\n", ["remote_timeout"]),
    ("cache_max = 'lots'\n", ["cache_max", "'lots'"]),
    ("verify_reads = 'maybe'\n", ["verify_reads"]),
    ("[[remotes]]\nurl = 'ftp://x'\n", ["invalid remote URL"]),
    ("storage_dir = 3\n", ["storage_dir"]),
])
def test_a_bad_config_value_names_its_key_and_file(tmp_path, content, words):
    config = tmp_path / "config.toml"
    config.write_text(content)
    env = dict(env_for(tmp_path), KACHERY_CONFIG=str(config))
    result = subprocess.run([command_path("kachery"), "config"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert_one_line(result, 2, str(config), *words)


def test_an_unknown_config_key_is_a_warning(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text("remote_timout = 5\n")  # sic
    env = dict(env_for(tmp_path), KACHERY_CONFIG=str(config))
    result = subprocess.run([command_path("kachery"), "config", "--json"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "unknown key 'remote_timout'" in result.stderr and str(config) in result.stderr
    assert json.loads(result.stdout)["storage_dir"] == str(tmp_path)


def test_a_token_that_cannot_be_sent_names_its_variable(tmp_path):
    env = dict(env_for(tmp_path), KACHERY_TOKEN="tökén")
    result = subprocess.run([command_path("kachery-cat"), NO_HASH], env=env, capture_output=True,
                            text=True, timeout=60)
    assert_one_line(result, 2, "KACHERY_TOKEN")


def test_verify_of_a_missing_store_and_label_on_a_file(tmp_path, stored):
    assert_one_line(run("kachery-verify", tmp_path / "missing"), 1, "does not exist")
    storage, _, _ = stored
    summary = run("kachery-verify", storage)
    assert summary.returncode == 0 and " B" in summary.stderr  # human sizes
    assert_one_line(run("kachery-store", storage, "--label", "x", tmp_path / "data.txt"), 2,
                    "--label", "data.txt")


def test_store_file_of_a_directory_names_the_path(tmp_path):
    script = ("import sys, kachery_core as ka\n"
              "try:\n    ka.store_file(sys.argv[1])\n"
              "except IsADirectoryError as error:\n    print(error)\n")
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env_for(tmp_path),
                            capture_output=True, text=True, timeout=60)
    assert str(tmp_path) in result.stdout and "directory" in result.stdout


def test_store_standard_input_and_only_hash(tmp_path):
    storage = tmp_path / "store"
    data = os.urandom(9 * 1024 * 1024)  # several chunks: a manifest too
    digest = hashlib.sha1(data).hexdigest()

    def store(*args):
        return subprocess.run([command_path("kachery-store"), *args], input=data,
                              env=env_for(storage), capture_output=True, timeout=60)

    only_hash = store("--only-hash", "-")
    assert only_hash.returncode == 0, only_hash.stderr
    url = only_hash.stdout.decode().strip()
    assert url.startswith(f"sha1://{digest}?manifest=")
    assert not storage.exists()  # nothing stored
    assert store().stdout.decode().strip() == url  # no argument, stdin a pipe: stdin
    cat = subprocess.run([command_path("kachery-cat"), url], env=env_for(storage),
                         capture_output=True, timeout=60)
    assert cat.stdout == data
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "f").write_bytes(b"f")
    dry = run("kachery-store", tmp_path / "other", "-n", tmp_path / "tree")
    real = run("kachery-store", tmp_path / "other", tmp_path / "tree")
    assert dry.stdout == real.stdout and dry.stdout.startswith("sha1dir://")


def test_du_and_rm_reclaim_space(tmp_path, stored):
    storage, url, dir_url = stored
    before = json.loads(run("kachery", storage, "du", "--json").stdout)
    assert before["store_objects"] == 3  # data.txt, a.txt, the manifest
    assert_one_line(run("kachery", storage, "rm", dir_url), 2, "-r")
    dry = run("kachery", storage, "rm", "-r", "-n", dir_url)
    assert "would remove 2 object(s)" in dry.stderr
    assert json.loads(run("kachery", storage, "du", "--json").stdout) == before
    removed = run("kachery", storage, "rm", "-r", dir_url)
    assert removed.returncode == 0 and "removed 2 object(s)" in removed.stderr
    assert run("kachery-ls", storage, dir_url).returncode == 1  # gone
    assert run("kachery", storage, "rm", url).returncode == 0
    after = json.loads(run("kachery", storage, "du", "--json").stdout)
    assert after["store_objects"] == 0 and after["store_bytes"] == 0
    assert_one_line(run("kachery", storage, "rm", url), 1, "not found")
    assert "store objects:" in run("kachery", storage, "du").stdout
