"""A hostile remote for the fault tests: a real HTTP server on 127.0.0.1 that
serves a storage layout from memory and misbehaves on purpose.

``HostileRemote(objects, drip=0.2)`` answers every GET with the right
headers and then sends the body one byte every ``drip`` seconds (each byte
well inside any read timeout), so only a bound on the transfer's speed can
end it. Use as a context manager; it stops its thread at the end.
"""

import http.server
import threading
import time


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _object(self):
        return self.server.objects.get(self.path.lstrip("/"))

    def do_HEAD(self):
        data = self._object()
        self._headers(data)

    def do_POST(self):  # no batch APIs: a static server
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):
        data = self._object()
        if not self._headers(data):
            return
        self.server.requests += 1
        try:
            for index in range(len(data)):
                if self.server.stopping.is_set():
                    return
                self.wfile.write(data[index:index + 1])
                self.wfile.flush()
                time.sleep(self.server.drip)
        except OSError:  # the client gave up: that is the point
            return

    def _headers(self, data):
        if data is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return False
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        return True


class HostileRemote:
    """See the module docstring. ``url`` once started; ``requests`` counts GETs."""

    def __init__(self, objects, drip=0.2):
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.objects = dict(objects)  # 'sha1/aa/bb/cc/<h>' -> bytes
        self.server.drip = drip
        self.server.requests = 0
        self.server.stopping = threading.Event()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def requests(self):
        return self.server.requests

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.server.stopping.set()
        self.server.shutdown()
        self.server.server_close()
        return False


class PausingProxy:
    """A TCP proxy to ``upstream`` (an http:// URL) that holds the first
    connection to send ``pause_after`` bytes up (in a test, an upload's PUT:
    other requests are small): ``paused`` is set and nothing more is read
    from that client until ``resume()``. So a test can act in the middle of
    an upload, its sender blocked on a full socket and the server waiting
    for the rest of the body. Its listening socket has small buffers, so
    that the sender cannot run far ahead."""

    def __init__(self, upstream, pause_after=64 * 1024):
        import socket

        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.pause_after = pause_after
        self.paused = threading.Event()
        self._resume = threading.Event()
        self._stopping = threading.Event()
        self._sockets = []
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def resume(self):
        self._resume.set()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        import socket

        self._stopping.set()
        self._resume.set()
        for sock in [self._listener, *self._sockets]:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        self._thread.join(timeout=5)
        return False

    def _accept(self):
        import socket

        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            self._sockets += [client, server]
            threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()

    def _pipe(self, source, target, upward):
        import socket

        sent = 0
        try:
            while block := source.recv(16384):
                target.sendall(block)
                sent += len(block)
                if upward and sent >= self.pause_after and not self.paused.is_set():
                    self.paused.set()
                    self._resume.wait()
            target.shutdown(socket.SHUT_WR)
        except OSError:
            pass
