"""A download under way, for readers that need only part of it.

A large object's first bytes are on the disk long before its last: a reader
waits for the bytes it asked for, not for the whole object. A cold ``head``
of a big log answers at once, and a sequential reader works beside the
download instead of after it.

A read far ahead of the stream (``tail`` of a big log, the index at the end
of an archive, a database's pages) does not wait for the stream to get
there: ``to_ask`` names the bytes a ranged GET should bring into the same
file (``ranges.far``), and the stream goes on beside it.

The downloading threads tell of each piece they wrote (``report``, any
thread); the trio thread records it and wakes the readers. The descriptor
readers use is handed over or closed only on the trio thread (``close``), so
a reader that checked it and reads at once never reads a closed or reused
descriptor.
"""

from __future__ import annotations

import os
import threading

import trio

from .errors import StoreError
from .ranges import FAR, add_span, add_span_all, covered, far
from .store import ObjectInfo
from .threads import Stall

class Fetch:
    """One object's download into a file of the cache: which bytes are there yet."""

    def __init__(self, timeout: float) -> None:
        #: Seconds without a piece after which the download is given up.
        self.stall = Stall(timeout)
        self.info: ObjectInfo | None = None
        self.spans: list[tuple[int, int]] = []
        #: What ranged GETs were sent for.
        self.asked: list[tuple[int, int]] = []
        #: The file being downloaded into (under a temporary name until it is whole).
        self.path = ""
        self.done = False
        self.error: BaseException | None = None
        self._fd: int | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._changed = trio.Event()
        self._token = trio.lowlevel.current_trio_token()

    @property
    def fd(self) -> int | None:
        """A read-only descriptor on the file, until the download hands it on or fails."""
        return self._fd

    def adopt(self, fd: int, path: str) -> None:
        """The download's reading descriptor and file (from its thread, before any piece)."""
        with self._lock:
            if not self._closed:
                self._fd, self.path = fd, path
                return
        os.close(fd)
        raise StoreError("the download was given up")

    def writer(self) -> int:
        """A descriptor for a ranged GET to write into the file with (any thread). Opened
        by name: once whole the file is the cache's and renamed, and a range finishing
        after that has nothing to add."""
        return os.open(self.path, os.O_WRONLY)

    def report(self, info: ObjectInfo, start: int, end: int) -> None:
        """Bytes ``[start, end)`` of the object are in the file (any thread)."""
        self._token.run_sync_soon(self._arrived, info, start, end)

    def _arrived(self, info: ObjectInfo, start: int, end: int) -> None:
        if self.done:
            return
        self.info = info
        self.spans = add_span(self.spans, start, end)
        self.stall.moved()
        self._wake()

    def finish(self, error: BaseException | None = None) -> None:
        """The download ended (trio thread); ``error`` goes to every reader still waiting."""
        self.done, self.error = True, error
        self._wake()

    def hand_over(self) -> int | None:
        """The descriptor, for the node to keep once the download is whole (trio
        thread); reads are no longer served from it through this fetch."""
        with self._lock:
            self._closed, fd, self._fd = True, self._fd, None
        return fd

    def close(self) -> None:
        """Stop serving reads from the file and close its descriptor (trio thread)."""
        fd = self.hand_over()
        if fd is not None:
            os.close(fd)

    def read_at(self, offset: int, size: int) -> bytes:
        """Bytes of the file (``has`` them first)."""
        assert self._fd is not None
        return os.pread(self._fd, size, offset)

    def has(self, offset: int, size: int) -> bool:
        """Whether a read of ``size`` bytes at ``offset`` can be answered from the file now."""
        if self.info is None:
            return False
        return covered(self.spans, offset, min(offset + size, self.info.size))

    def front(self) -> int:
        """How far the stream has come (the bytes from the start that are in)."""
        return self.spans[0][1] if self.spans and self.spans[0][0] == 0 else 0

    def to_ask(self, offset: int) -> tuple[int, int] | None:
        """The bytes a ranged GET should bring for a read at ``offset`` (``ranges.far``;
        then counted as asked for)."""
        front = self.front()
        if self.info is None or self.done or offset < front + FAR:
            return None
        wanted = far(offset, self.info.size, front, add_span_all(self.asked, self.spans))
        if wanted is not None:
            self.asked = add_span(self.asked, *wanted)
        return wanted

    def brought(self, start: int, end: int, error: BaseException | None = None) -> None:
        """A ranged GET ended (trio thread): what it could not bring, the stream does."""

    def read_to(self, end: int) -> None:
        """A read ended at ``end`` (a whole download keeps every byte; a window moves)."""

    def pages_due(self) -> bool:
        """Whether the kernel should let go of its cached pages of the file now (never: a
        whole download is the cache's, and the kernel may keep it too)."""
        return False

    async def started(self) -> None:
        """Until the object's info is known (its first piece is in) or the download ended."""
        while self.info is None and not self.done:
            await self._changed.wait()

    async def wait_for(self, offset: int, size: int) -> None:
        """Until those bytes are in the file or the download ended; its error if it failed."""
        while not (self.has(offset, size) or self.done):
            await self._changed.wait()
        if self.error is not None:
            raise self.error

    async def ended(self) -> None:
        """Until the download ended; its error if it failed."""
        while not self.done:
            await self._changed.wait()
        if self.error is not None:
            raise self.error

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
