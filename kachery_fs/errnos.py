"""The one mapping from kachery's exceptions to errno values, for both FUSE backends.

SPEC §6: an unknown or invalid name → ENOENT; an invalid manifest, failed
verification or unreachable remote → EIO (the backend logs which).
"""

import errno

from kachery_core.errors import (
    HashMismatch,
    InvalidHash,
    InvalidManifest,
    InvalidURL,
    RemoteUnavailable,
)


def errno_for(error):
    """The errno for an exception raised by the resolver."""
    if isinstance(error, (InvalidManifest, HashMismatch, RemoteUnavailable)):
        return errno.EIO
    if isinstance(error, (InvalidURL, InvalidHash, FileNotFoundError)):
        return errno.ENOENT
    if isinstance(error, NotADirectoryError):
        return errno.ENOTDIR
    if isinstance(error, IsADirectoryError):
        return errno.EISDIR
    if isinstance(error, OSError) and error.errno:
        return error.errno
    return errno.EIO
