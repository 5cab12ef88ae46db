"""kachery-mount / kachery-unmount as commands: help, errors as one line, options."""

import os

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
    assert b"Traceback" not in result.stderr
    assert b"not a directory" in result.stderr


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
