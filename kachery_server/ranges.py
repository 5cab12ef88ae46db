"""The ``Range`` request header, single range only (RFC 9110 §14).

:func:`parse_range` turns a header value and the object size into what to
send. Multi-range requests, other units and malformed values are answered with
the whole object (a server may ignore a Range header it does not support,
RFC 9110 §14.2), so only a syntactically valid but unsatisfiable single range
gives 416.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class ByteRange:
    """Bytes [start, end) of the object, end exclusive."""

    start: int
    end: int

    def content_range(self, size):
        return f"bytes {self.start}-{self.end - 1}/{size}"


#: Returned for a valid single range that lies wholly past the end (→ 416).
UNSATISFIABLE = "unsatisfiable"


def parse_range(header, size):
    """What to serve for ``Range: header`` of an object of ``size`` bytes.

    Returns None (serve everything, 200), a :class:`ByteRange` (206) or
    :data:`UNSATISFIABLE` (416).
    """
    spec = _single_byte_range_spec(header)
    if spec is None:
        return None
    first, last = spec
    if first is None:  # suffix range "-N": the last N bytes
        if last == 0 or size == 0:
            return UNSATISFIABLE
        return ByteRange(max(size - last, 0), size)
    if first >= size:
        return UNSATISFIABLE
    end = size if last is None else min(last + 1, size)
    return ByteRange(first, end)


def _single_byte_range_spec(header):
    """(first, last) of 'bytes=first-last'; either may be None; None if unusable."""
    if not header:
        return None
    unit, _, ranges = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in ranges:
        return None
    first_text, dash, last_text = ranges.strip().partition("-")
    if not dash:
        return None
    first, last = _digits(first_text), _digits(last_text)
    if first is False or last is False or (first is None and last is None):
        return None
    if first is not None and last is not None and last < first:
        return None  # invalid per RFC 9110 §14.1.1: ignore the header
    return first, last


def _digits(text):
    """int of a run of ASCII digits, None when empty, False when not digits."""
    text = text.strip(" \t")
    if not text:
        return None
    if not (text.isascii() and text.isdigit()):
        return False
    return int(text)
