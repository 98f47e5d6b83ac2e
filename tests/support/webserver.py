"""A scripted image server on loopback for URL-list tests: slow, failing, throttling, redirecting,
oversized and missing answers, and a count of the requests each path got."""

from __future__ import annotations

import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support.procs import HOST


class ImageServer:
    """``routes``: path → bytes (served with an ETag). Special paths (any image name after them):
    ``/slow/`` sleeps ``slow_s`` first; ``/flaky/`` answers 503 ``fail_times`` times, then the image;
    ``/busy/`` 429 once, then the image; ``/to/NAME`` redirects to ``/NAME``; ``/loop`` redirects to
    itself; ``/big`` streams ``big_bytes`` without a length; ``/huge`` declares a length over any limit;
    ``/gone`` 404; ``/secret`` 403; ``/redirect-out?to=URL`` redirects to URL."""

    def __init__(self, routes: dict[str, bytes], *, slow_s: float = 3.0, fail_times: int = 2,
                 big_bytes: int = 300_000) -> None:
        self.routes = routes
        self.slow_s, self.fail_times, self.big_bytes = slow_s, fail_times, big_bytes
        self.hits: Counter[str] = Counter()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                server.serve(self)

        self.httpd = ThreadingHTTPServer((HOST, 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://{HOST}:{self.port}{path}"

    def __enter__(self) -> ImageServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def serve(self, h: BaseHTTPRequestHandler) -> None:
        path, _, query = h.path.partition("?")
        with self._lock:
            self.hits[path] += 1
            hits = self.hits[path]
        name = "/" + path.rsplit("/", 1)[-1]
        if path.startswith("/slow/"):
            time.sleep(self.slow_s)
        elif path.startswith("/flaky/") and hits <= self.fail_times:
            return self._status(h, 503)
        elif path.startswith("/busy/") and hits == 1:
            return self._status(h, 429)
        elif path.startswith("/to/"):
            return self._redirect(h, name)
        elif path == "/loop":
            return self._redirect(h, "/loop")
        elif path == "/redirect-out":
            return self._redirect(h, query.removeprefix("to="))
        elif path == "/gone":
            return self._status(h, 404)
        elif path == "/secret":
            return self._status(h, 403)
        elif path == "/huge":
            h.send_response(200)
            h.send_header("Content-Length", str(10**9))
            h.end_headers()
            return None
        elif path == "/big":
            h.send_response(200)
            h.end_headers()
            chunk = b"\xff" * 65536
            sent = 0
            try:
                while sent < self.big_bytes:
                    h.wfile.write(chunk)
                    sent += len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass
            return None
        data = self.routes.get(name)
        if data is None:
            return self._status(h, 404)
        h.send_response(200)
        h.send_header("Content-Type", "image/jpeg")
        h.send_header("Content-Length", str(len(data)))
        h.send_header("ETag", f'"etag-{name.strip("/")}"')
        h.end_headers()
        h.wfile.write(data)
        return None

    @staticmethod
    def _status(h: BaseHTTPRequestHandler, code: int) -> None:
        h.send_response(code)
        h.send_header("Content-Length", "0")
        h.end_headers()

    @staticmethod
    def _redirect(h: BaseHTTPRequestHandler, location: str) -> None:
        h.send_response(302)
        h.send_header("Location", location)
        h.send_header("Content-Length", "0")
        h.end_headers()
