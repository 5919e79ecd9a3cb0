"""A Redis of the test's own, to kill and restart empty (the shared one is never touched)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import require_service


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """A ``redis-server`` subprocess with no persistence: killing it loses every key.

    :meth:`kill` is a crash (SIGKILL); :meth:`start` after it brings back an EMPTY Redis on
    the same port, as a failover to a replica that had not synced, or a restart without
    persistence, would.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it (empty) and wait until it answers."""
        binary = shutil.which("redis-server")
        if binary is None:
            require_service("redis-server", "the binary is not on PATH")
        log = (self.workdir / f"redis-{self.port}.log").open("ab")
        self.process = subprocess.Popen(  # noqa: S603 (a binary found on PATH, fixed arguments)
            [
                str(binary),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        client = redis.Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1)
        deadline = time.monotonic() + 20  # wall-clock-ok: waiting for a real process
        try:
            while True:
                try:
                    if client.ping():
                        return
                except redis.RedisError:
                    if time.monotonic() > deadline:  # wall-clock-ok
                        pytest.fail(f"redis-server on port {self.port} did not start")
                    time.sleep(0.05)  # wall-clock-ok
        finally:
            client.close()

    def kill(self) -> None:
        """Crash it: every key is lost."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)
        self.process = None

    def dbsize(self) -> int:
        """How many keys it holds now."""
        client = redis.Redis.from_url(self.url, socket_timeout=1)
        try:
            return int(client.dbsize())
        finally:
            client.close()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own (skipped locally, failed in CI, without the binary)."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()
