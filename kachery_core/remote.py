"""Remotes over HTTP (SPEC §5). The only module that imports ``requests``.

A remote is a base URL whose object URLs mirror the store layout, so a kachery
server and any static HTTP server over a storage directory both work (the
latter read-only). :class:`RemoteSet` tries the configured remotes in order:
the first that has an object serves it; an unreachable, refusing or corrupt
remote makes it try the next one.

Every byte that enters the local store from a remote is verified first:
whole objects stream to a temp file while being hashed and are renamed into
place only when the digest matches; a chunk of a large file (fetched with a
Range request) is checked against its sha1 from a trusted file manifest before
it is returned.

Reads (GET, HEAD) go straight to a shared urllib3 pool when no proxy
applies: requests costs about 1.6 ms of Python per call on top of urllib3's
0.6 ms, which is most of the cost of fetching a 50 KB object over loopback.
Everything else goes through one ``requests.Session`` per thread.

Reliability: connection reuse, connect/read timeouts from the config,
retries with exponential backoff on connection errors and 5xx answers, and a
remote that failed all its retries is skipped for a while instead of being
retried for every object.
"""

import functools
import http.client
import json
import logging
import os
import ssl
import threading
import time

import requests
import urllib3

from . import zerocopy
from .receiving import (
    RECEIVE_BLOCK,
    WRITEBACK_STEP,
    TransferFailed,
    describe,
    pump,
    receive_hashing,
    receive_into,
    skip,
    uninitialized,
)
from .cache import evicting_when_full
from .errors import (
    AccessDenied,
    HashMismatch,
    ObjectNotFound,
    RemoteRejected,
    RemoteUnavailable,
)
from .hashing import digest_bytes, is_valid_hash, new_hasher, validate_hash
from .pace import DEFAULT_SPEED_LIMIT, DEFAULT_SPEED_TIME, Pace, TooSlow

log = logging.getLogger("kachery")

#: Bytes handed to the socket per step of an upload through requests.
SEND_BLOCK = 1024 * 1024
#: Files at least this large are PUT with sendfile(2) (see _sendfile_put) ...
SENDFILE_MIN = 8 * 1024 * 1024
#: ... in steps of this many bytes (progress is reported per step).
SEND_STEP = 64 * 1024 * 1024
#: Times a download cut in the middle resumes where it stopped (a Range
#: request for the rest) before the next remote is tried.
RESUMES = 3
#: Bodies at least this large are spliced into their file (see _receive_body).
FAST_READ_MIN = 1024 * 1024
#: Objects up to this size are uploaded in POST /api/upload batches (the
#: server's limit is the same), larger ones by PUT.
BATCH_OBJECT_MAX = 1024 * 1024
#: Most bytes of a POST /api/download answer read (the rest is fetched by GET).
BATCH_ANSWER_MAX = 17 * 1024 * 1024
#: Hashes per POST /api/has request.
HAS_BATCH = 20000
#: Transient server-side failures: retried with backoff, then the next remote
#: (429: a server busy with other large requests, see kachery_server/limits.py).
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
#: Statuses with which a static server says "no such API" (SPEC §5).
NO_API_STATUSES = (404, 405, 501)

_NETWORK_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)


def object_path(algorithm, digest):
    """'<alg>/<h[0:2]>/<h[2:4]>/<h[4:6]>/<h>' of a validated digest."""
    digest = validate_hash(algorithm, digest)
    return f"{algorithm}/{digest[0:2]}/{digest[2:4]}/{digest[4:6]}/{digest}"


class RemoteSet:
    """The configured remotes, tried in order. Thread safe.

    ``remotes`` is a sequence of ``config.Remote(url, token)``; the first one
    also receives uploads.
    """

    def __init__(self, remotes, timeout=10.0, retries=3, backoff=0.2, down_for=30.0,
                 speed_limit=DEFAULT_SPEED_LIMIT, speed_time=DEFAULT_SPEED_TIME):
        self.remotes = tuple(remotes)
        self.timeout = timeout
        #: A body slower than speed_limit bytes/s over speed_time s fails (pace.py).
        self.speed_limit = speed_limit
        self.speed_time = speed_time
        self.retries = retries
        self.backoff = backoff
        self.down_for = down_for
        self._local = threading.local()
        self._lock = threading.Lock()
        self._down_until = {}
        self._batch_api = True  # until the upload remote says it has no api/upload
        #: callable(bytes) told of download progress when a call passes none
        #: (the CLI sets a progress bar here when stderr is a terminal).
        self.progress = None
        self._direct = {}  # remote url -> urllib3.PoolManager, or None when a proxy applies
        self._no_download_api = set()  # urls of remotes without POST /api/download
        self._buckets = {}  # url -> BucketRemote, for s3:// remotes (bucket_remote.py)

    @classmethod
    def from_config(cls, config):
        return cls(config.remotes, timeout=config.remote_timeout,
                   speed_limit=config.remote_speed_limit, speed_time=config.remote_speed_time)

    def __repr__(self):
        return f"RemoteSet({[remote.url for remote in self.remotes]!r})"

    # ----------------------------------------------------------- plumbing

    def _session(self):
        """This thread's Session (requests.Session is not safe to share)."""
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            adapter = requests.adapters.HTTPAdapter(pool_maxsize=4, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            self._local.session = session
        return session

    def _bucket(self, remote):
        """The BucketRemote of an ``s3://`` remote, None for an HTTP one."""
        if not remote.url.startswith("s3://"):
            return None
        with self._lock:
            if remote.url not in self._buckets:
                from .bucket_remote import BucketRemote

                self._buckets[remote.url] = BucketRemote(remote.url, self.timeout)
            return self._buckets[remote.url]

    def _live(self):
        """Remotes not recently found dead (all of them if every one is)."""
        now = time.monotonic()
        with self._lock:
            live = [r for r in self.remotes if self._down_until.get(r.url, 0) <= now]
        return live or list(self.remotes)

    def _pace(self):
        """A fresh speed check for one body (see pace.py)."""
        return Pace(self.speed_limit, self.speed_time)

    def _mark(self, remote, alive):
        with self._lock:
            if alive:
                self._down_until.pop(remote.url, None)
            else:
                self._down_until[remote.url] = time.monotonic() + self.down_for

    def _send(self, remote, method, path, body=None, headers=None, **options):
        """One request with retries; returns the Response (any status but RETRY_STATUSES).

        ``body`` is a callable giving a fresh request body per attempt.
        Raises RemoteUnavailable when every attempt failed to connect, timed
        out or got a transient 5xx answer (500, 502, 503, 504).
        """
        headers = self._headers(remote, headers)
        url = f"{remote.url}/{path}"
        # Reads, and small requests whose caller says their body is bytes, skip requests.
        direct = options.pop("direct", method in ("GET", "HEAD") and body is None)
        pool = self._direct_pool(remote) if direct else None
        if pool is not None:
            return self._retrying(remote, lambda: _DirectResponse(pool.request(
                method, url, body=body() if body else None, headers=headers,
                preload_content=False, retries=_DIRECT_RETRY,
                timeout=urllib3.Timeout(connect=self.timeout, read=self.timeout)), url))

        def attempt():
            data = body() if body else None
            try:
                return self._session().request(method, url, data=data, headers=headers,
                                               timeout=(self.timeout, self.timeout), **options)
            finally:
                getattr(data, "close", lambda: None)()

        return self._retrying(remote, attempt)

    def _headers(self, remote, headers=None):
        headers = dict(headers or {})
        if remote.token:
            headers["Authorization"] = f"Bearer {remote.token}"
        return headers

    def _retrying(self, remote, attempt):
        """``attempt()`` until it gives a non-transient answer, with backoff; see _send."""
        reason = "no attempt"
        for number in range(self.retries):
            if number:
                time.sleep(self.backoff * 2 ** (number - 1))
            try:
                response = attempt()
            except _NETWORK_ERRORS as error:
                reason = describe(error)
                continue
            if response.status_code not in RETRY_STATUSES:
                self._mark(remote, True)
                return response
            reason = f"HTTP {response.status_code}"
            response.close()
        self._mark(remote, False)
        raise RemoteUnavailable(remote.url, reason)

    # -------------------------------------------------------------- reads

    def size(self, algorithm, digest):
        """Size of the object on the first remote that has it, or None.

        Raises RemoteUnavailable when no remote could be asked, AccessDenied
        when a remote refused and none had it.
        """
        outcome = _Outcome(f"{algorithm}://{digest}")
        for remote in self._live():
            bucket = self._bucket(remote)
            try:
                if bucket is not None:
                    size = bucket.size(algorithm, digest)
                    if size is not None:
                        return size
                    continue
                response = self._send(remote, "HEAD", object_path(algorithm, digest))
            except AccessDenied as error:
                outcome.note(error)
                continue
            except RemoteUnavailable as error:
                outcome.unavailable.append(error)
                continue
            with response:
                if response.status_code == 200 and "Content-Length" in response.headers:
                    return int(response.headers["Content-Length"])
                outcome.note(_status_error(remote, response, outcome.what))
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
            lambda remote: self._download_from(remote, algorithm, digest, store, progress)))

    def _failover(self, what, attempt):
        """``attempt(remote)`` on each live remote in order: the first result wins.

        Raises the most useful error of the failed attempts (see _Outcome).
        """
        outcome = _Outcome(what)
        for remote in self._live():
            try:
                return attempt(remote)
            except (ObjectNotFound, HashMismatch, AccessDenied, RemoteRejected) as error:
                outcome.note(error)
            except RemoteUnavailable as error:
                outcome.unavailable.append(error)
            except TooSlow as error:  # a drip is as useless as silence: skip it for a while
                self._mark(remote, False)
                outcome.unavailable.append(RemoteUnavailable(remote.url, str(error)))
        raise outcome.failure(self.remotes)

    def _download_from(self, remote, algorithm, digest, store, progress):
        fd, temp_path = store.create_temp()
        bucket = self._bucket(remote)
        try:
            if bucket is not None:
                got = bucket.receive(algorithm, digest, fd, lambda readinto: self._pump_bucket(
                    remote, readinto, fd, new_hasher(algorithm), progress, store.durable_writes))
            else:
                got = self._receive_resuming(remote, algorithm, digest, fd, progress,
                                             store.durable_writes)
            if got != digest:
                raise HashMismatch(digest, got, f"download from {remote.url}")
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

    def _pump_bucket(self, remote, readinto, fd, hasher, progress, early_writeback):
        try:
            return pump(self._pace().paced(readinto), fd, hasher, progress,
                         early_writeback=early_writeback)[0]
        except TransferFailed as error:
            raise RemoteUnavailable(remote.url, f"transfer broke: {error}") from None

    def _receive_resuming(self, remote, algorithm, digest, fd, progress, early_writeback):
        """Receive an object's body into the empty file ``fd``; return its digest.

        A transfer cut in the middle resumes where it stopped, with a Range
        request for the rest, up to RESUMES times while it makes progress
        (the file is then hashed whole at the end); a server that ignores
        Range sends the whole body again.
        """
        path = object_path(algorithm, digest)
        landed, resumed = 0, 0
        while True:
            response = self._send(remote, "GET", path, stream=True,
                                  headers={"Range": f"bytes={landed}-"} if landed else None)
            with response:
                landed = _start_of_body(remote, response, landed, f"{algorithm}://{digest}")
                if os.fstat(fd).st_size != landed:  # the whole body comes again
                    # (Only then: ext4 flushes a file truncated to 0 when it is closed.)
                    os.ftruncate(fd, landed)
                hasher = new_hasher(algorithm)
                try:
                    size = _receive_body(response, fd, landed, hasher, progress, early_writeback,
                                         self._pace())
                    expected = response.headers.get("Content-Length", "")
                    if expected.isdigit() and size != int(expected):  # http.client does not raise
                        raise TransferFailed(f"body ended after {size} of {expected} bytes")
                except TransferFailed as error:
                    now = os.fstat(fd).st_size
                    if resumed < RESUMES and now > landed:
                        log.info("transfer of %s broke at byte %d (%s): resuming", path, now, error)
                        landed, resumed = now, resumed + 1
                        continue
                    raise RemoteUnavailable(remote.url, f"transfer of {path} broke: {error}") from None
            if not landed:
                return hasher.hexdigest()
            whole = new_hasher(algorithm)  # resumed: the hasher saw only the last part
            zerocopy.hash_file_range(whole, fd, 0, landed + size)
            return whole.hexdigest()

    def fetch_chunk(self, target, chunk):
        """Bytes of one chunk (manifest.Chunk) of a remote FileTarget, verified.

        The chunk's sha1 comes from a trusted file manifest (SPEC §4); bytes
        that do not match it are never returned. Raises like :meth:`download`.
        """
        what = f"{target.algorithm}://{target.digest} bytes {chunk.start}-{chunk.end - 1}"
        return self._failover(what, lambda remote: self._chunk_from(remote, target, chunk, what))

    def _chunk_from(self, remote, target, chunk, what):
        path = object_path(target.algorithm, target.digest)
        bucket = self._bucket(remote)
        if bucket is not None:
            data = uninitialized(chunk.end - chunk.start)
            try:
                got = bucket.read_range(target.algorithm, target.digest, chunk.start, chunk.end,
                                        lambda readinto: receive_hashing(self._pace().paced(readinto), data))
            except TransferFailed as error:
                raise RemoteUnavailable(remote.url, f"transfer of {path} broke: {error}") from None
            if got != chunk.sha1:
                raise HashMismatch(chunk.sha1, got, f"chunk of {path} from {remote.url}")
            return memoryview(data)
        response = self._send(remote, "GET", path, stream=True,
                              headers={"Range": f"bytes={chunk.start}-{chunk.end - 1}"})
        with response:
            if response.status_code not in (200, 206):
                raise _status_error(remote, response, what)
            try:
                readinto = _body_reader(response, self._pace())
                if response.status_code == 200:  # Range ignored (python -m http.server)
                    skip(readinto, chunk.start)
                data = uninitialized(chunk.end - chunk.start)
                got = receive_hashing(readinto, data)
            except TransferFailed as error:
                raise RemoteUnavailable(remote.url, f"transfer of {path} broke: {error}") from None
        if got != chunk.sha1:
            raise HashMismatch(chunk.sha1, got, f"chunk of {path} from {remote.url}")
        return memoryview(data)  # compares equal to bytes, without a 4 MiB copy

    def fetch_small(self, algorithm, digest, max_size):
        """The verified bytes of an object of at most ``max_size`` bytes.

        For small files read through the mount: no temp file, no store. A
        remote whose answer is larger than ``max_size`` counts as corrupt.
        Raises like :meth:`download`.
        """
        what = f"{algorithm}://{digest}"
        return self._failover(what, lambda remote: self._small_from(
            remote, algorithm, digest, max_size, what))

    def _small_from(self, remote, algorithm, digest, max_size, what):
        path = object_path(algorithm, digest)
        bucket = self._bucket(remote)
        if bucket is not None:
            data = bucket.read_small(algorithm, digest, max_size)
            got = digest_bytes(algorithm, data)
            if got != digest:
                raise HashMismatch(digest, got, f"download from {remote.url}")
            return data
        with self._send(remote, "GET", path, stream=True) as response:
            if response.status_code != 200:
                raise _status_error(remote, response, what)
            expected = response.headers.get("Content-Length", "")
            expected = int(expected) if expected.isdigit() else None
            # One byte more than allowed, so an oversized body shows (and fails the hash).
            data = bytearray(min(max_size, expected if expected is not None else max_size) + 1)
            try:
                count = receive_into(_body_reader(response, self._pace()), data)
            except TransferFailed as error:
                raise RemoteUnavailable(remote.url, f"transfer of {path} broke: {error}") from None
            if expected is not None and count < min(expected, max_size):
                raise RemoteUnavailable(
                    remote.url, f"transfer of {path} broke after {count} of {expected} bytes")
        data = bytes(memoryview(data)[:count])
        got = digest_bytes(algorithm, data)
        if got != digest:
            raise HashMismatch(digest, got, f"download from {remote.url}")
        return data

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
        for remote in self._live():
            if not wanted:
                break
            if remote.url in self._no_download_api or self._bucket(remote) is not None:
                continue  # (a bucket has no batch download: the caller GETs each)
            try:
                found.update(self._batch_from(remote, wanted, max_size))
            except (RemoteUnavailable, RemoteRejected, AccessDenied, ObjectNotFound) as error:
                log.debug("batch download from %s failed: %s", remote.url, error)
                continue
            wanted = [key for key in wanted if key not in found]
        return {asked[key]: data for key, data in found.items() if key in asked}

    def _batch_from(self, remote, wanted, max_size):
        lists = {"sha1": [], "md5": []}
        for algorithm, digest in wanted:
            lists[algorithm].append(digest)
        payload = json.dumps(lists).encode("ascii")
        with self._send(remote, "POST", "api/download", body=lambda: payload, direct=True,
                        headers={"Content-Type": "application/json"}) as response:
            if response.status_code in NO_API_STATUSES:
                self._no_download_api.add(remote.url)
                return {}
            if response.status_code != 200:
                raise _status_error(remote, response, "api/download")
            # (kachery-server answers at most 16 MiB; read no more than a bit over)
            buffer = uninitialized(BATCH_ANSWER_MAX)
            try:
                count = receive_into(_body_reader(response, self._pace()), buffer)
            except (TransferFailed, TooSlow) as error:
                raise RemoteUnavailable(remote.url, f"api/download broke: {error}") from None
            with memoryview(buffer) as view:
                body = bytes(view[:count])
            buffer.close()
        found = {}
        for algorithm, digest, data in _parse_objects(body):
            if len(data) <= max_size and digest_bytes(algorithm, data) == digest:
                found[(algorithm, digest)] = data
            else:
                log.warning("corrupt copy of %s://%s from %s (batch download)",
                            algorithm, digest, remote.url)
        return found

    # ------------------------------------------------------------ uploads

    @property
    def upload_remote(self):
        """Uploads go to the first configured remote."""
        return self.remotes[0]

    def has_many(self, objects):
        """The subset of (algorithm, digest) pairs the upload remote already has.

        One POST /api/has per HAS_BATCH hashes; a remote without that API
        (static server: 404/405/501) is asked with one HEAD per object.
        """
        objects = list(dict.fromkeys(objects))
        present = set()
        for index in range(0, len(objects), HAS_BATCH):
            present |= self._has_batch(objects[index:index + HAS_BATCH])
        return present

    def _has_batch(self, objects):
        remote = self.upload_remote
        if self._bucket(remote) is not None:
            return self._bucket(remote).has_many(objects)
        wanted = {"sha1": [], "md5": []}
        for algorithm, digest in objects:
            wanted[algorithm].append(digest)
        response = self._send(remote, "POST", "api/has", json=wanted)
        if response.status_code in NO_API_STATUSES:
            return {obj for obj in objects if self._head_exists(remote, *obj)}
        if response.status_code != 200:
            raise _status_error(remote, response, "api/has")
        try:
            answer = response.json()
            return {(alg, d.lower()) for alg in wanted for d in answer.get(alg, [])}
        except (ValueError, AttributeError, TypeError):
            raise RemoteRejected(remote.url, 200, "api/has answer is not the expected JSON") from None

    def _head_exists(self, remote, algorithm, digest):
        with self._send(remote, "HEAD", object_path(algorithm, digest)) as response:
            if response.status_code in (401, 403):
                raise _status_error(remote, response, f"{algorithm}://{digest}")
            return response.status_code == 200

    def upload(self, algorithm, digest, source, progress=None):
        """PUT one object (``source``: bytes or a file path); return the HTTP status (201/200).

        Raises AccessDenied (401/403), RemoteRejected (other 4xx, e.g. 413 or a
        digest mismatch), RemoteUnavailable (unreachable, 5xx).
        """
        remote = self.upload_remote
        if self._bucket(remote) is not None:
            return self._bucket(remote).upload(algorithm, digest, source, progress)
        in_memory = isinstance(source, (bytes, bytearray, memoryview))
        size = len(source) if in_memory else os.path.getsize(source)
        path = object_path(algorithm, digest)
        headers = {"Content-Length": str(size), "Content-Type": "application/octet-stream"}
        if in_memory or size == 0:  # (an empty file body would make requests send it chunked)
            data = bytes(source) if in_memory else b""
            response = self._send(remote, "PUT", path, body=lambda: data, headers=headers)
        elif size >= SENDFILE_MIN and self._direct_ok(remote):
            response = _unless_changed(source, size, lambda: self._retrying(remote, lambda: _sendfile_put(
                f"{remote.url}/{path}", self._headers(remote, headers), source, size,
                self._verify(remote), self.timeout, progress)))
        else:
            response = _unless_changed(source, size, lambda: self._send(
                remote, "PUT", path, headers=headers, body=lambda: _FileBody(source, size, progress)))
        with response:
            if response.status_code not in (200, 201):
                raise _status_error(remote, response, f"{algorithm}://{digest}")
        if progress and (in_memory or size == 0):
            progress(size)
        return response.status_code

    def prepare(self):
        """Do the set-up that the first request would otherwise pay for."""
        for remote in self.remotes:
            self._direct_pool(remote)

    def _direct_pool(self, remote):
        """The urllib3 pool for plain reads from ``remote``; None when a proxy applies."""
        try:
            return self._direct[remote.url]
        except KeyError:
            pass
        pool = None
        if self._bucket(remote) is None and self._direct_ok(remote):
            verify = self._verify(remote)
            if verify is False:
                tls = {"cert_reqs": "CERT_NONE"}
            elif isinstance(verify, str) and os.path.isdir(verify):
                tls = {"ca_cert_dir": verify}
            else:
                tls = {"ca_certs": verify if isinstance(verify, str)
                       else requests.utils.DEFAULT_CA_BUNDLE_PATH}
            pool = urllib3.PoolManager(num_pools=4, maxsize=16, **tls)
        with self._lock:
            return self._direct.setdefault(remote.url, pool)

    def _direct_ok(self, remote):
        """True when no proxy applies to ``remote`` (requests handles proxies)."""
        settings = self._session().merge_environment_settings(remote.url, {}, None, None, None)
        return not requests.utils.select_proxy(remote.url, settings["proxies"])

    def _verify(self, remote):
        """requests' certificate setting for ``remote`` (True, False or a CA path)."""
        return self._session().merge_environment_settings(remote.url, {}, None, None, None)["verify"]

    def upload_many(self, items, progress=None):
        """Upload small objects [(algorithm, digest, bytes or path)] in one request.

        Uses ``POST /api/upload`` (kachery-server's batch extension); a remote
        without it (404/405/501) gets one PUT per object from then on.
        Each object must be at most BATCH_OBJECT_MAX bytes. Raises like upload.
        """
        if self._bucket(self.upload_remote) is not None:
            return self._bucket(self.upload_remote).upload_many(items, progress)
        if not self._batch_api:
            for algorithm, digest, source in items:
                self.upload(algorithm, digest, source, progress)
            return
        body = _batch_body(items)
        remote = self.upload_remote
        response = self._send(remote, "POST", "api/upload", body=lambda: body,
                              headers={"Content-Type": "application/x-kachery-objects"})
        with response:
            if response.status_code in NO_API_STATUSES:
                self._batch_api = False
                return self.upload_many(items, progress)
            if response.status_code != 200:
                raise _status_error(remote, response, f"a batch of {len(items)} objects")
        if progress:
            progress(len(body))


#: Redirects followed as requests does; network errors are retried by _retrying.
_DIRECT_RETRY = urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=5,
                              raise_on_redirect=False)


class _DirectResponse:
    """A urllib3 response dressed as the parts of requests.Response this module reads."""

    def __init__(self, raw, url):
        self.raw = raw
        self.url = url
        self.status_code = raw.status
        self.headers = raw.headers

    @property
    def text(self):
        return self.raw.data.decode("utf-8", "replace")

    def close(self):
        """Give the connection back when its body was read to the end, else drop it.

        (A large body is read with http.client's own readinto, which urllib3
        does not see: ask http.client whether anything is left.)
        """
        fp = self.raw._fp
        if fp is not None and not fp.isclosed() and fp.length == 0:
            fp.close()  # a HEAD answer or an empty body: nothing left to read
        if fp is None or fp.isclosed():
            self.raw.release_conn()
        else:
            self.raw.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class _PlainResponse:
    """The parts of a requests.Response that the status handling reads."""

    def __init__(self, status, headers, body):
        self.status_code = status
        self.headers = headers
        self.text = body.decode("utf-8", "replace")

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _sendfile_put(url, headers, source, size, verify, timeout, progress):
    """PUT a file with sendfile(2) on a fresh connection; return a _PlainResponse.

    requests would copy every byte through Python (read, then send): for a
    1 GiB upload that is ten times the CPU, which the server needs on a small
    machine. Connection errors are raised as ConnectionError (retried).
    """
    parsed = urllib3.util.parse_url(url)
    with open(source, "rb") as file:  # a local error here is not a network error
        connection = _connection(parsed, verify, timeout)
        try:
            connection.putrequest("PUT", parsed.request_uri, skip_accept_encoding=True)
            for name, value in headers.items():
                connection.putheader(name, value)
            connection.endheaders()
            try:
                _send_file(connection.sock, file, size, progress)
            except SourceChanged:
                raise
            except OSError:  # the server may have refused (401, 413) and closed: read why
                pass
            response = connection.getresponse()
            return _PlainResponse(response.status, response.headers, response.read())
        except SourceChanged:
            raise
        except (OSError, http.client.HTTPException) as error:
            raise ConnectionError(f"{type(error).__name__}: {error}") from None
        finally:
            connection.close()


def _connection(parsed, verify, timeout):
    """An http.client connection honouring requests' ``verify`` (True, False, CA path)."""
    if parsed.scheme != "https":
        return http.client.HTTPConnection(parsed.host, parsed.port, timeout=timeout)
    if verify is False:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    elif isinstance(verify, str) and os.path.isdir(verify):
        context = ssl.create_default_context(capath=verify)
    else:
        cafile = verify if isinstance(verify, str) else requests.utils.DEFAULT_CA_BUNDLE_PATH
        context = ssl.create_default_context(cafile=cafile)
    return http.client.HTTPSConnection(parsed.host, parsed.port, timeout=timeout, context=context)


def _send_file(sock, file, size, progress):
    """sendfile the whole file in steps (for progress); TLS sockets fall back to send."""
    offset = 0
    while offset < size:
        step = min(SEND_STEP, size - offset)
        sent = sock.sendfile(file, offset, step)
        if not sent:
            if os.fstat(file.fileno()).st_size < size:  # (else the peer closed)
                raise SourceChanged(file.name)
            raise ConnectionError("connection closed while sending")
        offset += sent
        if progress:
            progress(sent)


def _batch_body(items):
    """The body of POST /api/upload: '<alg> <digest> <size>\\n' + bytes, per object."""
    parts = []
    for algorithm, digest, source in items:
        if not isinstance(source, (bytes, bytearray, memoryview)):
            with open(source, "rb") as file:
                source = file.read()
        parts += [f"{algorithm} {digest} {len(source)}\n".encode("ascii"), source]
    return b"".join(parts)


def _parse_objects(body):
    """Yield (algorithm, digest, bytes) from a body of '<alg> <digest> <size>\\n' + bytes
    items (see _batch_body); a malformed or short item ends it."""
    view = memoryview(body)
    position = 0
    while position < len(body):
        newline = body.find(b"\n", position, position + 200)
        if newline < 0:
            return
        parts = bytes(view[position:newline]).decode("ascii", "replace").split()
        if (len(parts) != 3 or parts[0] not in ("sha1", "md5") or not parts[2].isdigit()
                or not is_valid_hash(parts[0], parts[1])):
            return
        start, end = newline + 1, newline + 1 + int(parts[2])
        if end > len(body):
            return
        yield parts[0], parts[1].lower(), bytes(view[start:end])
        position = end


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


def _status_error(remote, response, what):
    """The exception for a non-success status of ``response``."""
    status = response.status_code
    reason = _reason(response)
    if status == 403 and not remote.token and _from_object_store(response):
        # A public bucket as a static mirror: S3 answers 403, not 404, for a
        # missing key when anonymous callers may not list the bucket.
        return ObjectNotFound(what, remote.url)
    if status in (401, 403):
        return AccessDenied(remote.url, status, reason)
    if status == 404:
        return ObjectNotFound(what, remote.url)
    if status == 416:
        return HashMismatch("a range inside the object", "416 from the remote", what)
    if 400 <= status < 500:
        return RemoteRejected(remote.url, status, reason)
    return RemoteUnavailable(remote.url, f"unexpected HTTP {status}")


def _from_object_store(response):
    """True for an S3-style error answer (XML, or an x-amz-request-id header)."""
    headers = response.headers
    return "x-amz-request-id" in headers or "xml" in headers.get("Content-Type", "")


def _reason(response):
    """First line of a short plain-text error body (what our server sends)."""
    if "text/plain" not in response.headers.get("Content-Type", ""):
        return ""
    try:
        return response.text.strip().splitlines()[0][:200]
    except (IndexError, requests.RequestException):
        return ""


def _body_reader(response, pace):
    """A ``readinto`` for the response body that returns after each socket read.

    For a body of known length it reads http.client's buffered socket
    directly, one ``readinto1`` at a time: urllib3's ``read(amt)`` and
    http.client's own ``readinto`` both block until the whole buffer is
    full, so a remote dripping one byte a second could hold a 4 MiB read for
    weeks without any per-read timeout firing, and urllib3 2 also passes every
    byte through an extra buffer (5x slower for 1 GiB on loopback). Every
    read is checked against ``pace`` (a too slow body raises TooSlow).
    Other bodies (chunked, encoded) go through urllib3.
    """
    body = getattr(response.raw, "_fp", None)
    if (body is not None and not getattr(body, "chunked", True) and isinstance(body.length, int)
            and hasattr(getattr(body, "fp", None), "readinto1")
            and not response.headers.get("Content-Encoding")):
        return pace.paced(functools.partial(_read_once, body))
    return pace.paced(response.raw.readinto)


def _read_once(body, buffer):
    """One socket read of an http.client body into ``buffer``, keeping its
    count of what is left (0 lets urllib3 reuse the connection, see
    _DirectResponse.close)."""
    if body.fp is None or body.length <= 0:
        return 0
    view = memoryview(buffer)
    got = body.fp.readinto1(view[:body.length] if len(view) > body.length else view)
    body.length -= got
    if not got or not body.length:
        body._close_conn()  # as http.client does at the end of a body
    return got


def _receive_body(response, fd, offset, hasher, progress, early_writeback, pace):
    """Write a response body to ``fd`` from ``offset`` on, hashing it; return its size.

    A large plain-HTTP body is spliced in the kernel (zerocopy.py), anything
    else goes through receiving.pump.
    """
    expected = response.headers.get("Content-Length", "")
    sock = (zerocopy.body_socket(response.raw)
            if expected.isdigit() and int(expected) >= FAST_READ_MIN else None)
    received = 0
    if sock is not None:
        try:
            return zerocopy.receive(response.raw, sock, fd, hasher, progress,
                                    WRITEBACK_STEP if early_writeback else None, offset, pace)
        except zerocopy.SpliceRefused as refused:
            received = refused.received
        except TooSlow:
            raise
        except _NETWORK_ERRORS as error:
            raise TransferFailed(describe(error)) from None
    block = min(RECEIVE_BLOCK, int(expected) + 1) if expected.isdigit() else RECEIVE_BLOCK
    os.lseek(fd, offset + received, os.SEEK_SET)
    return received + pump(_body_reader(response, pace), fd, hasher, progress, block,
                            early_writeback)[1]


def _start_of_body(remote, response, asked, what):
    """Where the body of an answer to ``GET`` (from byte ``asked``) starts:
    ``asked`` for a 206 from there, 0 for a 200 (the whole object again).
    Raises the status's error for any other answer."""
    if response.status_code == 200:
        return 0
    if asked and response.status_code == 206:
        first = response.headers.get("Content-Range", "").removeprefix("bytes ").partition("-")[0]
        if first.isdigit() and int(first) == asked:
            return asked
        raise RemoteUnavailable(remote.url, f"resumed {what} from byte {asked}, got "
                                f"{response.headers.get('Content-Range')!r}")
    raise _status_error(remote, response, what)


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


class SourceChanged(OSError):
    """The file being uploaded changed size while it was sent."""

    def __init__(self, path):
        super().__init__(f"{path} changed while it was being stored")


def _unless_changed(source, size, send):
    """``send()``; when it fails and ``source`` no longer has ``size`` bytes,
    say so (SourceChanged) instead of blaming the remote: a file cut short
    under an upload leaves the server waiting for the rest of the body."""
    try:
        return send()
    except (RemoteUnavailable, ConnectionError, OSError):
        try:
            changed = os.path.getsize(source) != size
        except OSError:
            changed = True
        if changed:
            raise SourceChanged(source) from None
        raise


class _FileBody:
    """A file as a PUT body: large reads (urllib3 asks for 16 KiB), a length, progress."""

    def __init__(self, path, size, progress=None):
        self._file = open(path, "rb")
        self._size = size
        self._sent = 0
        self._progress = progress

    def __len__(self):
        return self._size

    def __iter__(self):  # makes requests treat it as a stream with a known length
        return iter(lambda: self.read(SEND_BLOCK), b"")

    def read(self, _size=-1):
        block = self._file.read(SEND_BLOCK)
        self._sent += len(block)
        if not block and self._sent < self._size:  # cut short: fail now, not at the server's timeout
            raise SourceChanged(self._file.name)
        if block and self._progress:
            self._progress(len(block))
        return block

    def close(self):
        self._file.close()
