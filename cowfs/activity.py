"""What a mount changed in the store, written back in batches: ``lastActiveAt`` of each
workspace and the index record of each session, at most once per interval each.

A write that fails is logged, counted for ``cowfs status`` and tried again at
the next flush: activity is never dropped.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import Callable, TypeVar

import trio

from . import layout
from .gateway import StoreCalls
from .names import SCOPED_NAME
from .sessionindex import refresh_session, session_of
from .store import ObjectStore
from .workspaces import touch_workspace

log = logging.getLogger(__name__)

INTERVAL = 5.0
#: A session's first change is kept this long for its record's ``createdAt`` if nothing
#: of it reaches the store (created and removed before its upload).
FIRST_WRITE_MEMORY = timedelta(hours=1)
#: Record writes of one flush in flight at once (each a few requests on a worker thread).
PARALLEL = 8

Session = tuple[str, str, str]
T = TypeVar("T")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Activity:
    """Collects which workspaces and sessions were written and updates their records in batches."""

    def __init__(
        self,
        store: ObjectStore,
        calls: StoreCalls,
        interval: float = INTERVAL,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.calls = calls
        self.interval = interval
        self.clock = clock
        self._active: dict[tuple[str, str], datetime] = {}
        self._sessions: set[Session] = set()
        self._flushing: set[Session] = set()
        self._first_writes: dict[Session, datetime] = {}
        self._removed: set[tuple[str, str]] = set()
        self._slots = trio.Semaphore(PARALLEL)
        #: Record writes that failed (each is tried again), and the last error.
        self.failures = 0
        self.last_error: str | None = None

    def mark(self, key: str) -> None:
        """An object under a workspace reached the store."""
        workspace = layout.workspace_of(tuple(key.split("/")))
        if workspace in self._removed:
            return
        if workspace is not None and not key.startswith(f"{workspace[0]}/{workspace[1]}/{layout.CONTROL_DIR}/"):
            self._active[workspace] = self.clock()
        self.deleted(key)

    def deleted(self, key: str) -> None:
        """An object left the store (``mark`` calls it too): its session is to be counted again."""
        session = session_of(key)
        if session is not None and session[:2] not in self._removed:
            self._sessions.add(session)

    def wrote(self, parts: tuple[str, ...]) -> None:
        """This mount made or changed ``parts`` (a workspace or something in it): the
        workspace is there again, and its session's first change dates the session."""
        self._removed.discard(parts[:layout.WORKSPACE_DEPTH])
        if len(parts) > layout.WORKSPACE_DEPTH + 1 and parts[layout.WORKSPACE_DEPTH] == layout.SESSIONS_DIR:
            if SCOPED_NAME.match(parts[layout.WORKSPACE_DEPTH + 1]):
                self._first_writes.setdefault((parts[0], parts[1], parts[layout.WORKSPACE_DEPTH + 1]), self.clock())

    def forget(self, tenant: str, workspace: str) -> None:
        """The workspace is being deleted: touching it, or indexing a session of it as its
        deletes arrive, would bring objects back, until this mount writes to it again."""
        self._removed.add((tenant, workspace))
        self._active.pop((tenant, workspace), None)
        self._sessions = {s for s in self._sessions if s[:2] != (tenant, workspace)}
        self._first_writes = {s: w for s, w in self._first_writes.items() if s[:2] != (tenant, workspace)}

    def forgotten(self, workspace: tuple[str, str]) -> bool:
        """Whether this mount is deleting the workspace (and has not written to it since)."""
        return workspace in self._removed

    def unindexed(self, tenant: str, workspace: str) -> dict[str, datetime | None]:
        """Sessions of the workspace this mount changed that the index may not show yet, with
        their first change where known."""
        out: dict[str, datetime | None] = {}
        for t, w, session in self._sessions | self._flushing:
            if (t, w) == (tenant, workspace):
                out[session] = None
        for (t, w, session), when in self._first_writes.items():
            if (t, w) == (tenant, workspace):
                out[session] = when
        return out

    @property
    def pending(self) -> int:
        """Workspace and session records waiting for the next flush."""
        return len(self._active) + len(self._sessions)

    async def flush(self) -> None:
        """Write ``lastActiveAt`` of every workspace and the record of every session written since the last flush."""
        active, self._active = self._active, {}
        sessions, self._sessions = self._sessions, set()
        forgotten = self.clock() - FIRST_WRITE_MEMORY
        self._first_writes = {s: w for s, w in self._first_writes.items() if w > forgotten or s in sessions}
        self._flushing |= sessions
        try:
            async with trio.open_nursery() as nursery:
                for (tenant, workspace), when in active.items():
                    nursery.start_soon(self._touch, tenant, workspace, when)
                for session in sessions:
                    nursery.start_soon(self._refresh, session)
        finally:
            self._flushing -= sessions

    async def _touch(self, tenant: str, workspace: str, when: datetime) -> None:
        ok, _ = await self._write(f"lastActiveAt of {tenant}/{workspace}", touch_workspace, self.store, tenant,
                                  workspace, when)
        if not ok:
            held = self._active.get((tenant, workspace))
            self._active[(tenant, workspace)] = when if held is None else max(held, when)

    async def _refresh(self, session: Session) -> None:
        first = self._first_writes.get(session)
        ok, done = await self._write(f"the index record of session {'/'.join(session)}", refresh_session,
                                     self.store, *session, first)
        if not ok:
            self._sessions.add(session)
        elif done is not None and done[0] is not None and self._first_writes.get(session) == first:
            self._first_writes.pop(session, None)  # the record holds it now

    async def _write(self, what: str, fn: Callable[..., T], *args: object) -> tuple[bool, T | None]:
        """One record write on a worker thread: whether it worked (a failure is logged and
        counted) and what it returned."""
        async with self._slots:
            try:
                return True, await self.calls.call(fn, *args, background=True, bounded=False)
            except Exception as exc:  # whatever went wrong, the caller queues the write again
                self.failures += 1
                self.last_error = f"{what}: {exc}"
                log.warning("could not update %s (tried again in %g s): %s", what, self.interval, exc)
                return False, None

    async def run(self) -> None:
        while True:
            await trio.sleep(self.interval)
            await self.flush()
