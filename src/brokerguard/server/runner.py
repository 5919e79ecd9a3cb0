"""Serve the app with uvicorn in a background thread, and stop it cleanly."""

from __future__ import annotations

import threading
import time

import uvicorn
from fastapi import FastAPI

__all__ = ["StatusServer"]


class StatusServer:
    """A uvicorn server in a thread; port 0 picks a free port (see :attr:`port`)."""

    def __init__(self, app: FastAPI, *, host: str = "127.0.0.1", port: int = 8000) -> None:
        # log_config=None: uvicorn's records go to the root logger, in brokerguard's format
        # (text or --log-format json), instead of handlers of its own on stderr.
        config = uvicorn.Config(
            app, host=host, port=port, log_level="warning", lifespan="off", log_config=None
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, name="brokerguard-http", daemon=True
        )
        self.host = host

    def start(self, timeout: float = 10.0) -> None:
        """Start serving; wait until the socket listens."""
        self._thread.start()
        deadline = time.monotonic() + timeout  # wall-clock-ok: waiting for a real socket
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:  # wall-clock-ok
                raise RuntimeError(f"the status server did not start on {self.host}")
            time.sleep(0.02)  # wall-clock-ok

    @property
    def port(self) -> int:
        """The port actually bound."""
        sockets = self._server.servers[0].sockets
        return int(sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        """Base URL of the server."""
        return f"http://{self.host}:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting connections and wait for the thread."""
        self._server.should_exit = True
        self._thread.join(timeout)
