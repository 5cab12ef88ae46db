"""Directory manifests (SPEC §3) and file manifests (SPEC §4).

Manifests are parsed into small immutable objects once, validated completely,
and serialized back to the canonical bytes that are hashed. Readers accept any
key order, unknown extra keys and kachery 0.6.x entries that carry "md5"
instead of "sha1"; anything else that breaks the spec raises
:class:`InvalidManifest` so that nothing is ever served from a bad manifest.
"""

import bisect
import json
import re
from dataclasses import dataclass, field

from .errors import InvalidManifest
from .hashing import is_valid_hash


@dataclass(slots=True)
class FileEntry:
    """A file inside a snapshot. At least one of ``sha1`` / ``md5`` is set.

    Treat as immutable. (Not ``frozen``: a frozen dataclass costs three times
    as much to create, and a large snapshot creates 100,000 of them.)"""

    size: int
    sha1: str | None = None
    md5: str | None = None
    manifest: str | None = None  # sha1 of the file manifest of a large file

    @property
    def algorithm_and_hash(self):
        """The (algorithm, hash) pair to fetch the content by, sha1 preferred."""
        return ("sha1", self.sha1) if self.sha1 else ("md5", self.md5)


@dataclass(slots=True)
class DirEntry:
    """A directory inside a snapshot: name → FileEntry and name → DirEntry."""

    files: dict = field(default_factory=dict)
    dirs: dict = field(default_factory=dict)

    def lookup(self, parts):
        """The FileEntry or DirEntry at ``parts`` (a sequence of names), or None."""
        node = self
        for index, name in enumerate(parts):
            if not isinstance(node, DirEntry):
                return None
            child = node.dirs.get(name)
            if child is None:
                child = node.files.get(name)
                if child is None or index != len(parts) - 1:
                    return None
            node = child
        return node

    def count(self):
        """(number of files, total bytes) in this directory tree."""
        files = len(self.files)
        total = sum(entry.size for entry in self.files.values())
        for sub in self.dirs.values():
            sub_files, sub_total = sub.count()
            files += sub_files
            total += sub_total
        return files, total


# ---------------------------------------------------------------- directories

def dir_manifest_bytes(directory):
    """Canonical bytes of a directory manifest (SPEC §3)."""
    return json.dumps(_dir_to_json(directory), ensure_ascii=True).encode("utf-8")


def _dir_to_json(directory):
    return {
        "files": {name: _file_to_json(directory.files[name]) for name in sorted(directory.files)},
        "dirs": {name: _dir_to_json(directory.dirs[name]) for name in sorted(directory.dirs)},
    }


def _file_to_json(entry):
    obj = {"size": entry.size}
    if entry.sha1:
        obj["sha1"] = entry.sha1
    if entry.md5:
        obj["md5"] = entry.md5
    if entry.manifest:
        obj["manifest"] = entry.manifest
    return obj


def parse_dir_manifest(data, which="(unnamed)"):
    """Parse and validate manifest bytes into a :class:`DirEntry`.

    ``which`` names the manifest in error messages (usually its hash).
    Raises :class:`InvalidManifest`.
    """
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidManifest(which, f"not JSON ({error})") from None
    except RecursionError:
        raise InvalidManifest(which, "nested too deeply") from None
    try:
        return _parse_dir(document, which, "")
    except RecursionError:
        raise InvalidManifest(which, "nested too deeply") from None


def _parse_dir(obj, which, where):
    if not isinstance(obj, dict):
        raise InvalidManifest(which, f"directory {where or '/'} is not an object")
    files = obj.get("files", {})
    dirs = obj.get("dirs", {})
    if not isinstance(files, dict) or not isinstance(dirs, dict):
        raise InvalidManifest(which, f"'files'/'dirs' of {where or '/'} must be objects")
    result = DirEntry()
    parsed = result.files
    for name, entry in files.items():
        if name in _BAD_NAMES or "/" in name or "\0" in name:
            _check_name(name, which, where)
        parsed[name] = _fast_file_entry(entry) or _parse_file_entry(entry, which, where, name)
    for name, entry in dirs.items():
        _check_name(name, which, where)
        if name in result.files:
            raise InvalidManifest(which, f"{where}/{name} is both a file and a directory")
        result.dirs[name] = _parse_dir(entry, which, f"{where}/{name}")
    return result


_BAD_NAMES = frozenset(("", ".", ".."))
#: Largest chunk a file manifest may have. SPEC §4 lets writers pick 1-16 MiB
#: (kachery writes 4 MiB) and readers accept any boundaries, but a reader
#: holds a chunk in memory to verify it before serving a byte of it: a
#: hostile manifest with one 512 MiB chunk made a 10-byte read hold 525 MiB.
#: 64 MiB leaves room for every writer the spec allows.
MAX_CHUNK = 64 * 1024 * 1024
_LOWER_SHA1 = re.compile("[0-9a-f]{40}").fullmatch


def _fast_file_entry(obj):
    """The common entry, {"size": n, "sha1": lower-case hex[, "manifest": ...]},
    checked with the fewest operations; None sends anything else (including
    every invalid entry) to the full check in _parse_file_entry."""
    if type(obj) is not dict or "md5" in obj:
        return None
    size = obj.get("size")
    sha1 = obj.get("sha1")
    manifest = obj.get("manifest")
    if (type(size) is int and size >= 0 and type(sha1) is str and _LOWER_SHA1(sha1)
            and (manifest is None or (type(manifest) is str and _LOWER_SHA1(manifest)))):
        return FileEntry(size, sha1, None, manifest)
    return None


def _check_name(name, which, where):
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        raise InvalidManifest(which, f"bad entry name {name!r} in {where or '/'}")


def _parse_file_entry(obj, which, where, name):
    """A FileEntry from its JSON object. The hot loop of a large manifest:
    the error path builds the messages, the success path does as little as it can."""
    if not isinstance(obj, dict):
        raise InvalidManifest(which, f"file entry {where}/{name} is not an object")
    size = obj.get("size")
    if type(size) is not int or size < 0:
        raise InvalidManifest(which, f"file {where}/{name} has bad size {size!r}")
    sha1 = obj.get("sha1")
    md5 = obj.get("md5")
    manifest = obj.get("manifest")
    if sha1 is not None:
        sha1 = _checked_hash(sha1, "sha1", "sha1", which, where, name)
    if md5 is not None:
        md5 = _checked_hash(md5, "md5", "md5", which, where, name)
    if manifest is not None:
        manifest = _checked_hash(manifest, "sha1", "manifest", which, where, name)
    if sha1 is None and md5 is None:
        raise InvalidManifest(which, f"file {where}/{name} has neither sha1 nor md5")
    return FileEntry(size, sha1, md5, manifest)


def _checked_hash(value, algorithm, key, which, where, name):
    if not is_valid_hash(algorithm, value):
        raise InvalidManifest(which, f"file {where}/{name} has bad {key} {value!r}")
    return value if value.islower() or value.isdigit() else value.lower()


# ---------------------------------------------------------------------- files

@dataclass(frozen=True, slots=True)
class Chunk:
    start: int
    end: int  # exclusive
    sha1: str


@dataclass(frozen=True)
class FileManifest:
    """The chunk list of a large file (SPEC §4)."""

    size: int
    sha1: str
    chunks: tuple

    def to_bytes(self):
        """Canonical bytes: default separators, keys size, sha1, chunks."""
        obj = {
            "size": self.size,
            "sha1": self.sha1,
            "chunks": [{"start": c.start, "end": c.end, "sha1": c.sha1} for c in self.chunks],
        }
        return json.dumps(obj, ensure_ascii=True).encode("utf-8")

    def chunk_range(self, start, end):
        """Indices [first, last) of the chunks that overlap bytes [start, end)."""
        end = min(end, self.size)  # bytes past the end overlap no chunk
        if start >= end or not self.chunks:
            return 0, 0
        starts = self._starts()
        first = bisect.bisect_right(starts, start) - 1
        last = bisect.bisect_left(starts, end)
        return max(first, 0), last

    def _starts(self):
        starts = self.__dict__.get("_starts_cache")
        if starts is None:
            starts = [chunk.start for chunk in self.chunks]
            object.__setattr__(self, "_starts_cache", starts)
        return starts


def parse_file_manifest(data, which="(unnamed)"):
    """Parse and validate file-manifest bytes; raise :class:`InvalidManifest`."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidManifest(which, f"not JSON ({error})") from None
    except RecursionError:
        raise InvalidManifest(which, "nested too deeply") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("chunks"), list):
        raise InvalidManifest(which, "file manifest must be an object with a 'chunks' list")
    size = obj.get("size")
    if type(size) is not int or size < 0:
        raise InvalidManifest(which, f"bad size {size!r}")
    sha1 = obj.get("sha1")
    if not is_valid_hash("sha1", sha1):
        raise InvalidManifest(which, f"bad sha1 {sha1!r}")
    chunks = tuple(_parse_chunk(item, which) for item in obj["chunks"])
    _check_coverage(chunks, size, which)
    return FileManifest(size, sha1.lower(), chunks)


def _parse_chunk(item, which):
    if not isinstance(item, dict):
        raise InvalidManifest(which, "chunk is not an object")
    start, end, sha1 = item.get("start"), item.get("end"), item.get("sha1")
    if type(start) is not int or type(end) is not int or not is_valid_hash("sha1", sha1):
        raise InvalidManifest(which, f"bad chunk {item!r}")
    return Chunk(start, end, sha1.lower())


def _check_coverage(chunks, size, which):
    position = 0
    for chunk in chunks:
        if chunk.start != position or chunk.end <= chunk.start:
            raise InvalidManifest(which, f"chunks are not contiguous at byte {position}")
        if chunk.end - chunk.start > MAX_CHUNK:
            raise InvalidManifest(which, f"a chunk of {chunk.end - chunk.start} bytes at byte "
                                  f"{position} is over the {MAX_CHUNK >> 20} MiB readers accept")
        position = chunk.end
    if position != size:
        raise InvalidManifest(which, f"chunks cover {position} bytes, file has {size}")
