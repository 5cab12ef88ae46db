"""Range header parsing (pure): every answer compared with Python slicing."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kachery_server.ranges import UNSATISFIABLE, ByteRange, parse_range


def served(header, data):
    """What the server would send for ``header``: bytes, or 416."""
    chosen = parse_range(header, len(data))
    if chosen is None:
        return data
    if chosen is UNSATISFIABLE:
        return 416
    return data[chosen.start:chosen.end]


DATA = bytes(range(100))


@pytest.mark.parametrize("header, expected", [
    ("bytes=0-0", DATA[0:1]),
    ("bytes=10-", DATA[10:]),
    ("bytes=-5", DATA[-5:]),
    ("bytes=5-9", DATA[5:10]),
    ("bytes=90-1000", DATA[90:]),
    ("bytes=-1000", DATA),
    ("bytes=99-99", DATA[99:]),
    ("bytes=100-", 416),
    ("bytes=100-200", 416),
    ("bytes=-0", 416),
    ("BYTES = 3-4", DATA[3:5]),
    ("bytes=5-4", DATA),           # invalid: ignored, whole object
    ("bytes=0-1,5-6", DATA),       # multi-range: not supported, whole object
    ("items=0-1", DATA),
    ("bytes=x-1", DATA),
    ("bytes=-", DATA),
    ("bytes=1", DATA),
    ("bytes=١-٢", DATA),           # non-ASCII digits are not digits here
    ("", DATA),
    (None, DATA),
])
def test_range_examples(header, expected):
    assert served(header, DATA) == expected


def test_empty_object_has_no_satisfiable_range():
    assert served("bytes=0-0", b"") == 416
    assert served("bytes=-5", b"") == 416
    assert served("bytes=0-", b"") == 416


def test_content_range_header():
    assert ByteRange(10, 20).content_range(100) == "bytes 10-19/100"


sizes = st.integers(min_value=0, max_value=300)
positions = st.integers(min_value=0, max_value=400)


@given(size=sizes, first=positions, last=positions)
def test_first_last_matches_slicing(size, first, last):
    data = bytes(i % 251 for i in range(size))
    got = served(f"bytes={first}-{last}", data)
    if last < first:
        assert got == data  # syntactically invalid: ignored
    elif first >= size:
        assert got == 416
    else:
        assert got == data[first:last + 1]


@given(size=sizes, first=positions)
def test_open_ended_matches_slicing(size, first):
    data = bytes(i % 251 for i in range(size))
    got = served(f"bytes={first}-", data)
    assert got == (416 if first >= size else data[first:])


@given(size=sizes, suffix=positions)
def test_suffix_matches_slicing(size, suffix):
    data = bytes(i % 251 for i in range(size))
    got = served(f"bytes=-{suffix}", data)
    assert got == (416 if suffix == 0 or size == 0 else data[-suffix:])


@given(header=st.text(max_size=30), size=sizes)
def test_any_header_gives_a_valid_answer(header, size):
    chosen = parse_range(header, size)
    assert chosen is None or chosen is UNSATISFIABLE or 0 <= chosen.start < chosen.end <= size
