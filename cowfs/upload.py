"""Sending a journal record's version to the store: the one put that write-back and replay share."""

from __future__ import annotations

from .errors import StagingLost
from .journal import BODY_METADATA_ONLY, BODY_STAGING, Journal, PutRecord, committed_body
from .store import ObjectStore


def put_record(
    store: ObjectStore, journal: Journal, record: PutRecord, if_match: str | None = None, if_none_match: bool = False
) -> str:
    """Make ``record.key`` hold the version ``record`` describes; return its ETag; blocking.

    Metadata only: a copy of the object onto itself (no condition; ``ObjectNotFound``
    when it is gone). A staging file: exactly its committed bytes, or
    ``StagingLost`` when it is gone or short.
    """
    if record.body == BODY_METADATA_ONLY:
        return store.copy(record.key, record.key, record.metadata)
    conditions = {"if_match": if_match, "if_none_match": if_none_match}
    if record.body != BODY_STAGING:
        return store.put(record.key, record.inline, record.metadata, **conditions)
    try:
        with committed_body(journal.staging_path(record.staging or ""), record.size, journal.root) as body:
            return store.put(record.key, body, record.metadata, **conditions)
    except FileNotFoundError:
        raise StagingLost(f"the staging file of {record.key} is gone") from None
