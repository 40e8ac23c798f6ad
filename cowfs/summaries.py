"""Attribute summaries: one object per folder holds the metadata of the files cowfs put there.

S3 listings carry a file's size, ETag and time but not the mode, owner and
times cowfs keeps in its metadata, so a walk after a remount with an empty
cache would need a HEAD per file. A mount that puts files into a folder ``F``
of the workspace ``T/WS`` keeps, a moment later, ``T/WS/.cowfs/attrs/NAME``:
F's path relative to the workspace and, for each file, the ETag of the object
and the metadata stored with it; a cold walk reads one summary per folder.

``NAME`` is a hash of F's relative path: a folder's path may be close to S3's
1,024-byte limit on keys, so a key that spelled it out beside ``.cowfs/attrs/``
would not fit, while a hash has one short length at any depth and keeps the
summaries of a workspace in one flat folder. The path inside the summary tells
the (improbable) collision apart.

An entry is used only while its ETag is the one the folder's listing shows
for that name (``usable``): an entry that went stale (another tool rewrote or
deleted the file, a write lost a race) costs a HEAD, never wrong attributes.
Several mounts write one summary by read-modify-write with conditional puts,
merging again on a lost condition. A folder with more than ``MAX_ENTRIES``
files, or whose summary would outgrow ``MAX_BYTES``, keeps a summary that says
it is full and holds no entries: its files are fetched one by one.

The read is skipped where the mount knows what is there. It merges into the
last summaries it wrote or read (``KEPT``) with a put conditional on the ETag
it got, and puts the first summary of a folder it just made, or that a
listing found without one (``STATES_KEPT``), with ``If-None-Match``: a
summary another mount changed or made meanwhile fails the condition and is
read and merged as any other. A delete of a summary left empty is not
conditional, so it is decided on a fresh read. A folder filled over many
flushes costs one GET at most, not one per flush.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable


from . import layout
from .batches import BatchWriter, RecordCheck
from .changes import Io, Workspace, folder_of, listed_folder
from .errors import CowfsError, ObjectNotFound, PreconditionFailed
from .gateway import StoreCalls
from .store import ObjectStore

log = logging.getLogger(__name__)

#: Where a workspace's summaries live, under ``T/WS/``.
SUMMARIES_DIR = f"{layout.CONTROL_DIR}/attrs/"
#: A writer flushes the summaries of changed folders at most this often.
FLUSH_INTERVAL = 0.5
#: Files one summary describes at most, and its largest size: beyond, it is full.
MAX_ENTRIES = 2000
MAX_BYTES = 256 * 1024
#: Read-modify-writes of one summary lost in a row before the flush gives up (and tries later).
ATTEMPTS = 5
#: Summaries a writer remembers having written or read, to merge into without a GET ...
KEPT = 16
#: ... and whether it knows a summary is there or not, for this many.
STATES_KEPT = 4096
FORMAT = 1
NAME_LENGTH = 32

#: A file's entry: the ETag of its object and the metadata stored with it.
Entry = tuple[str, dict[str, str]]
#: A folder's summary: its workspace and its path relative to it (``""`` or ending in ``/``).
Folder = tuple[Workspace, str]


def summary_key(workspace: Workspace, folder: str) -> str:
    """The key of the summary of ``folder`` (relative to the workspace)."""
    name = hashlib.sha256(folder.encode()).hexdigest()[:NAME_LENGTH]
    return f"{workspace[0]}/{workspace[1]}/{SUMMARIES_DIR}{name}"


def _bare(etag: str) -> str:
    return etag.strip('"')


@dataclass
class Summary:
    """What one folder's summary says: file name -> entry, or ``full`` (and no entries)."""

    folder: str
    entries: dict[str, Entry] = field(default_factory=dict)
    full: bool = False

    def merged(self, changes: dict[str, Entry | None]) -> Summary:
        """The summary with ``changes`` applied (an entry set, or dropped for None), full when it
        would outgrow the caps."""
        if self.full:
            return self
        entries = dict(self.entries)
        for name, entry in changes.items():
            if entry is None:
                entries.pop(name, None)
            else:
                entries[name] = entry
        summary = Summary(self.folder, entries)
        if len(entries) > MAX_ENTRIES or len(summary.encode()) > MAX_BYTES:
            return Summary(self.folder, full=True)
        return summary

    def encode(self) -> bytes:
        doc: dict[str, Any] = {"format": FORMAT, "folder": self.folder,
                               "entries": {name: [etag, meta] for name, (etag, meta) in self.entries.items()}}
        if self.full:
            doc["full"] = True
        return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> Summary:
        """A summary from its bytes; ``ValueError`` for anything else."""
        try:
            doc = json.loads(data)
            folder, raw, full = doc["folder"], doc["entries"], doc.get("full", False)
            entries = {name: (etag, meta) for name, (etag, meta) in raw.items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not an attribute summary: {exc}") from None
        if not (isinstance(folder, str) and isinstance(full, bool) and all(
                isinstance(name, str) and isinstance(etag, str) and isinstance(meta, dict)
                and all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
                for name, (etag, meta) in entries.items())):
            raise ValueError("not an attribute summary: wrong types")
        return cls(folder, entries, full)


def usable(listed: dict[str, str], entries: dict[str, Entry]) -> dict[str, dict[str, str]]:
    """The metadata of each listed name (name -> the ETag its listing shows) whose summary entry
    is of that very object: an entry of another version, or of a name not listed, is left out."""
    out = {}
    for name, etag in listed.items():
        entry = entries.get(name)
        if entry is not None and _bare(entry[0]) == _bare(etag):
            out[name] = entry[1]
    return out


def _file_folder(key: str) -> Folder | None:
    """The folder whose summary describes the file ``key``: none for a folder's marker (a
    parent's listing shows no ETag for it) or a key outside a workspace's content."""
    return None if key.endswith("/") else folder_of(key)


class Summaries(BatchWriter[Folder, dict[str, Entry | None]]):
    """Writes the summaries of the folders this mount puts files into, and reads any (see the module).
    ``pending`` counts the folders whose summary waits for the next flush."""

    def __init__(self, store: ObjectStore, calls: StoreCalls, *, records: RecordCheck,
                 interval: float = FLUSH_INTERVAL, forgotten: Callable[[Workspace], bool] = lambda w: False) -> None:
        """``forgotten(workspace)``: whether this mount is deleting it (a summary would bring it back)."""
        super().__init__(store, calls, interval, records)
        self.forgotten = forgotten
        #: The summaries this mount wrote or read last and their ETags, by key, the latest last.
        self._written: OrderedDict[str, tuple[Summary, str]] = OrderedDict()
        #: Whether a summary is there as far as this mount knows, by key, the latest last.
        self._there: OrderedDict[str, bool] = OrderedDict()

    def noted(self, key: str, etag: str, metadata: dict[str, str]) -> None:
        """The object ``key`` reached the store as ``etag`` with ``metadata``; a folder's
        marker says the folder is new here, and so is its summary (unless one is known)."""
        if key.endswith("/") and (where := listed_folder(key)) is not None:
            summary = summary_key(*where)
            if not self._there.get(summary, False):
                self._know(summary, False)
        self._change(key, (etag, {name.lower(): value for name, value in metadata.items()}))

    def removed(self, key: str) -> None:
        """The object ``key`` left the store, or changed in a way not known here: its entry goes."""
        self._change(key, None)

    def _change(self, key: str, entry: Entry | None) -> None:
        where = _file_folder(key)
        if where is not None and not self.forgotten(where[0]):
            self._pending.setdefault(where, {})[key.rsplit("/", 1)[1]] = entry
            self._wake.set()

    async def _write(self, where: Folder, changes: dict[str, Entry | None]) -> None:
        workspace, folder = where
        if self.forgotten(workspace):
            return
        try:
            if not await self.records.exists(workspace):
                log.debug("no summary for %s/%s: it has no record (removed, or made by another tool)", *workspace)
                return
            await self._merge(summary_key(workspace, folder), folder, changes)
        except (CowfsError, OSError) as exc:
            self._failed(f"writing the attribute summary of {workspace[0]}/{workspace[1]}/{folder}", exc)
            self._pending[where] = {**changes, **self._pending.get(where, {})}
            self._wake.set()

    async def _merge(self, key: str, folder: str, changes: dict[str, Entry | None]) -> None:
        """Apply ``changes`` to the summary at ``key`` by read-modify-write, merging again when
        another writer got in between (``PreconditionFailed`` when that keeps happening)."""
        known: tuple[Summary | None, str | None] | None = self._written.pop(key, None)
        if known is None and self._there.get(key) is False:
            known = None, None
        for _ in range(ATTEMPTS):
            current, etag = known or await self._current(key, folder)
            summary = (current or Summary(folder)).merged(changes)
            if summary == current:
                if current is not None and etag is not None:
                    self._remember(key, current, etag)
                return
            if known is not None and etag is not None and not (summary.entries or summary.full):
                known = None  # a delete is not conditional: it is decided on what the store holds
                continue
            try:
                if summary.entries or summary.full:
                    written = await self._background(
                        partial(self.store.put, if_match=etag, if_none_match=etag is None),
                        key, summary.encode(), {"content-type": "application/json"})
                    self._remember(key, summary, written)
                elif etag is not None:
                    # S3 has no conditional delete everywhere: an entry another writer adds
                    # meanwhile is lost, which only costs a HEAD.
                    await self._background(self.store.delete, key)
                    self._know(key, False)
                return
            except PreconditionFailed:  # also when it went: If-Match on a missing key fails
                log.debug("%s changed while this mount merged into it: merging again", key)
            known = None
        raise PreconditionFailed(f"{key}: other writers changed it {ATTEMPTS} times in a row")

    def _remember(self, key: str, summary: Summary, etag: str) -> None:
        """``summary`` is at ``key`` as ``etag``, as this mount last wrote or read it (``KEPT`` at most)."""
        self._know(key, True)
        self._written[key] = (summary, etag)
        while len(self._written) > KEPT:
            self._written.popitem(last=False)

    def _know(self, key: str, there: bool) -> None:
        """Whether a summary is at ``key``, as far as this mount knows (``STATES_KEPT`` at most)."""
        self._there[key] = there
        self._there.move_to_end(key)
        while len(self._there) > STATES_KEPT:
            self._there.popitem(last=False)

    async def _current(self, key: str, folder: str) -> tuple[Summary | None, str | None]:
        """The summary at ``key`` and its ETag; None for the summary when there is none, it is not
        one or it is another folder's (then it is written anew)."""
        try:
            data, info = await self._background(self.store.get, key)
        except ObjectNotFound:
            return None, None
        try:
            summary = Summary.decode(data)
        except ValueError as exc:
            log.warning("%s: %s", key, exc)
            return None, info.etag
        return (summary if summary.folder == folder else None), info.etag

    # -- reading -------------------------------------------------------------

    async def read(self, folder_key: str, io: Io) -> dict[str, Entry]:
        """The entries of the summary of the folder ``folder_key`` (``T/WS/a/``), read through
        ``io``: name -> (ETag, metadata); empty when there is none or it cannot be read.
        Check them against the listing with ``usable``."""
        where = listed_folder(folder_key)
        if where is None:
            return {}
        key = summary_key(*where)
        try:
            data, info = await io(self.store.get, key)
        except ObjectNotFound:
            self._know(key, False)
            return {}
        except (CowfsError, OSError) as exc:
            self._failed(f"reading the attribute summary of {folder_key}", exc)
            return {}
        try:
            summary = Summary.decode(data)
        except ValueError as exc:
            log.warning("%s: %s", key, exc)
            return {}
        if summary.folder != where[1]:
            return {}
        self._remember(key, summary, info.etag)
        return summary.entries
