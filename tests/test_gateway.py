"""The web gateway of a real kachery-server, over real HTTP: directory pages
(HTML and JSON), files with Range and ETag/304, downloads under their name,
hostile file names escaped and linked correctly, snapshots the gateway
fetches from its own remotes (only the chunks a range touches), and a lying
remote that never yields a complete wrong file."""

import hashlib
import html.parser
import json
import os
import random
import subprocess
from urllib.parse import unquote, urljoin, urlsplit

import pytest
import requests

from mirror_helpers import Mirror, object_rel
from server_helpers import command_path, servers  # noqa: F401  (fixture)

pytestmark = pytest.mark.server

CHUNK = 4 * 1024 * 1024
HOSTILE_NAMES = [
    '"><img src=x onerror=alert(1)>.txt',
    "<script>alert('x')<script>.js",  # (no '/': names cannot hold one)
    "<b>bold<b>.txt",
    "q\"uo'te & amp;.txt",
    "ünï cödé ✓ 数据.csv",
    "a?b#c%20d;e.txt",
    "..dots..",
    " leading space.txt",
]


def _env(storage):
    return dict(os.environ, KACHERY_STORAGE_DIR=str(storage), KACHERY_CONFIG="/nonexistent")


def kachery(command, storage, *args, check=True):
    result = subprocess.run([command_path(command), *map(str, args)], env=_env(storage),
                            capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, result.stderr
    return result


class Page(html.parser.HTMLParser):
    """The links, tags and visible text of a page as a browser parses it."""

    def __init__(self, text):
        super().__init__()
        self.links, self.tags, self.text, self._href = [], [], [], None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        if tag == "a":
            self._href = attrs.get("href")
            self.links.append([self._href, "", "download" in attrs])

    def handle_endtag(self, tag):
        if tag == "a":
            self._href = None

    def handle_data(self, data):
        self.text.append(data)
        if self._href is not None:
            self.links[-1][1] += data


@pytest.fixture
def snapshot(tmp_path):
    """(storage, sha1dir URL, {relative path: bytes}) of a tree with hostile names."""
    files = {"tables/t.csv": b"a,b\n1,2\n", "readme.md": b"# hello\n",
             "big.bin": random.Random(5).randbytes(3 * CHUNK + 99)}
    for index, name in enumerate(HOSTILE_NAMES):
        files[f"odd/{name}"] = f"content of hostile file {index}\n".encode()
    tree = tmp_path / "tree"
    for rel, data in files.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(data)
    storage = tmp_path / "server-storage"
    url = kachery("kachery-store", storage, tree).stdout.strip()
    return storage, url, files


def page_url(server, url, path=""):
    return f"{server.url}/sha1dir/{url.split('://', 1)[1]}/{path}"


def test_directory_pages_link_every_entry_and_escape_hostile_names(snapshot, servers):  # noqa: F811
    storage, url, files = snapshot
    server = servers.kachery(storage=storage)
    odd = page_url(server, url, "odd/")
    response = requests.get(odd, timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assert "script-src 'sha256-" in response.headers["Content-Security-Policy"]
    page = Page(response.text)
    assert "img" not in page.tags and "b" not in page.tags  # names are text, never markup
    for name in HOSTILE_NAMES:
        (href, _, _), = [link for link in page.links if link[1] == name]
        target = urljoin(odd, href)
        assert unquote(urlsplit(target).path).endswith("/odd/" + name)
        assert requests.get(target, timeout=10).content == files[f"odd/{name}"]
        downloads = [link for link in page.links if link[2] and link[0].endswith(href.split("?")[0])]
        assert downloads, name
        got = requests.get(urljoin(odd, downloads[0][0]), timeout=10)
        assert got.content == files[f"odd/{name}"]
        assert "attachment" in got.headers["Content-Disposition"]
    text = "".join(page.text)
    assert f"{len(HOSTILE_NAMES)} files" in text and f"snapshot: {len(files)} files" in text
    # the breadcrumb leads back to the snapshot's root page
    root_link = urljoin(odd, page.links[0][0])
    assert root_link == page_url(server, url)
    root = Page(requests.get(root_link, timeout=10).text)
    assert {"odd/", "tables/", "big.bin", "readme.md"} <= {link[1] for link in root.links}
    assert "12.0 MiB" in "".join(root.text)  # the big file's size in human units


def test_the_listing_as_json(snapshot, servers):  # noqa: F811
    storage, url, files = snapshot
    server = servers.kachery(storage=storage)
    document = requests.get(page_url(server, url), headers={"Accept": "application/json"},
                            timeout=10).json()
    assert document["url"] == url
    assert document["file_count"] == len(files)
    assert document["size"] == sum(map(len, files.values()))
    by_name = {entry["name"]: entry for entry in document["entries"]}
    assert by_name["tables"] == {"name": "tables", "type": "directory", "url": f"{url}/tables",
                                 "file_count": 1, "size": 8}
    big = by_name["big.bin"]
    assert big["sha1"] == hashlib.sha1(files["big.bin"]).hexdigest() and big["manifest"]
    assert big["url"] == f"sha1://{big['sha1']}/big.bin?manifest={big['manifest']}"
    assert requests.get(page_url(server, url) + "?format=json", timeout=10).json() == document


def test_files_have_types_ranges_etags_and_304(snapshot, servers):  # noqa: F811
    storage, url, files = snapshot
    server = servers.kachery(storage=storage)
    csv = page_url(server, url, "tables/t.csv")
    response = requests.get(csv, timeout=10)
    assert response.content == files["tables/t.csv"]
    digest = hashlib.sha1(files["tables/t.csv"]).hexdigest()
    assert response.headers["ETag"] == f'"{digest}"'
    assert response.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert "immutable" in response.headers["Cache-Control"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    ranged = requests.get(csv, headers={"Range": "bytes=2-5"}, timeout=10)
    assert ranged.status_code == 206 and ranged.content == files["tables/t.csv"][2:6]
    again = requests.get(csv, headers={"If-None-Match": f'"{digest}"'}, timeout=10)
    assert again.status_code == 304 and again.content == b""
    head = requests.head(page_url(server, url, "big.bin"), timeout=10)
    assert int(head.headers["Content-Length"]) == len(files["big.bin"])
    # a directory without its slash is redirected to it (relative links need it)
    bare = requests.get(page_url(server, url, "tables"), allow_redirects=False, timeout=10)
    assert bare.status_code == 301 and bare.headers["Location"].endswith("/tables/")
    # /sha1/<h>/<name>: downloaded with that name
    named = requests.get(f"{server.url}/sha1/{digest}/my%20table.csv", timeout=10)
    assert named.content == files["tables/t.csv"]
    assert named.headers["Content-Disposition"].endswith("filename*=UTF-8''my%20table.csv")


def test_bad_paths_are_refused_never_served_from_outside(snapshot, servers):  # noqa: F811
    storage, url, _ = snapshot
    server = servers.kachery(storage=storage)
    base = page_url(server, url)
    for path, status in (("odd/..%2F..%2F..%2Fserver.toml", 400), ("nothing/here", 404),
                         ("tables/t.csv/deeper", 404)):
        response = requests.get(base + path, timeout=10)
        assert response.status_code == status, (path, response.status_code)
        assert "private" not in response.text
    missing = requests.get(f"{server.url}/sha1dir/{'0' * 40}/", timeout=10)
    assert missing.status_code == 404
    assert requests.get(f"{server.url}/sha1/{'0' * 40}/x", timeout=10).status_code == 404
    assert requests.get(f"{server.url}/sha1/{'a' * 40}/x?manifest=nothex", timeout=10).status_code == 400


def test_a_gateway_serves_what_it_fetches_from_its_remotes(tmp_path, snapshot, servers):  # noqa: F811
    storage, url, files = snapshot
    mirror = Mirror(storage)
    try:
        gateway = servers.kachery(storage=tmp_path / "empty", env={"KACHERY_REMOTE": mirror.url})
        document = requests.get(page_url(gateway, url, "tables/"), timeout=10,
                                headers={"Accept": "application/json"}).json()
        assert [entry["name"] for entry in document["entries"]] == ["t.csv"]
        big = hashlib.sha1(files["big.bin"]).hexdigest()
        start = 2 * CHUNK + 10
        ranged = requests.get(page_url(gateway, url, "big.bin"), timeout=30,
                              headers={"Range": f"bytes={start}-{start + 99}"})
        assert ranged.status_code == 206 and ranged.content == files["big.bin"][start:start + 100]
        assert 0 < mirror.sent[object_rel(big)] <= CHUNK  # one chunk of four
        whole = requests.get(page_url(gateway, url, "big.bin"), timeout=30)
        assert whole.content == files["big.bin"]
    finally:
        mirror.close()


def test_a_lying_remote_never_gives_a_complete_wrong_file(tmp_path, snapshot, servers):  # noqa: F811
    storage, url, files = snapshot
    mirror = Mirror(storage, corrupt=True)  # every ranged answer has a flipped byte
    try:
        gateway = servers.kachery(storage=tmp_path / "empty", env={"KACHERY_REMOTE": mirror.url})
        try:
            response = requests.get(page_url(gateway, url, "big.bin"), timeout=30)
        except requests.exceptions.RequestException:
            pass  # cut short: the client knows it did not get the file
        else:  # an error status, or the right bytes (from a whole, verified download)
            assert response.status_code >= 500 or response.content == files["big.bin"]
        assert "Traceback" not in gateway.log()
    finally:
        mirror.close()


def test_link_prints_gateway_addresses(snapshot, servers):  # noqa: F811
    storage, url, files = snapshot
    server = servers.kachery(storage=storage)
    listed = kachery("kachery-ls", storage, "--link", "--remote", server.url, f"{url}/odd")
    lines = listed.stdout.splitlines()
    assert lines[0] == page_url(server, url, "odd/")
    assert len(lines) == 1 + len(HOSTILE_NAMES)
    for line in lines[1:]:
        name = unquote(line.rsplit("/", 1)[1])
        assert requests.get(line, timeout=10).content == files[f"odd/{name}"]
    single = os.path.join(os.path.dirname(storage), "single.txt")
    with open(single, "wb") as file:
        file.write(b"shared by link\n")
    link = kachery("kachery-store", storage, "--link", "--remote", server.url, single).stdout.strip()
    assert link.startswith(f"{server.url}/sha1/") and link.endswith("/single.txt")
    assert requests.get(link, timeout=10).content == b"shared by link\n"
    refused = kachery("kachery-store", storage, "--link", single, check=False)
    assert refused.returncode == 2 and "--link needs a kachery server" in refused.stderr
    assert json.loads(kachery("kachery-ls", storage, "--link", "--json", "--remote", server.url,
                              url).stdout)[0]["link"].startswith(server.url)
