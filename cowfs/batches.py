"""What the parts that write small objects after this mount's changes share: batching,
failures, and whether a workspace has its record.

A change mark or an attribute summary is written a moment after the changes it
tells of, once for all that came in meanwhile, on worker threads; a write that
fails is tried again with the next batch and never holds the mount up, and
``cowfs status`` shows how many failed and the last error.
"""

from __future__ import annotations

import abc
import logging
from typing import Any, Callable, Generic, TypeVar

import trio

from .gateway import StoreCalls
from .store import ObjectStore
from .workspaces import has_record

#: Objects written at once in one flush.
PARALLEL = 8
K = TypeVar("K")
V = TypeVar("V")
Workspace = tuple[str, str]


class RecordCheck:
    """Which workspaces have their record, asked once per mount (one HEAD) for every writer
    beside it: a mark or a summary written into a removed workspace, or into a folder other
    tools made, would make it one."""

    def __init__(self, store: ObjectStore, calls: StoreCalls) -> None:
        self.store = store
        self.calls = calls
        self._known: set[Workspace] = set()
        self._asking: dict[Workspace, trio.Event] = {}

    async def exists(self, workspace: Workspace) -> bool:
        """Whether ``workspace`` has its record; a writer asking while another does waits for its answer."""
        while workspace in self._asking:
            await self._asking[workspace].wait()
        if workspace in self._known:
            return True
        asked = self._asking[workspace] = trio.Event()
        try:
            found = await self.calls.call(has_record, self.store, *workspace, background=True)
        finally:
            del self._asking[workspace]
            asked.set()
        if found:
            self._known.add(workspace)
        return found


class BatchWriter(abc.ABC, Generic[K, V]):
    """Keeps what changed per object to write (``_pending``: K -> V) and writes it in batches."""

    def __init__(self, store: ObjectStore, calls: StoreCalls, interval: float, records: RecordCheck) -> None:
        self.store = store
        self.calls = calls
        self.interval = interval
        self.records = records
        self._pending: dict[K, V] = {}
        self._flushing = trio.Lock()
        self._wake = trio.Event()
        #: Writes and reads that failed, and the last error (``cowfs status``).
        self.failures = 0
        self.last_error: str | None = None

    @property
    def pending(self) -> int:
        """Objects whose write waits for the next flush."""
        return len(self._pending)

    async def run(self) -> None:
        """Flush at most every ``interval`` while changes come in; run it in the daemon's nursery."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            await self.flush()
            await trio.sleep(self.interval)

    async def flush(self) -> None:
        """Write everything changed since the last flush (a failed write is tried again later)."""
        async with self._flushing:
            pending, self._pending = self._pending, {}
            work = iter(pending.items())

            async def writer() -> None:
                for key, value in work:
                    await self._write(key, value)

            async with trio.open_nursery() as nursery:
                for _ in range(min(PARALLEL, len(pending))):
                    nursery.start_soon(writer)

    @abc.abstractmethod
    async def _write(self, key: K, value: V) -> None:
        """Write one object's changes; on failure, count it and put them back into ``_pending``."""

    async def _background(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await self.calls.call(fn, *args, background=True)

    def _failed(self, what: str, exc: Exception) -> None:
        self.failures += 1
        self.last_error = f"{what}: {exc}"
        logging.getLogger(type(self).__module__).warning("%s failed: %s", what, exc)
