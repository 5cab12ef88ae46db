"""Bounds on what one request may make the server hold or do (issue 11).

A JSON body of ``POST /api/has`` or ``/api/download`` is bounded before it is
read (413), read and parsed off the event loop (a large ``json.loads`` would
stall every other request), and only a few are parsed at once: when all
slots are taken the request is answered 429 at once instead of queueing
its body in memory. A body must arrive within BODY_SECONDS (408 after):
otherwise a few clients trickling their bodies would hold every slot, and
everyone else would get 429 for as long as they liked. Nesting too deep for the parser is a 400, like any
other malformed body. The client sends at most 20,000 hashes (about
900 KB) per request and retries a 429 after a pause.
"""

import asyncio
import json

from aiohttp import web

#: Largest JSON body: 45,000 hashes or so, twice what a client sends.
MAX_JSON_BODY = 2 * 1024 * 1024
#: JSON bodies parsed at the same time; more get 429.
CONCURRENT_JSON = 4
#: Seconds a refused client is told to wait.
RETRY_AFTER = 1
#: Seconds a body may take to arrive (2 MiB at 70 KB/s).
BODY_SECONDS = 30.0


class JsonBodies:
    """Reads bounded JSON bodies, a few at a time (see the module docstring)."""

    def __init__(self, max_body=MAX_JSON_BODY, concurrent=CONCURRENT_JSON,
                 body_seconds=BODY_SECONDS):
        self.max_body = max_body
        self.body_seconds = body_seconds
        self._slots = asyncio.Semaphore(concurrent)

    async def read(self, request):
        """The parsed body; raise 413 (too large), 429 (busy), 408 (too slow)
        or 400 (not JSON)."""
        length = request.content_length
        if length is not None and length > self.max_body:
            raise _too_large(length, self.max_body)
        if self._slots.locked():
            raise web.HTTPTooManyRequests(text="busy: too many requests with large bodies\n",
                                          headers={"Retry-After": str(RETRY_AFTER)})
        async with self._slots:
            try:
                body = await asyncio.wait_for(_read_bounded(request, self.max_body),
                                              self.body_seconds)
            except asyncio.TimeoutError:
                raise web.HTTPRequestTimeout(
                    text=f"the body did not arrive within {self.body_seconds:g} s\n") from None
            return await asyncio.to_thread(_parse, body)


async def _read_bounded(request, limit):
    """The whole body, refusing (413) once it passes ``limit`` bytes (a chunked
    body has no Content-Length to refuse it up front)."""
    blocks, size = [], 0
    async for block in request.content.iter_any():
        size += len(block)
        if size > limit:
            raise _too_large(size, limit)
        blocks.append(block)
    return b"".join(blocks)


def _parse(body):
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # (RecursionError: nested deeper than the parser goes)
        raise web.HTTPBadRequest(text="body must be JSON\n") from None


def _too_large(size, limit):
    return web.HTTPRequestEntityTooLarge(
        max_size=limit, actual_size=size,
        text=f"a body of {size} bytes is over the limit of {limit} for this request\n")
