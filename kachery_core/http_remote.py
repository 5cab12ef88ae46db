"""A remote over HTTP (SPEC §5): a kachery server or any static HTTP server
over a storage directory (read-only). The only module that imports ``requests``
(upload bodies are made in http_upload.py).

One :class:`HttpRemote` per configured URL; it implements the transport
interface of transport.py (RemoteSet, in remote.py, decides which remote to
ask and verifies what comes back).

Reads (GET, HEAD) go straight to a shared urllib3 pool when no proxy
applies: requests costs about 1.6 ms of Python per call on top of urllib3's
0.6 ms, which is most of the cost of fetching a 50 KB object over loopback.
Everything else goes through one ``requests.Session`` per thread. Large
bodies are spliced into their file in the kernel (zerocopy.py) and large
uploads are sent with sendfile(2).

Reliability: connection reuse, connect/read timeouts, retries with
exponential backoff on connection errors, 429 and 5xx answers (a pause
at least as long as the answer's Retry-After, up to RETRY_AFTER_MAX; then
RemoteUnavailable), a download cut in the middle resumed where it stopped,
and every body read against a minimum pace (pace.py).
"""

import functools
import json
import logging
import os
import threading
import time

import requests
import urllib3

from . import zerocopy
from .direct_write import write_at
from .errors import AccessDenied, HashMismatch, ObjectNotFound, RemoteRejected, RemoteUnavailable
from .hashing import is_valid_hash, new_hasher
from .pace import TooSlow
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
from .http_upload import SENDFILE_MIN, FileBody, batch_body, sendfile_put, unless_changed
from .transport import (SourceChanged, TransferSettings, is_in_memory, object_path,
                        receive_range_by_copy)

log = logging.getLogger("kachery")

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
#: Longest pause a server's Retry-After gets before the next attempt: a busy
#: kachery-server asks for 1 s; a hostile one asking for hours is not obeyed.
RETRY_AFTER_MAX = 5.0
#: Statuses with which a static server says "no such API" (SPEC §5).
NO_API_STATUSES = (404, 405, 501)

_NETWORK_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)


class HttpRemote:
    """One HTTP remote (``settings.Remote``: url, token). Thread safe.

    ``mark(url, alive)`` is told when the remote answered, or failed all the
    retries of a request (the RemoteSet then skips it for a while).
    """

    def __init__(self, remote, settings=None, mark=None):
        self.url = remote.url
        self.token = remote.token
        self.settings = settings or TransferSettings()
        self._mark = mark or (lambda url, alive: None)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._pool = None
        self._pool_made = False
        #: False once the remote answered that it has no POST /api/download
        #: (a static server); True again never: a static server stays static.
        self.download_api = True
        self.upload_api = True  # likewise for POST /api/upload

    def __repr__(self):
        return f"HttpRemote({self.url!r})"

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

    def _send(self, method, path, body=None, headers=None, **options):
        """One request with retries; returns the Response (any status but RETRY_STATUSES).

        ``body`` is a callable giving a fresh request body per attempt.
        Raises RemoteUnavailable when every attempt failed to connect, timed
        out or got a transient 5xx answer (500, 502, 503, 504).
        """
        headers = self._headers(headers)
        url = f"{self.url}/{path}"
        timeout = self.settings.timeout
        # Reads, and small requests whose caller says their body is bytes, skip requests.
        direct = options.pop("direct", method in ("GET", "HEAD") and body is None)
        pool = self.direct_pool() if direct else None
        if pool is not None:
            return self._retrying(lambda: _DirectResponse(pool.request(
                method, url, body=body() if body else None, headers=headers,
                preload_content=False, retries=_DIRECT_RETRY,
                timeout=urllib3.Timeout(connect=timeout, read=timeout)), url))

        def attempt():
            data = body() if body else None
            try:
                return self._session().request(method, url, data=data, headers=headers,
                                               timeout=(timeout, timeout), **options)
            finally:
                getattr(data, "close", lambda: None)()

        return self._retrying(attempt)

    def _headers(self, headers=None):
        headers = dict(headers or {})
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def _retrying(self, attempt):
        """``attempt()`` until it gives a non-transient answer, with backoff
        (at least as long as the answer's Retry-After, see _retry_after); see _send."""
        reason, asked_to_wait = "no attempt", 0.0
        for number in range(self.settings.retries):
            if number:
                time.sleep(max(self.settings.backoff * 2 ** (number - 1), asked_to_wait))
            try:
                response = attempt()
            except _NETWORK_ERRORS as error:
                reason, asked_to_wait = describe(error), 0.0
                continue
            if response.status_code not in RETRY_STATUSES:
                self._mark(self.url, True)
                return response
            reason, asked_to_wait = f"HTTP {response.status_code}", _retry_after(response)
            response.close()
        self._mark(self.url, False)
        raise RemoteUnavailable(self.url, reason)

    def prepare(self):
        """Do the set-up that the first request would otherwise pay for."""
        self.direct_pool()

    def direct_pool(self):
        """The urllib3 pool for plain reads; None when a proxy applies."""
        with self._lock:
            if self._pool_made:
                return self._pool
        pool = None
        if self._direct_ok():
            verify = self._verify()
            if verify is False:
                tls = {"cert_reqs": "CERT_NONE"}
            elif isinstance(verify, str) and os.path.isdir(verify):
                tls = {"ca_cert_dir": verify}
            else:
                tls = {"ca_certs": verify if isinstance(verify, str)
                       else requests.utils.DEFAULT_CA_BUNDLE_PATH}
            pool = urllib3.PoolManager(num_pools=4, maxsize=16, **tls)
        with self._lock:
            if not self._pool_made:
                self._pool, self._pool_made = pool, True
            return self._pool

    def _direct_ok(self):
        """True when no proxy applies to the remote (requests handles proxies)."""
        settings = self._session().merge_environment_settings(self.url, {}, None, None, None)
        return not requests.utils.select_proxy(self.url, settings["proxies"])

    def _verify(self):
        """requests' certificate setting for the remote (True, False or a CA path)."""
        return self._session().merge_environment_settings(self.url, {}, None, None, None)["verify"]

    def _ca_setting(self):
        """The same for a connection made without requests: False or a CA path."""
        verify = self._verify()
        return requests.utils.DEFAULT_CA_BUNDLE_PATH if verify is True else verify

    # -------------------------------------------------------------- reads

    def size(self, algorithm, digest):
        with self._send("HEAD", object_path(algorithm, digest)) as response:
            if response.status_code == 200 and "Content-Length" in response.headers:
                return int(response.headers["Content-Length"])
            error = _status_error(self, response, f"{algorithm}://{digest}")
        if isinstance(error, ObjectNotFound):
            return None
        raise error

    def receive(self, algorithm, digest, fd, progress=None, early_writeback=True):
        """Receive an object's body into the empty file ``fd``; return its digest.

        A transfer cut in the middle resumes where it stopped, with a Range
        request for the rest, up to RESUMES times while it makes progress
        (the file is then hashed whole at the end); a server that ignores
        Range sends the whole body again.
        """
        path = object_path(algorithm, digest)
        landed, resumed = 0, 0
        while True:
            response = self._send("GET", path, stream=True,
                                  headers={"Range": f"bytes={landed}-"} if landed else None)
            with response:
                landed = _start_of_body(self, response, landed, f"{algorithm}://{digest}")
                if os.fstat(fd).st_size != landed:  # the whole body comes again
                    # (Only then: ext4 flushes a file truncated to 0 when it is closed.)
                    os.ftruncate(fd, landed)
                hasher = new_hasher(algorithm)
                try:
                    size = _receive_body(response, fd, landed, hasher, progress, early_writeback,
                                         self.settings.pace())
                    expected = response.headers.get("Content-Length", "")
                    if expected.isdigit() and size != int(expected):  # http.client does not raise
                        raise TransferFailed(f"body ended after {size} of {expected} bytes")
                except TransferFailed as error:
                    now = os.fstat(fd).st_size
                    if resumed < RESUMES and now > landed:
                        log.info("transfer of %s broke at byte %d (%s): resuming", path, now, error)
                        landed, resumed = now, resumed + 1
                        continue
                    raise RemoteUnavailable(self.url, f"transfer of {path} broke: {error}") from None
            if not landed:
                return hasher.hexdigest()
            whole = new_hasher(algorithm)  # resumed: the hasher saw only the last part
            zerocopy.hash_file_range(whole, fd, 0, landed + size)
            return whole.hexdigest()

    def read_range(self, algorithm, digest, start, end):
        path = object_path(algorithm, digest)
        what = f"{algorithm}://{digest} bytes {start}-{end - 1}"
        response = self._send("GET", path, stream=True, headers={"Range": f"bytes={start}-{end - 1}"})
        with response:
            if response.status_code not in (200, 206):
                raise _status_error(self, response, what)
            try:
                readinto = _body_reader(response, self.settings.pace())
                if response.status_code == 200:  # Range ignored (python -m http.server)
                    skip(readinto, start)
                data = uninitialized(end - start)
                return memoryview(data), receive_hashing(readinto, data)
            except TransferFailed as error:
                raise RemoteUnavailable(self.url, f"transfer of {path} broke: {error}") from None

    def receive_range(self, algorithm, digest, start, end, fd):
        """Bytes [start, end) into ``fd`` at offset ``start``: spliced in the
        kernel from a plain-HTTP answer (zerocopy.py), hashed as they land."""
        path = object_path(algorithm, digest)
        what = f"{algorithm}://{digest} bytes {start}-{end - 1}"
        response = self._send("GET", path, stream=True, headers={"Range": f"bytes={start}-{end - 1}"})
        with response:
            if response.status_code == 200 and start:  # Range ignored: skip to it in memory
                response.close()
                return receive_range_by_copy(self, algorithm, digest, start, end, fd)
            if response.status_code not in (200, 206):
                raise _status_error(self, response, what)
            expected = response.headers.get("Content-Length", "")
            if expected.isdigit() and int(expected) != end - start:  # (not the range asked)
                raise HashMismatch(f"{end - start} bytes", f"{expected} bytes", f"{what} from {self.url}")
            hasher = new_hasher("sha1")
            try:
                size = _receive_range_body(response, fd, start, end - start, hasher,
                                           self.settings.pace())
            except TransferFailed as error:
                raise RemoteUnavailable(self.url, f"transfer of {path} broke: {error}") from None
            if size != end - start:
                raise RemoteUnavailable(self.url, f"transfer of {path} broke after {size} of "
                                        f"{end - start} bytes")
            return hasher.hexdigest()

    def read_small(self, algorithm, digest, max_size):
        path = object_path(algorithm, digest)
        with self._send("GET", path, stream=True) as response:
            if response.status_code != 200:
                raise _status_error(self, response, f"{algorithm}://{digest}")
            expected = response.headers.get("Content-Length", "")
            expected = int(expected) if expected.isdigit() else None
            # One byte more than allowed, so an oversized body shows (and fails the hash).
            data = bytearray(min(max_size, expected if expected is not None else max_size) + 1)
            try:
                count = receive_into(_body_reader(response, self.settings.pace()), data)
            except TransferFailed as error:
                raise RemoteUnavailable(self.url, f"transfer of {path} broke: {error}") from None
            if expected is not None and count < min(expected, max_size):
                raise RemoteUnavailable(
                    self.url, f"transfer of {path} broke after {count} of {expected} bytes")
        return bytes(memoryview(data)[:count])

    def read_small_many(self, wanted, max_size):
        """What ``POST /api/download`` (kachery-server's extension) gives of
        ``wanted``; {} from a remote without it (remembered)."""
        if not self.download_api:
            return {}
        lists = {"sha1": [], "md5": []}
        for algorithm, digest in wanted:
            lists[algorithm].append(digest)
        payload = json.dumps(lists).encode("ascii")
        with self._send("POST", "api/download", body=lambda: payload, direct=True,
                        headers={"Content-Type": "application/json"}) as response:
            if response.status_code in NO_API_STATUSES:
                self.download_api = False
                return {}
            if response.status_code != 200:
                raise _status_error(self, response, "api/download")
            # (kachery-server answers at most 16 MiB; read no more than a bit over)
            buffer = uninitialized(BATCH_ANSWER_MAX)
            try:
                count = receive_into(_body_reader(response, self.settings.pace()), buffer)
            except (TransferFailed, TooSlow) as error:
                raise RemoteUnavailable(self.url, f"api/download broke: {error}") from None
            with memoryview(buffer) as view:
                body = bytes(view[:count])
            buffer.close()
        return {(algorithm, digest): data for algorithm, digest, data in _parse_objects(body)
                if len(data) <= max_size}

    # ------------------------------------------------------------ uploads

    def has_many(self, objects):
        """One POST /api/has per HAS_BATCH hashes; a remote without that API
        (static server: 404/405/501) is asked with one HEAD per object."""
        objects = list(dict.fromkeys(objects))
        present = set()
        for index in range(0, len(objects), HAS_BATCH):
            present |= self._has_batch(objects[index:index + HAS_BATCH])
        return present

    def _has_batch(self, objects):
        wanted = {"sha1": [], "md5": []}
        for algorithm, digest in objects:
            wanted[algorithm].append(digest)
        response = self._send("POST", "api/has", json=wanted)
        if response.status_code in NO_API_STATUSES:
            return {obj for obj in objects if self._head_exists(*obj)}
        if response.status_code != 200:
            raise _status_error(self, response, "api/has")
        try:
            answer = response.json()
            return {(alg, d.lower()) for alg in wanted for d in answer.get(alg, [])}
        except (ValueError, AttributeError, TypeError):
            raise RemoteRejected(self.url, 200, "api/has answer is not the expected JSON") from None

    def _head_exists(self, algorithm, digest):
        with self._send("HEAD", object_path(algorithm, digest)) as response:
            if response.status_code in (401, 403):
                raise _status_error(self, response, f"{algorithm}://{digest}")
            return response.status_code == 200

    def upload(self, algorithm, digest, source, progress=None):
        """PUT one object (``source``: bytes or a file path); return the HTTP status (201/200).

        Raises AccessDenied (401/403), RemoteRejected (other 4xx, e.g. 413 or a
        digest mismatch), RemoteUnavailable (unreachable, 5xx).
        """
        in_memory = is_in_memory(source)
        size = len(source) if in_memory else os.path.getsize(source)
        path = object_path(algorithm, digest)
        headers = {"Content-Length": str(size), "Content-Type": "application/octet-stream"}
        if in_memory or size == 0:  # (an empty file body would make requests send it chunked)
            data = bytes(source) if in_memory else b""
            response = self._send("PUT", path, body=lambda: data, headers=headers)
        elif size >= SENDFILE_MIN and self._direct_ok():
            response = unless_changed(source, size, lambda: self._retrying(lambda: sendfile_put(
                f"{self.url}/{path}", self._headers(headers), source, size,
                self._ca_setting(), self.settings.timeout, progress)))
        else:
            response = unless_changed(source, size, lambda: self._send(
                "PUT", path, headers=headers, body=lambda: FileBody(source, size, progress)))
        with response:
            if response.status_code == 400 and not in_memory:
                # The caller hashed this file to ``digest`` and the server found
                # other bytes: it changed between the hash and the upload.
                raise SourceChanged(source)
            if response.status_code not in (200, 201):
                raise _status_error(self, response, f"{algorithm}://{digest}")
        if progress and (in_memory or size == 0):
            progress(size)
        return response.status_code

    def upload_many(self, items, progress=None):
        """Upload small objects [(algorithm, digest, bytes or path)] in one request.

        Uses ``POST /api/upload`` (kachery-server's batch extension); a remote
        without it (404/405/501) gets one PUT per object from then on.
        Each object must be at most BATCH_OBJECT_MAX bytes. Raises like upload.
        """
        if not self.upload_api:
            for algorithm, digest, source in items:
                self.upload(algorithm, digest, source, progress)
            return
        body = batch_body(items)
        response = self._send("POST", "api/upload", body=lambda: body,
                              headers={"Content-Type": "application/x-kachery-objects"})
        with response:
            if response.status_code in NO_API_STATUSES:
                self.upload_api = False
                return self.upload_many(items, progress)
            if response.status_code != 200:
                raise _status_error(self, response, f"a batch of {len(items)} objects")
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


def _retry_after(response):
    """Seconds an answer's Retry-After asks the client to wait (RFC 9110
    §10.2.3; only the delta-seconds form), at most RETRY_AFTER_MAX; 0 without one."""
    value = response.headers.get("Retry-After", "").strip()
    # (isascii: "²" is a digit to str.isdigit, not to float)
    return min(float(value), RETRY_AFTER_MAX) if value.isascii() and value.isdigit() else 0.0


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
    received = 0
    if expected.isdigit() and int(expected) >= FAST_READ_MIN:
        received, done = _splice_body(response, fd, offset, hasher, progress,
                                      WRITEBACK_STEP if early_writeback else None, pace)
        if done:
            return received
    block = min(RECEIVE_BLOCK, int(expected) + 1) if expected.isdigit() else RECEIVE_BLOCK
    os.lseek(fd, offset + received, os.SEEK_SET)
    return received + pump(_body_reader(response, pace), fd, hasher, progress, block,
                            early_writeback)[1]


def _receive_range_body(response, fd, offset, length, hasher, pace):
    """Write a body of at most ``length`` bytes into ``fd`` at ``offset``,
    hashing it; return its size. Only positional writes: other ranges of the
    same file may be arriving on other threads at the same time."""
    received, done = _splice_body(response, fd, offset, hasher, None, None, pace)
    if done:
        return received
    data = uninitialized(length - received)
    count = receive_into(_body_reader(response, pace), data)
    hasher.update(memoryview(data)[:count])
    write_at(fd, memoryview(data)[:count], offset + received)
    return received + count


def _splice_body(response, fd, offset, hasher, progress, writeback_every, pace):
    """(bytes received, whether that was the whole body) by splicing the body
    into ``fd`` at ``offset`` (zerocopy.py); (0, False) when it cannot be
    spliced, and what landed before a refusal otherwise (the caller reads the
    rest the usual way)."""
    sock = zerocopy.body_socket(response.raw)
    if sock is None:
        return 0, False
    try:
        return zerocopy.receive(response.raw, sock, fd, hasher, progress, writeback_every,
                                offset, pace), True
    except zerocopy.SpliceRefused as refused:
        return refused.received, False
    except TooSlow:
        raise
    except _NETWORK_ERRORS as error:
        raise TransferFailed(describe(error)) from None


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
