"""Request handlers of the remote protocol (SPEC §5).

    GET|HEAD /<alg>/<h[0:2]>/<h[2:4]>/<h[4:6]>/<h>    200 | 206 | 304 | 404 | 416
    PUT      /<alg>/<h[0:2]>/<h[2:4]>/<h[4:6]>/<h>    201 | 200 | 400 | 401 | 403 | 411 | 413
    POST     /api/has                                 {"sha1": [...], "md5": [...]}
    POST     /api/upload                              many small objects (see batch.py)
    POST     /api/download                            many small objects (see batch.py)

A path is accepted only when the algorithm is known, the digest is a valid hex
digest and the fan-out folders are its prefixes; only then is a file path
built, from the validated digest (never from the request's text).
"""

import asyncio
import os

from aiohttp import hdrs, web

from kachery_core.errors import KacheryError
from kachery_core.hashing import DIGEST_LENGTHS, is_valid_hash

from . import batch
from .limits import JsonBodies
from .ranges import UNSATISFIABLE, parse_range
from .receive import TempUpload

OBJECT_ROUTE = "/{algorithm}/{a}/{b}/{c}/{digest}"
IMMUTABLE = "public, max-age=31536000, immutable"
#: Received body bytes are handed to the hashing/writing thread in blocks of this size.
RECEIVE_BLOCK = 1024 * 1024
#: Bytes of a bucket object read per step when proxying (x concurrent readers = memory).
PROXY_BLOCK = 256 * 1024


def _error(status_class, message):
    """An HTTP error with a one-line plain-text body (clients show it to users)."""
    return status_class(text=message + "\n")


class ObjectService:
    """Serves one storage (storage.py: a directory or a bucket) under the
    access rules and upload limit given."""

    def __init__(self, storage, access, max_upload):
        self.storage = storage
        self.access = access
        self.max_upload = max_upload
        self.batch_slots = asyncio.Semaphore(batch.CONCURRENT_BATCHES)
        self.json_bodies = JsonBodies()

    def routes(self):
        return [
            web.get(OBJECT_ROUTE, self.get_object),
            web.put(OBJECT_ROUTE, self.put_object, expect_handler=self.expect_upload),
            web.post("/api/has", self.has_objects),
            web.post("/api/upload", self.upload_batch),
            web.post("/api/download", self.download_batch),
        ]

    # ------------------------------------------------------------ helpers

    def object_id(self, request):
        """(algorithm, lower-case digest) of an object path; raise 400 if malformed."""
        info = request.match_info
        algorithm, digest = info["algorithm"], info["digest"].lower()
        if algorithm not in DIGEST_LENGTHS:
            raise _error(web.HTTPNotFound, f"unknown algorithm {algorithm!r}")
        prefixes = (info["a"].lower(), info["b"].lower(), info["c"].lower())
        if not is_valid_hash(algorithm, digest) or prefixes != (digest[0:2], digest[2:4], digest[4:6]):
            raise _error(web.HTTPBadRequest, f"malformed object path {request.path!r}")
        return algorithm, digest

    def authorize(self, request, write):
        refusal = self.access.check(request.headers.get(hdrs.AUTHORIZATION), write)
        if refusal is None:
            return
        status, reason = refusal
        error_class = web.HTTPUnauthorized if status == 401 else web.HTTPForbidden
        raise error_class(text=reason + "\n", headers={hdrs.WWW_AUTHENTICATE: "Bearer"})

    # ----------------------------------------------------------- GET/HEAD

    async def get_object(self, request):
        algorithm, digest = self.object_id(request)
        self.authorize(request, write=False)
        path = self.storage.local_path(algorithm, digest)
        if path is None:
            return await self._bucket_object(request, algorithm, digest)
        try:
            file = open(path, "rb")
        except FileNotFoundError:
            raise _error(web.HTTPNotFound, f"no object {algorithm}://{digest}") from None
        with file:
            return await send_object(request, file, digest)

    async def _bucket_object(self, request, algorithm, digest):
        """GET/HEAD of an object in a bucket: a redirect to a presigned URL of
        it (the bytes flow from the object store), or with ``--s3-proxy`` the
        bytes streamed through this server. HEAD is answered here (a presigned
        URL is good for one method only)."""
        size = await self._backend(self.storage.size, algorithm, digest)
        if size is None:
            raise _error(web.HTTPNotFound, f"no object {algorithm}://{digest}")
        if request.method == "GET" and not self.storage.proxy and not _not_modified(request, digest):
            location = self.storage.bucket.presigned_get(algorithm, digest)
            # Not immutable: the presigned URL expires.
            raise web.HTTPTemporaryRedirect(location, headers={
                hdrs.CACHE_CONTROL: "private, max-age=60", hdrs.ETAG: f'"{digest}"'})
        bucket = self.storage.bucket

        async def stream(response, start, end):
            await _stream_from(response, bucket, algorithm, digest, start, end)

        return await send_object(request, None, digest, size, stream)

    async def _backend(self, call, *args):
        """``call(*args)`` on a thread; a storage that cannot be reached is 503 (clients retry)."""
        try:
            return await asyncio.to_thread(call, *args)
        except KacheryError as error:
            raise _error(web.HTTPServiceUnavailable, f"storage unavailable: {error}") from None

    # ---------------------------------------------------------------- PUT

    async def expect_upload(self, request):
        """Refuse a doomed upload before the client sends its body (Expect: 100-continue)."""
        algorithm, digest = self.object_id(request)
        length = self.check_upload(request)
        if await self._backend(self.storage.check_present, algorithm, digest, length):
            return web.Response(status=200, text="already present\n")
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return None

    def check_upload(self, request, limit=None):
        """Raise 401/403 (access), 411 (no length) or 413 (over the limit)."""
        self.authorize(request, write=True)
        limit = self.max_upload if limit is None else min(limit, self.max_upload)
        length = request.content_length
        if length is None or hdrs.TRANSFER_ENCODING in request.headers:
            raise _error(web.HTTPLengthRequired, "Content-Length is required")
        if length > limit:
            raise web.HTTPRequestEntityTooLarge(
                max_size=limit, actual_size=length,
                text=f"{length} bytes is over the upload limit of {limit}\n")
        return length

    async def put_object(self, request):
        algorithm, digest = self.object_id(request)
        length = self.check_upload(request)
        if await self._backend(self.storage.check_present, algorithm, digest, length):
            await _drain(request)  # keep the connection usable for the next request
            return web.Response(status=200, text="already present\n")
        temp_path = await receive_object(request, self.storage, algorithm, digest, length)
        created = (await self._publish([(temp_path, algorithm, digest)]))[0]
        return web.Response(status=201 if created else 200,
                            text="stored\n" if created else "already present\n")

    async def upload_batch(self, request):
        self.check_upload(request, limit=batch.MAX_BODY)
        return await batch.receive_batch(request, self.storage, self._publish, self.batch_slots)

    async def _publish(self, items):
        """Publish verified temp files; a storage failure is 503 (nothing published
        under a wrong name either way)."""
        try:
            return await self.storage.publish_many(items)
        except KacheryError as error:
            raise _error(web.HTTPServiceUnavailable, f"storage unavailable: {error}") from None

    # ------------------------------------------------------------ api/has

    async def has_objects(self, request):
        self.authorize(request, write=False)
        wanted = await self._hash_lists(request)
        present = await self._backend(self.storage.present, wanted)
        return web.json_response(present)

    async def download_batch(self, request):
        self.authorize(request, write=False)
        wanted = await self._hash_lists(request)
        count = sum(len(digests) for digests in wanted.values())
        if count > batch.MAX_WANTED:
            raise _error(web.HTTPBadRequest, f"{count} hashes asked, at most {batch.MAX_WANTED}")
        # The slot is held until the answer is sent: it bounds the memory
        # that answers waiting for slow readers can hold.
        async with self.batch_slots:
            body = await self._backend(batch.gather, self.storage, wanted)
            response = web.StreamResponse(headers={hdrs.CONTENT_TYPE: batch.CONTENT_TYPE})
            response.content_length = len(body)
            await response.prepare(request)
            await response.write(body)
            await response.write_eof()
            return response

    async def _hash_lists(self, request):
        """The body's {"sha1": [...], "md5": [...]}, bounded and parsed off the loop."""
        return await asyncio.to_thread(_parse_hash_lists, await self.json_bodies.read(request))


async def send_object(request, file, digest, size=None, stream=None, headers=None):
    """Answer GET/HEAD for an object: full, one range or 416.

    The bytes come from the open ``file`` (sendfile), or when it is None from
    ``await stream(response, start, end)`` writing them to the response.
    ``headers`` are added to (or replace) the usual ones, e.g. a Content-Type.
    """
    size = _file_size(file) if size is None else size
    headers = {hdrs.ACCEPT_RANGES: "bytes", hdrs.ETAG: f'"{digest}"', hdrs.CACHE_CONTROL: IMMUTABLE,
               hdrs.CONTENT_TYPE: "application/octet-stream", **(headers or {})}
    if _not_modified(request, digest):
        return web.Response(status=304, headers=headers)
    chosen = parse_range(request.headers.get(hdrs.RANGE), size)
    if chosen is UNSATISFIABLE:
        headers[hdrs.CONTENT_RANGE] = f"bytes */{size}"
        return web.Response(status=416, headers=headers)
    start, end, status = 0, size, 200
    if chosen is not None:
        start, end, status = chosen.start, chosen.end, 206
        headers[hdrs.CONTENT_RANGE] = chosen.content_range(size)
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = end - start
    await response.prepare(request)
    if request.method != "HEAD" and end > start:
        if file is not None:
            await _sendfile(request, file, start, end - start)
        else:
            await stream(response, start, end)
    if request.transport is None or request.transport.is_closing():
        return response  # cut short on purpose (a stream that failed verification)
    await response.write_eof()
    return response


async def _stream_from(response, bucket, algorithm, digest, start, end):
    """Write bytes [start, end) of a bucket object to ``response``."""
    _, body = await asyncio.to_thread(bucket.open, algorithm, digest, start, end)
    try:
        while block := await asyncio.to_thread(body.read, PROXY_BLOCK):
            await response.write(block)
    finally:
        body.close()


async def _sendfile(request, file, offset, count):
    """Kernel-to-socket copy (TLS transports fall back to read+write inside asyncio)."""
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("connection lost")
    await asyncio.get_running_loop().sendfile(transport, file, offset, count)


def _file_size(file):
    return os.fstat(file.fileno()).st_size


def _not_modified(request, digest):
    """If-None-Match names this object's ETag (or '*'): the client's copy is current."""
    tags = request.headers.get(hdrs.IF_NONE_MATCH, "")
    return tags.strip() == "*" or f'"{digest}"' in tags


async def receive_object(request, storage, algorithm, digest, length):
    """Stream the body into a temp file and verify it; return the temp file's path.

    Raises 400 on a short body or a digest mismatch. On any failure (including
    cancellation at server shutdown) the temp file is removed: nothing is kept.
    """
    upload = TempUpload(storage, algorithm)
    try:
        await _fill(request, upload)
        if upload.size != length:
            raise _error(web.HTTPBadRequest, f"body has {upload.size} bytes, expected {length}")
        got = await asyncio.to_thread(upload.finish)
        if got != digest:
            raise _error(web.HTTPBadRequest, f"digest mismatch: path says {digest}, body is {got}")
    except BaseException:
        upload.abort()
        raise
    return upload.path


async def _fill(request, upload):
    """Pump the body into ``upload``: receive the next block while the last is written."""
    pending = None
    blocks, buffered = [], 0
    async for data in request.content.iter_any():
        blocks.append(data)
        buffered += len(data)
        if buffered >= RECEIVE_BLOCK:
            if pending is not None:
                await pending
            pending = asyncio.ensure_future(asyncio.to_thread(upload.absorb, blocks))
            blocks, buffered = [], 0
    if pending is not None:
        await pending
    if blocks:
        await asyncio.to_thread(upload.absorb, blocks)


async def _drain(request):
    async for _ in request.content.iter_any():
        pass


def _parse_hash_lists(document):
    """{"sha1": [...], "md5": [...]} with every hash valid; raise 400 otherwise."""
    if not isinstance(document, dict):
        raise _error(web.HTTPBadRequest, 'expected {"sha1": [...], "md5": [...]}')
    wanted = {}
    for algorithm in DIGEST_LENGTHS:
        digests = document.get(algorithm, [])
        if not isinstance(digests, list) or not all(is_valid_hash(algorithm, d) for d in digests):
            raise _error(web.HTTPBadRequest, f"{algorithm!r} must be a list of {algorithm} hashes")
        wanted[algorithm] = [d.lower() for d in digests]
    return wanted
