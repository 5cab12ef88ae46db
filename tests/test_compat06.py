"""kachery 0.6 scripts, as their users wrote them, against a real server:
the configuration calls they start with (set_config, get_config, with
config(...)), get_file_hash, and plain local paths where 0.6 took them."""

import hashlib
import json
import os
import subprocess
import sys

import pytest

from server_helpers import command_path, servers, stored_objects  # noqa: F401  (fixture)

pytestmark = pytest.mark.server

SCRIPT_06 = r"""
import json, os, sys
import kachery_core as ka

server, token, local_dir = sys.argv[1], sys.argv[2], sys.argv[3]
report = {}

# a reader: everything from the server
ka.set_config(fr=server)
report["config"] = ka.get_config()
report["text"] = ka.load_text(sys.argv[4])
report["hash_of_url"] = ka.get_file_hash(sys.argv[4])
report["missing"] = ka.load_text("sha1://" + "0" * 40 + "/x.txt")

# a writer for one block: stores go to the server too
with ka.config(fr=server, to={"url": server, "password": token}):
    report["inside"] = ka.get_config()
    report["stored"] = ka.store_text("written by a 0.6 script\n")
report["after"] = ka.get_config()

# plain local paths, as 0.6 accepted them
report["local_load"] = ka.load_file(os.path.join(local_dir, "a.txt"))
report["local_info"] = ka.get_file_info(os.path.join(local_dir, "a.txt"))
report["local_dir"] = ka.read_dir(local_dir)
report["local_hash"] = ka.get_file_hash(os.path.join(local_dir, "a.txt"))
report["local_text"] = ka.load_text(os.path.join(local_dir, "a.txt"))
report["local_missing"] = ka.load_file(os.path.join(local_dir, "nope.txt"))
for bad in (dict(fr="default_readonly"), dict(fr={"host": "x"}), dict(color="blue")):
    try:
        ka.set_config(**bad)
        report.setdefault("errors", []).append(None)
    except (ValueError, TypeError) as error:
        report.setdefault("errors", []).append(f"{type(error).__name__}: {error}")
print(json.dumps(report))
"""


def test_a_06_script_runs_unchanged_but_for_its_import(tmp_path, servers):  # noqa: F811
    server_storage = tmp_path / "server-storage"
    env = dict(os.environ, KACHERY_STORAGE_DIR=str(server_storage), KACHERY_CONFIG="/nonexistent")
    (tmp_path / "shared.txt").write_text("shared text\n")
    url = subprocess.run([command_path("kachery-store"), str(tmp_path / "shared.txt")], env=env,
                         capture_output=True, text=True, check=True).stdout.strip()
    server = servers.kachery(storage=server_storage)
    local = tmp_path / "local"
    (local / "sub").mkdir(parents=True)
    (local / "a.txt").write_text("local a\n")
    (local / "sub" / "b.txt").write_text("local b\n")
    client_env = dict(os.environ, KACHERY_STORAGE_DIR=str(tmp_path / "client"),
                      KACHERY_CONFIG="/nonexistent")
    client_env.pop("KACHERY_REMOTE", None)
    result = subprocess.run([sys.executable, "-c", SCRIPT_06, server.url, server.write_token,
                             str(local), url], env=client_env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["config"]["fr"] == [server.url] and report["config"]["to"] is None
    assert report["text"] == "shared text\n"
    assert report["hash_of_url"] == hashlib.sha1(b"shared text\n").hexdigest()
    assert report["missing"] is None
    assert report["inside"]["to"] == server.url and report["inside"]["upload"] is True
    assert report["after"]["to"] is None  # the block's settings are gone after it
    written = hashlib.sha1(b"written by a 0.6 script\n").hexdigest()
    assert report["stored"].startswith(f"sha1://{written}/")
    assert any(path.endswith(written) for path in stored_objects(server_storage))  # uploaded
    assert report["local_load"] == str(local / "a.txt")
    assert report["local_info"] == {"path": str(local / "a.txt"), "size": 8,
                                    "sha1": hashlib.sha1(b"local a\n").hexdigest()}
    assert report["local_dir"] == {
        "files": {"a.txt": {"size": 8, "sha1": hashlib.sha1(b"local a\n").hexdigest()}},
        "dirs": {"sub": {"files": {"b.txt": {"size": 8, "sha1": hashlib.sha1(b"local b\n").hexdigest()}},
                         "dirs": {}}}}
    assert report["local_hash"] == hashlib.sha1(b"local a\n").hexdigest()
    assert report["local_text"] == "local a\n" and report["local_missing"] is None
    preset, no_url, unknown = report["errors"]
    assert preset.startswith("ValueError") and "URL of a kachery server" in preset
    assert no_url.startswith("ValueError") and "'url'" in no_url
    assert unknown.startswith("TypeError") and "color" in unknown
