"""Replays a journal left by a daemon that stopped without finishing its uploads.

Runs before a mount answers and from ``cowfs fsck``; both print what was
recovered. Replay is idempotent: running it twice uploads the same bytes again.
fsck replays into the store the cache directory records, never into another
one, and never under a running daemon (it holds the cache directory's lock).
``cowfs umount`` of a mount whose daemon died says what its journal holds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from . import cachedir, control, mounts
from .errors import CacheInUse, ObjectNotFound, Refused, StagingLost, UsageError
from .journal import (
    DeleteRecord,
    Journal,
    MoveRecord,
    plan_replay,
)
from .store import ObjectStore, open_store
from .upload import put_record

log = logging.getLogger(__name__)


@dataclass
class Report:
    moved: list[str] = field(default_factory=list)
    uploaded: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    #: Keys the store refuses for good, and why: their records stay in the journal.
    refused: dict[str, str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        return (
            [f"finished moving {m}" for m in self.moved]
            + [f"uploaded {k}" for k in self.uploaded]
            + [f"deleted {k}" for k in self.deleted]
            + [f"missing staging data for {k}" for k in self.lost]
            + [f"the store refuses {k} ({why}): kept in the journal" for k, why in self.refused.items()]
        )


def replay(store: ObjectStore, journal: Journal) -> Report:
    """Apply every intent in ``journal`` to ``store``, then clear the journal.

    A delete that a put of the same key superseded is not applied, but it is
    settled with the rest: left in the log, the next replay would apply it
    alone and delete the file the put had restored.
    """
    report = Report()
    records = journal.records()
    moves, deletes, puts = plan_replay(records)
    for move in moves:
        finish_move(store, move)
        report.moved.append(f"{move.src} to {move.dst}")
        journal.remove_move(move.mid)
    if deletes:
        store.delete_many(deletes)
        report.deleted.extend(deletes)
    for record in puts:
        try:
            put_record(store, journal, record)
        except (ObjectNotFound, StagingLost):
            report.lost.append(record.key)
        except Refused as exc:
            report.refused[record.key] = str(exc)
            continue
        else:
            report.uploaded.append(record.key)
        journal.remove_put(record.rid)
    for record in records:
        if isinstance(record, DeleteRecord):
            journal.remove_delete(record.key)
    journal.compact()
    journal.reclaim_staging()
    for line in report.lines():
        log.info("journal replay: %s", line)
    return report


def finish_move(store: ObjectStore, move: MoveRecord) -> None:
    """Copy what a folder rename cut short had not copied, then delete its old keys.

    Only objects that still hold the version the rename listed are moved (one
    another writer changed since is left where it is); a copy already made is
    not made again. Running it twice does the same.
    """
    moved: list[str] = []
    for key, etag in move.objects:
        source = _version(store, key)
        if source != etag:
            continue
        target = move.dst + key[len(move.src):]
        if _version(store, target) != etag:
            store.copy(key, target)
        moved.append(key)
    if moved:
        store.delete_many(moved)


def _version(store: ObjectStore, key: str) -> str | None:
    """The ETag ``key`` holds now; None when it is absent."""
    try:
        return store.head(key).etag
    except ObjectNotFound:
        return None


def pending_changes(journal: Journal) -> int:
    """How many changes ``journal`` holds for the store: what a replay would apply."""
    moves, deletes, puts = plan_replay(journal.records())
    return len(moves) + len(deletes) + len(puts)


def journal_store(cache_dir: Path, url: str | None, endpoint_url: str | None = None, region: str | None = None,
                  path_style: bool = False) -> tuple[ObjectStore, str]:
    """The store the journal of ``cache_dir`` belongs to, and its URL.

    ``url`` must be the store the folder records, if it records one; without
    ``url`` the recorded store is used, reached as it was unless told otherwise.
    """
    owner = cachedir.recorded_owner(cache_dir)
    if owner is None:
        if url is None:
            raise UsageError(f"cache directory {cache_dir} does not record its store (made by an older cowfs): "
                             "name the STORE")
        return open_store(url, endpoint_url=endpoint_url, region=region, path_style=path_style), url
    store = open_store(url or owner.store, endpoint_url=endpoint_url or owner.endpoint_url,
                       region=region or owner.region, path_style=path_style or owner.path_style)
    if store.url != owner.store:
        raise UsageError(f"cache directory {cache_dir} belongs to {owner.store}, not to {store.url}")
    return store, url or owner.store


def fsck(cache_dir: Path, store: ObjectStore) -> Report:
    """Replay the journal of ``cache_dir`` into ``store``, holding the folder against a daemon."""
    journal_dir = cache_dir / "journal"
    if not journal_dir.is_dir():
        raise UsageError(f"{cache_dir} holds no cowfs journal")
    with cachedir.hold(cache_dir, None):
        journal = Journal(journal_dir)
        try:
            return replay(store, journal)
        finally:
            journal.close()


def release_dead_mount(path: Path) -> str:
    """Unmount the cowfs mount at ``path`` whose daemon died; say what its journal holds for the next mount."""
    mounts.unmount(path, lazy_if_busy=True)
    record = control.read_record(path)
    control.forget(path)
    said = f"unmounted {path}, whose daemon had died"
    if record is None:
        return f"{said}; its journal waits in its cache directory for the next mount (or cowfs fsck --cache-dir DIR)"
    cache_dir = Path(record["cacheDir"])
    try:
        with cachedir.hold(cache_dir, None):
            count = _pending_in(cache_dir / "journal")
    except CacheInUse as exc:
        return f"{said}; {exc}"
    if count == 0:
        return f"{said}; its journal in {cache_dir} holds nothing the store lacks"
    return (f"{said}; the journal in {cache_dir} holds {count} change(s) not yet in the store: the next mount "
            f"with that cache directory uploads them (or cowfs fsck --cache-dir {cache_dir})")


def _pending_in(journal_dir: Path) -> int:
    if not journal_dir.is_dir():
        return 0
    journal = Journal(journal_dir)
    try:
        return pending_changes(journal)
    finally:
        journal.close()
