"""Workspace activity: ``lastActiveAt`` follows writes, at most one record write per workspace per interval."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Callable

import trio

from . import layout
from .errors import CowfsError
from .store import ObjectStore
from .threads import blocking
from .workspaces import touch_workspace

log = logging.getLogger(__name__)

INTERVAL = 5.0


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Activity:
    """Collects which workspaces were written and updates their records in batches."""

    def __init__(
        self,
        store: ObjectStore,
        limiter: trio.CapacityLimiter,
        interval: float = INTERVAL,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.limiter = limiter
        self.interval = interval
        self.clock = clock
        self._active: dict[tuple[str, str], datetime] = {}

    def mark(self, key: str) -> None:
        """An object under a workspace reached the store."""
        workspace = layout.workspace_of(tuple(key.split("/")))
        if workspace is not None and not key.startswith(f"{workspace[0]}/{workspace[1]}/{layout.CONTROL_DIR}/"):
            self._active[workspace] = self.clock()

    def forget(self, tenant: str, workspace: str) -> None:
        """The workspace was deleted: touching it now would bring its record back."""
        self._active.pop((tenant, workspace), None)

    async def flush(self) -> None:
        """Write ``lastActiveAt`` of every workspace written since the last flush."""
        active, self._active = self._active, {}
        for (tenant, workspace), when in active.items():
            try:
                await blocking(touch_workspace, self.store, tenant, workspace, when, limiter=self.limiter)
            except CowfsError as exc:
                log.warning("could not update lastActiveAt of %s/%s: %s", tenant, workspace, exc)
                self._active.setdefault((tenant, workspace), when)

    async def run(self) -> None:
        while True:
            await trio.sleep(self.interval)
            await self.flush()
