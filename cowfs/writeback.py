"""Write-back: puts the store in line with the journal, in the background.

A *source* (a node of the namespace) is scheduled after close; it is
uploaded once its write-back delay has passed, counted from the first
schedule after the last upload, so a file appended to line by line goes up
at most once per delay, not once per line. Deletes wait the same delay and go
up in batches of up to 1000 keys. While the mount is busy (``BUSY_CHANGES``
changes, folders read or files opened within ``BUSY_WINDOW`` seconds: an
untar, a build, a clone, a ``find`` or ``grep -r``; not a writer of a few
files a second), or a reader waits on the
store, due work waits, at most ``MAX_DEFER`` seconds, and then trickles
(``BUSY_UPLOAD_RATE`` a second), so uploads do not compete with the work in
front of the user for what it needs, a CPU and the daemon's GIL (each upload
costs the daemon CPU, however few run at a time; docs/PERFORMANCE.md has the
figures); fsync, ``cowfs sync`` and unmount never wait. Only as many uploads
are started as there are slots (``concurrency``), so a backlog left from a
pause does not wait in tasks for a slot and then run at full speed through
the next burst. Operations on one key never overlap, so a
delete and a later put of the same key land in order. Failed operations are
retried with capped exponential backoff and jitter; nothing is dropped.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import math
import random
import secrets
from collections import Counter, deque
from contextlib import asynccontextmanager
import socket
import time
from datetime import datetime, timezone
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable, Protocol, TypeVar

import trio

from .errors import ObjectNotFound, PreconditionFailed, Refused, StoreError
from .gateway import StoreCalls
from .journal import BODY_METADATA_ONLY, Journal, PutRecord
from .store import ObjectStore
from .upload import put_record

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_BACKOFF = 30.0
DELETE_BATCH = 1000
#: While the mount stays busy, deletes past ``MAX_DEFER`` go together at most this often.
DELETE_INTERVAL = 1.0
#: How long a finished delete is remembered: longer than any listing can take.
DELETED_MEMORY = 600.0
#: The mount is busy once it has served ``BUSY_CHANGES`` changes, folder reads or opens within ``BUSY_WINDOW`` seconds
#: (a writer of a few files a second is not), until a pause of ``QUIET`` seconds or the rate
#: falls below that; due work starts then ...
QUIET = 0.25
BUSY_CHANGES = 12
BUSY_WINDOW = 0.5
#: ... or once it has been due for this long; then, while the mount stays busy,
#: at most this many uploads start per second.
MAX_DEFER = 0.5
BUSY_UPLOAD_RATE = 20.0
#: Uploads and deletes in flight at once.
UPLOAD_SLOTS = 8
#: A key the store refuses this many times in a row is not retried (``Refused``).
REFUSALS = 3


@dataclass(frozen=True)
class Upload:
    """One snapshot of what a key should hold, taken on the trio thread: the journal
    record of a version, and the condition it goes up under."""

    record: PutRecord
    version: int
    if_match: str | None = None
    if_none_match: bool = False

    @property
    def key(self) -> str:
        return self.record.key

    @property
    def metadata(self) -> dict[str, str]:
        return self.record.metadata

    def conflict_key(self) -> str:
        """Where this version goes when another writer changed the key meanwhile: a new
        name each time (the random end keeps two conflicts in one second apart)."""
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        return f"{self.key}.conflict-{socket.gethostname()}-{stamp}-{secrets.token_hex(3)}"


class Source(Protocol):
    rid: str

    def snapshot(self) -> Upload | None:
        """What to upload now; None when the source no longer needs the store."""

    async def uploaded(self, upload: Upload, etag: str) -> bool:
        """Record success; True when nothing newer is waiting to go up."""

    def conflicted(self, upload: Upload, kept_as: str, etag: str) -> None:
        """Another writer won the key; this version was kept beside it, as ``kept_as`` with ``etag``."""


@dataclass
class _Pending:
    source: Source
    due: float
    attempts: int = 0
    running: bool = False
    again: bool = False
    next_due: float = 0.0
    urgent: bool = False
    next_urgent: bool = False
    done: trio.Event = field(default_factory=trio.Event)
    #: Set when an attempt fails (then replaced), for an fsync waiting on it.
    failed: trio.Event = field(default_factory=trio.Event)
    error: str = ""


@dataclass
class Stats:
    pending_uploads: int
    pending_deletes: int
    uploads: int
    deletes: int
    retries: int
    last_error: str | None


class WriteBack:
    """Background uploader and deleter with per-key ordering."""

    def __init__(
        self,
        store: ObjectStore,
        journal: Journal,
        calls: StoreCalls,
        delay: float = 1.0,
        concurrency: int = UPLOAD_SLOTS,
        clock: Callable[[], float] = time.monotonic,
        on_stored: Callable[[str, str, dict[str, str] | None], None] = lambda key, etag, metadata: None,
        on_deleted: Callable[[str], None] = lambda key: None,
    ) -> None:
        """``on_stored(key, etag, metadata)`` is told of every object that reached the store
        (copies too; ``metadata`` None for a copy that kept its source's),
        ``on_deleted(key)`` of every key deleted from it. While a program waits on a
        store call (``calls.waiting``), no new work starts."""
        self.store = store
        self.journal = journal
        self.calls = calls
        calls.when_served(self._kick)
        self.delay = delay
        self.clock = clock
        self.on_stored = on_stored
        self.on_deleted = on_deleted
        self._slots = trio.Semaphore(concurrency)
        self._puts: dict[str, _Pending] = {}
        self._refused: dict[str, tuple[str, str]] = {}
        self._deletes: dict[str, float] = {}
        self._delete_attempts: dict[str, int] = {}
        self._busy: dict[str, trio.Event] = {}
        self._moving: set[str] = set()
        self._moved = trio.Event()
        self._deleting: set[str] = set()
        self._deleting_under: Counter[str] = Counter()
        self._deleted_at: dict[str, float] = {}
        self._deleted_log: deque[tuple[float, str]] = deque()
        self._wake = trio.Event()
        self._next_wake = 0.0
        self._queue: list[tuple[float, int, str]] = []
        self._urgent: set[str] = set()
        self._queued = 0
        self._next_busy_start = 0.0
        self._idle = trio.Event()
        self._idle.set()
        self._recent: deque[float] = deque(maxlen=BUSY_CHANGES)
        self._last_delete_batch = -DELETE_INTERVAL
        self._draining = 0
        self.uploads = self.deletes = self.retries = 0
        self.last_error: str | None = None

    # -- scheduling (called on the trio thread) ---------------------------

    def active(self) -> None:
        """The mount just changed something, or read a folder or opened a file for a program:
        due work waits for a pause (at most ``MAX_DEFER``)."""
        self._recent.append(self.clock())

    def _start_at(self, due: float, urgent: bool) -> float:
        if urgent or self._draining:
            return due
        if self.calls.waiting:
            return due + MAX_DEFER
        return max(due, min(self._quiet_at(), due + MAX_DEFER))

    def _quiet_at(self) -> float:
        """When the mount counts as paused, if nothing changes before then."""
        if len(self._recent) < BUSY_CHANGES:
            return -math.inf
        return min(self._recent[-1] + QUIET, self._recent[0] + BUSY_WINDOW)

    def _mount_busy(self, at: float) -> bool:
        """Whether work due at ``at`` meets a busy mount (a sync, fsync or unmount never does)."""
        return not self._draining and at < self._quiet_at()

    def schedule(self, source: Source, now: bool = False) -> None:
        """Upload ``source`` after the write-back delay (or at once)."""
        due = self.clock() + (0 if now else self.delay)
        self._refused.pop(source.rid, None)
        entry = self._puts.get(source.rid)
        if entry is None:
            entry = self._puts[source.rid] = _Pending(source, due, urgent=now)
            self._enqueue(source.rid, entry)
        elif entry.running:
            entry.next_due = min(entry.next_due, due) if entry.again else due
            entry.next_urgent = entry.next_urgent or now
            entry.again = True
        else:
            entry.due = min(entry.due, due)
            entry.urgent = entry.urgent or now
            self._enqueue(source.rid, entry)
        self._kick(math.inf if entry.running else self._start_at(entry.due, entry.urgent))

    def cancel(self, source: Source) -> None:
        """Forget a pending upload whose source went away (unlinked, replaced)."""
        self._refused.pop(source.rid, None)
        entry = self._puts.get(source.rid)
        if entry is not None and not entry.running:
            del self._puts[source.rid]
            entry.done.set()
            self._check_idle()

    def schedule_delete(self, key: str) -> None:
        due = self._deletes.setdefault(key, self.clock() + self.delay)
        self._mark_deleting(key)
        self._kick(self._start_at(due, False))

    def cancel_delete(self, key: str) -> bool:
        """Drop a pending delete (a new object takes the key); True if there was one."""
        if self._deletes.pop(key, None) is None:
            return False
        self._delete_attempts.pop(key, None)
        if key not in self._busy:
            self._unmark_deleting(key, done=False)
        return True

    def may_still_list(self, key: str, started: float) -> bool:
        """Whether a listing started at ``started`` may show ``key`` although this mount deleted it.

        ``key`` is an object key or a folder prefix (ending in ``/``): true while
        a delete of it (or of anything under it) is pending or in flight, or
        finished after the listing started.
        """
        if self._deleting_under[key] > 0:
            return True
        return self._deleted_at.get(key, -1.0) >= started

    @staticmethod
    def _prefixes(key: str) -> list[str]:
        """``key`` and every folder prefix above it: what a listing may show it as."""
        parts = key.rstrip("/").split("/")
        out = ["/".join(parts[:i]) + "/" for i in range(1, len(parts))]
        return out + [key]

    def _mark_deleting(self, key: str) -> None:
        if key not in self._deleting:
            self._deleting.add(key)
            self._deleting_under.update(self._prefixes(key))

    def _unmark_deleting(self, key: str, done: bool) -> None:
        if key not in self._deleting:
            return
        self._deleting.discard(key)
        now = self.clock()
        for prefix in self._prefixes(key):
            self._deleting_under[prefix] -= 1
            if self._deleting_under[prefix] <= 0:
                del self._deleting_under[prefix]
            if done:
                self._deleted_at[prefix] = now
                self._deleted_log.append((now, prefix))
        while self._deleted_log and self._deleted_log[0][0] < now - DELETED_MEMORY:
            old, prefix = self._deleted_log.popleft()
            if self._deleted_at.get(prefix) == old:
                del self._deleted_at[prefix]

    def is_pending(self, source: Source) -> bool:
        return source.rid in self._puts

    def deleting(self, key: str) -> bool:
        """Whether a delete of ``key`` is pending or in flight."""
        return key in self._deleting

    async def copy(self, src: str, dst: str, metadata: dict[str, str] | None = None) -> str:
        """Server-side copy that waits for, and blocks, other operations on ``dst``."""
        await self._claim(dst)
        try:
            etag = await self._store(self.store.copy, src, dst, metadata)
        finally:
            self._release(dst)
        self.on_stored(dst, etag, metadata)
        return etag

    @asynccontextmanager
    async def moving(self, prefix: str) -> AsyncIterator[None]:
        """A folder's objects are being moved: no upload under ``prefix`` lands meanwhile.

        Waits for those already under way first, so the move's listing shows
        every object they store; one landing between that listing and the end
        of the move would stay at its old key, and its new key never be written.
        Uploads that come due meanwhile wait, and then go up under the new name.
        """
        self._moving.add(prefix)
        try:
            while busy := [event for key, event in self._busy.items() if key.startswith(prefix)]:
                await busy[0].wait()
            yield
        finally:
            self._moving.discard(prefix)
            self._moved.set()
            self._moved = trio.Event()

    def _under_move(self, key: str) -> bool:
        return any(key.startswith(prefix) for prefix in self._moving)

    async def _claim_upload(self, source: Source) -> Upload | None:
        """``source``'s upload, its key claimed, once no folder move holds that key."""
        while True:
            upload = source.snapshot()
            if upload is None:
                return None
            await self._claim(upload.key)
            if not self._under_move(upload.key):
                return upload
            self._release(upload.key)
            await self._moved.wait()

    async def flush(self, source: Source, timeout: float = math.inf) -> None:
        """Upload ``source`` now and wait until the store has it (fsync).

        Raises ``StoreError`` when an attempt fails or ``timeout`` passes first:
        the store could not take it now. The upload goes on in the background,
        with its retries, as for any closed file.
        """
        entry = self._puts.get(source.rid)
        if entry is None:
            return
        self.schedule(source, now=True)
        failed = entry.failed
        with trio.move_on_after(timeout):
            async with trio.open_nursery() as nursery:
                async def settle(event: trio.Event) -> None:
                    await event.wait()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(settle, entry.done)
                nursery.start_soon(settle, failed)
        if entry.done.is_set():
            return
        if failed.is_set():
            raise StoreError(entry.error)
        raise StoreError(f"the store has not taken it within {timeout:g} s")

    async def drain(self) -> None:
        """Wait until every pending upload and delete is in the store."""
        self._draining += 1
        try:
            while self._puts or self._deletes or self._busy:
                for rid, entry in self._puts.items():
                    if not entry.running and entry.due > self.clock():
                        entry.due = self.clock()
                        self._enqueue(rid, entry)
                for key in self._deletes:
                    self._deletes[key] = min(self._deletes[key], self.clock())
                self._kick()
                await self._idle.wait()
        finally:
            self._draining -= 1

    def stats(self) -> Stats:
        return Stats(len(self._puts), len(self._deletes), self.uploads, self.deletes, self.retries, self.last_error)

    # -- the worker -------------------------------------------------------

    def _kick(self, at: float | None = None) -> None:
        """There is work; wake the scheduler unless it already wakes before ``at``.

        A burst of closes schedules one upload each, all due after the ones
        already waiting: rescanning every pending entry per close would make
        the burst quadratic.
        """
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        if at is None or at < self._next_wake:
            self._wake.set()

    def _check_idle(self) -> None:
        if not self._puts and not self._deletes and not self._busy:
            self._idle.set()

    async def run(self) -> None:
        """Start due work forever; run it in the daemon's nursery."""
        async with trio.open_nursery() as nursery:
            while True:
                self._wake = trio.Event()
                now = self.clock()
                next_due = now + 3600
                busy = self._mount_busy(now)
                room = min(self._slots.value, (1 if now >= self._next_busy_start else 0) if busy else math.inf)
                for rid, entry in self._due_uploads(now, room):
                    entry.running = True
                    nursery.start_soon(self._upload, rid, entry, self._take_slot())
                    if busy:
                        self._next_busy_start = now + 1 / BUSY_UPLOAD_RATE
                if self._queue and self._slots.value:
                    due, _, rid = self._queue[0]
                    start = self._start_at(due, False)
                    if busy:
                        start = max(start, min(self._next_busy_start, self._quiet_at()))
                    next_due = min(next_due, start)
                next_due = min(next_due, self._start_deletes(nursery, now))
                self._check_idle()
                self._next_wake = next_due
                with trio.move_on_after(max(0.0, next_due - self.clock())):
                    await self._wake.wait()
                self._next_wake = 0.0

    def _enqueue(self, rid: str, entry: _Pending) -> None:
        """Queue ``entry`` at its (new) due time; an older place in the queue goes stale."""
        self._queued += 1
        heapq.heappush(self._queue, (entry.due, self._queued, rid))
        if entry.urgent:
            self._urgent.add(rid)

    def _due_uploads(self, now: float, room: float) -> list[tuple[str, _Pending]]:
        """Entries that may start now, earliest due first, at most ``room`` from the queue.

        ``_start_at`` grows with the due time, so only the head of the queue
        is looked at: a burst of thousands of pending closes costs nothing per
        wake-up. Urgent entries (fsync) skip the queue and the limit.
        """
        due: dict[str, _Pending] = {}
        for rid in self._urgent:
            entry = self._puts.get(rid)
            if entry is not None and entry.urgent and not entry.running and entry.due <= now:
                due[rid] = entry
        self._urgent = {rid for rid in self._urgent - due.keys() if rid in self._puts and self._puts[rid].urgent}
        queued = len(due)
        while self._queue and len(due) - queued < room:
            at, _, rid = self._queue[0]
            entry = self._puts.get(rid)
            if entry is None or entry.running or entry.due != at or rid in due:
                heapq.heappop(self._queue)
                continue
            if self._start_at(at, False) > now:
                break
            heapq.heappop(self._queue)
            due[rid] = entry
        return list(due.items())

    def _start_deletes(self, nursery: trio.Nursery, now: float) -> float:
        """Start every due delete if a batch may go now; returns when the next batch may."""
        start = self._deletes_start_at()
        if start > now:
            return start
        self._last_delete_batch = now
        due_keys = [k for k, t in self._deletes.items() if t <= now and k not in self._busy]
        for i in range(0, len(due_keys), DELETE_BATCH):
            batch = due_keys[i:i + DELETE_BATCH]
            for key in batch:
                del self._deletes[key]
                self._busy[key] = trio.Event()
            nursery.start_soon(self._delete_batch, batch)
        return self._deletes_start_at()

    def _deletes_start_at(self) -> float:
        """When the next batch of deletes may go: one batch costs what one key does, so
        during a long burst (``rm -r``) deletes past ``MAX_DEFER`` go at most once a
        ``DELETE_INTERVAL``, together, not a few keys per request."""
        if not self._deletes:
            return math.inf
        start = min(self._start_at(t, False) for t in self._deletes.values())
        if not self._mount_busy(start):
            return start
        return max(start, self._last_delete_batch + DELETE_INTERVAL)

    async def _claim(self, key: str) -> None:
        while key in self._busy:
            await self._busy[key].wait()
        self._busy[key] = trio.Event()

    def _release(self, key: str) -> None:
        self._busy.pop(key).set()
        self._check_idle()

    def _backoff(self, attempts: int) -> float:
        return min(MAX_BACKOFF, 0.2 * 2 ** attempts) * random.uniform(0.5, 1.0)

    def _take_slot(self) -> bool:
        """Take a free slot for work about to start; False when none is free (an urgent upload)."""
        try:
            self._slots.acquire_nowait()
        except trio.WouldBlock:
            return False
        return True

    async def _upload(self, rid: str, entry: _Pending, slot_taken: bool) -> None:
        """One upload in one of the slots, taken by the scheduler when it started this.

        Only as many are started as there are free slots (an urgent one aside,
        which waits for one here): an upload started in a pause would otherwise
        wait for a slot and then go at full speed while the mount is busy again.
        """
        if not slot_taken:
            await self._slots.acquire()
        try:
            await self._upload_held(rid, entry)
        finally:
            self._slots.release()
            self._kick()

    async def _upload_held(self, rid: str, entry: _Pending) -> None:
        upload = await self._claim_upload(entry.source)
        if upload is None:
            self._finish(rid, entry, settled=True)
            return
        try:
            try:
                etag = await self._store(self._put_blocking, upload)
            except ObjectNotFound:
                if upload.record.body != BODY_METADATA_ONLY:
                    raise
                log.error("%s vanished from the store before its metadata could be updated", upload.key)
                self.last_error = f"{upload.key} vanished from the store"
                self._release(upload.key)
                self._finish(rid, entry, settled=True)
                return
            except PreconditionFailed:
                kept_as, kept_etag = await self._keep_conflict(upload)
                entry.source.conflicted(upload, kept_as, kept_etag)
                self._release(upload.key)
                self._finish(rid, entry, settled=True)
                return
        except Exception as exc:
            self._release(upload.key)
            self.retries += 1
            self.last_error = entry.error = f"upload {upload.key}: {exc}"
            log.warning("upload of %s failed (attempt %d): %s", upload.key, entry.attempts + 1, exc,
                        exc_info=not isinstance(exc, StoreError))
            entry.failed.set()
            entry.failed = trio.Event()
            entry.attempts += 1
            entry.running = False
            if isinstance(exc, Refused) and entry.attempts >= REFUSALS:
                self._quarantine(rid, entry, upload.key, str(exc))
                return
            entry.due = self.clock() + self._backoff(entry.attempts)
            self._enqueue(rid, entry)
            self._kick()
            return
        self.uploads += 1
        self.on_stored(upload.key, etag, upload.record.metadata)
        try:
            settled = await entry.source.uploaded(upload, etag)
        except Exception:
            log.exception("bookkeeping after the upload of %s failed; the store has it", upload.key)
            settled = True
        self._release(upload.key)
        self._finish(rid, entry, settled)

    def _quarantine(self, rid: str, entry: _Pending, key: str, reason: str) -> None:
        """Stop retrying a key the store refuses for good. Its record stays in the
        journal; a rename or unlink of the file (a new schedule, or a cancel)
        takes it out. Sync and unmount no longer wait for it, and name it."""
        del self._puts[rid]
        self._refused[rid] = (key, reason)
        log.error("the store refuses %s (%s): kept in the journal, not retried; rename or delete the file",
                  key, reason)
        self._check_idle()

    def refused(self) -> dict[str, str]:
        """Keys the store refused for good, and why."""
        return dict(self._refused.values())

    def _finish(self, rid: str, entry: _Pending, settled: bool) -> None:
        entry.running = False
        entry.attempts = 0
        if entry.again or not settled:
            entry.due = entry.next_due if entry.again else self.clock()
            entry.urgent, entry.next_urgent = entry.next_urgent, False
            entry.again = False
            self._enqueue(rid, entry)
            self._kick()
            return
        del self._puts[rid]
        self.journal.remove_put(rid)
        entry.done.set()
        self._check_idle()

    async def _keep_conflict(self, upload: Upload) -> tuple[str, str]:
        """Store this version beside the key another writer changed, under a name nobody
        holds (``If-None-Match``); return that name and its ETag. Neither version is lost."""
        while True:
            conflict = upload.conflict_key()
            copy = Upload(dataclasses.replace(upload.record, key=conflict), upload.version, if_none_match=True)
            try:
                etag = await self._store(self._put_blocking, copy)
            except PreconditionFailed:
                continue
            self.on_stored(conflict, etag, upload.record.metadata)
            log.warning("%s was changed by another writer; this mount's version is kept as %s", upload.key, conflict)
            return conflict, etag

    async def _store(self, fn: Callable[..., T], *args: object) -> T:
        """A store call of write-back: in the background, as long as it takes (retries follow failures)."""
        return await self.calls.call(fn, *args, background=True, bounded=False)

    def _put_blocking(self, upload: Upload) -> str:
        return put_record(self.store, self.journal, upload.record, upload.if_match, upload.if_none_match)

    async def _delete_batch(self, keys: list[str]) -> None:
        async with self._slots:
            try:
                await self._store(self.store.delete_many, keys)
            except Exception as exc:
                self.retries += 1
                self.last_error = f"delete of {len(keys)} keys: {exc}"
                log.warning("delete of %d keys failed: %s", len(keys), exc)
                for key in keys:
                    attempts = self._delete_attempts.get(key, 0) + 1
                    self._delete_attempts[key] = attempts
                    self._deletes.setdefault(key, self.clock() + self._backoff(attempts))
            else:
                self.deletes += len(keys)
                for key in keys:
                    self.on_deleted(key)
                    self._delete_attempts.pop(key, None)
                    if key not in self._deletes:
                        self.journal.remove_delete(key)
                        self._unmark_deleting(key, done=True)
            finally:
                for key in keys:
                    self._release(key)
                self._kick()
