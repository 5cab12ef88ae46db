"""A static HTTP mirror of a storage directory (SPEC §5) for tests that count
what a client fetched: GET and HEAD, single-range support, body bytes sent per path, an
optional lie (every partial answer with its first byte flipped) and an optional pace."""

import http.server
import os
import threading
import time


class Mirror:
    """A static HTTP mirror of a storage directory with single-range support,
    counting the body bytes it sends per path; ``corrupt`` flips a byte of
    every partial (206) answer."""

    def __init__(self, root, corrupt=False, rate=None):
        self.root = str(root)
        self.corrupt = corrupt
        self.rate = rate  # bytes per second of every body, None: as fast as it goes
        self.sent = {}
        self.streaming = 0  # body bytes written so far, counted as they go (with ``rate``)
        self.ranges = []  # (path, Range header or None) of every GET, in order
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                try:
                    mirror.answer(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client went away (an interrupted download)

            def do_HEAD(self):
                mirror.answer(self, head=True)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, request, head=False):
        path = os.path.join(self.root, request.path.lstrip("/"))
        if ".." in request.path or not os.path.isfile(path):
            request.send_error(404)
            return
        data = open(path, "rb").read()
        status, body = 200, data
        header = request.headers.get("Range")
        if not head:
            self.ranges.append((request.path, header))
        if header:
            first, _, last = header.removeprefix("bytes=").partition("-")
            start, end = int(first), min(int(last) + 1 if last else len(data), len(data))
            status, body = 206, data[start:end]
            if self.corrupt:
                body = bytes([body[0] ^ 0xFF]) + body[1:]
        request.send_response(status)
        request.send_header("Content-Length", str(len(body)))
        request.send_header("Accept-Ranges", "bytes")
        if status == 206:
            request.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        request.end_headers()
        if head:
            return
        if self.rate:
            step = 64 * 1024
            for start in range(0, len(body), step):
                request.wfile.write(body[start:start + step])
                self.streaming += len(body[start:start + step])
                time.sleep(step / self.rate)
        else:
            request.wfile.write(body)
        self.sent[request.path] = self.sent.get(request.path, 0) + len(body)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def object_rel(digest):
    return f"/sha1/{digest[:2]}/{digest[2:4]}/{digest[4:6]}/{digest}"
