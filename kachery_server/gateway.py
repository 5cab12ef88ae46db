"""The web gateway (SPEC §5a): snapshots and files for browsers and curl.

    GET|HEAD /sha1dir/<h>.<label>/<path>   a file, or a directory page (HTML; JSON
                                           with Accept: application/json or ?format=json)
    GET|HEAD /sha1/<h>/<name>              the object, downloaded as <name>
    GET|HEAD /md5/<h>/<name>               (?manifest=<h> on sha1: read chunk by chunk)

The gateway resolves URLs with a Kachery client whose local store is the
served directory (a bucket server: the server user's store, with the bucket
as its first remote) and whose remotes are the server user's configured ones
(KACHERY_REMOTE, the config file). So it serves any snapshot it can fetch, and
everything it fetches is verified on the way, exactly as for the commands: a
file with a trusted manifest is streamed chunk by chunk, and if a chunk (or
the finished whole) fails its hash the connection is cut before the bad bytes,
so a client never receives a complete-looking wrong file.
"""

import asyncio
import logging
import mimetypes
from urllib.parse import quote

from aiohttp import hdrs, web

from kachery_core.client import FileTarget, Kachery
from kachery_core.settings import load_config
from kachery_core.errors import (
    HashMismatch,
    InvalidManifest,
    InvalidURL,
    KacheryError,
    ObjectNotFound,
)
from kachery_core.manifest import DirEntry
from kachery_core.urls import HashURL, normalize_path, parse_url

from . import pages
from .handlers import IMMUTABLE, _error, _not_modified, send_object

log = logging.getLogger("kachery.server")

#: Pages may change with the server's version; files never do (their ETag is their hash).
PAGE_CACHE = "public, max-age=300"
#: Served files are sandboxed: an HTML file in a snapshot runs, if at all, in
#: an opaque origin, never with the gateway's.
FILE_POLICY = "sandbox allow-scripts allow-popups allow-downloads"
#: Snapshots whose totals (file count, bytes) are remembered.
TOTALS_CACHED = 256
_ENCODED_TYPES = {"gzip": "application/gzip", "bzip2": "application/x-bzip2",
                  "xz": "application/x-xz", "br": "application/x-brotli",
                  "compress": "application/x-compress"}
_TEXT_LIKE = ("application/json", "application/xml", "application/javascript")


def gateway_client(storage):
    """The Kachery client the gateway of ``storage`` (storage.py) resolves with."""
    config = load_config()
    root = getattr(getattr(storage, "store", None), "root", None)
    if root is not None:
        return Kachery(config.with_overrides(storage_dir=root))
    urls = [storage.bucket.url] + [remote.url for remote in config.remotes]
    return Kachery(config.with_remote_urls(urls))


def content_type(name):
    """The Content-Type for a file called ``name``. A compressed file is sent as
    what it is (never with Content-Encoding: the bytes must stay the object's)."""
    kind, encoding = _TYPES.guess_type(name, strict=False)
    if encoding:
        return _ENCODED_TYPES.get(encoding, "application/octet-stream")
    if kind is None:
        return "application/octet-stream"
    if kind.startswith("text/") or kind in _TEXT_LIKE:
        return kind + "; charset=utf-8"
    return kind


def _types():
    # Only the built-in table (not /etc/mime.types): the same answer on every machine.
    types = mimetypes.MimeTypes(filenames=())
    for suffix, kind in ((".tsv", "text/tab-separated-values"), (".md", "text/markdown"),
                         (".yaml", "text/yaml"), (".yml", "text/yaml"), (".toml", "text/plain"),
                         (".h5", "application/x-hdf5"), (".hdf5", "application/x-hdf5"),
                         (".nwb", "application/x-hdf5"), (".parquet", "application/vnd.apache.parquet"),
                         (".ipynb", "application/x-ipynb+json"), (".log", "text/plain")):
        types.add_type(kind, suffix, strict=False)
    return types


_TYPES = _types()


class Gateway:
    """Routes of SPEC §5a over ``kachery`` (a client), reads checked by ``authorize``."""

    def __init__(self, kachery, authorize):
        self.kachery = kachery
        self.authorize = authorize
        self._totals = {}

    def routes(self):
        # Registered before the object routes: /sha1dir/H/a/b/c also has five segments.
        return [
            web.get(r"/sha1dir/{top:[0-9a-fA-F]{40}(\.[^/]*)?}", self.snapshot),
            web.get(r"/sha1dir/{top:[0-9a-fA-F]{40}(\.[^/]*)?}/{path:.*}", self.snapshot),
            web.get(r"/{algorithm:sha1|md5}/{digest:[0-9a-fA-F]{32}|[0-9a-fA-F]{40}}", self.download),
            web.get(r"/{algorithm:sha1|md5}/{digest:[0-9a-fA-F]{32}|[0-9a-fA-F]{40}}/{name:.+}",
                    self.download),
        ]

    # ------------------------------------------------------------ snapshots

    async def snapshot(self, request):
        self.authorize(request, write=False)
        url = _snapshot_url(request)
        manifest = await self._call(self.kachery.dir_manifest, url.hash)
        node = manifest.lookup(url.path_parts)
        if node is None:
            raise _error(web.HTTPNotFound, f"no {url.path!r} in sha1dir://{url.hash}")
        if not isinstance(node, DirEntry):
            algorithm, digest = node.algorithm_and_hash
            target = FileTarget(algorithm, digest, node.size, node.manifest)
            return await self._send_file(request, target, url.path_parts[-1], attachment=False)
        if not request.path.endswith("/"):
            # Relative links on the page need the directory's URL to end in '/'.
            location = request.rel_url.with_path(request.rel_url.raw_path + "/", encoded=True)
            raise web.HTTPMovedPermanently(location)
        totals = await asyncio.to_thread(self._snapshot_totals, url.hash, manifest)
        document = await asyncio.to_thread(pages.listing, url, node, totals)
        headers = {hdrs.CACHE_CONTROL: PAGE_CACHE, hdrs.VARY: "Accept"}
        if _wants_json(request):
            response = web.json_response(document, headers=headers)
        else:
            headers["Content-Security-Policy"] = pages.CONTENT_SECURITY_POLICY
            text = await asyncio.to_thread(pages.render_html, document)
            response = web.Response(text=text, content_type="text/html", headers=headers)
        response.enable_compression()
        return response

    def _snapshot_totals(self, digest, manifest):
        totals = self._totals.get(digest)
        if totals is None:
            if len(self._totals) >= TOTALS_CACHED:
                self._totals.clear()
            totals = self._totals[digest] = manifest.count()
        return totals

    # ------------------------------------------------------------ downloads

    async def download(self, request):
        self.authorize(request, write=False)
        info = request.match_info
        algorithm, digest = info["algorithm"], info["digest"].lower()
        manifest = request.query.get("manifest")
        text = f"{algorithm}://{digest}" + (f"?manifest={manifest}" if manifest else "")
        try:
            url = parse_url(text)
        except InvalidURL as error:
            raise _error(web.HTTPBadRequest, str(error)) from None
        target = await self._call(self.kachery.resolve, url)
        return await self._send_file(request, target, info.get("name") or digest, attachment=True)

    # ---------------------------------------------------------------- files

    async def _send_file(self, request, target, name, attachment):
        headers = {hdrs.CONTENT_TYPE: content_type(name), "X-Content-Type-Options": "nosniff",
                   "Content-Security-Policy": FILE_POLICY}
        if attachment:
            headers[hdrs.CONTENT_DISPOSITION] = _disposition(name)
        if _not_modified(request, target.digest):
            return web.Response(status=304, headers={hdrs.ETAG: f'"{target.digest}"',
                                                     hdrs.CACHE_CONTROL: IMMUTABLE})
        path = await self._call(self._local_file, target)
        if path is not None:
            with open(path, "rb") as file:
                return await send_object(request, file, target.digest, headers=headers)

        async def stream(response, start, end):
            await self._stream(request, response, target, start, end)

        return await send_object(request, None, target.digest, target.size, stream, headers)

    def _local_file(self, target):
        """The object's path when it is on this machine (checked as the commands
        check it), else None: it will be streamed from the remotes."""
        if self.kachery.find_local(target.algorithm, target.digest) is None:
            return None
        return self.kachery.file_path(target)

    async def _stream(self, request, response, target, start, end):
        blocks = self.kachery.iter_bytes(target, start, end)
        while True:
            try:
                block = await asyncio.to_thread(next, blocks, None)
            except KacheryError as error:
                # Headers are out: cutting the connection is the only way to
                # tell the client that what it got is not the whole file.
                log.warning("kachery-server: gateway: %s://%s cut short: %s",
                            target.algorithm, target.digest, error)
                request.transport.close()
                return
            if block is None:
                return
            await response.write(block)

    async def _call(self, function, *args):
        """``function(*args)`` on a thread, kachery's errors as HTTP errors."""
        try:
            return await asyncio.to_thread(function, *args)
        except ObjectNotFound as error:
            raise _error(web.HTTPNotFound, str(error)) from None
        except (HashMismatch, InvalidManifest) as error:
            raise _error(web.HTTPBadGateway, str(error)) from None
        except InvalidURL as error:
            raise _error(web.HTTPBadRequest, str(error)) from None
        except KacheryError as error:
            raise _error(web.HTTPBadGateway, str(error)) from None


def _snapshot_url(request):
    top = request.match_info["top"]
    digest, dot, label = top.partition(".")
    text = f"sha1dir://{top}/{request.match_info.get('path', '')}"
    try:
        path = normalize_path(text, request.match_info.get("path", ""))
    except InvalidURL as error:
        raise _error(web.HTTPBadRequest, str(error)) from None
    return HashURL("sha1dir", digest.lower(), label if dot else None, path)


def _wants_json(request):
    if request.query.get("format") == "json":
        return True
    accept = request.headers.get(hdrs.ACCEPT, "")
    return "application/json" in accept and "text/html" not in accept


def _disposition(name):
    """attachment with the name, ASCII fallback plus RFC 5987 UTF-8 form."""
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"
