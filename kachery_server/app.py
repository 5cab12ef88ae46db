"""Building the aiohttp application and running it until SIGTERM or SIGINT."""

import asyncio
import logging
import signal
import ssl
import sys

from aiohttp import web

from .handlers import ObjectService

#: One line per request: client, time, request line, status, bytes, seconds, agent.
ACCESS_LOG_FORMAT = '%a %t "%r" %s %b %Tf "%{User-Agent}i"'
#: After SIGTERM, in-flight requests get this long to finish before they are
#: cancelled (a cancelled upload removes its temp file: it leaves nothing).
SHUTDOWN_GRACE = 30.0
#: Largest JSON body of POST /api/has (about 1.5 million hashes).
MAX_JSON_BODY = 64 * 1024 * 1024

log = logging.getLogger("kachery.server")


def make_app(store, access, max_upload):
    """The aiohttp Application serving ``store`` (a kachery_core LocalStore)."""
    app = web.Application(client_max_size=MAX_JSON_BODY)
    app.add_routes(ObjectService(store, access, max_upload).routes())
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


def configure_logging():
    """Access log and server messages go to stderr, one line each."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in ("aiohttp.access", "kachery.server"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def run(app, host, port, ssl_context=None, banner=""):
    """Serve until SIGTERM/SIGINT, then let in-flight requests finish."""
    asyncio.run(_serve(app, host, port, ssl_context, banner))


async def _serve(app, host, port, ssl_context, banner):
    runner = web.AppRunner(app, access_log_format=ACCESS_LOG_FORMAT,
                           shutdown_timeout=SHUTDOWN_GRACE, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context, backlog=512)
        await site.start()
        scheme = "https" if ssl_context else "http"
        for address in runner.addresses:
            log.info("kachery-server: %s on %s://%s:%d", banner, scheme, *address[:2])
        await _until_signalled()
        log.info("kachery-server: shutting down")
    finally:
        await runner.cleanup()


async def _until_signalled():
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
