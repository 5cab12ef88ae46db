"""kachery-mount / kachery-unmount as commands: help, errors as one line, options."""

import json
import os
import time

import pytest

from fs_helpers import Mount, needs_fuse


@pytest.mark.parametrize("command", [("kachery-mount",), ("kachery-unmount",), ("kachery", "mount")])
def test_help(run_cli, command):
    result = run_cli(*command, "--help")
    assert result.returncode == 0
    assert b"MOUNTPOINT" in result.stdout


def test_unmount_of_a_plain_directory_is_one_line_error(run_cli, tmp_path):
    result = run_cli("kachery-unmount", tmp_path)
    assert result.returncode != 0
    assert result.stderr.decode().strip().splitlines() == [f"kachery: error: not mounted: {tmp_path}"]


@pytest.mark.usefixtures("fuse_backend")
def test_mount_on_a_missing_directory_fails_cleanly(run_cli, storage_dir, tmp_path):
    result = run_cli("kachery-mount", tmp_path / "missing", timeout=30)
    assert result.returncode != 0
    assert result.returncode == 2  # a usage error: nothing was tried
    assert result.stderr.decode().strip().splitlines() == [
        f"kachery: error: mount point does not exist: {tmp_path / 'missing'} (mkdir it first)"]


@needs_fuse
@pytest.mark.fuse
@pytest.mark.usefixtures("fuse_backend")
def test_a_non_empty_mount_point_is_refused_unless_allowed(run_cli, storage_dir, tmp_path):
    mountpoint = tmp_path / "busy"
    mountpoint.mkdir()
    (mountpoint / "notes.txt").write_text("mine")
    for extra in ([], ["--background"]):
        result = run_cli("kachery-mount", mountpoint, *extra, timeout=30)
        assert result.returncode == 2
        assert b"not empty" in result.stderr and b"--allow-non-empty" in result.stderr
        assert not os.path.ismount(mountpoint)
    with Mount(mountpoint, tmp_path / "storage", ["--allow-non-empty"]) as mount:
        assert sorted(os.listdir(mount.mountpoint)) == ["md5", "sha1", "sha1dir"]
    assert (mountpoint / "notes.txt").read_text() == "mine"  # there again once unmounted


@needs_fuse
@pytest.mark.fuse
def test_kachery_mounts_lists_a_background_mount(run_cli, tmp_path):
    storage = tmp_path / "storage"
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    env = {"KACHERY_STORAGE_DIR": str(storage)}
    started = run_cli("kachery-mount", "--background", mountpoint, env=env, timeout=60)
    try:
        assert started.returncode == 0, started.stderr
        deadline = time.monotonic() + 10
        while True:  # its counters file appears within a moment of the mount
            listed = json.loads(run_cli("kachery", "mounts", "--json", env=env, check=True).stdout)
            ours = [row for row in listed if row["mountpoint"] == str(mountpoint)]
            if (ours and ours[0]["pid"]) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert ours and ours[0]["pid"] and ours[0]["storage_dir"] == str(storage)
        assert str(mountpoint) in run_cli("kachery", "mounts", env=env).stdout.decode()
        log = (storage / "logs" / "mount.log").read_text()
        assert "Ctrl-C" not in log and "kachery-unmount" in log  # nobody is there to press it
    finally:
        run_cli("kachery-unmount", mountpoint)
    gone = json.loads(run_cli("kachery", "mounts", "--json", env=env, check=True).stdout)
    assert str(mountpoint) not in [row["mountpoint"] for row in gone]


@needs_fuse
@pytest.mark.fuse
@pytest.mark.usefixtures("fuse_backend")
def test_allow_other_reaches_the_mount(tmp_path):
    with Mount(tmp_path / "mnt", tmp_path / "storage", ["--allow-other"]) as mount:
        with open("/proc/self/mounts") as table:
            options = [line.split()[3] for line in table if line.split()[1] == mount.mountpoint]
        assert options and "allow_other" in options[0].split(",")
        assert "ro" in options[0].split(",")
        assert sorted(os.listdir(mount.mountpoint)) == ["md5", "sha1", "sha1dir"]


@needs_fuse
@pytest.mark.fuse
@pytest.mark.usefixtures("fuse_backend")
def test_md5_and_sha1_objects_are_served(tmp_path):
    from kachery_core.client import Kachery
    from kachery_core.settings import Config

    source = tmp_path / "data.bin"
    source.write_bytes(b"md5 addressed\n" * 1000)
    kachery = Kachery(Config(storage_dir=str(tmp_path / "storage")))
    md5 = kachery.store_file(str(source), "md5").digest
    sha1 = kachery.store_file(str(source)).digest
    with Mount(tmp_path / "mnt", tmp_path / "storage") as mount:
        for path in (mount.path("md5", md5), mount.path("md5", md5.upper()), mount.path("sha1", sha1)):
            with open(path, "rb") as file:
                assert file.read() == source.read_bytes()
            assert os.stat(path).st_mode & 0o777 == 0o444
