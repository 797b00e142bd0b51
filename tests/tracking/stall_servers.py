"""Loopback HTTP servers that stall like a half-alive MLflow server, for the tracking-stall tests.

:class:`StallProxy` listens on 127.0.0.1 in a thread of the test process. In ``"forward"``
mode it passes every request to a real ``mlflow server`` (the ``mlflow_server`` fixture);
in ``"health-only"`` mode it answers ``GET /health`` and holds every other request without
an answer; in ``"black-hole"`` mode it holds every request. ``stall_when`` switches it from
forwarding to black hole at the first request it matches (e.g. the second batch of metrics:
a server that hangs mid-run). A held request is closed unanswered when the proxy closes or
after ``hold_s``, so no test can leave a thread behind for long.

Imported by ``tests/reliability/test_tracking_stall.py`` too (by path).
"""

from __future__ import annotations

import http.client
import json
import threading
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}

StallWhen = Callable[[str, str, bytes], bool]


def metrics_batch(number: int) -> StallWhen:
    """``stall_when`` for "hang at the ``number``-th ``log-batch`` call that carries metrics"."""
    seen = {"count": 0}

    def match(method: str, path: str, body: bytes) -> bool:
        if method != "POST" or not path.endswith("/runs/log-batch"):
            return False
        try:
            has_metrics = bool(json.loads(body or b"{}").get("metrics"))
        except ValueError:
            return False
        if has_metrics:
            seen["count"] += 1
        return has_metrics and seen["count"] >= number

    return match


def path_contains(fragment: str) -> StallWhen:
    """``stall_when`` for "hang at the first request whose path contains ``fragment``"."""
    return lambda method, path, body: fragment in path


class StallProxy:
    """A switchable loopback proxy in front of ``upstream`` (see the module docstring).

    Args:
        upstream: the real server's URI (``None`` for ``"health-only"`` / ``"black-hole"``).
        mode: ``"forward"``, ``"health-only"`` or ``"black-hole"``.
        stall_when: switches ``"forward"`` to ``"black-hole"`` at the first request it matches.
        hold_s: the longest a request is held unanswered.
    """

    def __init__(self, upstream: str | None = None, mode: str = "forward", stall_when: StallWhen | None = None,
                 hold_s: float = 60.0) -> None:
        if mode not in ("forward", "health-only", "black-hole"):
            raise ValueError(f"mode must be forward, health-only or black-hole, got {mode!r}")
        self.upstream = urllib.parse.urlparse(upstream) if upstream else None
        self.mode = mode
        self.stall_when = stall_when
        self.hold_s = hold_s
        self.held = 0
        self.forwarded = 0
        self.stalled_at: str | None = None
        self._release = threading.Event()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="stall-proxy", daemon=True)
        self._thread.start()

    @property
    def uri(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        """Close every held request unanswered and stop listening."""
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> StallProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- request handling --------------------------------------------------------------
    def _decide(self, method: str, path: str, body: bytes) -> str:
        with self._lock:
            if self.mode == "forward" and self.stall_when is not None and self.stall_when(method, path, body):
                self.mode, self.stalled_at = "black-hole", f"{method} {path}"
                self.stall_when = None  # once: switching back to "forward" is the server's recovery
            if self.mode == "forward":
                self.forwarded += 1
                return "forward"
            if self.mode == "health-only" and path.split("?")[0] == "/health":
                return "health"
            self.held += 1
            return "hold"

    def _forward(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, list, bytes]:
        assert self.upstream is not None and self.upstream.hostname == "127.0.0.1"
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=60)
        try:
            conn.request(method, path, body=body or None, headers=headers)
            response = conn.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            conn.close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _handle(self) -> None:
                body = self._body()
                action = proxy._decide(self.command, self.path, body)
                if action == "hold":
                    proxy._release.wait(proxy.hold_s)
                    self.close_connection = True
                    return
                if action == "health":
                    status, headers, payload = 200, [("Content-Type", "text/plain")], b"OK"
                else:
                    forwarded = {k: v for k, v in self.headers.items()
                                 if k.lower() not in _HOP_BY_HOP and k.lower() not in ("host", "content-length")}
                    status, headers, payload = proxy._forward(self.command, self.path, forwarded, body)
                self.send_response(status)
                for key, value in headers:
                    if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(payload)
                self.close_connection = True

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

            def log_message(self, format: str, *args: Any) -> None:  # the base class's argument name
                return

        return Handler
