"""Directory manifests (SPEC §3) and file manifests (SPEC §4)."""

import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kachery_core.errors import InvalidManifest
from kachery_core.manifest import (
    Chunk,
    DirEntry,
    FileEntry,
    FileManifest,
    dir_manifest_bytes,
    parse_dir_manifest,
    parse_file_manifest,
)


def sha1(data):
    return hashlib.sha1(data).hexdigest()


A1 = sha1(b"a")
B1 = sha1(b"bb")
M1 = sha1(b"manifest")
MD5 = hashlib.md5(b"a").hexdigest()


# ------------------------------------------------------------ canonical bytes

def test_canonical_bytes_of_a_small_example():
    tree = DirEntry(
        files={"b": FileEntry(2, B1), "a": FileEntry(1, A1)},
        dirs={"z": DirEntry(), "d": DirEntry(files={"big": FileEntry(5, A1, None, M1)})},
    )
    # Written out by hand from SPEC §3: default separators, "files" before "dirs",
    # "size", "sha1", "manifest" in file entries, names sorted.
    expected = (
        '{"files": {"a": {"size": 1, "sha1": "' + A1 + '"}, '
        '"b": {"size": 2, "sha1": "' + B1 + '"}}, '
        '"dirs": {"d": {"files": {"big": {"size": 5, "sha1": "' + A1 + '", '
        '"manifest": "' + M1 + '"}}, "dirs": {}}, '
        '"z": {"files": {}, "dirs": {}}}}'
    )
    assert dir_manifest_bytes(tree) == expected.encode("ascii")


def test_canonical_bytes_of_empty_directory():
    assert dir_manifest_bytes(DirEntry()) == b'{"files": {}, "dirs": {}}'


def test_unicode_names_are_escaped_ascii():
    tree = DirEntry(files={"é": FileEntry(1, A1), "😀": FileEntry(1, A1), "日本": FileEntry(1, A1)})
    data = dir_manifest_bytes(tree)
    data.decode("ascii")  # ensure_ascii=True: pure ASCII
    entry = '{"size": 1, "sha1": "' + A1 + '"}'
    # code-point order: U+00E9 < U+65E5 < U+1F600; astral characters as surrogate pairs
    expected = (
        '{"files": {"\\u00e9": ' + entry + ', "\\u65e5\\u672c": ' + entry
        + ', "\\ud83d\\ude00": ' + entry + '}, "dirs": {}}'
    )
    assert data == expected.encode("ascii")


def test_names_sorted_by_code_point_not_locale():
    names = ["b", "B", "a", "_", "Z", "é", "e", "10", "9", "\uffff", "\U00010000", "a b", "a-b"]
    tree = DirEntry(files={name: FileEntry(0, A1) for name in names})
    written = list(json.loads(dir_manifest_bytes(tree))["files"])
    assert written == sorted(names, key=lambda n: [ord(c) for c in n])
    # U+FFFF sorts before U+10000 by code point (UTF-16 order would disagree)
    assert written.index("\uffff") < written.index("\U00010000")


# ------------------------------------------------------- property: round trip

name_strategy = st.text(
    alphabet=st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)),
    min_size=1, max_size=8,
).filter(lambda n: n not in (".", ".."))
hash40 = st.text(alphabet="0123456789abcdef", min_size=40, max_size=40)
file_entries = st.builds(
    FileEntry,
    size=st.integers(0, 2**53),
    sha1=hash40,
    manifest=st.none() | hash40,
)


def _dir_strategy():
    def extend(children):
        return st.builds(
            _make_dir,
            st.dictionaries(name_strategy, file_entries, max_size=4),
            st.dictionaries(name_strategy, children, max_size=3),
        )

    return st.recursive(
        st.builds(_make_dir, st.dictionaries(name_strategy, file_entries, max_size=4), st.just({})),
        extend, max_leaves=8,
    )


def _make_dir(files, dirs):
    dirs = {name: sub for name, sub in dirs.items() if name not in files}
    return DirEntry(files=files, dirs=dirs)


def _reorder(entry, reverse):
    files = dict(sorted(entry.files.items(), reverse=reverse))
    dirs = {name: _reorder(sub, not reverse) for name, sub in sorted(entry.dirs.items(), reverse=reverse)}
    return DirEntry(files=files, dirs=dirs)


def _as_plain(entry):
    """A DirEntry as nested dicts/tuples for comparison (order-insensitive)."""
    return (
        {name: (f.size, f.sha1, f.md5, f.manifest) for name, f in entry.files.items()},
        {name: _as_plain(sub) for name, sub in entry.dirs.items()},
    )


def _reference_bytes(entry):
    """Independent implementation of SPEC §3 canonical bytes."""
    def file_json(f):
        parts = [f'"size": {f.size}', f'"sha1": {json.dumps(f.sha1)}']
        if f.manifest:
            parts.append(f'"manifest": {json.dumps(f.manifest)}')
        return "{" + ", ".join(parts) + "}"

    def dir_json(d):
        files = ", ".join(f"{json.dumps(n)}: {file_json(d.files[n])}" for n in sorted(d.files))
        dirs = ", ".join(f"{json.dumps(n)}: {dir_json(d.dirs[n])}" for n in sorted(d.dirs))
        return '{"files": {' + files + '}, "dirs": {' + dirs + "}}"

    return dir_json(entry).encode("ascii")


@settings(max_examples=60)  # trees are costly to generate; keep the suite fast
@given(_dir_strategy())
def test_parse_of_canonical_is_identity(tree):
    data = dir_manifest_bytes(tree)
    assert _as_plain(parse_dir_manifest(data)) == _as_plain(tree)
    assert dir_manifest_bytes(parse_dir_manifest(data)) == data


@settings(max_examples=60)
@given(_dir_strategy())
def test_canonical_bytes_independent_of_insertion_order(tree):
    data = dir_manifest_bytes(tree)
    assert dir_manifest_bytes(_reorder(tree, True)) == data
    assert dir_manifest_bytes(_reorder(tree, False)) == data
    assert data == _reference_bytes(tree)


# ------------------------------------------------------ tolerant readers

def test_reader_accepts_any_key_order_and_unknown_keys():
    data = json.dumps({
        "extra": [1, 2, 3],
        "dirs": {"sub": {"dirs": {}, "files": {"x": {"sha1": A1, "mtime": 5, "size": 1}}, "?": None}},
        "files": {"a": {"manifest": M1, "sha1": A1.upper(), "size": 7, "path": "/old/a"}},
    })
    tree = parse_dir_manifest(data.encode())
    assert tree.files["a"] == FileEntry(7, A1, None, M1)
    assert tree.dirs["sub"].files["x"] == FileEntry(1, A1)
    canonical = dir_manifest_bytes(tree)
    assert b"extra" not in canonical and b"mtime" not in canonical


def test_reader_accepts_md5_only_entries_from_0_6():
    data = json.dumps({"files": {"a": {"size": 1, "md5": MD5}}, "dirs": {}})
    tree = parse_dir_manifest(data)
    assert tree.files["a"].md5 == MD5 and tree.files["a"].sha1 is None
    assert tree.files["a"].algorithm_and_hash == ("md5", MD5)
    both = parse_dir_manifest(json.dumps({"files": {"a": {"size": 1, "md5": MD5, "sha1": A1}}, "dirs": {}}))
    assert both.files["a"].algorithm_and_hash == ("sha1", A1)


def test_lookup_and_count():
    tree = parse_dir_manifest(json.dumps({
        "files": {"a": {"size": 1, "sha1": A1}},
        "dirs": {"d": {"files": {"b": {"size": 2, "sha1": B1}}, "dirs": {"e": {"files": {}, "dirs": {}}}}},
    }))
    assert tree.lookup(()) is tree
    assert tree.lookup(("a",)).size == 1
    assert tree.lookup(("d", "b")).sha1 == B1
    assert isinstance(tree.lookup(("d", "e")), DirEntry)
    assert tree.lookup(("a", "x")) is None
    assert tree.lookup(("missing",)) is None
    assert tree.lookup(("d", "b", "c")) is None
    assert tree.count() == (2, 3)


# ------------------------------------------------------ invalid manifests

def _files(entry_or_name, entry=None):
    if entry is None:
        return {"files": {"a": entry_or_name}, "dirs": {}}
    return {"files": {entry_or_name: entry}, "dirs": {}}


GOOD = {"size": 1, "sha1": A1}
BAD_DOCUMENTS = {
    "empty name": _files("", GOOD),
    "dot name": _files(".", GOOD),
    "dotdot name": _files("..", GOOD),
    "slash name": _files("a/b", GOOD),
    "traversal name": _files("../../etc/passwd", GOOD),
    "nul name": _files("a\0b", GOOD),
    "dotdot dir": {"files": {}, "dirs": {"..": {"files": {}, "dirs": {}}}},
    "slash dir": {"files": {}, "dirs": {"a/b": {"files": {}, "dirs": {}}}},
    "nul dir": {"files": {}, "dirs": {"\0": {"files": {}, "dirs": {}}}},
    "nested bad name": {"files": {}, "dirs": {"ok": _files("..", GOOD)}},
    "short sha1": _files({"size": 1, "sha1": A1[:-1]}),
    "non-hex sha1": _files({"size": 1, "sha1": "g" * 40}),
    "path sha1": _files({"size": 1, "sha1": "../../../../etc/passwd/" + "0" * 17}),
    "int sha1": _files({"size": 1, "sha1": 5}),
    "bad md5": _files({"size": 1, "md5": A1}),
    "bad manifest hash": _files({"size": 1, "sha1": A1, "manifest": "x"}),
    "no hash": _files({"size": 1}),
    "negative size": _files({"size": -1, "sha1": A1}),
    "float size": _files({"size": 1.0, "sha1": A1}),
    "string size": _files({"size": "1", "sha1": A1}),
    "bool size": _files({"size": True, "sha1": A1}),
    "null size": _files({"size": None, "sha1": A1}),
    "missing size": _files({"sha1": A1}),
    "list document": [],
    "string document": "files",
    "null document": None,
    "files is a list": {"files": [], "dirs": {}},
    "dirs is a list": {"files": {}, "dirs": []},
    "file entry is a list": _files([1, A1]),
    "file entry is a string": _files(A1),
    "dir entry is a list": {"files": {}, "dirs": {"d": []}},
    "dir entry is null": {"files": {}, "dirs": {"d": None}},
    "file and dir share a name": {"files": {"a": GOOD}, "dirs": {"a": {"files": {}, "dirs": {}}}},
}


@pytest.mark.parametrize("document", BAD_DOCUMENTS.values(), ids=list(BAD_DOCUMENTS))
def test_invalid_manifests_rejected(document):
    with pytest.raises(InvalidManifest) as info:
        parse_dir_manifest(json.dumps(document).encode(), which="sha1dir://X")
    assert "sha1dir://X" in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("data", [b"", b"{", b"\xff\xfe\x00", b"not json", b'{"files": {}, "dirs": {}} x'])
def test_non_json_rejected(data):
    with pytest.raises(InvalidManifest):
        parse_dir_manifest(data)


def test_deeply_nested_manifest_is_invalid_not_a_crash():
    depth = 100_000
    data = '{"dirs": {"a": ' * depth + "{}" + "}}" * depth
    with pytest.raises(InvalidManifest):
        parse_dir_manifest(data.encode())


def test_moderately_nested_manifest_beyond_recursion_limit():
    # json.loads copes with this depth, the tree walk must not crash either.
    depth = 1500
    data = '{"dirs": {"a": ' * depth + '{"files": {}, "dirs": {}}' + "}}" * depth
    try:
        tree = parse_dir_manifest(data.encode())
    except InvalidManifest:
        return
    assert tree.lookup(("a",) * depth) is not None


# --------------------------------------------------------- file manifests

def _file_manifest_doc(size, bounds, whole=A1):
    return {
        "size": size, "sha1": whole,
        "chunks": [{"start": s, "end": e, "sha1": sha1(str(s).encode())} for s, e in bounds],
    }


def test_file_manifest_canonical_bytes_and_round_trip():
    c0, c1 = sha1(b"0"), sha1(b"1")
    manifest = FileManifest(10, A1, (Chunk(0, 6, c0), Chunk(6, 10, c1)))
    expected = (
        '{"size": 10, "sha1": "' + A1 + '", "chunks": [{"start": 0, "end": 6, "sha1": "' + c0
        + '"}, {"start": 6, "end": 10, "sha1": "' + c1 + '"}]}'
    )
    assert manifest.to_bytes() == expected.encode()
    assert parse_file_manifest(manifest.to_bytes()) == manifest


def test_file_manifest_reader_accepts_upper_case_and_extra_keys():
    doc = _file_manifest_doc(4, [(0, 4)])
    doc["extra"] = 1
    doc["sha1"] = A1.upper()
    doc["chunks"][0]["extra"] = True
    parsed = parse_file_manifest(json.dumps(doc))
    assert parsed.sha1 == A1 and parsed.size == 4 and len(parsed.chunks) == 1


def test_empty_file_manifest():
    parsed = parse_file_manifest(json.dumps(_file_manifest_doc(0, [])))
    assert parsed.chunks == () and parsed.chunk_range(0, 10) == (0, 0)


BAD_FILE_MANIFESTS = {
    "gap": _file_manifest_doc(10, [(0, 4), (5, 10)]),
    "overlap": _file_manifest_doc(10, [(0, 6), (4, 10)]),
    "short": _file_manifest_doc(10, [(0, 4), (4, 9)]),
    "long": _file_manifest_doc(10, [(0, 4), (4, 11)]),
    "not from zero": _file_manifest_doc(10, [(1, 10)]),
    "empty chunk": _file_manifest_doc(10, [(0, 0), (0, 10)]),
    "reversed chunk": _file_manifest_doc(10, [(0, 10), (10, 5)]),
    "no chunks for data": _file_manifest_doc(10, []),
    "negative size": _file_manifest_doc(-1, []),
    "bool size": {"size": True, "sha1": A1, "chunks": [{"start": 0, "end": 1, "sha1": A1}]},
    "bad whole sha1": _file_manifest_doc(4, [(0, 4)], whole="zz"),
    "bad chunk sha1": {"size": 4, "sha1": A1, "chunks": [{"start": 0, "end": 4, "sha1": "a" * 39}]},
    "float bounds": {"size": 4, "sha1": A1, "chunks": [{"start": 0.0, "end": 4, "sha1": A1}]},
    "bool bounds": {"size": 1, "sha1": A1, "chunks": [{"start": False, "end": True, "sha1": A1}]},
    "chunk is a list": {"size": 4, "sha1": A1, "chunks": [[0, 4, A1]]},
    "chunks missing": {"size": 4, "sha1": A1},
    "chunks an object": {"size": 4, "sha1": A1, "chunks": {}},
    "document a list": [],
}


@pytest.mark.parametrize("document", BAD_FILE_MANIFESTS.values(), ids=list(BAD_FILE_MANIFESTS))
def test_invalid_file_manifests_rejected(document):
    with pytest.raises(InvalidManifest):
        parse_file_manifest(json.dumps(document).encode(), which="sha1://X")


@given(
    sizes=st.lists(st.integers(1, 50), min_size=1, max_size=12),
    a=st.integers(0, 700), b=st.integers(0, 700),
)
def test_chunk_range_matches_brute_force(sizes, a, b):
    bounds, position = [], 0
    for size in sizes:
        bounds.append((position, position + size))
        position += size
    manifest = parse_file_manifest(json.dumps(_file_manifest_doc(position, bounds)))
    start, end = min(a, b), max(a, b)
    first, last = manifest.chunk_range(start, end)
    overlapping = [i for i, (s, e) in enumerate(bounds) if s < end and e > start and start < end]
    if overlapping:
        assert (first, last) == (overlapping[0], overlapping[-1] + 1)
    else:
        assert first == last
