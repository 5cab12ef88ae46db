"""Hash algorithms and hash-string validation.

Every hash string that comes from outside (a URL, a manifest, an HTTP path) goes
through :func:`validate_hash` before it is used, and in particular before it is
joined into a file-system path.
"""

import hashlib
import os
import re

from .errors import InvalidHash

#: Supported file-object algorithms and the length of their hex digests.
DIGEST_LENGTHS = {"sha1": 40, "md5": 32}

# A compiled pattern per algorithm: manifests of 100,000 files check 100,000 hashes.
_MATCHERS = {
    algorithm: re.compile(f"[0-9a-fA-F]{{{length}}}").fullmatch
    for algorithm, length in DIGEST_LENGTHS.items()
}


def is_valid_hash(algorithm, value):
    """True when ``value`` is a lower- or upper-case hex digest of ``algorithm``."""
    matcher = _MATCHERS.get(algorithm)
    return matcher is not None and isinstance(value, str) and matcher(value) is not None


def validate_hash(algorithm, value):
    """Return ``value`` in lower case, or raise :class:`InvalidHash`."""
    if not is_valid_hash(algorithm, value):
        raise InvalidHash(algorithm, value)
    return value.lower()


def new_hasher(algorithm):
    """A fresh hashlib object for ``algorithm`` ('sha1' or 'md5')."""
    if algorithm not in DIGEST_LENGTHS:
        raise ValueError(f"unsupported algorithm {algorithm!r} (use sha1 or md5)")
    return hashlib.new(algorithm)


def digest_bytes(algorithm, data):
    """Hex digest of ``data`` (bytes-like)."""
    hasher = new_hasher(algorithm)
    hasher.update(data)
    return hasher.hexdigest()


def verified_blocks(blocks, algorithm, digest, what):
    """Yield ``blocks`` (an iterable of bytes-like) while hashing them; the
    last one only once the whole hashes to ``digest``, else raise
    HashMismatch instead: a consumer that writes as it goes never writes the
    end of wrong content (and a copy to a file is never completed)."""
    from .errors import HashMismatch

    hasher = new_hasher(algorithm)
    held = None
    for block in blocks:
        hasher.update(block)
        if held is not None:
            yield held
        held = block
    got = hasher.hexdigest()
    if got != digest:
        raise HashMismatch(digest, got, what)
    if held is not None:
        yield held


def file_blocks(path, start=0, end=None, block_size=1 << 20):
    """Yield the bytes [start, end) of a file in blocks."""
    with open(path, "rb", buffering=0) as file:
        position = start
        while end is None or position < end:
            block = os.pread(file.fileno(), block_size if end is None else min(block_size, end - position),
                             position)
            if not block:
                return
            position += len(block)
            yield block
