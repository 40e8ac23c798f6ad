"""Pages of a workspace's sessions from its index, with signed keyset tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Callable

from .errors import InvalidToken, ObjectNotFound, PreconditionFailed, UsageError
from .sessionindex import (
    FORMAT, SessionSummary, all_sessions, in_parallel, index_format, merged, read_page, reindex, session_prefix,
    summarize,
)
from .store import ObjectInfo, ObjectStore
from .values import SESSIONS_PAGE_MAX
from .workspaces import _iso, _parse, get_workspace

def pagination_secret(store: ObjectStore) -> bytes:
    """A random secret kept in the store, so any machine can verify a token without a database."""
    key = ".cowfs/pagination-secret"
    try:
        return store.get(key)[0]
    except ObjectNotFound:
        pass
    try:
        store.put(key, secrets.token_bytes(32), {}, if_none_match=True)
    except PreconditionFailed:
        pass
    return store.get(key)[0]


def _sign(payload: bytes, secret: bytes) -> str:
    return hmac.new(secret, payload, hashlib.sha256).hexdigest()[:32]


@dataclass(frozen=True)
class Anchor:
    """Where the next page starts: after this (lastActiveAt, sessionId), most recent first."""

    lastActiveAt: datetime
    sessionId: str


def make_token(anchor: Anchor, secret: bytes, scope: str) -> str:
    payload = json.dumps({"scope": scope, "sessionId": anchor.sessionId, "lastActiveAt": _iso(anchor.lastActiveAt)},
                         separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(payload).decode().rstrip("=") + "." + _sign(payload, secret)


def read_token(token: str, secret: bytes, scope: str) -> Anchor:
    """The anchor a token names; ``InvalidToken`` if forged, damaged or of another workspace."""
    try:
        body, tag = token.rsplit(".", 1)
        payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        valid = hmac.compare_digest(_sign(payload, secret), tag)
        doc = json.loads(payload) if valid else None
        if isinstance(doc, dict) and doc.get("scope") == scope:
            return Anchor(_parse(doc["lastActiveAt"]), str(doc["sessionId"]))
    except (ValueError, TypeError, KeyError):
        pass
    raise InvalidToken("invalid next-token")


def list_page(store: ObjectStore, tenant: str, workspace: str, limit: int, next_token: str | None
              ) -> tuple[list[SessionSummary], str | None]:
    """One page of sessions, most recently active first, and the token of the next (None: the last).

    A token keeps working while the workspace is in use: the next page starts
    after its anchor, so it repeats no session and skips none that stayed
    inactive (one that became active meanwhile moved to the first page).
    """
    if not 1 <= limit <= SESSIONS_PAGE_MAX:
        raise UsageError(f"--limit must be between 1 and {SESSIONS_PAGE_MAX}")
    scope = f"{tenant}/{workspace}"
    secret = pagination_secret(store)
    anchor = read_token(next_token, secret, scope) if next_token else None
    if index_format(store, tenant, workspace) != FORMAT:  # the marker lives in the workspace: it exists
        get_workspace(store, tenant, workspace)
        reindex(store, tenant, workspace)
    after = (anchor.lastActiveAt, anchor.sessionId) if anchor else None
    page = read_page(store, tenant, workspace, limit, after)
    if not page.more:
        return page.sessions, None
    last = page.sessions[-1]
    return page.sessions, make_token(Anchor(last.lastActiveAt, last.sessionId), secret, scope)


def with_changes(store: ObjectStore, tenant: str, workspace: str, changed: dict[str, datetime | None],
                 overlay: Callable[[str, list[ObjectInfo]], list[ObjectInfo]]) -> list[SessionSummary]:
    """Every session, most recently active first, as a mount that changed ``changed``
    (session ids, with their first change where known) sees them: those counted
    again from a listing of their own, with ``overlay`` adding what is not uploaded yet."""
    found = all_sessions(store, tenant, workspace)

    def counted(session: str) -> SessionSummary | None:
        prefix = session_prefix(tenant, workspace, session)
        return summarize(session, overlay(prefix, store.list_all(prefix, None).objects))

    for (session, first_write), fresh in zip(changed.items(), in_parallel(counted, list(changed))):
        if fresh is None:
            found.pop(session, None)
        else:
            found[session] = merged(fresh, found.get(session), first_write)
    return sorted(found.values(), key=lambda s: (-s.lastActiveAt.timestamp(), s.sessionId))
