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


SETTINGS_06 = r"""
import hashlib, json, os, sys
import kachery_core as ka

server, token, shared_url, local_file = sys.argv[1:5]
report = {}

# fr=None: local only, even with KACHERY_REMOTE set
ka.set_config(fr=None)
report["none"] = ka.get_config()["fr"]
report["none_load"] = ka.load_text(shared_url)

# the older form: url= (+ password= as its token)
ka.set_config(url=server, password=token, upload=True)
report["url_config"] = ka.get_config()
report["url_load"] = ka.load_text(shared_url)
report["url_stored"] = ka.store_text("sent with the password\n")
ka.set_config(url=server, password="not-the-token", upload=True)
try:
    ka.store_text("refused\n")
    report["bad_password"] = None
except Exception as error:
    report["bad_password"] = type(error).__name__
ka.set_config(upload=False)

# to_remote_only: uploaded, no local copy
ka.set_config(fr=None, to={"url": server, "token": token}, to_remote_only=True)
report["remote_only_config"] = ka.get_config()
report["remote_only_stored"] = ka.store_text("only on the server\n")
ka.set_config(to=None, to_remote_only=False, upload_only=False)

# algorithm="md5": store_file's default hash
ka.set_config(fr=None, algorithm="md5")
report["md5_config"] = ka.get_config()["algorithm"]
report["md5_url"] = ka.store_file(local_file)
ka.set_config(algorithm="sha1")

# accepted, no effect
before = ka.get_config()
ka.set_config(from_remote_only=True, use_hard_links=True, verbose=True, preset="default_readonly",
              channel="lab", download=True, download_only=False)
report["ignored_same"] = ka.get_config() == before

# a URL no remote can have: a ValueError at the call, the settings unchanged
report["bad_urls"] = []
for bad in (dict(fr="ftp://x"), dict(to="ftp://x"), dict(url="http://[::1")):
    try:
        ka.set_config(**bad)
        report["bad_urls"].append(None)
    except ValueError as error:
        report["bad_urls"].append(str(error))
report["after_bad"] = ka.get_config() == before
print(json.dumps(report))
"""


def test_the_other_06_settings(tmp_path, servers):  # noqa: F811
    server_storage = tmp_path / "server-storage"
    env = dict(os.environ, KACHERY_STORAGE_DIR=str(server_storage), KACHERY_CONFIG="/nonexistent")
    (tmp_path / "shared.txt").write_text("shared text\n")
    shared = subprocess.run([command_path("kachery-store"), str(tmp_path / "shared.txt")], env=env,
                            capture_output=True, text=True, check=True).stdout.strip()
    server = servers.kachery(storage=server_storage)
    client = tmp_path / "client"
    local_file = tmp_path / "local.txt"
    local_file.write_bytes(b"hashed with md5\n")
    client_env = dict(os.environ, KACHERY_STORAGE_DIR=str(client), KACHERY_CONFIG="/nonexistent",
                      KACHERY_REMOTE=server.url)
    client_env.pop("KACHERY_TOKEN", None)
    result = subprocess.run([sys.executable, "-c", SETTINGS_06, server.url, server.write_token, shared,
                             str(local_file)], env=client_env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["none"] == [] and report["none_load"] is None  # the remote was not asked
    assert report["url_config"]["fr"] == [server.url] and report["url_config"]["upload"] is True
    assert report["url_load"] == "shared text\n"
    sent = hashlib.sha1(b"sent with the password\n").hexdigest()
    assert report["url_stored"].startswith(f"sha1://{sent}/")
    assert any(path.endswith(sent) for path in stored_objects(server_storage))
    assert report["bad_password"] == "AccessDenied"  # the password is the token that is sent
    config = report["remote_only_config"]
    assert config["to"] == server.url and config["to_remote_only"] is True
    remote_only = hashlib.sha1(b"only on the server\n").hexdigest()
    assert report["remote_only_stored"].startswith(f"sha1://{remote_only}/")
    assert any(path.endswith(remote_only) for path in stored_objects(server_storage))
    assert not any(path.endswith(remote_only) for path in stored_objects(client))  # not kept
    assert report["md5_config"] == "md5"
    md5 = hashlib.md5(b"hashed with md5\n").hexdigest()
    assert report["md5_url"] == f"md5://{md5}/local.txt"
    assert any(path.endswith(md5) for path in stored_objects(client))
    assert report["ignored_same"] is True
    fr, to, url = report["bad_urls"]
    assert fr.startswith("fr=: invalid remote URL 'ftp://x'")
    assert to.startswith("to=: invalid remote URL 'ftp://x'")
    assert url.startswith("url=: invalid remote URL")
    assert report["after_bad"] is True
