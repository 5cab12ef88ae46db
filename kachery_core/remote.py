"""The configured remotes and the policy across them (SPEC §5).

:class:`RemoteSet` tries the remotes in order: the first that has an object
serves it; an unreachable, refusing or corrupt remote makes it try the next
one, and a remote that failed all its retries is skipped for a while instead
of being retried for every object. Uploads go to the first remote.

Each remote is a transport (transport.py): HTTP for a kachery server or a
static mirror (http_remote.py), S3 for a bucket (bucket_remote.py). They only
move bytes; everything that decides what is trusted is here:

Every byte that enters the local store from a remote is verified first:
whole objects stream to a temp file while being hashed and are renamed into
place only when the digest matches; a chunk of a large file (fetched with a
range read) is checked against its sha1 from a trusted file manifest before
it is returned; small objects and batch answers are hashed before use.
"""

import logging
import os
import threading
import time

from .cache import evicting_when_full
from .errors import (
    AccessDenied,
    HashMismatch,
    ObjectNotFound,
    RemoteRejected,
    RemoteUnavailable,
)
from .hashing import digest_bytes
from .pace import DEFAULT_SPEED_LIMIT, DEFAULT_SPEED_TIME, TooSlow
from .transport import TransferSettings, object_path

log = logging.getLogger("kachery")


def make_transport(remote, settings, mark):
    """The transport of one configured remote (``settings.Remote``)."""
    if remote.url.startswith("s3://"):
        from .bucket_remote import BucketRemote

        return BucketRemote(remote, settings, mark)
    from .http_remote import HttpRemote

    return HttpRemote(remote, settings, mark)


class RemoteSet:
    """The configured remotes, tried in order. Thread safe.

    ``remotes`` is a sequence of ``settings.Remote(url, token)``; the first one
    also receives uploads.
    """

    def __init__(self, remotes, timeout=10.0, retries=3, backoff=0.2, down_for=30.0,
                 speed_limit=DEFAULT_SPEED_LIMIT, speed_time=DEFAULT_SPEED_TIME):
        self.remotes = tuple(remotes)
        self.settings = TransferSettings(timeout, retries, backoff, speed_limit, speed_time)
        self.down_for = down_for
        self._lock = threading.Lock()
        self._down_until = {}
        self._transports = {}  # url -> transport, made on first use (an S3 client costs imports)
        #: callable(bytes) told of download progress when a call passes none
        #: (the CLI sets a progress bar here when stderr is a terminal).
        self.progress = None

    @classmethod
    def from_config(cls, config):
        return cls(config.remotes, timeout=config.remote_timeout,
                   speed_limit=config.remote_speed_limit, speed_time=config.remote_speed_time)

    def __repr__(self):
        return f"RemoteSet({[remote.url for remote in self.remotes]!r})"

    # ----------------------------------------------------------- plumbing

    def transport(self, remote):
        """The transport of a configured remote (made once)."""
        with self._lock:
            found = self._transports.get(remote.url)
        if found is None:
            made = make_transport(remote, self.settings, self._mark)
            with self._lock:
                found = self._transports.setdefault(remote.url, made)
        return found

    def _live(self):
        """Transports of the remotes not recently found dead (all of them if every one is)."""
        now = time.monotonic()
        with self._lock:
            live = [r for r in self.remotes if self._down_until.get(r.url, 0) <= now]
        return [self.transport(remote) for remote in live or self.remotes]

    def _mark(self, url, alive):
        with self._lock:
            if alive:
                self._down_until.pop(url, None)
            else:
                self._down_until[url] = time.monotonic() + self.down_for

    def _failover(self, what, attempt):
        """``attempt(transport)`` on each live remote in order: the first result wins.

        Raises the most useful error of the failed attempts (see _Outcome).
        """
        outcome = _Outcome(what)
        for transport in self._live():
            try:
                return attempt(transport)
            except (ObjectNotFound, HashMismatch, AccessDenied, RemoteRejected) as error:
                outcome.note(error)
            except RemoteUnavailable as error:
                outcome.unavailable.append(error)
            except TooSlow as error:  # a drip is as useless as silence: skip it for a while
                self._mark(transport.url, False)
                outcome.unavailable.append(RemoteUnavailable(transport.url, str(error)))
        raise outcome.failure(self.remotes)

    # -------------------------------------------------------------- reads

    def size(self, algorithm, digest):
        """Size of the object on the first remote that has it, or None.

        Raises RemoteUnavailable when no remote could be asked, AccessDenied
        when a remote refused and none had it.
        """
        outcome = _Outcome(f"{algorithm}://{digest}")
        for transport in self._live():
            try:
                size = transport.size(algorithm, digest)
            except (AccessDenied, RemoteRejected, HashMismatch) as error:
                outcome.note(error)
                continue
            except RemoteUnavailable as error:
                outcome.unavailable.append(error)
                continue
            if size is not None:
                return size
            outcome.note(ObjectNotFound(outcome.what, transport.url))
        outcome.raise_if_no_answer()
        return None

    def download(self, algorithm, digest, store, progress=None):
        """Fetch an object into ``store`` (verified, durable); return its path.

        Raises ObjectNotFound (no remote has it), HashMismatch (every copy
        found was corrupt), AccessDenied (refused and not found elsewhere),
        RemoteUnavailable (no remote could be reached).
        """
        progress = progress or self.progress
        return evicting_when_full(store, lambda: self._failover(
            f"{algorithm}://{digest}",
            lambda transport: self._download_from(transport, algorithm, digest, store, progress)))

    def _download_from(self, transport, algorithm, digest, store, progress):
        fd, temp_path = store.create_temp()
        try:
            got = transport.receive(algorithm, digest, fd, progress, store.durable_writes)
            if got != digest:
                raise HashMismatch(digest, got, f"download from {transport.url}")
            if store.durable_writes:
                os.fsync(fd)  # data durable before the name exists (SPEC §2)
        except BaseException:
            os.close(fd)
            os.unlink(temp_path)
            raise
        os.close(fd)
        final = store.publish(temp_path, algorithm, digest)
        if store.durable_writes:
            _fsync_parents(final, store.root)
        return final

    def fetch_chunk(self, target, chunk):
        """Bytes of one chunk (manifest.Chunk) of a remote FileTarget, verified.

        The chunk's sha1 comes from a trusted file manifest (SPEC §4); bytes
        that do not match it are never returned. Raises like :meth:`download`.
        """
        what = f"{target.algorithm}://{target.digest} bytes {chunk.start}-{chunk.end - 1}"

        def attempt(transport):
            data, got = transport.read_range(target.algorithm, target.digest, chunk.start, chunk.end)
            if got != chunk.sha1:
                path = object_path(target.algorithm, target.digest)
                raise HashMismatch(chunk.sha1, got, f"chunk of {path} from {transport.url}")
            return data  # a memoryview: compares equal to bytes, without a 4 MiB copy

        return self._failover(what, attempt)

    def fetch_chunk_into(self, target, chunk, fd):
        """Write one verified chunk of a remote FileTarget into ``fd`` at
        offset ``chunk.start``. On a mismatch the next remote writes over
        the bytes; when none has it right, HashMismatch (or like
        :meth:`download`) and the range of ``fd`` holds nothing to trust."""
        what = f"{target.algorithm}://{target.digest} bytes {chunk.start}-{chunk.end - 1}"

        def attempt(transport):
            got = transport.receive_range(target.algorithm, target.digest, chunk.start, chunk.end, fd)
            if got != chunk.sha1:
                path = object_path(target.algorithm, target.digest)
                raise HashMismatch(chunk.sha1, got, f"chunk of {path} from {transport.url}")

        return self._failover(what, attempt)

    def fetch_small(self, algorithm, digest, max_size):
        """The verified bytes of an object of at most ``max_size`` bytes.

        For small files read through the mount: no temp file, no store. A
        remote whose answer is larger than ``max_size`` counts as corrupt.
        Raises like :meth:`download`.
        """
        def attempt(transport):
            data = transport.read_small(algorithm, digest, max_size)
            got = digest_bytes(algorithm, data)
            if got != digest:
                raise HashMismatch(digest, got, f"download from {transport.url}")
            return data

        return self._failover(f"{algorithm}://{digest}", attempt)

    def fetch_small_many(self, objects, max_size):
        """{(algorithm, digest): verified bytes} for what the remotes' batch
        download (``POST /api/download``, kachery-server's extension) gives of
        ``objects``; the caller fetches the rest one by one.

        A copy that fails verification is left out (and logged): fetched
        alone, it gets the usual failover and error. Never raises for a
        remote that is down or lacks the API.
        """
        asked = {(algorithm, digest.lower()): (algorithm, digest) for algorithm, digest in objects
                 if algorithm in ("sha1", "md5")}
        found = {}
        wanted = list(asked)
        for transport in self._live():
            if not wanted:
                break
            try:
                answer = transport.read_small_many(wanted, max_size)
            except (RemoteUnavailable, RemoteRejected, AccessDenied, ObjectNotFound) as error:
                log.debug("batch download from %s failed: %s", transport.url, error)
                continue
            for (algorithm, digest), data in answer.items():
                if len(data) <= max_size and digest_bytes(algorithm, data) == digest:
                    found[(algorithm, digest)] = data
                else:
                    log.warning("corrupt copy of %s://%s from %s (batch download)",
                                algorithm, digest, transport.url)
            wanted = [key for key in wanted if key not in found]
        return {asked[key]: data for key, data in found.items() if key in asked}

    # ------------------------------------------------------------ uploads

    @property
    def upload_remote(self):
        """Uploads go to the first configured remote."""
        return self.remotes[0]

    @property
    def _uploads(self):
        return self.transport(self.upload_remote)

    def has_many(self, objects):
        """The subset of (algorithm, digest) pairs the upload remote already has."""
        return self._uploads.has_many(objects)

    def upload(self, algorithm, digest, source, progress=None):
        """Write one object (``source``: bytes or a file path) to the upload
        remote; return 201 (new) or 200 (already there).

        Raises AccessDenied (401/403), RemoteRejected (e.g. 413, or bytes that
        are not ``digest``), RemoteUnavailable (unreachable, 5xx),
        SourceChanged (a file path whose bytes, on arrival, are not the
        ``digest`` the caller hashed it to: it changed since).
        """
        return self._uploads.upload(algorithm, digest, source, progress)

    def upload_many(self, items, progress=None):
        """Upload small objects [(algorithm, digest, bytes or path)] at once
        (one batch request where the remote offers it). Raises like upload."""
        return self._uploads.upload_many(items, progress)

    def prepare(self):
        """Do the set-up that the first request would otherwise pay for."""
        for remote in self.remotes:
            self.transport(remote).prepare()


# ------------------------------------------------------------------ helpers

class _Outcome:
    """Why no remote delivered ``what``, to raise the most useful single error."""

    def __init__(self, what):
        self.what = what
        self.unavailable = []
        self.errors = []

    def note(self, error):
        self.errors.append(error)

    def raise_if_no_answer(self):
        """When nobody had the object: re-raise a refusal or an outage, if any."""
        for error in self.errors:
            if isinstance(error, (AccessDenied, RemoteRejected)):
                raise error
        if self.unavailable and not self.errors:
            raise self.unavailable[0]

    def failure(self, remotes):
        """The error to raise: corrupt copies, then refusals, then outages, then not found.

        Corrupt copies while another remote could not be reached are an
        outage (exit 4: trying again later may well succeed), not corruption
        of the object (exit 3); the message names the corrupt remote.
        """
        corrupt = [error for error in self.errors if isinstance(error, HashMismatch)]
        if corrupt and self.unavailable:
            first = self.unavailable[0]
            return RemoteUnavailable(first.remote, f"{first.reason} (and {corrupt[0]})")
        for kind in (HashMismatch, AccessDenied, RemoteRejected):
            for error in self.errors:
                if isinstance(error, kind):
                    return error
        if self.unavailable and not self.errors:
            return self.unavailable[0]
        where = ", ".join(remote.url for remote in remotes)
        if self.unavailable:
            where += "; unreachable: " + ", ".join(error.remote for error in self.unavailable)
        return ObjectNotFound(self.what, where)



def _fsync_parents(final, root):
    """fsync the object's directory and the fan-out folders the rename may have created."""
    directory = os.path.dirname(final)
    for _ in range(4):
        if not directory.startswith(root):
            break
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        directory = os.path.dirname(directory)
