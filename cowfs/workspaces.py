"""Workspace records on the store: create (idempotent for local scope), read, touch."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable, TypeVar

from .errors import InvalidName, NotFound, ObjectNotFound, PreconditionFailed, UsageError
from .keys import workspace_prefix
from .names import SCOPED_NAME
from .store import ObjectInfo, ObjectStore

SCOPES = ("local", "general", "cloud")
#: Keys per DeleteObjects request (S3's most): the step in which deletes report progress.
DELETE_BATCH = 1000
T = TypeVar("T")
R = TypeVar("R")


def _iso(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


@dataclass
class WorkspaceRecord:
    workspaceId: str
    workspaceScope: str
    tenantId: str
    userId: str
    localPath: str | None
    createdAt: datetime
    lastActiveAt: datetime

    def to_json(self) -> dict:
        return {
            "workspaceId": self.workspaceId,
            "workspaceScope": self.workspaceScope,
            "tenantId": self.tenantId,
            "userId": self.userId,
            "localPath": self.localPath,
            "createdAt": _iso(self.createdAt),
            "lastActiveAt": _iso(self.lastActiveAt),
        }

    @classmethod
    def from_json(cls, doc: dict) -> "WorkspaceRecord":
        return cls(doc["workspaceId"], doc["workspaceScope"], doc["tenantId"], doc.get("userId", ""),
                   doc.get("localPath"), _parse(doc["createdAt"]), _parse(doc["lastActiveAt"]))


def record_key(tenant: str, workspace: str) -> str:
    return f"{tenant}/{workspace}/.cowfs/workspace.json"


def has_record(store: ObjectStore, tenant: str, workspace: str) -> bool:
    """Whether the workspace has its record (one HEAD): what cowfs writes into a removed
    workspace, or a folder other tools made, would make it one."""
    try:
        store.head(record_key(tenant, workspace))
    except ObjectNotFound:
        return False
    return True


def check_scoped_name(kind: str, name: str) -> str:
    if not SCOPED_NAME.match(name):
        raise InvalidName(f"invalid {kind} name {name!r}")
    return name


def _put_record(store: ObjectStore, record: WorkspaceRecord, **conditions) -> str:
    body = json.dumps(record.to_json(), indent=2).encode()
    return store.put(record_key(record.tenantId, record.workspaceId), body, {}, **conditions)


def _read(store: ObjectStore, tenant: str, workspace: str) -> tuple[WorkspaceRecord, str]:
    data, info = store.get(record_key(tenant, workspace))
    return WorkspaceRecord.from_json(json.loads(data)), info.etag


def create_workspace(store: ObjectStore, tenant: str, user: str, scope: str, local_path: str | None = None,
                     workspace_id: str | None = None, now: datetime | None = None) -> WorkspaceRecord:
    check_scoped_name("tenant", tenant)
    if scope not in SCOPES:
        raise UsageError(f"unknown scope {scope!r} (local, general or cloud)")
    if scope == "local":
        if not local_path:
            raise UsageError("a local workspace needs --local-path")
        local_path = os.path.normpath(local_path)
        digest = hashlib.sha256(f"{tenant}\0{user}\0{local_path}".encode()).hexdigest()[:24]
        workspace_id = workspace_id or f"ws-{digest}"
    workspace_id = check_scoped_name("workspace", workspace_id or f"ws-{uuid.uuid4().hex[:24]}")
    now = now or datetime.now(timezone.utc)
    record = WorkspaceRecord(workspace_id, scope, tenant, user, local_path, now, now)
    try:
        _put_record(store, record, if_none_match=True)
    except PreconditionFailed:
        return _read(store, tenant, workspace_id)[0]
    return record


def get_workspace(store: ObjectStore, tenant: str, workspace: str) -> WorkspaceRecord:
    try:
        return _read(store, tenant, workspace)[0]
    except ObjectNotFound:
        pass
    listing = store.list_all(workspace_prefix(tenant, workspace), None)
    if not listing.objects:
        raise NotFound(f"no workspace {tenant}/{workspace}")
    newest = datetime.fromtimestamp(max(o.last_modified for o in listing.objects), timezone.utc)
    return WorkspaceRecord(workspace, "general", tenant, "", None, newest, newest)


def touch_workspace(store: ObjectStore, tenant: str, workspace: str, when: datetime) -> None:
    """Advance ``lastActiveAt`` to ``when`` by a conditional write (``PreconditionFailed``
    when other writers keep winning: the caller tries again later)."""
    for _ in range(5):
        try:
            record, etag = _read(store, tenant, workspace)
        except ObjectNotFound:
            record = get_workspace(store, tenant, workspace)
            record.lastActiveAt = max(record.lastActiveAt, when)
            try:
                _put_record(store, record, if_none_match=True)
                return
            except PreconditionFailed:
                continue
        if record.lastActiveAt >= when:
            return
        record.lastActiveAt = when
        try:
            _put_record(store, record, if_match=etag)
            return
        except PreconditionFailed:
            continue
    raise PreconditionFailed(f"the record of {tenant}/{workspace} kept changing under 5 attempts")


def _prefixes(store: ObjectStore, tenant: str | None = None) -> list[tuple[str, str]]:
    """(tenant, workspace) of every two-level prefix whose names could be a workspace's."""
    tenants = [check_scoped_name("tenant", tenant)] if tenant else [
        p.rstrip("/") for p in store.list_all("", "/").prefixes if SCOPED_NAME.match(p.rstrip("/"))]
    pairs = [(t, p[len(t) + 1:].rstrip("/")) for t in tenants for p in store.list_all(f"{t}/", "/").prefixes]
    return [(t, w) for t, w in pairs if SCOPED_NAME.match(w)]


def parallel(fn: Callable[[T], R], items: list[T]) -> list[R]:
    """``fn`` over ``items`` on 16 threads (one store request each), results in order."""
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        return list(pool.map(fn, items))


def list_workspaces(store: ObjectStore, tenant: str | None = None) -> list[WorkspaceRecord]:
    """Every workspace (of one tenant), records read in parallel."""
    records = parallel(lambda tw: _get_or_none(store, *tw), _prefixes(store, tenant))
    return sorted((r for r in records if r is not None), key=lambda r: (r.tenantId, r.workspaceId))


def _get_or_none(store: ObjectStore, tenant: str, workspace: str) -> WorkspaceRecord | None:
    try:
        return get_workspace(store, tenant, workspace)
    except NotFound:
        return None


def workspace_objects(store: ObjectStore, tenant: str, workspace: str) -> list[ObjectInfo]:
    """Every object under the workspace, its record included; NotFound when there is none."""
    check_scoped_name("tenant", tenant)
    check_scoped_name("workspace", workspace)
    objects = store.list_all(workspace_prefix(tenant, workspace), None).objects
    if not objects:
        raise NotFound(f"no workspace {tenant}/{workspace}")
    return objects


def delete_objects(store: ObjectStore, objects: list[ObjectInfo],
                   progress: Callable[[int, int], None] | None = None) -> None:
    """Delete ``objects`` a batch at a time, telling ``progress`` (objects, bytes) after each batch."""
    for start in range(0, len(objects), DELETE_BATCH):
        batch = objects[start:start + DELETE_BATCH]
        store.delete_many([o.key for o in batch])
        if progress is not None:
            progress(len(batch), sum(o.size for o in batch))


def read_record(store: ObjectStore, tenant: str, workspace: str) -> WorkspaceRecord | None:
    """The record at ``tenant/workspace`` if it is one: it parses and names that tenant and workspace."""
    try:
        record = _read(store, tenant, workspace)[0]
    except ObjectNotFound:
        return None
    except (ValueError, KeyError, TypeError, AttributeError):  # not JSON, or not a record
        return None
    return record if (record.tenantId, record.workspaceId) == (tenant, workspace) else None


def inactive_workspaces(
    store: ObjectStore, inactive_days: float, now: datetime
) -> list[tuple[WorkspaceRecord, list[ObjectInfo]]]:
    """Workspaces idle for longer than ``inactive_days``, each with the objects it holds.

    Only a prefix with a valid record is a workspace: any other (data of a
    store whose prefix lies inside this one, a tool's own objects) is never
    a candidate. Idle means the record's ``lastActiveAt`` and the newest
    object outside ``.cowfs`` are both older than the cutoff, so a
    workspace whose record could not be updated is not idle while written to.
    """
    cutoff = now - timedelta(days=inactive_days)
    records = parallel(lambda tw: read_record(store, *tw), _prefixes(store))
    stale = [r for r in records if r is not None and r.lastActiveAt < cutoff]
    listings = parallel(lambda r: store.list_all(f"{r.tenantId}/{r.workspaceId}/", None).objects, stale)
    idle = []
    for record, objects in zip(stale, listings):
        control = f"{record.tenantId}/{record.workspaceId}/.cowfs/"
        written = [o.last_modified for o in objects if not o.key.startswith(control)]
        if objects and max(written, default=0.0) < cutoff.timestamp():
            idle.append((record, objects))
    return idle


def purge(store: ObjectStore, inactive_days: float, now: datetime | None = None, dry_run: bool = False,
          progress: Callable[[WorkspaceRecord], None] | None = None) -> list[WorkspaceRecord]:
    """Delete workspaces idle for longer than ``inactive_days`` (or only name them)."""
    idle = inactive_workspaces(store, inactive_days, now or datetime.now(timezone.utc))
    for record, objects in idle:
        if not dry_run:
            delete_objects(store, objects)
        if progress is not None:
            progress(record)
    return [record for record, _ in idle]
