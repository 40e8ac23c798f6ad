"""Sessions of a workspace, aggregated from one listing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone

from .errors import InvalidToken, PreconditionFailed, UsageError
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


def pagination_secret(store: ObjectStore) -> bytes:
    """A random secret kept in the store, so any machine can verify a token without a database."""
    key = ".cowfs/pagination-secret"
    try:
        store.put(key, secrets.token_bytes(32), {}, if_none_match=True)
    except PreconditionFailed:
        pass
    return store.get(key)[0]


def _sign(payload: bytes, secret: bytes) -> str:
    return hmac.new(secret, payload, hashlib.sha256).hexdigest()[:32]


def page_sessions(sessions: list[SessionSummary], limit: int, next_token: str | None, secret: bytes,
                  scope: str) -> tuple[list[SessionSummary], str | None]:
    """One page of ``sessions`` (already ordered) after the anchor the token names."""
    if not 1 <= limit <= 100:
        raise UsageError("--limit must be between 1 and 100")
    start = 0
    if next_token:
        anchor = _anchor(next_token, secret, scope)
        positions = {s.sessionId: i for i, s in enumerate(sessions)}
        i = positions.get(anchor["sessionId"])
        if i is None or _iso(sessions[i].lastActiveAt) != anchor["lastActiveAt"]:
            raise InvalidToken("stale next-token: the session list changed; start again without --next-token")
        start = i + 1
    page = sessions[start:start + limit]
    if start + limit >= len(sessions):
        return page, None
    last = page[-1]
    payload = json.dumps({"scope": scope, "sessionId": last.sessionId, "lastActiveAt": _iso(last.lastActiveAt)},
                         separators=(",", ":")).encode()
    token = base64.urlsafe_b64encode(payload).decode().rstrip("=") + "." + _sign(payload, secret)
    return page, token


def _anchor(token: str, secret: bytes, scope: str) -> dict:
    try:
        body, tag = token.rsplit(".", 1)
        payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        valid = hmac.compare_digest(_sign(payload, secret), tag)
        doc = json.loads(payload) if valid else None
    except (ValueError, TypeError):
        doc = None
    if not isinstance(doc, dict) or doc.get("scope") != scope:
        raise InvalidToken("invalid next-token")
    return doc
