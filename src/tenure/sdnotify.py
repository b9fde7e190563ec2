"""systemd's readiness protocol (``Type=notify``): a datagram to ``$NOTIFY_SOCKET``, and nothing without it.

``READY=1`` once the store is restored (when ``/healthz`` turns 200), ``RELOADING=1`` and ``READY=1`` around a
SIGHUP reload, ``STOPPING=1`` at shutdown. The protocol is one ``socket.sendto``; no library is needed for it.
"""

from __future__ import annotations

import os
import socket
import time


def notify(*lines: str) -> bool:
    """Send ``lines`` (e.g. ``READY=1``) to the service manager; whether there was one to tell."""
    where = os.environ.get("NOTIFY_SOCKET")
    if not where or not where.startswith(("/", "@")):
        return False
    address = "\0" + where[1:] if where.startswith("@") else where  # "@": an abstract socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(lines).encode(), address)
    except OSError:
        return False
    return True


def reloading() -> bool:
    """Before a reload: ``RELOADING=1`` with the monotonic time systemd 253+ asks for (older ones ignore it)."""
    return notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
