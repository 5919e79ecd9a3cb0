"""Helpers for tests that drive brokerguard as a real process."""

from __future__ import annotations

import subprocess
import time


def wait_until_serving(proc: subprocess.Popen[str], timeout: float = 120.0) -> str:
    """Read `proc`'s stderr until `run` says it serves; return what it printed so far.

    `run` owns SIGINT and SIGTERM before it says so: a signal sent after this is a clean stop,
    however slowly a loaded machine started the process (a fixed sleep was not always enough).
    """
    assert proc.stderr is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout  # wall-clock-ok: a real process
    while time.monotonic() < deadline:  # wall-clock-ok
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        if "status page" in line:
            return "".join(seen)
    raise AssertionError("run never said it serves:\n" + "".join(seen))
