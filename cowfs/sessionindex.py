"""The session index of a workspace, kept in the store beside it.

A page of sessions must cost one page of requests, whatever the workspace
holds, so every writer (a mount as it uploads, import, fsck, reindex) keeps
under ``TENANT/WORKSPACE/.cowfs/sessions/``:

    index.json                  the format marker: the index is complete for this format
    records/SID.json            one record per session: counts, times and a version,
                                changed by conditional writes only (no lost update between mounts)
    active/R!SID!V!C!F!B        one empty entry per session, named after its record: R is the
                                reversed lastActiveAt, so a LIST returns the most recent first;
                                V the record's version, C createdAt, F files, B bytes

A record is written first, then its entry, then the entries it superseded
are deleted; a reader takes an entry only if the record still has its
version (pages) or keeps the highest version of a session (whole lists).
A page lists the entries after its anchor with one LIST that starts there
(``start_after``), however many entries come before.
"""

from __future__ import annotations

import concurrent.futures
import json
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Callable, Iterable, Iterator, TypeVar

from . import layout
from .errors import ObjectNotFound, PreconditionFailed
from .names import SCOPED_NAME
from .store import ObjectInfo, ObjectStore
from .workspaces import _iso, _parse

FORMAT = 1
#: Reversed timestamps: seconds before this moment (in the year 2286), ten digits.
_EPOCH_END = 9_999_999_999
_SEP = "!"  # sorts before every character of a session id, so "s1" lists before "s10"
#: Attempts at a conditional write of one record before giving up until the next flush.
ATTEMPTS = 5
#: Records and entries read or written at once.
PARALLEL = 16
#: A record written this close to a reindex's listing (or after it) may know more than
#: the listing: its session is counted again on its own. Covers the client's clock
#: against the store's.
CLOCK_MARGIN = 60.0

T = TypeVar("T")
R = TypeVar("R")


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


def _second(when: datetime) -> datetime:
    return when.replace(microsecond=0)


def _at(epoch: float) -> datetime:
    return _second(datetime.fromtimestamp(epoch, timezone.utc))


def session_prefix(tenant: str, workspace: str, session: str = "") -> str:
    return f"{tenant}/{workspace}/sessions/{session + '/' if session else ''}"


def _index(tenant: str, workspace: str) -> str:
    return f"{tenant}/{workspace}/.cowfs/sessions/"


def _marker_key(tenant: str, workspace: str) -> str:
    return _index(tenant, workspace) + "index.json"


def _record_key(tenant: str, workspace: str, session: str) -> str:
    return f"{_index(tenant, workspace)}records/{session}.json"


def _entries(tenant: str, workspace: str) -> str:
    return _index(tenant, workspace) + "active/"


def _rank(last_active: datetime) -> str:
    """The entry name's first field: later activity, smaller string."""
    return f"{_EPOCH_END - int(last_active.timestamp()):010d}"


def _position(last_active: datetime, session: str) -> str:
    """Where a session's entries start: every entry of a later (rank, id) sorts after it."""
    return f"{_rank(last_active)}{_SEP}{session}{_SEP}"


@dataclass(frozen=True)
class Entry:
    name: str
    version: int
    summary: SessionSummary


def entry_name(summary: SessionSummary, version: int) -> str:
    return _SEP.join((_rank(summary.lastActiveAt), summary.sessionId, str(version),
                      str(int(summary.createdAt.timestamp())), str(summary.files), str(summary.bytes)))


def parse_entry(name: str) -> Entry | None:
    fields = name.split(_SEP)
    if len(fields) != 6 or not SCOPED_NAME.match(fields[1]):
        return None
    try:
        rank, version, created, files, size = (int(f) for f in fields[:1] + fields[2:])
    except ValueError:
        return None
    summary = SessionSummary(fields[1], _at(created), _at(_EPOCH_END - rank), files, size)
    return Entry(name, version, summary)


@dataclass
class Record:
    """The truth about one session; ``previous`` names the entry the one before it had."""

    summary: SessionSummary
    version: int
    previous: str | None = None
    removed: bool = False

    @property
    def entry(self) -> str:
        return entry_name(self.summary, self.version)

    def to_json(self) -> dict:
        return {"format": FORMAT, **self.summary.to_json(), "version": self.version, "previous": self.previous,
                "removed": self.removed}

    @classmethod
    def from_json(cls, doc: dict) -> "Record":
        summary = SessionSummary(doc["sessionId"], _parse(doc["createdAt"]), _parse(doc["lastActiveAt"]),
                                 int(doc["files"]), int(doc["bytes"]))
        return cls(summary, int(doc["version"]), doc.get("previous"), bool(doc.get("removed")))


def summarize(session: str, objects: Iterable[ObjectInfo]) -> SessionSummary | None:
    """A session as a listing of ``sessions/ID/`` shows it (None: nothing there).

    Folder markers date the session but are not files.
    """
    summary: SessionSummary | None = None
    for obj in objects:
        when = _at(obj.last_modified)
        if summary is None:
            summary = SessionSummary(session, when, when, 0, 0)
        summary.createdAt, summary.lastActiveAt = min(summary.createdAt, when), max(summary.lastActiveAt, when)
        if not obj.key.endswith("/"):
            summary.files += 1
            summary.bytes += obj.size
    return summary


def session_of(key: str) -> tuple[str, str, str] | None:
    """(tenant, workspace, session) of an object key under ``T/WS/sessions/ID/``."""
    parts = key.split("/")
    if len(parts) < 5 or parts[2] != layout.SESSIONS_DIR or not SCOPED_NAME.match(parts[3]):
        return None
    return parts[0], parts[1], parts[3]


def group_by_session(prefix: str, objects: Iterable[ObjectInfo]) -> dict[str, list[ObjectInfo]]:
    """Objects under ``T/WS/sessions/`` by session id (keys that are no session left out)."""
    out: dict[str, list[ObjectInfo]] = {}
    for obj in objects:
        session, slash, _ = obj.key[len(prefix):].partition("/")
        if slash and SCOPED_NAME.match(session):
            out.setdefault(session, []).append(obj)
    return out


def merged(fresh: SessionSummary, known: SessionSummary | None, first_write: datetime | None = None
           ) -> SessionSummary:
    """``fresh`` counts with the earliest creation and latest activity anyone saw:
    a session's times never go back, so a page anchor never moves past it."""
    created, last = fresh.createdAt, fresh.lastActiveAt
    if known is not None:
        created, last = min(created, known.createdAt), max(last, known.lastActiveAt)
    if first_write is not None:
        created = min(created, _second(first_write))
    return SessionSummary(fresh.sessionId, created, last, fresh.files, fresh.bytes)


def read_record(store: ObjectStore, tenant: str, workspace: str, session: str) -> tuple[Record | None, str | None]:
    """The session's record (None: none, or one that cannot be read, which the next write replaces) and its ETag."""
    try:
        data, info = store.get(_record_key(tenant, workspace, session))
    except ObjectNotFound:
        return None, None
    try:
        return Record.from_json(json.loads(data)), info.etag
    except (ValueError, KeyError, TypeError):
        return None, info.etag


def _conditions(etag: str | None) -> dict:
    """Write only over what was read: that version, or nothing."""
    return {"if_match": etag} if etag is not None else {"if_none_match": True}


def _commit(store: ObjectStore, tenant: str, workspace: str, session: str, old: Record | None, etag: str | None,
            fresh: SessionSummary | None, first_write: datetime | None = None) -> Record | None:
    """Write what ``fresh`` says over ``old`` (read with ``etag``): record, entry, old entries.
    The record written, None when ``old`` already said it.

    ``PreconditionFailed`` when someone else wrote the record since it was read.
    A session with nothing left keeps a removed record: its times, and a
    version no late writer can reuse.
    """
    if fresh is None:
        if old is None or old.removed:
            return None
        new = Record(replace(old.summary, files=0, bytes=0), old.version + 1, old.entry, removed=True)
    else:
        summary = merged(fresh, old.summary if old else None, first_write)
        if old is not None and not old.removed and old.summary == summary:
            return None
        new = Record(summary, old.version + 1 if old else 1, old.entry if old else None)
    store.put(_record_key(tenant, workspace, session), json.dumps(new.to_json()).encode(), {}, **_conditions(etag))
    entries = _entries(tenant, workspace)
    if not new.removed:
        store.put(entries + new.entry, b"", {})
    if old is not None:
        store.delete_many([entries + name for name in {old.entry, old.previous} - {None, new.entry}])
    return new


def refresh_session(store: ObjectStore, tenant: str, workspace: str, session: str,
                    first_write: datetime | None = None) -> tuple[Record | None, bool]:
    """Count the session again from a listing of its objects and write its record and entry:
    the record now (None: the session has none) and whether it was written.

    The record is read before the listing and written only if unchanged since:
    whoever writes last listed after every upload that came before, so
    several mounts writing one session end with exact counts.
    """
    prefix = session_prefix(tenant, workspace, session)
    for _ in range(ATTEMPTS):
        old, etag = read_record(store, tenant, workspace, session)
        fresh = summarize(session, store.list_all(prefix, None).objects)
        try:
            new = _commit(store, tenant, workspace, session, old, etag, fresh, first_write)
        except PreconditionFailed:
            continue
        return new or old, new is not None
    raise PreconditionFailed(f"the index record of session {session} kept changing under {ATTEMPTS} attempts")


def refresh_keys(store: ObjectStore, keys: Iterable[str]) -> None:
    """Refresh the session of every key written (import)."""
    sessions = sorted({s for s in map(session_of, keys) if s is not None})
    in_parallel(lambda s: refresh_session(store, *s), sessions)


@dataclass
class Reindexed:
    sessions: int = 0
    written: int = 0
    dropped_entries: int = 0


def reindex(store: ObjectStore, tenant: str, workspace: str) -> Reindexed:
    """Rebuild the index from a full listing of the workspace's sessions.

    Picks up objects other tools wrote. A record written after the listing
    began (or within ``CLOCK_MARGIN`` of it) may know more than the listing:
    that session is counted again on its own. Entries no record names any
    more are deleted, then the marker says the index is complete.
    """
    since = time.time() - CLOCK_MARGIN
    prefix = session_prefix(tenant, workspace)
    listed = group_by_session(prefix, store.list_all(prefix, None).objects)
    entries_prefix = _entries(tenant, workspace)
    entries = [e for e in (parse_entry(o.key[len(entries_prefix):])
                           for o in store.list_all(entries_prefix, None).objects) if e is not None]
    records_prefix = f"{_index(tenant, workspace)}records/"
    records = {o.key[len(records_prefix):-len(".json")]: o for o in store.list_all(records_prefix, None).objects
               if o.key.endswith(".json")}
    summaries = {session: summarize(session, objects) for session, objects in listed.items()}

    def rebuild(session: str) -> tuple[Record | None, bool]:
        """The session's record afterwards, and whether it was written."""
        info = records.get(session)
        if info is None or info.last_modified < since:
            old, etag = read_record(store, tenant, workspace, session) if info is not None else (None, None)
            try:
                new = _commit(store, tenant, workspace, session, old, etag, summaries.get(session))
            except PreconditionFailed:
                pass
            else:
                return new or old, new is not None
        return refresh_session(store, tenant, workspace, session)

    sessions = sorted(set(listed) | set(records))
    done = dict(zip(sessions, in_parallel(rebuild, sessions)))
    stale = [entries_prefix + e.name for e in entries
             if e.summary.sessionId not in done or getattr(done[e.summary.sessionId][0], "version", 0) > e.version]
    store.delete_many(stale)
    store.put(_marker_key(tenant, workspace), json.dumps({"format": FORMAT}).encode(), {})
    return Reindexed(len(listed), sum(wrote for _, wrote in done.values()), len(stale))


def index_format(store: ObjectStore, tenant: str, workspace: str) -> int | None:
    """The format of the workspace's complete index, None without one."""
    try:
        data, _ = store.get(_marker_key(tenant, workspace))
        return int(json.loads(data)["format"])
    except ObjectNotFound:
        return None
    except (ValueError, KeyError, TypeError):
        return 0


def all_sessions(store: ObjectStore, tenant: str, workspace: str) -> dict[str, SessionSummary]:
    """Every session the entries name (the highest version of each), by id: no record read."""
    prefix = _entries(tenant, workspace)
    best: dict[str, Entry] = {}
    for obj in store.list_all(prefix, None).objects:
        entry = parse_entry(obj.key[len(prefix):])
        if entry is not None:
            held = best.get(entry.summary.sessionId)
            if held is None or held.version < entry.version:
                best[entry.summary.sessionId] = entry
    return {sid: e.summary for sid, e in best.items()}


@dataclass
class Page:
    sessions: list[SessionSummary]
    more: bool


def _entries_after(store: ObjectStore, prefix: str, start_after: str | None) -> Iterator[Entry]:
    """The entries under ``prefix`` after the key ``start_after``, in order: one LIST
    holds a page's and more, however many come before."""
    for listed in store.list_pages(prefix, None, start_after):
        for obj in listed.objects:
            entry = parse_entry(obj.key[len(prefix):])
            if entry is not None:
                yield entry


def read_page(store: ObjectStore, tenant: str, workspace: str, limit: int,
              after: tuple[datetime, str] | None = None) -> Page:
    """``limit`` sessions after ``after`` (lastActiveAt, sessionId), most recently active first.

    Each entry is checked against its record (read in parallel): an entry a
    newer version superseded is left out, so a session never shows twice.
    """
    prefix = _entries(tenant, workspace)
    start_after = prefix + _position(*after) + "~" if after is not None else None  # past the anchor's own entries
    candidates = _entries_after(store, prefix, start_after)
    found: list[SessionSummary] = []
    while len(found) <= limit:
        batch = [e for _, e in zip(range(limit + 1 - len(found)), candidates)]
        if not batch:
            break
        records = in_parallel(lambda e: read_record(store, tenant, workspace, e.summary.sessionId)[0], batch)
        found += [r.summary for e, r in zip(batch, records)
                  if r is not None and not r.removed and r.version == e.version]
    return Page(found[:limit], len(found) > limit)


def in_parallel(fn: Callable[[T], R], items: list[T]) -> list[R]:
    """``fn`` over ``items`` on up to ``PARALLEL`` threads (a few store requests each), results in order."""
    if len(items) <= 1:
        return [fn(item) for item in items]
    with concurrent.futures.ThreadPoolExecutor(min(PARALLEL, len(items))) as pool:
        return list(pool.map(fn, items))
