"""The loopback HTTP server the simulated exchanges share (private).

An emulator supplies one function, ``respond(method, path, query, headers, body) -> (status,
body)``; this module runs it on 127.0.0.1 in a daemon thread with keep-alive, and runs an
emulator as its own process until SIGTERM.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import urlsplit

__all__ = ["LoopbackServer", "Responder", "Served", "serve_until_terminated"]

Responder = Callable[[str, str, str, Mapping[str, str], bytes], tuple[int, bytes]]
"""(method, path, query, lower-cased headers, body) -> (HTTP status, body)."""


class LoopbackServer:
    """Serve `respond` on 127.0.0.1 from a background thread."""

    def __init__(self, respond: Responder, *, name: str) -> None:
        self._respond = respond
        self._name = name
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self, port: int = 0) -> None:
        """Listen on 127.0.0.1:`port` (0: a free port)."""
        self._server = _QuietServer(("127.0.0.1", port), _handler(self._respond))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},  # stop() waits up to one poll interval
            name=self._name,
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop listening and wait for the server thread."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    @property
    def running(self) -> bool:
        """Whether it listens."""
        return self._server is not None

    @property
    def url(self) -> str:
        """The base URL (``http://127.0.0.1:PORT``)."""
        if self._server is None:
            raise RuntimeError(f"the {self._name} is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"


class Served:
    """The lifecycle of an emulator serving through ``self._http``.

    ``start``/``stop``, a ``with`` block, and its ``url``; ``self._http`` is its
    :class:`LoopbackServer`.
    """

    _http: LoopbackServer

    def start(self, port: int = 0) -> Self:
        """Listen on 127.0.0.1 (`port` 0: a free port) in a background thread."""
        self._http.start(port)
        return self

    def stop(self) -> None:
        """Stop listening and wait for the server thread."""
        self._http.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The base URL (``http://127.0.0.1:PORT``).

        For a Kraken client, put it in ``exchange.urls["api"]["public"]`` and ``["private"]``.
        """
        return self._http.url


def serve_until_terminated(url: str, stop: Callable[[], None]) -> int:
    """Print `url` (the one line a caller reads), wait for SIGTERM or Ctrl-C, then stop."""
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    print(url, flush=True)  # noqa: T201 (the one line a caller reads)
    with contextlib.suppress(KeyboardInterrupt):
        done.wait()
    stop()
    return 0


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out hangs up before the answer: expected here.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _handler(respond: Responder) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # keep-alive + Nagle + delayed ACK = 40 ms per request

        def _serve(self, method: str) -> None:
            split = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, payload = respond(method, split.path, split.query, headers, body)
            self.send_response(status)
            content = "application/json" if payload.startswith((b"{", b"[")) else "text/html"
            self.send_header("Content-Type", content)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self) -> None:  # (http.server's name)
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
            """Stay quiet: the emulators keep their own records."""

    return Handler
