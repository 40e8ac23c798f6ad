"""The workspace layer as the namespace sees it: records on mkdir, generated files.

Keeps ``namespace.py`` free of workspace records and session listings; every
store call here runs on a worker thread.
"""

from __future__ import annotations

import json
import pwd
from typing import Any, Callable

import trio

from . import layout
from .activity import Activity
from .sessions import summarize_sessions
from .store import ObjectStore
from .threads import blocking
from .workspaces import create_workspace, get_workspace, read_record


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _json(doc: Any) -> bytes:
    return json.dumps(doc, indent=2).encode() + b"\n"


class WorkspaceHooks:
    """Implements ``namespace.Hooks`` over the store."""

    def __init__(
        self,
        store: ObjectStore,
        limiter: trio.CapacityLimiter,
        activity: Activity,
        status: Callable[[], dict[str, Any]],
        store_timeout: float = 30.0,
    ) -> None:
        self.store = store
        self.store_timeout = store_timeout
        self.limiter = limiter
        self.activity = activity
        self.status = status

    async def _io(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await blocking(fn, *args, limiter=self.limiter, timeout=self.store_timeout, **kwargs)

    async def create_workspace(self, tenant: str, name: str, uid: int) -> None:
        await self._io(create_workspace, self.store, tenant, user_name(uid), "general", workspace_id=name)

    def workspace_deleted(self, tenant: str, name: str) -> None:
        self.activity.forget(tenant, name)

    async def last_active(self, tenant: str, name: str) -> float | None:
        record = await self._io(read_record, self.store, tenant, name)
        return record.lastActiveAt.timestamp() if record is not None else None

    async def render(self, kind: str, parts: tuple[str, ...]) -> bytes:
        if kind == "status.json":
            return _json(self.status())
        tenant, workspace = parts[0], parts[1]
        if kind == "sessions.json":
            sessions = await self._io(summarize_sessions, self.store, tenant, workspace)
            return _json({"sessions": [s.to_json() for s in sessions]})
        record = await self._io(get_workspace, self.store, tenant, workspace)
        listing = await self._io(self.store.list_all, f"{tenant}/{workspace}/", None)
        control = f"{tenant}/{workspace}/{layout.CONTROL_DIR}/"
        files = [o for o in listing.objects if not o.key.endswith("/") and not o.key.startswith(control)]
        return _json({**record.to_json(), "files": len(files), "bytes": sum(o.size for o in files)})
