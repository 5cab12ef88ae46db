"""Many small objects in one request, both ways: extensions of SPEC §5.

A snapshot of 10,000 small files would otherwise cost 10,000 requests, each
costing more than its 50 KB of data. Clients fall back to one request per
object when a server answers 404, 405 or 501, as they do for ``api/has``.

Both carry objects in the same format: for each object a header line
``<alg> <digest> <size>\\n`` followed by exactly ``<size>`` bytes, at most
:data:`MAX_BODY` in all, each object at most :data:`MAX_OBJECT`.

``POST /api/upload`` (the body is objects): all or nothing. Every object is
verified against its digest before any is published; a malformed header, an
object over :data:`MAX_OBJECT`, a short body or a mismatch → 400 and nothing
is kept. Answer: ``{"stored": <new objects>, "present": <already there>}``.

``POST /api/download`` (the body is ``{"sha1": [...], "md5": [...]}``, at most
:data:`MAX_WANTED` hashes): the answer is the objects, in the order asked,
leaving out those that are absent, over :data:`MAX_OBJECT`, or past
:data:`MAX_BODY`; the client verifies each and asks for the rest one by one.
"""

import asyncio
import os

from aiohttp import web

from kachery_core.hashing import DIGEST_LENGTHS, digest_bytes, is_valid_hash

#: Largest object accepted in a batch (larger ones go by PUT, streamed).
MAX_OBJECT = 1024 * 1024
#: Largest batch body (clients send 8 MiB) ...
MAX_BODY = 16 * 1024 * 1024
#: ... and how many are held in memory at once: at most 64 MiB in all.
CONCURRENT_BATCHES = 4
#: Most hashes one POST /api/download may ask for.
MAX_WANTED = 4096
#: Content type of a body of objects in the format above.
CONTENT_TYPE = "application/x-kachery-objects"


class BadBatch(ValueError):
    """The body breaks the format above; the message says how."""


async def read_batch(content):
    """Parse the body from an aiohttp StreamReader into [(alg, digest, bytes)]."""
    items = []
    while True:
        try:
            line = await content.readline()
        except ValueError:
            raise BadBatch("header line too long") from None
        if not line:
            return items
        algorithm, digest, size = parse_header(line)
        try:
            items.append((algorithm, digest, await content.readexactly(size)))
        except asyncio.IncompleteReadError:
            raise BadBatch(f"body ends inside object {digest}") from None


def parse_header(line):
    """(algorithm, digest, size) of one header line; raise BadBatch."""
    parts = line.decode("ascii", "replace").split()
    if len(parts) != 3 or parts[0] not in DIGEST_LENGTHS or not is_valid_hash(parts[0], parts[1]):
        raise BadBatch(f"bad object header {line[:100]!r}")
    if not parts[2].isdigit() or int(parts[2]) > MAX_OBJECT:
        raise BadBatch(f"bad size in {line[:100]!r} (at most {MAX_OBJECT} bytes per object)")
    return parts[0], parts[1].lower(), int(parts[2])


def write_verified(storage, items):
    """Verify every object, write the new ones to temp files.

    Returns ([(temp_path, algorithm, digest)], number already present);
    raises BadBatch on a mismatch, with no temp file left behind.
    """
    written, present = [], 0
    try:
        for algorithm, digest, data in items:
            got = digest_bytes(algorithm, data)
            if got != digest:
                raise BadBatch(f"digest mismatch: header says {digest}, bytes are {got}")
            if storage.size(algorithm, digest) is not None:
                present += 1
                continue
            written.append((_write_temp(storage, data), algorithm, digest))
    except BaseException:
        for temp_path, _, _ in written:
            os.unlink(temp_path)
        raise
    return written, present


def _write_temp(storage, data):
    fd, path = storage.create_temp()
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    return path


async def receive_batch(request, storage, publish_many, slots):
    """Handle the body of POST /api/upload (access and length already checked).

    ``publish_many`` publishes verified temp files (storage.py); ``slots`` (an
    asyncio.Semaphore of CONCURRENT_BATCHES) bounds the memory that batches
    being received may hold.
    """
    try:
        async with slots:
            items = await read_batch(request.content)
            written, present = await asyncio.to_thread(write_verified, storage, items)
    except BadBatch as error:
        raise web.HTTPBadRequest(text=f"{error}\n") from None
    created = await publish_many(written)
    stored = sum(1 for flag in created if flag)
    return web.json_response({"stored": stored, "present": present + len(created) - stored})


def gather(storage, wanted):
    """The answer to POST /api/download for ``wanted`` ({alg: [digests]}): bytes."""
    parts, total = [], 0
    for algorithm, digests in wanted.items():
        for digest in digests:
            data = storage.read_small(algorithm, digest, min(MAX_OBJECT, MAX_BODY - total))
            if data is None:  # absent, too large or unreadable: left to a GET
                continue
            parts += [f"{algorithm} {digest} {len(data)}\n".encode("ascii"), data]
            total += len(data)
    return b"".join(parts)
