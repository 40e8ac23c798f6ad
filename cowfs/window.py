"""A file too big for the cache, read through a bounded window of it.

A clean file the cache could not keep whole is not downloaded whole: its
bytes go into a sparse file beside the cache, of which only a window around
the reader takes room on the disk (``ranges.window``). One GET streams the
object, unsplit, and waits in its thread while it is ``ahead`` bytes past the
last read; bytes more than ``behind`` before the last read, or past the
window, have their blocks given back (``fds.punch_holes``) and are no longer
held. A read of bytes not held that the stream will not bring soon (a
re-read, a jump back, a jump far ahead, any read once the stream ended) gets
them by a ranged GET (``ranges.gap``) conditional on the stream's ETag.

Only bytes no writer will touch again are given back: those the stream has
passed (it only moves forward), or all once it ended, never those a ranged
GET is bringing. The trio thread takes them out of what is held before a
worker punches them (``punch``, then ``punched``): a read that found its bytes
held has read them already, and no ranged GET asks for bytes until their hole
is made.
"""

from __future__ import annotations

import math
import os
import threading
from typing import Callable

import trio

from .errors import StoreError
from .fetch import Fetch
from .ranges import FAR, RANGE, add_span, add_span_all, gap
from .store import ObjectInfo

#: Holes are punched once at least this much lies outside the window (not per read; less
#: in a small window).
PUNCH_AT = 4 * 1024 * 1024


class Window(Fetch):
    """One object's bytes around its reader, in a sparse file (``Fetch``'s, never whole)."""

    def __init__(self, timeout: float, ahead: int, behind: int,
                 punch: Callable[[Window, list[tuple[int, int]]], None]) -> None:
        """``punch`` has a worker give back the blocks of spans of the file, then call ``punched``."""
        super().__init__(timeout)
        self._punch = punch
        self.ahead, self.behind = ahead, behind
        #: The end of the last read (trio thread), and what the stream's thread last heard of it.
        self.reading = 0
        self._told = 0
        #: How far the stream has brought the object, and whether it still runs.
        self.streamed = 0
        self.streaming = True
        #: What ranged GETs are bringing now, and what is being punched out.
        self.bringing: list[tuple[int, int]] = []
        self.punching: list[tuple[int, int]] = []
        #: Where the reads waiting for their bytes begin (the kernel's reads are concurrent).
        self.waiting: list[int] = []
        #: A ranged GET's failure, for the readers that waited on it.
        self.failed: BaseException | None = None
        self._moving = threading.Condition(self._lock)
        #: Set once the last reader let go (``close``).
        self.gone = trio.Event()
        #: What one ranged GET brings (no more than the window ahead).
        self.range = min(RANGE, ahead)
        #: The most the file holds at once: the window, a ranged GET, what waits to be punched
        #: and a piece the stream writes before it hears it is ahead (what the cache reserves).
        self.punch_at = min(PUNCH_AT, ahead // 2)
        self.room = ahead + behind + self.range + 2 * self.punch_at

    def held(self) -> int:
        """Bytes of the object in the file now."""
        return sum(end - start for start, end in self.spans)

    # -- the stream's thread ----------------------------------------------------

    def streamed_piece(self, info: ObjectInfo, start: int, end: int) -> None:
        """The stream's progress (its thread): reported, then it waits while ``ahead``
        bytes past the reader; StoreError once the window is closed."""
        self._token.run_sync_soon(self._streamed, info, start, end)
        with self._lock:
            if not self._closed and end >= self._told + self.ahead:
                self._token.run_sync_soon(self._paused)
                while not self._closed and end >= self._told + self.ahead:
                    self._moving.wait()
            if self._closed:
                raise StoreError("the reader let go of the file")

    def _streamed(self, info: ObjectInfo, start: int, end: int) -> None:
        self.streamed = max(self.streamed, end)
        self._arrived(info, start, end)

    def _paused(self) -> None:
        """The stream waits for its reader: no deadline meanwhile (a reader may pause for long)."""
        self.stall.scope.deadline = math.inf

    # -- the trio thread --------------------------------------------------------

    def read_to(self, end: int) -> None:
        """A read ended at ``end``: the window moves there, and the stream with it unless
        the read was far ahead of it (ranged GETs serve a reader there)."""
        self.reading = end
        near = end <= self.streamed + FAR
        if (near and end >= self._told + self.ahead // 4) or end < self._told:
            self._tell(end)
        self._trim()

    def _tell(self, end: int) -> None:
        """Let the stream go on to ``ahead`` bytes past ``end``."""
        with self._lock:
            self._told = end
            self._moving.notify_all()

    def _arrived(self, info: ObjectInfo, start: int, end: int) -> None:
        super()._arrived(info, start, end)
        self._trim()

    def _trim(self) -> None:
        """The held bytes outside ``[reading - behind, reading + ahead + range)`` that no
        writer will touch again are no longer held, and go to be punched."""
        if self.fd is None or self.info is None:
            return
        # Ahead, room for a ranged GET past the window: the stream's last piece may cross
        # its edge, and a read a little behind the last (the kernel's are concurrent) moves it.
        low = min(self.reading, *self.waiting) - self.behind if self.waiting else self.reading - self.behind
        high = self.reading + self.ahead + self.range
        outside = [(s, min(e, low)) for s, e in self.spans if s < low]
        outside += [(max(s, high), e) for s, e in self.spans if e > high]
        if sum(e - s for s, e in outside) < self.punch_at:
            return
        busy = add_span_all(self.bringing, self.punching)
        if self.streaming:
            busy = add_span(busy, self.streamed, self.info.size)
        holes = _minus(outside, busy)
        if holes:
            self.spans = _minus(self.spans, holes)
            self.punching = add_span_all(self.punching, holes)
            self._punch(self, holes)

    def punched(self, holes: list[tuple[int, int]]) -> None:
        """The holes ``holes`` named are made (or failed to be: the bytes are gone either way)."""
        self.punching = _minus(self.punching, holes)
        self._wake()

    def stream_ended(self) -> None:
        """The stream is over (whole, broken or stopped): ranged GETs bring what is missing."""
        self.streaming = False
        self._wake()

    def to_ask(self, offset: int) -> tuple[int, int] | None:
        """The bytes a ranged GET should bring for a read at ``offset`` (none while the
        stream is about to bring them); then counted as being brought."""
        if self.info is None or self._closed:
            return None
        first = next((e for s, e in self.spans if s <= offset < e), offset)
        if self.streaming and self.streamed <= first < self.streamed + FAR:
            if first >= self._told:
                self._tell(first)
            return None
        known = add_span_all(add_span_all(self.bringing, self.punching), self.spans)
        wanted = gap(first, self.info.size, known, self.range)
        if wanted is not None:
            self.bringing = add_span(self.bringing, *wanted)
        return wanted

    def brought(self, start: int, end: int, error: BaseException | None = None) -> None:
        """A ranged GET of ``[start, end)`` ended (trio thread); its error goes to the
        readers waiting for those bytes."""
        self.bringing = _minus(self.bringing, [(start, end)])
        if error is not None:
            self.failed = error
        self._wake()
        self._trim()

    async def wait_for(self, offset: int, size: int) -> None:
        """Until those bytes are held, or something changed that may call for a ranged GET;
        a ranged GET's failure, or the window's end, as an error."""
        if self.has(offset, size):
            return
        if self._closed or (self.done and self.info is None):
            raise self.error or StoreError("the file's download was given up")
        self.waiting.append(offset)
        try:
            await self._changed.wait()
        finally:
            self.waiting.remove(offset)
        failed, self.failed = self.failed, None
        if failed is not None:
            raise failed

    def writer(self) -> int:
        """A descriptor for a ranged GET to write into the file with (any thread)."""
        with self._lock:
            if self._fd is None:
                raise StoreError("the reader let go of the file")
            return os.dup(self._fd)

    def close(self) -> None:
        """No reader is left: the stream stops, the file goes."""
        with self._lock:
            self._closed = True
            self._moving.notify_all()
        super().close()
        self.gone.set()


def _minus(spans: list[tuple[int, int]], cut: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``spans`` without the bytes of ``cut``."""
    out = []
    for start, end in spans:
        for s, e in cut:
            if e <= start or end <= s:
                continue
            if start < s:
                out.append((start, s))
            start = max(start, e)
            if start >= end:
                break
        if start < end:
            out.append((start, end))
    return out
