"""A file too big for the cache, read through a bounded window of it.

A clean file the cache could not keep whole is not downloaded whole. One GET
streams it (``ObjectStore.stream``) and its pieces stay in memory, from
``behind`` bytes before the last read to ``ahead`` bytes past it
(``ranges.window``): the stream waits, in its thread, while it is that far
ahead, and pieces behind the window are let go. Writing the stream to a file
and reading it back cost 40% of its pace, for bytes read once.

A read of bytes the window does not hold and the stream will not bring soon
(a re-read, a jump back, a jump far ahead, any read once the stream ended)
gets them by a ranged GET (``ranges.gap``) conditional on the stream's ETag,
into a sparse file beside the cache whose bytes outside the window have their
blocks given back (``fds.punch_holes``). That file's room is reserved in the
cache (``room``, ``ContentCache.reserve``), so that the folder stays within
``--cache-size``.

The kernel keeps in its page cache every page of a file it was given, and
the daemon has no say in which: a file larger than the cache, read once,
would end up whole in the kernel's memory. Each time the reader has moved
``DROP_PAGES_AFTER`` windows on (``pages_due``), the kernel is asked to let go
of its pages of the file, and reuses them for the pages that follow.

Only file bytes no ranged GET is bringing are given back. The trio thread
takes them out of what is held before a worker punches them (``punch``, then
``punched``): a read that found its bytes held has read them already, and no
ranged GET asks for bytes until their hole is made.
"""

from __future__ import annotations

import bisect
import math
import os
import threading
from typing import Callable

import trio

from .errors import StoreError
from .fetch import Fetch
from .ranges import FAR, RANGE, add_span, add_span_all, gap, minus
from .store import ObjectInfo

#: Holes are punched once at least this much of the file lies outside the window (not per
#: read; less in a small window).
PUNCH_AT = 4 * 1024 * 1024
#: The kernel lets go of its pages of the file each time the reader moved this many windows on.
DROP_PAGES_AFTER = 4

Span = tuple[int, int]


class Window(Fetch):
    """One object's bytes around its reader: the stream's in memory, ranged GETs' in a
    sparse file (``Fetch``'s, never whole)."""

    def __init__(self, timeout: float, ahead: int, behind: int,
                 punch: Callable[[Window, list[Span]], None]) -> None:
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
        #: The stream's pieces still held (from ``starts[0]`` to ``streamed``), by offset.
        self.starts: list[int] = []
        self.pieces: list[bytes] = []
        #: What the file holds, what ranged GETs are bringing into it, what is being punched out.
        self.in_file: list[Span] = []
        self.bringing: list[Span] = []
        self.punching: list[Span] = []
        #: Where the reads waiting for their bytes begin (the kernel's reads are concurrent).
        self.waiting: list[int] = []
        #: A ranged GET's failure, for the readers that waited on it.
        self.failed: BaseException | None = None
        self._moving = threading.Condition(self._lock)
        #: Set once the last reader let go (``close``).
        self.gone = trio.Event()
        #: What one ranged GET brings (no more than the window ahead).
        self.range = min(RANGE, ahead)
        self.punch_at = min(PUNCH_AT, ahead // 2)
        #: The most the file holds at once (what the cache reserves): the window, a ranged
        #: GET past it, and what waits to be punched.
        self.room = ahead + behind + self.range + 2 * self.punch_at
        #: Where the reader was when the kernel last let go of its pages of the file.
        self._pages_at = 0

    # -- the stream's thread ----------------------------------------------------

    def streamed_piece(self, info: ObjectInfo, start: int, data: bytes) -> None:
        """The stream's next piece (its thread); then it waits while ``ahead`` bytes past
        the reader. StoreError once the window is closed."""
        end = start + len(data)
        self._token.run_sync_soon(self._streamed, info, start, data)
        with self._lock:
            if not self._closed and end >= self._told + self.ahead:
                self._token.run_sync_soon(self._paused)
                while not self._closed and end >= self._told + self.ahead:
                    self._moving.wait()
            if self._closed:
                raise StoreError("the reader let go of the file")

    def _streamed(self, info: ObjectInfo, start: int, data: bytes) -> None:
        if self._closed:
            return
        self.info = info
        self.starts.append(start)
        self.pieces.append(data)
        self.streamed = start + len(data)
        self._held()
        self.stall.moved()
        self._wake()
        self._trim()

    def _paused(self) -> None:
        """The stream waits for its reader: no deadline meanwhile (a reader may pause for long)."""
        self.stall.scope.deadline = math.inf

    # -- the trio thread --------------------------------------------------------

    def _arrived(self, info: ObjectInfo, start: int, end: int) -> None:
        """A ranged GET's piece is in the file."""
        self.in_file = add_span(self.in_file, start, end)
        self._held()
        super()._arrived(info, start, end)

    def _held(self) -> None:
        """``spans``: the bytes held, in memory or in the file."""
        self.spans = add_span(self.in_file, self.starts[0], self.streamed) if self.starts else list(self.in_file)

    def read_at(self, offset: int, size: int) -> bytes:
        """Held bytes of the object: the stream's piece itself when the read is one."""
        assert self.info is not None
        end, parts = min(offset + size, self.info.size), []
        while offset < end:
            i = bisect.bisect_right(self.starts, offset) - 1
            if i >= 0 and offset < self.starts[i] + len(self.pieces[i]):
                start, piece = self.starts[i], self.pieces[i]
                part = piece[offset - start:end - start]
            else:
                assert self.fd is not None
                stop = next(e for s, e in self.in_file if s <= offset < e)
                part = os.pread(self.fd, min(end, stop) - offset, offset)
                if not part:
                    break
            parts.append(part)
            offset += len(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def read_to(self, end: int) -> None:
        """A read ended at ``end``: the window moves there, and the stream with it unless
        the read was far ahead of it (ranged GETs serve a reader there)."""
        self.reading = end
        near = end <= self.streamed + FAR
        if (near and end >= self._told + self.ahead // 4) or end < self._told:
            self._tell(end)
        self._trim()

    def pages_due(self) -> bool:
        """Whether the kernel should let go of its pages of the file now: the reader moved
        ``DROP_PAGES_AFTER`` windows since they were last let go (then counted as done)."""
        if abs(self.reading - self._pages_at) < DROP_PAGES_AFTER * (self.ahead + self.behind):
            return False
        self._pages_at = self.reading
        return True

    def _tell(self, end: int) -> None:
        """Let the stream go on to ``ahead`` bytes past ``end`` (and have a deadline again)."""
        if self.streaming:
            self.stall.moved()
        with self._lock:
            self._told = end
            self._moving.notify_all()

    def _trim(self) -> None:
        """Let go of what lies outside ``[reading - behind, reading + ahead + range)``: the
        stream's pieces behind it at once, the file's bytes (that no ranged GET is
        bringing) once there are ``punch_at`` of them, to be punched."""
        waiting = min(self.waiting, default=self.reading)
        low = min(self.reading, waiting) - self.behind
        high = self.reading + self.ahead + self.range
        drop = 0
        while drop < len(self.starts) - 1 and self.starts[drop + 1] <= low:
            drop += 1
        if drop:
            del self.starts[:drop], self.pieces[:drop]
            self._held()
        outside = [(s, min(e, low)) for s, e in self.in_file if s < low]
        outside += [(max(s, high), e) for s, e in self.in_file if e > high]
        if self.fd is None or sum(e - s for s, e in outside) < self.punch_at:
            return
        holes = minus(outside, add_span_all(self.bringing, self.punching))
        if holes:
            self.in_file = minus(self.in_file, holes)
            self.punching = add_span_all(self.punching, holes)
            self._held()
            self._punch(self, holes)

    def punched(self, holes: list[Span]) -> None:
        """The holes ``holes`` named are made (or failed to be: the bytes are gone either way)."""
        self.punching = minus(self.punching, holes)
        self._wake()

    def stream_ended(self) -> None:
        """The stream is over (whole, broken or stopped): ranged GETs bring what is missing."""
        self.streaming = False
        self._wake()

    def to_ask(self, offset: int) -> Span | None:
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
        self.bringing = minus(self.bringing, [(start, end)])
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
        """No reader is left: the stream stops, its pieces and the file go."""
        with self._lock:
            self._closed = True
            self._moving.notify_all()
        super().close()
        self.starts, self.pieces = [], []
        self.gone.set()
        self._wake()

