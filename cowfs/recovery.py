"""Replays a journal left by a daemon that stopped without finishing its uploads.

Runs before a mount answers and from ``cowfs fsck``; both print what was
recovered. Replay is idempotent: running it twice uploads the same bytes again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .errors import ObjectNotFound, StagingLost
from .journal import (
    BODY_EMPTY,
    BODY_INLINE,
    BODY_METADATA_ONLY,
    BODY_STAGING,
    DeleteRecord,
    Journal,
    committed_body,
    plan_replay,
)
from .store import ObjectStore

log = logging.getLogger(__name__)


@dataclass
class Report:
    uploaded: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return (
            [f"uploaded {k}" for k in self.uploaded]
            + [f"deleted {k}" for k in self.deleted]
            + [f"missing staging data for {k}" for k in self.lost]
        )


def replay(store: ObjectStore, journal: Journal) -> Report:
    """Apply every intent in ``journal`` to ``store``, then clear the journal.

    A delete that a put of the same key superseded is not applied, but it is
    settled with the rest: left in the log, the next replay would apply it
    alone and delete the file the put had restored.
    """
    report = Report()
    records = journal.records()
    deletes, puts = plan_replay(records)
    if deletes:
        store.delete_many(deletes)
        report.deleted.extend(deletes)
    for record in puts:
        if record.body == BODY_STAGING:
            try:
                with committed_body(journal.staging_path(record.staging or ""), record.size, journal.root) as body:
                    store.put(record.key, body, record.metadata)
            except (FileNotFoundError, StagingLost):
                report.lost.append(record.key)
                journal.remove_put(record.rid)
                continue
        elif record.body == BODY_METADATA_ONLY:
            try:
                store.copy(record.key, record.key, record.metadata)
            except ObjectNotFound:
                report.lost.append(record.key)
                journal.remove_put(record.rid)
                continue
        elif record.body in (BODY_EMPTY, BODY_INLINE):
            store.put(record.key, record.inline, record.metadata)
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
