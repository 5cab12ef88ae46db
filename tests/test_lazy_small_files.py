"""A mount over an EMPTY storage directory reading a folder of many small
files that live only on a kachery-server: right bytes, and the files come in
batches (POST /api/download), not one GET each. Real mount, real server; the
server's access log (its stderr, see server_helpers) is what is counted."""

import hashlib
import os
import random
import re
import subprocess
import time

import pytest

from fs_helpers import Mount, needs_fuse
from server_helpers import command_path, servers  # noqa: F401  (fixture)

pytestmark = [pytest.mark.fuse, pytest.mark.server, needs_fuse,
              pytest.mark.usefixtures("fuse_backend")]

FILES = 100


def store_snapshot(storage, tree):
    env = dict(os.environ, KACHERY_STORAGE_DIR=str(storage), KACHERY_CONFIG="/nonexistent")
    result = subprocess.run([command_path("kachery-store"), str(tree)], env=env, check=True,
                            capture_output=True, text=True)
    return result.stdout.strip()


def cached_objects(storage):
    """Names of the objects in the client's download cache (temp files left out)."""
    found = set()
    for algorithm in ("sha1", "md5"):
        for _, _, names in os.walk(os.path.join(storage, "cache", algorithm)):
            found.update(names)
    return found


def test_a_folder_of_small_files_is_read_in_batches(tmp_path, servers):  # noqa: F811
    rng = random.Random(11)
    tree = tmp_path / "tree"
    (tree / "many").mkdir(parents=True)
    files = {f"f{i:03d}.dat": rng.randbytes(rng.randrange(1000, 6000)) for i in range(FILES)}
    for name, data in files.items():
        (tree / "many" / name).write_bytes(data)
    url = store_snapshot(tmp_path / "server-storage", tree)
    server = servers.kachery(storage=tmp_path / "server-storage")
    client = tmp_path / "client"
    with Mount(tmp_path / "mnt", client, ["--remote", server.url]) as mount:
        folder = os.path.join(mount.mountpoint, "sha1dir", url.split("://", 1)[1], "many")
        names = sorted(os.listdir(folder))
        assert names == sorted(files)
        for name in names:  # what `cat many/*` does: one file after another, in name order
            with open(os.path.join(folder, name), "rb") as file:
                assert file.read() == files[name], name
        # Written to the download cache in the background.
        digests = {hashlib.sha1(data).hexdigest() for data in files.values()}
        deadline = time.monotonic() + 10
        while not digests <= cached_objects(client) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert digests <= cached_objects(client)
        concatenated = subprocess.run(["cat", *(os.path.join(folder, n) for n in names)],
                                      check=True, capture_output=True).stdout
        assert concatenated == b"".join(files[name] for name in names)
    assert not os.path.exists(client / "sha1")  # nothing in the user's own store
    server.stop()
    log = server.log()
    object_gets = [line for line in re.findall(r'"GET /sha1/[0-9a-f/]+ HTTP', log)
                   if "0" * 40 not in line]  # server_helpers' probe for "is it up"
    batches = re.findall(r'"POST /api/download HTTP/1.1" 200 ', log)
    assert batches, log
    assert len(object_gets) <= FILES // 10, log  # the snapshot manifest, the first file or so
    assert len(object_gets) + len(batches) <= FILES // 4, log
