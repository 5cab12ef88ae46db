"""Hash URL parsing and formatting (SPEC §1): unit and property tests."""

import hashlib
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kachery_core.errors import InvalidURL
from kachery_core.hashing import is_valid_hash, validate_hash
from kachery_core.errors import InvalidHash
from kachery_core.urls import HashURL, parse_url

H40 = hashlib.sha1(b"hello").hexdigest()
H32 = hashlib.md5(b"hello").hexdigest()
M40 = hashlib.sha1(b"manifest").hexdigest()

hex40 = st.text(alphabet="0123456789abcdefABCDEF", min_size=40, max_size=40)
hex32 = st.text(alphabet="0123456789abcdefABCDEF", min_size=32, max_size=32)
# File names in URLs: anything printable, no '?' so that the query is unambiguous.
names = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="?"),
    min_size=1, max_size=30,
)
labels = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/"), max_size=30
)
segments = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0"),
    min_size=1, max_size=12,
).filter(lambda s: s not in (".", ".."))


# ------------------------------------------------------------------ examples

def test_sha1_url_with_name_and_manifest():
    url = parse_url(f"sha1://{H40}/data.bin?manifest={M40}")
    assert (url.scheme, url.hash, url.name, url.manifest, url.path) == ("sha1", H40, "data.bin", M40, "")
    assert url.algorithm == "sha1" and not url.is_dir
    assert str(url) == f"sha1://{H40}/data.bin?manifest={M40}"


def test_sha1_url_manifest_without_name():
    url = parse_url(f"sha1://{H40}?manifest={M40}")
    assert url.name is None and url.manifest == M40 and url.hash == H40
    assert str(url) == f"sha1://{H40}?manifest={M40}"


def test_md5_url():
    url = parse_url(f"md5://{H32}/x.csv")
    assert (url.scheme, url.algorithm, url.hash, url.name) == ("md5", "md5", H32, "x.csv")
    assert str(url) == f"md5://{H32}/x.csv"


def test_upper_case_hashes_are_accepted_and_printed_lower_case():
    url = parse_url(f"sha1://{H40.upper()}/f?manifest={M40.upper()}")
    assert url.hash == H40 and url.manifest == M40
    assert str(url) == f"sha1://{H40}/f?manifest={M40}"
    assert parse_url(f"md5://{H32.upper()}").hash == H32
    assert str(parse_url(f"sha1dir://{H40.upper()}.Lbl/A/b")) == f"sha1dir://{H40}.Lbl/A/b"


def test_names_and_labels_are_informational():
    assert parse_url(f"sha1://{H40}/a.txt").hash == parse_url(f"sha1://{H40}/b.txt").hash
    one, two = parse_url(f"sha1dir://{H40}.one/x"), parse_url(f"sha1dir://{H40}.two/x")
    assert (one.hash, one.path) == (two.hash, two.path)
    assert (one.name, two.name) == ("one", "two")


def test_sha1dir_label_may_contain_dots_and_odd_characters():
    url = parse_url(f"sha1dir://{H40}.my.data set?#%/sub")
    assert url.name == "my.data set?#%" and url.path == "sub" and url.is_dir
    assert url.algorithm == "sha1"


def test_sha1dir_without_label_or_path():
    url = parse_url(f"sha1dir://{H40}")
    assert (url.name, url.path, url.path_parts) == (None, "", ())
    assert str(url) == f"sha1dir://{H40}"


@pytest.mark.parametrize("path, parts", [
    ("a//b", ("a", "b")),
    ("a/b/", ("a", "b")),
    ("/a", ("a",)),
    ("a///b//c/", ("a", "b", "c")),
    ("", ()),
    ("/", ()),
])
def test_sha1dir_empty_segments_tolerated(path, parts):
    url = parse_url(f"sha1dir://{H40}.lbl/{path}")
    assert url.path_parts == parts
    assert url.path == "/".join(parts)


@pytest.mark.parametrize("path", [".", "..", "a/../b", "a/./b", "../../etc/passwd", "a/.."])
def test_sha1dir_dot_segments_rejected(path):
    text = f"sha1dir://{H40}.lbl/{path}"
    with pytest.raises(InvalidURL) as info:
        parse_url(text)
    assert info.value.url == text
    assert text in str(info.value)


def test_sha1dir_nul_in_path_rejected():
    with pytest.raises(InvalidURL):
        parse_url(f"sha1dir://{H40}.lbl/a\0b")


def test_dotted_names_that_are_not_dot_segments_are_fine():
    url = parse_url(f"sha1dir://{H40}/...x/.hidden/a..b")
    assert url.path_parts == ("...x", ".hidden", "a..b")


def test_child_url():
    url = parse_url(f"sha1dir://{H40}.lbl")
    assert str(url.child("a").child("b c")) == f"sha1dir://{H40}.lbl/a/b c"


def test_mount_relpath():
    assert parse_url(f"sha1://{H40}/x.csv").mount_relpath() == f"sha1/{H40}"
    assert parse_url(f"md5://{H32}/x.csv").mount_relpath() == f"md5/{H32}"
    assert parse_url(f"sha1dir://{H40}.lbl/a//b").mount_relpath() == f"sha1dir/{H40}.lbl/a/b"
    assert parse_url(f"sha1dir://{H40}").mount_relpath() == f"sha1dir/{H40}"


# ------------------------------------------------------------ invalid URLs

INVALID = [
    ("", "scheme"),
    (H40, "scheme"),
    ("sha1://", "empty"),
    ("sha1:///name", "empty"),
    (f"sha1://{H40[:-1]}", "40 hex"),
    (f"sha1://{H40}0", "40 hex"),
    (f"sha1://{H40[:-1]}g/x", "40 hex"),
    (f"sha1://{H32}", "40 hex"),
    (f"md5://{H40}", "32 hex"),
    (f"md5://{H32[:-1]}z", "32 hex"),
    (f"sha1dir://{H40[:-2]}.lbl", "40 hex"),
    (f"sha1dir://.lbl", "empty"),
    (f"sha256://{H40}", "unknown scheme"),
    (f"http://{H40}", "unknown scheme"),
    (f"sha1:/{H40}", "scheme"),
    (f"sha1://{H40}?manifest=", "manifest"),
    (f"sha1://{H40}/x?manifest={M40[:-1]}", "manifest"),
    (f"sha1://{H40}/x?manifest=../../etc", "manifest"),
    (f"sha1:// {H40}", "hex"),
]


@pytest.mark.parametrize("text, problem", INVALID)
def test_invalid_urls_name_the_url_and_the_problem(text, problem):
    with pytest.raises(InvalidURL) as info:
        parse_url(text)
    error = info.value
    assert isinstance(error, ValueError)
    assert error.url == text
    assert repr(text) in str(error)
    assert problem in error.problem
    assert "\n" not in str(error)


def test_non_string_rejected():
    with pytest.raises(InvalidURL):
        parse_url(None)
    with pytest.raises(InvalidURL):
        parse_url(f"sha1://{H40}".encode())


# -------------------------------------------------------------- properties

@settings(max_examples=100)
@given(h=hex40, name=st.none() | names, manifest=st.none() | hex40)
def test_sha1_round_trip(h, name, manifest):
    text = f"sha1://{h}" + (f"/{name}" if name else "") + (f"?manifest={manifest}" if manifest else "")
    url = parse_url(text)
    assert url.hash == h.lower()
    assert url.name == name
    assert url.manifest == (manifest.lower() if manifest else None)
    assert str(url) == text.replace(h, h.lower()).replace(str(manifest), str(manifest).lower())
    assert parse_url(str(url)) == url


@settings(max_examples=100)
@given(h=hex32, name=st.none() | names)
def test_md5_round_trip(h, name):
    text = f"md5://{h}" + (f"/{name}" if name else "")
    url = parse_url(text)
    assert (url.hash, url.name, url.manifest) == (h.lower(), name, None)
    assert parse_url(str(url)) == url
    assert str(url) == f"md5://{h.lower()}" + (f"/{name}" if name else "")


@settings(max_examples=100)
@given(h=hex40, label=st.none() | labels, parts=st.lists(segments, max_size=5),
       empties=st.lists(st.integers(0, 2), min_size=6, max_size=6), trailing=st.booleans())
def test_sha1dir_round_trip_and_normalization(h, label, parts, empties, trailing):
    # Build a path with random runs of extra slashes; parsing must normalize them away.
    path = "".join("/" * (1 + empties[i]) + part for i, part in enumerate(parts))
    if trailing:
        path += "/"
    text = f"sha1dir://{h}" + (f".{label}" if label is not None else "") + path
    url = parse_url(text)
    assert url.hash == h.lower()
    assert url.name == label
    assert url.path_parts == tuple(parts)
    assert parse_url(str(url)) == url
    canonical = f"sha1dir://{h.lower()}" + (f".{label}" if label is not None else "")
    canonical += "".join("/" + part for part in parts)
    assert str(url) == canonical


@settings(max_examples=100)
@given(st.text(max_size=60))
def test_arbitrary_text_either_parses_or_raises_invalid_url(text):
    try:
        url = parse_url(text)
    except InvalidURL as error:
        assert error.url == text
        return
    assert isinstance(url, HashURL)
    assert is_valid_hash(url.algorithm, url.hash) and url.hash == url.hash.lower()
    assert parse_url(str(url)) == url


@settings(max_examples=100)
@given(st.text(min_size=40, max_size=40))
def test_hash_validation_only_accepts_ascii_hex(value):
    ok = all(c in string.hexdigits for c in value)
    assert is_valid_hash("sha1", value) == ok
    if ok:
        assert validate_hash("sha1", value) == value.lower()
    else:
        with pytest.raises(InvalidHash):
            validate_hash("sha1", value)


@settings(max_examples=100)
@given(h=hex40, bad=st.text(min_size=1, max_size=3))
def test_extra_characters_after_the_hash_make_the_url_invalid(h, bad):
    bad = bad.replace("/", "x").replace("?", "x")
    with pytest.raises(InvalidURL):
        parse_url(f"sha1://{h}{bad}")
    with pytest.raises(InvalidURL):
        parse_url(f"sha1://{h[: 40 - len(bad)]}/{bad}")


def test_hash_validation_rejects_path_tricks():
    for value in ["../../etc/passwd" + "0" * 24, "a" * 39 + "/", "\0" * 40, "A" * 41, ""]:
        assert not is_valid_hash("sha1", value)
    assert not is_valid_hash("sha256", "a" * 40)
    assert not is_valid_hash("sha1", None)
    assert not is_valid_hash("sha1", b"a" * 40)
