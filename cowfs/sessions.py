"""Sessions of a workspace, aggregated from one listing."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from .names import SCOPED_NAME
from .store import ObjectStore
from .workspaces import _iso, get_workspace


@dataclass
class SessionSummary:
    sessionId: str
    createdAt: datetime
    lastActiveAt: datetime
    files: int
    bytes: int

    def to_json(self) -> dict:
        return {"sessionId": self.sessionId, "createdAt": _iso(self.createdAt),
                "lastActiveAt": _iso(self.lastActiveAt), "files": self.files, "bytes": self.bytes}


def summarize_sessions(store: ObjectStore, tenant: str, workspace: str) -> list[SessionSummary]:
    get_workspace(store, tenant, workspace)
    prefix = f"{tenant}/{workspace}/sessions/"
    found: dict[str, SessionSummary] = {}
    for page in store.list_pages(prefix, None):
        for obj in page.objects:
            sid = obj.key[len(prefix):].split("/", 1)[0]
            if not SCOPED_NAME.match(sid):
                continue
            when = datetime.fromtimestamp(obj.last_modified, timezone.utc)
            s = found.setdefault(sid, SessionSummary(sid, when, when, 0, 0))
            s.createdAt, s.lastActiveAt = min(s.createdAt, when), max(s.lastActiveAt, when)
            if not obj.key.endswith("/"):
                s.files += 1
                s.bytes += obj.size
    return sorted(found.values(), key=lambda s: (-s.lastActiveAt.timestamp(), s.sessionId))
