"""Hash URLs (SPEC §1): parsing, formatting and mapping to mount paths.

    sha1://<h40>[/<name>][?manifest=<h40>]
    md5://<h32>[/<name>]
    sha1dir://<h40>[.<label>][/<path>]

Names and labels are informational; they never change what is retrieved.
"""

from dataclasses import dataclass

from .errors import InvalidURL
from .hashing import is_valid_hash

FILE_SCHEMES = ("sha1", "md5")
SCHEMES = FILE_SCHEMES + ("sha1dir",)


@dataclass(frozen=True)
class HashURL:
    """A parsed hash URL.

    ``scheme`` is 'sha1', 'md5' or 'sha1dir'; ``hash`` is lower-case hex;
    ``name`` is the informational file name or directory label (or None);
    ``path`` is the normalized path inside a snapshot ('' for its root);
    ``manifest`` is the sha1 of a large file's file manifest (or None).
    """

    scheme: str
    hash: str
    name: str | None = None
    path: str = ""
    manifest: str | None = None

    @property
    def algorithm(self):
        """The algorithm the hash is computed with ('sha1' for sha1dir)."""
        return "sha1" if self.scheme == "sha1dir" else self.scheme

    @property
    def is_dir(self):
        return self.scheme == "sha1dir"

    @property
    def path_parts(self):
        return tuple(self.path.split("/")) if self.path else ()

    def child(self, name):
        """The URL of entry ``name`` inside this snapshot directory."""
        path = f"{self.path}/{name}" if self.path else name
        return HashURL(self.scheme, self.hash, self.name, path)

    def __str__(self):
        if self.is_dir:
            text = f"sha1dir://{self.hash}"
            if self.name is not None:
                text += f".{self.name}"
            return text + (f"/{self.path}" if self.path else "")
        text = f"{self.scheme}://{self.hash}"
        if self.name:
            text += f"/{self.name}"
        if self.manifest:
            text += f"?manifest={self.manifest}"
        return text

    def mount_relpath(self):
        """Path of this URL below a mount point (SPEC §6)."""
        if not self.is_dir:
            return f"{self.scheme}/{self.hash}"
        top = self.hash if self.name is None else f"{self.hash}.{self.name}"
        return f"sha1dir/{top}" + (f"/{self.path}" if self.path else "")


def dir_url(digest, label=None):
    """``sha1dir://<digest>[.<label>]`` (no label when it is None or empty)."""
    return f"sha1dir://{digest}.{label}" if label else f"sha1dir://{digest}"


def parse_url(text):
    """Parse ``text`` into a :class:`HashURL`; raise :class:`InvalidURL`."""
    if not isinstance(text, str):
        raise InvalidURL(text, "not a string")
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise InvalidURL(text, "expected <scheme>://<hash>...")
    if scheme not in SCHEMES:
        raise InvalidURL(text, f"unknown scheme {scheme!r} (expected sha1, md5 or sha1dir)")
    if scheme == "sha1dir":
        return _parse_dir_url(text, rest)
    return _parse_file_url(text, scheme, rest)


def _checked_hash(text, algorithm, value, what="hash"):
    if not value:
        raise InvalidURL(text, f"empty {what}")
    if not is_valid_hash(algorithm, value):
        length = 40 if algorithm == "sha1" else 32
        raise InvalidURL(text, f"{what} must be {length} hex digits, got {value!r}")
    return value.lower()


def _parse_file_url(text, scheme, rest):
    manifest = None
    # Only a trailing '?manifest=' is a query; any other '?' belongs to the name.
    head, sep, query = rest.rpartition("?manifest=")
    if sep and scheme == "sha1":
        rest = head
        manifest = _checked_hash(text, "sha1", query, "manifest hash")
    hash_part, _, name = rest.partition("/")
    digest = _checked_hash(text, scheme, hash_part)
    return HashURL(scheme, digest, name or None, "", manifest)


def _parse_dir_url(text, rest):
    top, _, path = rest.partition("/")
    hash_part, dot, label = top.partition(".")
    digest = _checked_hash(text, "sha1", hash_part)
    return HashURL("sha1dir", digest, label if dot else None, normalize_path(text, path))


def normalize_path(text, path):
    """Drop empty segments; reject '.' and '..' (SPEC §1)."""
    parts = [part for part in path.split("/") if part]
    for part in parts:
        if part in (".", ".."):
            raise InvalidURL(text, f"path segment {part!r} is not allowed")
        if "\0" in part:
            raise InvalidURL(text, "path contains a NUL character")
    return "/".join(parts)


def gateway_link(url, server):
    """The web gateway address (SPEC §5a) of ``url`` on the kachery server at
    ``server`` (its base URL): a page or file a browser opens.

    ``sha1dir://H.lbl/a/b`` -> ``<server>/sha1dir/H.lbl/a/b`` (a directory's
    page or a file); ``sha1://H/x.csv`` -> ``<server>/sha1/H/x.csv`` (downloaded
    as x.csv). Every segment is percent-encoded.
    """
    from urllib.parse import quote

    url = parse_url(url) if isinstance(url, str) else url
    base = server.rstrip("/")
    if url.is_dir:
        top = url.hash if url.name is None else f"{url.hash}.{url.name}"
        segments = [top, *url.path_parts]
        return f"{base}/sha1dir/" + "/".join(quote(part, safe="") for part in segments)
    link = f"{base}/{url.scheme}/{url.hash}"
    if url.name:
        link += "/" + quote(url.name, safe="")
    return link + (f"?manifest={url.manifest}" if url.manifest else "")
