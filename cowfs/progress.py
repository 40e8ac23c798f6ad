"""``cowfs sync`` on a terminal: a one-line progress display of the changes still on their way."""

from __future__ import annotations

import concurrent.futures
import os
import sys
from typing import Any

from . import control

POLL_SECONDS = 0.2


def sync(mountpoint: str | os.PathLike[str], timeout: float | None) -> dict[str, Any]:
    """Wait until everything written before this call is in the store; the daemon's answer.

    The progress line shows only when stderr is a terminal; either way the
    wait is the daemon's ``sync`` command, so the outcome never depends on it.
    """
    if not sys.stderr.isatty():
        return control.request(mountpoint, {"cmd": "sync"}, timeout=timeout)
    total = 0
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        done = pool.submit(control.request, mountpoint, {"cmd": "sync"}, timeout)
        try:
            while not done.done():
                status = control.request(mountpoint, {"cmd": "status"}, timeout=5)
                pending = status["pendingUploads"] + status["pendingDeletes"]
                total = max(total, pending)
                _show(total - pending, total, status)
                concurrent.futures.wait([done], timeout=POLL_SECONDS)
            reply = done.result()
            _show(total, total, None)
        finally:
            sys.stderr.write("\n")
    return reply


def _show(finished: int, total: int, status: dict[str, Any] | None) -> None:
    width = 30
    filled = width * finished // total if total else width
    retries = f", {status['retries']} retries" if status and status.get("retries") else ""
    sys.stderr.write(f"\rsyncing [{'#' * filled}{'.' * (width - filled)}] {finished}/{total} changes{retries}  ")
    sys.stderr.flush()
