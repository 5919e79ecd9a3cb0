"""A tiny sd_notify client: tell systemd (``Type=notify``) the service is ready and alive.

systemd passes the path of a datagram socket in ``NOTIFY_SOCKET`` (a leading ``@`` means
Linux's abstract namespace) and, with ``WatchdogSec=``, the watchdog period in
``WATCHDOG_USEC``. Without ``NOTIFY_SOCKET`` (a terminal, a container, a test) every call is a
no-op, so the service sends its states unconditionally::

    from brokerguard import sdnotify

    sdnotify.notify("READY=1")  # once the status server answers
    sdnotify.notify("WATCHDOG=1")  # after every enforcement pass
    sdnotify.notify("STOPPING=1")  # on SIGTERM, before the last step finishes

Pure standard library, never raises: a notification that cannot be delivered returns False.
"""

from __future__ import annotations

import os
import socket

__all__ = ["notify", "watchdog_interval"]


def _address(value: str) -> str | bytes | None:
    if value.startswith("@"):
        return b"\0" + value[1:].encode()  # abstract namespace
    if value.startswith("/"):
        return value
    return None  # vsock: and relative paths are not ours to guess


def notify(state: str) -> bool:
    """Send `state` (``READY=1``, ``WATCHDOG=1``, ``STOPPING=1`` ...) to ``NOTIFY_SOCKET``.

    Returns True when the datagram was sent, False when there is no socket to send to (not
    started by systemd) or it could not be sent.
    """
    target = os.environ.get("NOTIFY_SOCKET")
    if not target:
        return False
    address = _address(target)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError:
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between two ``WATCHDOG=1`` that keep systemd's watchdog fed, or None.

    Half of ``WATCHDOG_USEC`` (systemd's own advice), None when the variable is absent or
    invalid, or when ``WATCHDOG_PID`` names another process.
    """
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    if value <= 0:
        return None
    return value / 2_000_000
