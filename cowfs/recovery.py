"""Replays a journal left by a daemon that stopped without finishing its uploads.

Runs before a mount answers and from ``cowfs fsck``; both print what was
recovered. Replay is idempotent: running it twice uploads the same bytes again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .errors import ObjectNotFound, Refused, StagingLost
from .journal import (
    BODY_METADATA_ONLY,
    BODY_STAGING,
    DeleteRecord,
    Journal,
    MoveRecord,
    PutRecord,
    committed_body,
    plan_replay,
)
from .store import ObjectStore

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
            _put(store, journal, record)
        except (FileNotFoundError, StagingLost):
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


def _put(store: ObjectStore, journal: Journal, record: PutRecord) -> None:
    """Make the store hold what ``record`` says; ``Refused`` when it will not take the key."""
    try:
        if record.body == BODY_STAGING:
            with committed_body(journal.staging_path(record.staging or ""), record.size, journal.root) as body:
                store.put(record.key, body, record.metadata)
        elif record.body == BODY_METADATA_ONLY:
            try:
                store.copy(record.key, record.key, record.metadata)
            except ObjectNotFound:
                raise FileNotFoundError(record.key) from None
        else:
            store.put(record.key, record.inline, record.metadata)
    except ObjectNotFound as exc:
        raise Refused(str(exc)) from None


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
