"""Hash algorithms and hash-string validation.

Every hash string that comes from outside (a URL, a manifest, an HTTP path) goes
through :func:`validate_hash` before it is used, and in particular before it is
joined into a file-system path.
"""

import hashlib
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
