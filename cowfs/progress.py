"""Progress lines on a terminal: how much of how much, the rate, and the time left.

A line is drawn only on a terminal (stderr) and without ``--quiet``; what a
command does never depends on it. Units are binary (KiB, MiB), as in the
rest of the output, which is why this is not tqdm (its byte units are
decimal prefixes on 1024-byte steps) nor rich (a dozen modules for one line).
"""

from __future__ import annotations

import concurrent.futures
import os
import sys
import time
from typing import Any, Callable, TextIO

from . import control
from .errors import TimedOut
from .output import duration, plural, size

POLL_SECONDS = 0.2
#: Least time between two redraws of a line.
REDRAW_SECONDS = 0.1
BAR_WIDTH = 20


class Meter:
    """One progress line: items (changes, files, objects) and bytes done of their totals."""

    def __init__(self, label: str, unit: str, shown: bool, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self.unit = unit
        self.shown = shown
        self.stream = stream or sys.stderr
        self.clock = clock
        self.started = clock()
        self.items = self.nbytes = 0
        self.total_items: int | None = None
        self.total_bytes: int | None = None
        self.note = ""
        self._drawn = 0.0
        self._width = 0

    def plan(self, items: int | None, nbytes: int | None) -> None:
        """The totals, once known (they may grow: a sync's pending changes do)."""
        self.total_items, self.total_bytes = items, nbytes
        self._draw()

    def advance(self, items: int = 1, nbytes: int = 0) -> None:
        self.items += items
        self.nbytes += nbytes
        self._draw()

    def set(self, items: int, nbytes: int, note: str = "") -> None:
        self.items, self.nbytes, self.note = items, nbytes, note
        self._draw()

    def line(self) -> str:
        """``LABEL [####......] 3/10 changes, 1.2 MiB/4.0 MiB, 512.0 KiB/s, ETA 6.0 s``."""
        parts = []
        elapsed = max(self.clock() - self.started, 1e-9)
        by_bytes = bool(self.total_bytes)
        done, total = (self.nbytes, self.total_bytes) if by_bytes else (self.items, self.total_items)
        bar = ""
        if total:
            filled = BAR_WIDTH * min(done, total) // total
            bar = f" [{'#' * filled}{'.' * (BAR_WIDTH - filled)}]"
        count = f"{self.items}/{self.total_items}" if self.total_items is not None else str(self.items)
        parts.append(f"{count} {plural(self.total_items or self.items, self.unit).split(' ', 1)[1]}")
        if self.total_bytes is not None:
            parts.append(f"{size(self.nbytes)}/{size(self.total_bytes)}")
        rate = done / elapsed
        parts.append(f"{size(rate)}/s" if by_bytes else f"{rate:.1f} {self.unit}s/s")
        if total and done < total:
            parts.append(f"ETA {duration((total - done) / rate)}" if rate > 0 else "ETA unknown")
        elif total:
            parts.append(f"in {duration(elapsed)}")
        if self.note:
            parts.append(self.note)
        return f"{self.label}{bar} {', '.join(parts)}"

    def _draw(self, force: bool = False) -> None:
        now = self.clock()
        if not self.shown or (not force and now - self._drawn < REDRAW_SECONDS):
            return
        self._drawn = now
        text = self.line()
        self.stream.write("\r" + text.ljust(self._width))
        self.stream.flush()
        self._width = len(text)

    def clear(self) -> None:
        """Take the line away, so that other output starts on a clean line."""
        if self.shown and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._drawn = 0.0

    def close(self) -> None:
        """Draw the last state and end the line."""
        if self.shown:
            self._draw(force=True)
            self.stream.write("\n")
            self.stream.flush()


def on_terminal(quiet: bool) -> bool:
    """Whether progress lines are shown: stderr is a terminal and no ``--quiet``."""
    return not quiet and sys.stderr.isatty()


def sync(mountpoint: str | os.PathLike[str], timeout: float | None, quiet: bool = False,
         label: str = "syncing") -> dict[str, Any]:
    """Wait until everything written before this call is in the store; the daemon's answer.

    The progress line shows only on a terminal; either way the wait is the
    daemon's ``sync`` command, so the outcome never depends on it. A timeout
    says what is still pending and the last error.
    """
    try:
        if not on_terminal(quiet):
            return control.request(mountpoint, {"cmd": "sync"}, timeout=timeout)
        return _sync_shown(mountpoint, timeout, Meter(label, "change", shown=True))
    except TimedOut:
        raise TimedOut(f"{mountpoint}: not in the store after {timeout} s: "
                               f"{pending(control.request(mountpoint, {'cmd': 'status'}, timeout=5))}") from None


def pending(status: dict[str, Any]) -> str:
    """``3 uploads (1.2 MiB) and 1 delete still pending; last error: ...``."""
    what = (f"{plural(status['pendingUploads'], 'upload')} ({size(status['dirtyBytes'])}) and "
            f"{plural(status['pendingDeletes'], 'delete')} still pending")
    return f"{what}; last error: {status.get('lastError') or 'none'}"


def _sync_shown(mountpoint: str | os.PathLike[str], timeout: float | None, meter: Meter) -> dict[str, Any]:
    most = most_bytes = 0
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        done = pool.submit(control.request, mountpoint, {"cmd": "sync"}, timeout)
        try:
            while not done.done():
                status = control.request(mountpoint, {"cmd": "status"}, timeout=5)
                left = status["pendingUploads"] + status["pendingDeletes"]
                most, most_bytes = max(most, left), max(most_bytes, status["dirtyBytes"])
                meter.plan(most, most_bytes)
                retries = plural(status["retries"], "retry", "retries") if status.get("retries") else ""
                meter.set(most - left, most_bytes - status["dirtyBytes"], retries)
                concurrent.futures.wait([done], timeout=POLL_SECONDS)
            reply = done.result()
            meter.set(most, most_bytes)
        finally:
            meter.close()
    return reply
