"""Properties of the gateway's pages and links (pure functions, no server):
whatever a file is called, the page shows exactly that name as text, links
to exactly that name, and never lets it become markup."""

import html.parser
from urllib.parse import unquote, urlsplit

from hypothesis import given, settings
from hypothesis import strategies as st

from kachery_core.manifest import DirEntry, FileEntry
from kachery_core.urls import HashURL, gateway_link, parse_url
from kachery_server.gateway import content_type
from kachery_server.pages import human_size, listing, render_html

names = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0"),
                min_size=1, max_size=30).filter(lambda name: name not in (".", ".."))
SHA1 = "ab" * 20


class Links(html.parser.HTMLParser):
    def __init__(self, text):
        super().__init__()
        self.anchors, self.tags, self._open = [], [], None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "a":
            self._open = [dict(attrs)["href"], ""]
            self.anchors.append(self._open)

    def handle_endtag(self, tag):
        if tag == "a":
            self._open = None

    def handle_data(self, data):
        if self._open is not None:
            self._open[1] += data


@settings(max_examples=200, deadline=None)
@given(files=st.sets(names, min_size=1, max_size=6), folders=st.sets(names, max_size=3))
def test_every_name_is_shown_and_linked_exactly(files, folders):
    folders -= files
    node = DirEntry(files={name: FileEntry(size=len(name), sha1=SHA1) for name in files},
                    dirs={name: DirEntry() for name in folders})
    url = HashURL("sha1dir", SHA1, "label", "sub")
    page = Links(render_html(listing(url, node, (len(files), 0))))
    assert set(page.tags) <= {"html", "head", "meta", "title", "style", "body", "nav", "a", "strong",
                              "p", "code", "button", "table", "tr", "td", "span", "script"}
    by_text = {}
    for href, text in page.anchors:
        by_text.setdefault(text, []).append(href)
    for name in files:
        view, download = by_text[name][0], by_text["download"]
        assert "/" not in view and unquote(urlsplit(view).path) == name
        assert any(unquote(urlsplit(href).path) == f"../../../sha1/{SHA1}/{name}" for href in download)
    for name in folders:
        (href,) = by_text[name + "/"]
        assert unquote(urlsplit(href).path) == name + "/"


@given(label=names, parts=st.lists(names, max_size=3), name=names)
def test_gateway_links_carry_the_url_exactly(label, parts, name):
    directory = HashURL("sha1dir", SHA1, label, "/".join(parts))
    link = gateway_link(directory, "http://host:8080/")
    path = urlsplit(link).path
    assert not urlsplit(link).query and not urlsplit(link).fragment
    segments = [unquote(segment) for segment in path.split("/")]
    assert segments[:3] == ["", "sha1dir", f"{SHA1}.{label}"] and segments[3:] == parts
    file_link = gateway_link(HashURL("sha1", SHA1, name, "", SHA1), "http://host:8080")
    assert unquote(urlsplit(file_link).path) == f"/sha1/{SHA1}/{name}"
    assert urlsplit(file_link).query == f"manifest={SHA1}"


def test_gateway_links_of_parsed_urls():
    assert gateway_link(parse_url(f"sha1://{SHA1}/a b.csv"), "https://x.org") == \
        f"https://x.org/sha1/{SHA1}/a%20b.csv"
    assert gateway_link(f"sha1dir://{SHA1}", "http://h") == f"http://h/sha1dir/{SHA1}"
    assert gateway_link(f"md5://{'c' * 32}", "http://h") == f"http://h/md5/{'c' * 32}"


def test_human_sizes_and_content_types():
    assert [human_size(n) for n in (0, 1023, 1024, 1536, 10 * 2**30)] == \
        ["0 B", "1023 B", "1.0 KiB", "1.5 KiB", "10.0 GiB"]
    assert content_type("t.csv") == "text/csv; charset=utf-8"
    assert content_type("t.csv.gz") == "application/gzip"  # never Content-Encoding: the bytes are the object
    assert content_type("x.h5") == "application/x-hdf5"
    assert content_type("noext") == "application/octet-stream"
    assert content_type("page.html") == "text/html; charset=utf-8"
