"""Request bodies of uploads over HTTP (SPEC §5 PUT, kachery-server's
``POST /api/upload``), for http_remote.HttpRemote.

A large file goes up with sendfile(2) on a connection of its own (requests
would copy every byte through Python: for 1 GiB, ten times the CPU, which
the server needs on a small machine); a smaller one as a stream of large
reads; small objects together in one batch body. A file that is cut short
while it is sent is reported as SourceChanged at once, not as the server's
timeout.
"""

import http.client
import os
import ssl

import urllib3

from .errors import RemoteUnavailable
from .transport import SourceChanged

#: Bytes handed to the socket per step of an upload through requests.
SEND_BLOCK = 1024 * 1024
#: Files at least this large are PUT with sendfile(2) (see sendfile_put) ...
SENDFILE_MIN = 8 * 1024 * 1024
#: ... in steps of this many bytes (progress is reported per step).
SEND_STEP = 64 * 1024 * 1024


class PlainResponse:
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


def sendfile_put(url, headers, source, size, verify, timeout, progress):
    """PUT a file with sendfile(2) on a fresh connection; return a PlainResponse.

    ``verify``: False, or the path of a CA file or directory. Connection
    errors are raised as ConnectionError (the caller retries them).
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
            return PlainResponse(response.status, response.headers, response.read())
        except SourceChanged:
            raise
        except (OSError, http.client.HTTPException) as error:
            raise ConnectionError(f"{type(error).__name__}: {error}") from None
        finally:
            connection.close()


def _connection(parsed, verify, timeout):
    """An http.client connection honouring ``verify`` (True: the system's CAs,
    False, or the path of a CA file or directory)."""
    if parsed.scheme != "https":
        return http.client.HTTPConnection(parsed.host, parsed.port, timeout=timeout)
    if verify is False:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    elif isinstance(verify, str) and os.path.isdir(verify):
        context = ssl.create_default_context(capath=verify)
    else:
        context = ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)
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


def batch_body(items):
    """The body of POST /api/upload: '<alg> <digest> <size>\\n' + bytes, per object."""
    parts = []
    for algorithm, digest, source in items:
        if not isinstance(source, (bytes, bytearray, memoryview)):
            with open(source, "rb") as file:
                source = file.read()
        parts += [f"{algorithm} {digest} {len(source)}\n".encode("ascii"), source]
    return b"".join(parts)


def unless_changed(source, size, send):
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


class FileBody:
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
