"""Building the aiohttp application and running it until SIGTERM or SIGINT."""

import asyncio
import logging
import signal
import ssl
import sys

from aiohttp import web

from kachery_core.errors import ConfigError

from kachery_core.process import raise_open_file_limit

from .handlers import ObjectService

#: One line per request: client, time, request line, status, bytes sent,
#: seconds, the Range header and the request's Content-Length ("-" if none),
#: the user agent.
ACCESS_LOG_FORMAT = '%a %t "%r" %s %b %Tf "%{Range}i" %{Content-Length}i "%{User-Agent}i"'
#: After SIGTERM, in-flight requests get this long to finish before they are
#: cancelled (a cancelled upload removes its temp file: it leaves nothing).
SHUTDOWN_GRACE = 30.0
#: Largest body aiohttp reads whole (JSON bodies have their own, smaller bound: limits.py).
MAX_JSON_BODY = 64 * 1024 * 1024

log = logging.getLogger("kachery.server")


class InFlight:
    """Counts running requests, so shutdown can wait for them to finish.

    aiohttp's own graceful shutdown first marks every connection closing, and
    a closing connection drops the bytes that still arrive: an upload in
    progress could then never complete. So the server stops listening, waits
    here for the running requests (uploads keep receiving), and only then
    lets aiohttp close the connections.
    """

    def __init__(self):
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @web.middleware
    async def middleware(self, request, handler):
        self.count += 1
        self._idle.clear()
        try:
            return await handler(request)
        finally:
            self.count -= 1
            if not self.count:
                self._idle.set()

    async def wait_idle(self, timeout):
        """True when no request is running, False if ``timeout`` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False


IN_FLIGHT = web.AppKey("in_flight", InFlight)
#: Logged status of a request whose client hung up before it was answered
#: (nginx's convention); nothing it sent is kept.
CLIENT_GONE = 499


@web.middleware
async def client_gone(request, handler):
    """A client that hangs up mid-request (an interrupted upload) is one log
    line, not a traceback and a 500: the handler has already dropped what it
    received (see handlers.receive_object)."""
    try:
        return await handler(request)
    except ConnectionResetError:
        log.info("kachery-server: %s %s: the client went away", request.method, request.path)
        return web.Response(status=CLIENT_GONE)


def make_app(storage, access, max_upload, gateway=True):
    """The aiohttp Application serving ``storage`` (storage.py), with the web
    gateway (gateway.py) unless ``gateway`` is False."""
    in_flight = InFlight()
    app = web.Application(client_max_size=MAX_JSON_BODY, middlewares=[in_flight.middleware, client_gone])
    service = ObjectService(storage, access, max_upload)
    if gateway:
        from .gateway import Gateway, gateway_client

        kachery = gateway_client(storage)
        app.add_routes(Gateway(kachery, service.authorize).routes())

        async def close_client(app):
            kachery.close()

        app.on_cleanup.append(close_client)
    app.add_routes(service.routes())
    app[IN_FLIGHT] = in_flight
    return app


def tls_context(cert, key):
    """Server TLS context from PEM files, or None when neither is given."""
    if not cert and not key:
        return None
    if not (cert and key):
        raise ValueError("TLS needs both --tls-cert and --tls-key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def configure_logging(quiet=False):
    """Access log and server messages go to stderr, one line each; ``quiet``
    (kachery-server -q) keeps only errors. Other loggers (aiohttp's own, the
    core's) follow the root logger's level (-v, -vv)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = logging.ERROR if quiet else min(logging.INFO, logging.getLogger().getEffectiveLevel())
    for name in ("aiohttp.access", "kachery.server"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False


def run(app, host, port, ssl_context=None, banner="", grace=None):
    """Serve until SIGTERM/SIGINT, then give in-flight requests ``grace`` seconds."""
    grace = SHUTDOWN_GRACE if grace is None else grace
    raise_open_file_limit()  # a descriptor per connection and per object being sent
    asyncio.run(_serve(app, host, port, ssl_context, banner, grace))


async def _serve(app, host, port, ssl_context, banner, grace):
    # aiohttp's own shutdown wait is only for what is left after ours: see InFlight.
    runner = web.AppRunner(app, access_log_format=ACCESS_LOG_FORMAT,
                           shutdown_timeout=1.0, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context, backlog=512)
        try:
            await site.start()
        except (OSError, UnicodeError) as error:  # a bad or unknown host, a port in use
            reason = getattr(error, "strerror", None) or str(error)
            raise ConfigError(f"cannot listen on {host}:{port}: {reason}") from None
        scheme = "https" if ssl_context else "http"
        for address in runner.addresses:
            log.info("kachery-server: %s on %s://%s:%d", banner, scheme, *address[:2])
        await _until_signalled()
        await site.stop()  # no new connections
        running = app[IN_FLIGHT].count
        log.info("kachery-server: shutting down (%d requests running)", running)
        if not await app[IN_FLIGHT].wait_idle(grace):
            log.info("kachery-server: grace period over, cancelling the rest")
    finally:
        await runner.cleanup()


async def _until_signalled():
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
