"""`brokerguard run` under systemd: READY when serving, WATCHDOG per pass, STOPPING."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time


def test_run_tells_systemd_it_is_ready_alive_and_stopping(tmp_path):
    """A real run with NOTIFY_SOCKET set: READY=1, then WATCHDOG=1 after passes, STOPPING=1."""
    path = str(tmp_path / "notify.sock")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(path)
    receiver.settimeout(0.5)
    env = {**os.environ, "NOTIFY_SOCKET": path}
    command = [sys.executable, "-m", "brokerguard", "run", "--port", "0"]
    process = subprocess.Popen(  # noqa: S603 (this interpreter, fixed arguments)
        [*command, "--data-dir", str(tmp_path / "data")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    got: list[str] = []

    def listen_until(done: str, seconds: float) -> None:
        until = time.monotonic() + seconds
        while done not in got and time.monotonic() < until:
            try:
                got.append(receiver.recv(100).decode())
            except TimeoutError:
                if process.poll() is not None:
                    return

    try:
        listen_until("WATCHDOG=1", 60)  # READY comes first, then a pass completes
        process.send_signal(signal.SIGTERM)
        listen_until("STOPPING=1", 60)
        process.wait(60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
        receiver.close()
    assert got[0] == "READY=1", got
    assert "WATCHDOG=1" in got
    assert got[-1] == "STOPPING=1", got
    assert process.returncode == 0
