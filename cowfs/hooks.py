"""The workspace layer as the namespace sees it: records on mkdir, generated files.

Keeps the namespace free of workspace records and session listings; every
store call here runs on a worker thread.
"""

from __future__ import annotations

import json
import pwd
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Protocol

from . import layout
from .activity import Activity
from .gateway import StoreCalls
from .keys import workspace_prefix
from .sessionindex import FORMAT, index_format, reindex, session_of
from .sessions import with_changes
from .store import ObjectInfo, ObjectStore
from .workspaces import create_workspace, get_workspace, read_record


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _json(doc: Any) -> bytes:
    return json.dumps(doc, indent=2).encode() + b"\n"


def _never(key: str) -> bool:
    return False


@dataclass
class LocalChanges:
    """What a mount holds under a workspace that the store has not got yet: generated
    files show it at once (read-your-writes), not after the upload."""

    #: Entries not uploaded yet (folders end in ``/``), with their size and mtime now.
    files: dict[str, ObjectInfo] = field(default_factory=dict)
    #: Whether a key's delete is still to reach the store.
    deleting: Callable[[str], bool] = _never

    def over(self, prefix: str, objects: list[ObjectInfo]) -> list[ObjectInfo]:
        """A listing of ``prefix`` as it will be once these changes are in the store."""
        out = {o.key: o for o in objects if not self.deleting(o.key)}
        out.update((key, info) for key, info in self.files.items() if key.startswith(prefix))
        return [out[key] for key in sorted(out)]


class Hooks(Protocol):
    """What the namespace asks of the workspace layer."""

    async def create_workspace(self, tenant: str, name: str, uid: int) -> None:
        """``mkdir TENANT/NAME``: write the workspace record."""

    def workspace_deleted(self, tenant: str, name: str) -> None:
        """The workspace is gone: stop tracking its activity."""

    def changed(self, parts: tuple[str, ...]) -> None:
        """An entry at ``parts`` was created, or a change to it closed (before any upload)."""

    async def last_active(self, tenant: str, name: str) -> float | None:
        """The record's ``lastActiveAt`` (epoch seconds): a workspace folder's mtime; None without a record."""

    async def render(self, kind: str, parts: tuple[str, ...], local: LocalChanges) -> bytes:
        """Content of a generated file (``workspace.json`` …) for the folder at ``parts``,
        with ``local``, this mount's changes under it that the store has not got yet."""


class WorkspaceHooks:
    """Implements ``Hooks`` over the store."""

    def __init__(
        self,
        store: ObjectStore,
        calls: StoreCalls,
        activity: Activity,
        status: Callable[[], dict[str, Any]],
    ) -> None:
        self.store = store
        self.calls = calls
        self.activity = activity
        self.status = status

    async def _io(self, fn: Callable[..., Any], *args: Any, bounded: bool = True) -> Any:
        """A store call a program waits on (mkdir of a workspace, a generated file)."""
        return await self.calls.call(fn, *args, background=False, bounded=bounded)

    async def create_workspace(self, tenant: str, name: str, uid: int) -> None:
        await self._io(partial(create_workspace, workspace_id=name), self.store, tenant, user_name(uid), "general")
        self.activity.wrote((tenant, name))

    def workspace_deleted(self, tenant: str, name: str) -> None:
        self.activity.forget(tenant, name)

    def changed(self, parts: tuple[str, ...]) -> None:
        self.activity.wrote(parts)

    async def last_active(self, tenant: str, name: str) -> float | None:
        record = await self._io(read_record, self.store, tenant, name)
        return record.lastActiveAt.timestamp() if record is not None else None

    async def render(self, kind: str, parts: tuple[str, ...], local: LocalChanges) -> bytes:
        if kind == "status.json":
            return _json(self.status())
        tenant, workspace = parts[0], parts[1]
        if kind == "sessions.json":
            if await self._io(index_format, self.store, tenant, workspace) != FORMAT:
                # once per workspace written before the index, or only by other tools: as long as it takes
                await self._io(reindex, self.store, tenant, workspace, bounded=False)
            changed = self.activity.unindexed(tenant, workspace)
            for key in local.files:
                session = session_of(key)
                if session is not None and session[:2] == (tenant, workspace):
                    changed.setdefault(session[2], None)
            sessions = await self._io(with_changes, self.store, tenant, workspace, changed, local.over)
            return _json({"sessions": [s.to_json() for s in sessions]})
        record = await self._io(get_workspace, self.store, tenant, workspace)
        prefix = workspace_prefix(tenant, workspace)
        listing = await self._io(self.store.list_all, prefix, None)
        control = f"{prefix}{layout.CONTROL_DIR}/"
        files = [o for o in local.over(prefix, listing.objects)
                 if not o.key.endswith("/") and not o.key.startswith(control)]
        return _json({**record.to_json(), "files": len(files), "bytes": sum(o.size for o in files)})
