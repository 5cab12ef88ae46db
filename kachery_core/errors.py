"""Exceptions of kachery_core.

Each error subclasses the built-in that callers already catch (a missing object
is a ``FileNotFoundError``, a bad URL a ``ValueError``), carries its data as
attributes, and renders as one line that a user can act on. The CLI maps these
classes to exit codes and the FUSE adapter maps them to errno values, each in
one place.
"""


class KacheryError(Exception):
    """Base class of every error this package raises on purpose."""


class InvalidURL(KacheryError, ValueError):
    """A string that is not a valid hash URL (SPEC §1)."""

    def __init__(self, url, problem):
        self.url = url
        self.problem = problem
        super().__init__(f"invalid URL {url!r}: {problem}")


class InvalidHash(KacheryError, ValueError):
    """A hash string that is malformed for its algorithm."""

    def __init__(self, algorithm, value):
        self.algorithm = algorithm
        self.value = value
        super().__init__(f"invalid {algorithm} hash {value!r}")


class ObjectNotFound(KacheryError, FileNotFoundError):
    """No store that was asked holds the object (or the snapshot lacks the path)."""

    def __init__(self, what, where="the local store"):
        self.what = what
        self.where = where
        super().__init__(f"not found: {what} (looked in {where})")


class NotADirectoryInSnapshot(KacheryError, NotADirectoryError):
    """A snapshot path names a file where a directory was needed."""

    def __init__(self, url):
        self.url = url
        super().__init__(f"not a directory: {url}")


class IsADirectoryInSnapshot(KacheryError, IsADirectoryError):
    """A snapshot path names a directory where a file was needed."""

    def __init__(self, url):
        self.url = url
        super().__init__(f"is a directory: {url} (use kachery-ls or kachery-load)")


class HashMismatch(KacheryError):
    """Bytes whose digest is not the one they were fetched or stored under."""

    def __init__(self, expected, got, what="object"):
        self.expected = expected
        self.got = got
        super().__init__(f"corrupt {what}: expected hash {expected}, got {got}")


class InvalidManifest(KacheryError, ValueError):
    """A directory or file manifest that breaks SPEC §3/§4; nothing is served from it."""

    def __init__(self, which, problem):
        self.which = which
        self.problem = problem
        super().__init__(f"invalid manifest {which}: {problem}")


class NotASnapshot(InvalidManifest):
    """A sha1dir:// URL whose object is intact but is not a directory manifest
    (usually the hash of a file): the URL is wrong, nothing is corrupt."""

    def __init__(self, digest, problem):
        self.which = f"sha1dir://{digest}"
        self.problem = problem
        KacheryError.__init__(self, f"not a snapshot: sha1dir://{digest} is not a directory "
                              f"manifest (a file's hash? try sha1://{digest})")


class RemoteUnavailable(KacheryError, ConnectionError):
    """No remote could be reached (connection refused, timeout, repeated 5xx)."""

    def __init__(self, remote, reason):
        self.remote = remote
        self.reason = reason
        super().__init__(f"remote {remote} unavailable: {reason}")


class AccessDenied(KacheryError, PermissionError):
    """A remote refused the request (401 no/bad token, 403 not allowed)."""

    def __init__(self, remote, status, reason=""):
        self.remote = remote
        self.status = status
        detail = f": {reason}" if reason else ""
        super().__init__(f"remote {remote} refused access (HTTP {status}){detail}")


class RemoteRejected(KacheryError):
    """A remote answered an upload with an error other than an access refusal."""

    def __init__(self, remote, status, reason=""):
        self.remote = remote
        self.status = status
        detail = f": {reason}" if reason else ""
        super().__init__(f"remote {remote} rejected the request (HTTP {status}){detail}")


class ConfigError(KacheryError, ValueError):
    """A configuration file or setting that cannot be used."""
