"""The conventions users of rclone, restic and git expect (issue 14), through
the real commands: --version, -h/--help, -q, -v on every command, and
kachery-ls with several URLs, -R and -h."""

import hashlib
import json
import os
import subprocess
import time

import pytest

from server_helpers import command_path
from test_new_user import env_for, run, run_on_a_terminal

COMMANDS = ["kachery", "kachery-store", "kachery-load", "kachery-info", "kachery-ls",
            "kachery-cat", "kachery-verify", "kachery-mount", "kachery-unmount", "kachery-server"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_version_and_help(tmp_path, command):
    from importlib.metadata import version

    result = run(command, tmp_path, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{command} {version('kachery')}"
    helps = ["--help"] if command == "kachery-ls" else ["-h", "--help"]
    for option in helps:
        result = run(command, tmp_path, option)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("Usage: ")
        assert "-q, --quiet" in result.stdout and "-v, --verbose" in result.stdout


@pytest.mark.parametrize("command", ["store", "load", "info", "ls", "cat", "verify", "config", "cache"])
def test_the_kachery_group_subcommands_follow_the_same_conventions(tmp_path, command):
    result = run("kachery", tmp_path, command, "--help" if command == "ls" else "-h")
    assert result.returncode == 0, result.stderr
    assert "-q, --quiet" in result.stdout


def test_verbose_shows_debug_messages_and_quiet_shows_only_the_error(tmp_path):
    dead = "http://127.0.0.1:9"
    url = "sha1://" + "0" * 40
    plain = run("kachery-load", tmp_path, "--remote", dead, url)
    verbose = run("kachery-load", tmp_path, "-vv", "--remote", dead, url)
    quiet = run("kachery-load", tmp_path, "-q", "--remote", dead, url)
    assert plain.returncode == verbose.returncode == quiet.returncode == 4
    assert "DEBUG" not in plain.stderr
    assert "DEBUG" in verbose.stderr
    assert quiet.stderr.strip().splitlines() == [line for line in plain.stderr.strip().splitlines()
                                                 if "error:" in line]


def test_quiet_draws_no_progress_on_a_terminal(tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(64 * 1024 * 1024))
    env = env_for(tmp_path / "store")
    status, drawn = run_on_a_terminal([command_path("kachery-store"), "-q", str(big)], env)
    assert status == 0
    assert drawn == ""
    status, drawn = run_on_a_terminal([command_path("kachery-store"), str(big)], env)
    assert status == 0 and "storing" in drawn


@pytest.fixture
def two_snapshots(tmp_path):
    """Two stored snapshots; yields (storage, url_a, url_b)."""
    storage = tmp_path / "store"
    urls = []
    for name in ("a", "b"):
        tree = tmp_path / name
        (tree / "sub" / "deeper").mkdir(parents=True)
        (tree / "top.txt").write_bytes(b"t" * 10)
        (tree / "sub" / "mid.bin").write_bytes(b"m" * 3000)
        (tree / "sub" / "deeper" / f"{name}.dat").write_bytes(b"d" * (2 * 1024 * 1024))
        result = run("kachery-store", storage, tree)
        assert result.returncode == 0, result.stderr
        urls.append(result.stdout.strip())
    return storage, urls[0], urls[1]


def test_ls_recursive_lists_every_path_below_the_url(two_snapshots):
    storage, url, _ = two_snapshots
    result = run("kachery-ls", storage, "-R", url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["sub/", "sub/deeper/", "sub/deeper/a.dat", "sub/mid.bin",
                                          "top.txt"]
    listed = json.loads(run("kachery-ls", storage, "-R", "--json", url).stdout)
    by_name = {item["name"]: item for item in listed}
    assert by_name["sub/deeper/a.dat"]["url"] == url + "/sub/deeper/a.dat"
    assert by_name["sub/deeper/a.dat"]["size"] == 2 * 1024 * 1024
    # Each listed URL really names that entry.
    cat = run("kachery-cat", storage, by_name["sub/mid.bin"]["url"])
    assert cat.stdout == "m" * 3000


def test_ls_human_sizes(two_snapshots):
    storage, url, _ = two_snapshots
    result = run("kachery-ls", storage, "-l", "-h", url + "/sub")
    assert result.returncode == 0, result.stderr
    sizes = {line.split()[-1]: " ".join(line.split()[:-1]) for line in result.stdout.splitlines()}
    assert sizes == {"deeper/": "2.0 MiB", "mid.bin": "2.9 KiB"}
    raw = run("kachery-ls", storage, "-l", url + "/sub").stdout
    assert "2097152  deeper/" in raw


def test_ls_of_several_urls_heads_each_listing(two_snapshots):
    storage, url_a, url_b = two_snapshots
    result = run("kachery-ls", storage, url_a + "/sub/deeper", url_b + "/sub/deeper")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{url_a}/sub/deeper:\na.dat\n\n{url_b}/sub/deeper:\nb.dat\n"
    listed = json.loads(run("kachery-ls", storage, "--json", url_a, url_b).stdout)
    assert set(listed) == {url_a, url_b}


def test_ls_of_several_urls_prints_nothing_when_one_is_missing(two_snapshots):
    storage, url_a, _ = two_snapshots
    missing = "sha1dir://" + "1" * 40 + ".gone"
    result = run("kachery-ls", storage, url_a, missing)
    assert result.returncode != 0
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1


def test_one_line_enables_completion_of_every_command(tmp_path):
    script = ('eval "$(kachery completion bash)"\n'
              'complete -p | grep -o "kachery[a-z-]*$" | sort\n')
    result = subprocess.run(["bash", "-c", script], env=env_for(tmp_path), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == sorted(COMMANDS)
    # What the shell then asks a command: its options and kachery's subcommands.
    for program, words, expected in (("kachery-ls", "kachery-ls --rec", "--recursive"),
                                     ("kachery", "kachery d", "du")):
        variable = "_" + program.replace("-", "_").upper() + "_COMPLETE"
        env = dict(env_for(tmp_path), COMP_WORDS=words, COMP_CWORD="1", **{variable: "bash_complete"})
        answer = subprocess.run([command_path(program)], env=env, capture_output=True, text=True,
                                timeout=60)
        assert f"plain,{expected}" in answer.stdout.split(), answer.stdout


def server_log(tmp_path, *flags):
    """What kachery-server with ``flags`` writes to stderr while it answers one request."""
    import requests

    from server_helpers import free_port

    port = free_port()
    server = subprocess.Popen([command_path("kachery-server"), *flags, "--storage-dir",
                               str(tmp_path / "missing"), "--port", str(port)],
                              env=env_for(tmp_path), stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                answer = requests.get(f"http://127.0.0.1:{port}/sha1/00/00/00/{'0' * 40}", timeout=5)
                break
            except requests.ConnectionError:
                assert server.poll() is None and time.monotonic() < deadline, server.stderr.read()
                time.sleep(0.05)
        assert answer.status_code == 404
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=15)
    return stderr


def test_server_quiet_and_verbose_set_its_log_level(tmp_path):
    plain = server_log(tmp_path)
    assert "does not exist" in plain and "serving" in plain and "GET /sha1/00/00/00/" in plain
    assert "DEBUG" not in plain
    assert server_log(tmp_path, "-q") == ""  # errors only: no warning, banner or access log
    verbose = server_log(tmp_path, "-v")
    assert "serving" in verbose and "DEBUG" not in verbose
    debug = server_log(tmp_path, "-vv")
    assert "kachery: DEBUG:" in debug and "GET /sha1/00/00/00/" in debug


def test_completion_follows_the_conventions_too(tmp_path):
    quiet = run("kachery", tmp_path, "completion", "-q", "bash")
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert quiet.stdout == run("kachery", tmp_path, "completion", "bash").stdout
    result = run("kachery", tmp_path, "completion", "-h")
    assert result.returncode == 0 and "-q, --quiet" in result.stdout


@pytest.mark.parametrize("shell, registers", [
    ("zsh", "compdef _{function}_completion {program}"),
    ("fish", "complete --no-files --command {program} --arguments"),
])
def test_zsh_and_fish_completion_register_every_command(tmp_path, shell, registers):
    result = run("kachery", tmp_path, "completion", shell)
    assert result.returncode == 0, result.stderr
    for program in COMMANDS:
        line = registers.format(program=program, function=program.replace("-", "_"))
        assert line in result.stdout, line
    # What such a shell then asks a command answers in its own format (fish
    # passes the word being completed, zsh its index).
    env = dict(env_for(tmp_path), COMP_WORDS="kachery-ls --rec",
               COMP_CWORD="--rec" if shell == "fish" else "1",
               _KACHERY_LS_COMPLETE=f"{shell}_complete")
    answer = subprocess.run([command_path("kachery-ls")], env=env, capture_output=True, text=True,
                            timeout=60)
    assert "--recursive" in answer.stdout, answer.stdout


def test_verify_json_summarises_the_check(tmp_path):
    storage = tmp_path / "store"
    for name, content in (("good.txt", b"good\n"), ("bad.txt", b"soon rotten\n")):
        (tmp_path / name).write_bytes(content)
        assert run("kachery-store", storage, tmp_path / name).returncode == 0
    bad = next(path for path in storage.rglob("*")
               if path.is_file() and path.name == hashlib.sha1(b"soon rotten\n").hexdigest())
    bad.chmod(0o644)
    bad.write_bytes(b"rotten\n")
    result = run("kachery-verify", storage, "--json")
    assert result.returncode == 3, result.stderr
    summary = json.loads(result.stdout)
    assert summary["checked"] == 2 and summary["bytes"] == len(b"good\n") + len(b"rotten\n")
    assert summary["corrupt"] == [{"url": f"sha1://{bad.name}",
                                   "content_hash": hashlib.sha1(b"rotten\n").hexdigest(),
                                   "path": str(bad)}]
    assert summary["quarantined"] == [] and summary["temp_files_removed"] is None
    assert [area["root"] for area in summary["areas"]][0] == str(storage)
    moved = json.loads(run("kachery-verify", storage, "--json", "--quarantine", "--clean-temp").stdout)
    assert moved["quarantined"] == [str(storage / "quarantine" / "sha1" / bad.name)]
    assert moved["temp_files_removed"] == 0
    after = run("kachery-verify", storage, "--json")
    assert after.returncode == 0 and json.loads(after.stdout)["corrupt"] == []
    human = run("kachery-verify", storage)  # the default: a line per area on stderr
    assert human.stdout == "" and f"{storage}: checked 1 object(s), 5 B, 0 corrupt" in human.stderr


def test_config_and_cache_are_human_by_default(tmp_path):
    storage = tmp_path / "store"
    config_file = tmp_path / "config.toml"
    config_file.write_text('cache_max = "2G"\n')
    config = subprocess.run([command_path("kachery"), "config", "--remote", "http://127.0.0.1:9"],
                            env=dict(env_for(storage), KACHERY_CONFIG=str(config_file)),
                            capture_output=True, text=True, timeout=60)
    assert config.returncode == 0, config.stderr
    assert config.stdout.splitlines() == [
        f"storage dir: {storage}", f"config file: {config_file}", "remotes:",
        "  http://127.0.0.1:9", "cache max:   2.0 GiB (2147483648 bytes)"]
    assert json.loads(run("kachery", storage, "config", "--json").stdout)["storage_dir"] == str(storage)
    cache = run("kachery", storage, "cache")
    assert cache.returncode == 0, cache.stderr
    shown = dict(line.split(":", 1) for line in cache.stdout.splitlines() if ":" in line)
    assert shown["objects"].strip() == "0" and shown["bytes"].strip() == "0 B"
    assert shown["cache dir"].strip().startswith(str(storage))
    assert "{" not in cache.stdout
