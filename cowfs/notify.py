"""systemd's sd_notify protocol: READY=1 once the mount answers, STOPPING=1 on the way out."""

from __future__ import annotations

import os
import socket


def notify(state: str) -> bool:
    """Send ``state`` to ``$NOTIFY_SOCKET`` if systemd (or a test) gave us one."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(state.encode())
    return True
