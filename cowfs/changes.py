"""Change marks: mounts of one workspace tell each other which folders they changed.

A mount that changes objects of a workspace writes, a moment after they reach
the store, one small object of its own, ``T/WS/.cowfs/changes/WRITER``: a
sequence number that grows with each write and, for each folder it changed
lately, the number of the write that named it last. Another mount then
revalidates everything it holds of that workspace with one LIST of the marks
per metadata TTL, instead of a LIST per folder: a folder listed after the
last change any mark names for it stays valid, and only the marks whose ETag
moved are read. Close-to-open holds between mounts: a change shows on another
mount within the write-back delay, one flush interval and one TTL.

Objects written by other tools (boto3, ``aws s3 cp``) leave no mark: a folder
is listed again once its listing is ``foreign_ttl`` old, so they show within
that. A mark names at most ``MAX_FOLDERS`` folders; a reader that missed the
ones a writer dropped takes the whole workspace as changed.
"""

from __future__ import annotations

import json
import logging
import math
import re
import secrets
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

import trio

from . import layout
from .batches import BatchWriter, RecordCheck, Workspace
from .errors import CowfsError, ObjectNotFound
from .store import ObjectStore
from .gateway import StoreCalls

log = logging.getLogger(__name__)

#: Where a workspace's marks live, under ``T/WS/``.
MARKS_DIR = f"{layout.CONTROL_DIR}/changes/"
#: A writer flushes its marks at most this often.
FLUSH_INTERVAL = 0.25
#: Folders one mark names at most (the ones changed longest ago are dropped first).
MAX_FOLDERS = 256
#: Marks read at once in one check.
PARALLEL = 8
#: A folder whose listing took L seconds is vouched for until this many L after it ended,
#: when that is longer than the foreign TTL: relisting a folder of 100,000 keys while it is
#: walked takes at most a fifth of the store's time, not most of it.
LISTING_PAUSE = 4
WRITER_FILE = "writer"
FORMAT = 1

#: Runs a store call on a worker thread: ``await io(fn, *args)``.
Io = Callable[..., Awaitable[Any]]


@dataclass
class Mark:
    """One writer's mark: ``seq`` grows with every write; ``folders`` holds, for each
    folder named (relative to the workspace, ``""`` for its top, else ending in
    ``/``), the ``seq`` of the write that named it last; ``floor`` is the highest
    ``seq`` of a folder dropped to keep it small."""

    seq: int = 0
    floor: int = 0
    folders: dict[str, int] = field(default_factory=dict)

    def advanced(self, changed: set[str]) -> Mark:
        """The mark that adds ``changed`` as the next write."""
        seq = self.seq + 1
        folders = {**self.folders, **dict.fromkeys(changed, seq)}
        floor = self.floor
        if len(folders) > MAX_FOLDERS:
            kept = sorted(folders.items(), key=lambda item: item[1])[-MAX_FOLDERS:]
            floor = max(floor, max(s for name, s in folders.items() if (name, s) not in kept))
            folders = dict(kept)
        return Mark(seq, floor, folders)

    def encode(self) -> bytes:
        return json.dumps({"format": FORMAT, "seq": self.seq, "floor": self.floor, "folders": self.folders},
                          separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> Mark:
        """A mark from its bytes; ``ValueError`` for anything else."""
        try:
            doc = json.loads(data)
            seq, floor, folders = doc["seq"], doc["floor"], doc["folders"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"not a change mark: {exc}") from None
        if not (isinstance(seq, int) and isinstance(floor, int) and isinstance(folders, dict)
                and all(isinstance(k, str) and isinstance(v, int) for k, v in folders.items())):
            raise ValueError("not a change mark: wrong types")
        return cls(seq, floor, folders)


def _inside(key: str) -> tuple[Workspace, tuple[str, ...]] | None:
    """The workspace holding ``key`` and the names below it, for a key of its content."""
    parts = tuple(key.split("/"))
    workspace = layout.workspace_of(parts)
    if workspace is None or parts[layout.WORKSPACE_DEPTH] == layout.CONTROL_DIR:
        return None
    return workspace, parts[layout.WORKSPACE_DEPTH:]


def folder_of(key: str) -> tuple[Workspace, str] | None:
    """The workspace and the folder (relative to it) whose listing a change of the object
    ``key`` changes (a folder's marker ``a/b/`` changes ``a/``'s), or None for a key outside
    a workspace's content (its record, its marks, a trash)."""
    inside = _inside(key)
    if inside is None or not inside[1][0]:
        return None
    workspace, names = inside
    names = names[:-2] if not names[-1] else names[:-1]
    return workspace, "".join(f"{name}/" for name in names)


def listed_folder(key: str) -> tuple[Workspace, str] | None:
    """The workspace and the folder (relative to it) of the folder key ``key`` (``T/WS/a/``)."""
    inside = _inside(key)
    if inside is None:
        return None
    return inside[0], "".join(f"{name}/" for name in inside[1] if name)


def marks_prefix(workspace: Workspace) -> str:
    return f"{workspace[0]}/{workspace[1]}/{MARKS_DIR}"


def writer_id(cache_dir: Path) -> str:
    """This cache folder's name as a writer of marks, kept in it so a remount goes on with its marks."""
    path = cache_dir / WRITER_FILE
    try:
        name = path.read_text().strip()
        if re.fullmatch(r"[A-Za-z0-9._-]{1,100}", name):
            return name
    except FileNotFoundError:
        pass
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:60] or "host"
    name = f"{host}-{secrets.token_hex(4)}"
    path.write_text(name + "\n")
    return name


@dataclass
class _View:
    """What a reader knows of one workspace's marks."""

    #: Listings older than this are not vouched for (the first check, or a change it could not place).
    baseline: float
    #: When the last check that succeeded ended (-inf: none yet): it vouches for a TTL from then.
    checked_at: float = -math.inf
    etags: dict[str, str] = field(default_factory=dict)
    seqs: dict[str, int] = field(default_factory=dict)
    #: Folder (relative) -> when a mark was seen naming it: listings before that are stale.
    stale: dict[str, float] = field(default_factory=dict)
    checking: trio.Event | None = None


class ChangeMarks(BatchWriter[Workspace, set[str]]):
    """Writes this mount's marks and reads the others' for the listings (see the module).
    ``pending`` counts the workspaces whose mark waits for the next flush."""

    def __init__(self, store: ObjectStore, calls: StoreCalls, writer: str, *, ttl: float,
                 foreign_ttl: float, records: RecordCheck, clock: Callable[[], float] = time.monotonic,
                 interval: float = FLUSH_INTERVAL, removed: Callable[[Workspace], bool] = lambda w: False) -> None:
        """``removed(workspace)``: whether this mount is deleting it (a mark would bring it back);
        ``clock`` is the namespace's (listing times are compared with it)."""
        super().__init__(store, calls, interval, records)
        self.writer = writer
        self.ttl = ttl
        self.foreign_ttl = foreign_ttl
        self.clock = clock
        self.removed = removed
        self._written: dict[Workspace, Mark] = {}
        self._views: dict[Workspace, _View] = {}
        self.checks = 0
        #: Told of the folders a check found named by another mount's newer mark (None: it could
        #: not place what changed, so every folder of the workspace), to take them back from the kernel.
        self.on_change: Callable[[Workspace, set[str] | None], None] = lambda workspace, folders: None

    # -- this mount's marks -------------------------------------------------

    def changed(self, key: str) -> None:
        """An object under ``key`` reached the store or left it."""
        where = folder_of(key)
        if where is not None and not self.removed(where[0]):
            self._pending.setdefault(where[0], set()).add(where[1])
            self._wake.set()

    async def _write(self, workspace: Workspace, folders: set[str]) -> None:
        if self.removed(workspace):
            return
        key = marks_prefix(workspace) + self.writer
        try:
            mark = self._written.get(workspace)
            if mark is None:
                if not await self.records.exists(workspace):
                    log.debug("no mark for %s/%s: it has no record (removed, or made by another tool)", *workspace)
                    return
                mark = await self._read(key, self._background) or Mark()
            mark = mark.advanced(folders)
            await self._background(self.store.put, key, mark.encode(), {"content-type": "application/json"})
        except (CowfsError, OSError) as exc:
            self._failed(f"writing the change mark of {workspace[0]}/{workspace[1]}", exc)
            self._pending.setdefault(workspace, set()).update(folders)
            self._wake.set()
            return
        self._written[workspace] = mark

    async def _read(self, key: str, io: Io) -> Mark | None:
        """The mark at ``key``; None when there is none or it is not one (then it is written anew)."""
        try:
            data, _ = await io(self.store.get, key)
        except ObjectNotFound:
            return None
        try:
            return Mark.decode(data)
        except ValueError as exc:
            log.warning("%s: %s", key, exc)
            return None

    # -- the other mounts' marks --------------------------------------------

    @property
    def reading(self) -> bool:
        """Whether marks vouch for anything: not with a foreign TTL no longer than the metadata TTL."""
        return self.foreign_ttl > self.ttl

    def _view_of(self, key: str) -> tuple[Workspace, str, _View] | None:
        """The workspace of the folder ``key``, the folder relative to it, and what this mount
        knows of the workspace's marks (None: marks are not read, or none was checked yet)."""
        where = listed_folder(key) if self.reading else None
        view = self._views.get(where[0]) if where is not None else None
        if where is None or view is None or view.checked_at == -math.inf:
            return None
        return where[0], where[1], view

    @staticmethod
    def _named(view: _View, folder: str, listed_at: float) -> bool:
        """Whether the marks say ``folder`` changed after a listing of it started at ``listed_at``
        (a mark names it, or a check could not place a change)."""
        return listed_at < view.baseline or listed_at < view.stale.get(folder, -math.inf)

    def holding(self, key: str, listed_at: float, ended: float, now: float) -> tuple[Workspace, float] | None:
        """The workspace of the folder ``key`` and until when the listing of it made from
        ``listed_at`` to ``ended`` holds by time alone, if the marks vouch for it at ``now``: a
        check of them less than a TTL old, no mark naming it since it started, less than the
        foreign TTL or ``LISTING_PAUSE`` times its own duration since it ended (a listing of
        100,000 keys is not made over and over)."""
        known = self._view_of(key)
        if known is None:
            return None
        workspace, folder, view = known
        until = ended + max(self.foreign_ttl, LISTING_PAUSE * (ended - listed_at))
        if now - view.checked_at >= self.ttl or now >= until or self._named(view, folder, listed_at):
            return None
        return workspace, until

    def vouches(self, key: str, listed_at: float, ended: float, now: float) -> bool:
        """Whether the listing of the folder ``key`` made from ``listed_at`` to ``ended`` still
        holds at ``now`` by the marks (``holding``)."""
        return self.holding(key, listed_at, ended, now) is not None

    def named_since(self, key: str, listed_at: float) -> bool:
        """Whether the marks read so far say the folder ``key`` changed after its listing
        started at ``listed_at``."""
        known = self._view_of(key)
        return known is not None and self._named(known[2], known[1], listed_at)

    def due(self, workspace: Workspace) -> float:
        """When the marks of ``workspace`` are next to be read: a TTL after the last check ended."""
        view = self._views.get(workspace)
        return -math.inf if view is None else view.checked_at + self.ttl

    def workspace_of(self, key: str) -> Workspace | None:
        """The workspace whose marks speak for the folder ``key``, if any (and marks are read)."""
        where = listed_folder(key) if self.reading else None
        return where[0] if where else None

    async def check(self, workspace: Workspace, io: Io) -> bool:
        """Read the workspace's marks unless a check of them is less than a TTL old, through
        ``io``; whether they can vouch for its folders now (False when the store did not answer)."""
        view = self._views.get(workspace)
        while view is not None and view.checking is not None:
            await view.checking.wait()
            view = self._views.get(workspace)
        now = self.clock()
        if view is not None and now - view.checked_at < self.ttl:
            return True
        if view is None:
            view = self._views[workspace] = _View(baseline=math.inf)
        view.checking = trio.Event()
        try:
            await self._check(workspace, view, io)
        except (CowfsError, OSError) as exc:
            self._failed(f"reading the change marks of {workspace[0]}/{workspace[1]}", exc)
            return False
        finally:
            view.checking.set()
            view.checking = None
        return True

    async def _check(self, workspace: Workspace, view: _View, io: Io) -> None:
        self.checks += 1
        prefix = marks_prefix(workspace)
        listing = await io(self.store.list_all, prefix, None)
        moved = {info.key: info.etag for info in listing.objects
                 if info.key != prefix + self.writer and view.etags.get(info.key) != info.etag}
        first = view.checked_at == -math.inf
        baseline = view.baseline
        named: set[str] = set()
        read: dict[str, Mark | None] = {}

        async def reader(keys: list[str]) -> None:
            for key in keys:
                read[key] = await self._read(key, io)

        keys = sorted(moved)
        async with trio.open_nursery() as nursery:
            for i in range(min(PARALLEL, len(keys))):
                nursery.start_soon(reader, keys[i::PARALLEL])
        seen = self.clock()
        for key, mark in read.items():
            last = view.seqs.get(key)
            if mark is None:  # gone or unreadable: what it named cannot be placed
                if not first:
                    view.baseline = seen
                continue
            if not first:
                if last is None and mark.floor == 0:
                    last = 0
                if last is None or mark.floor > last or mark.seq < last:
                    view.baseline = seen
                else:
                    for folder, seq in mark.folders.items():
                        if seq > last:
                            view.stale[folder] = seen
                            named.add(folder)
            view.seqs[key] = mark.seq
        view.etags = {info.key: info.etag for info in listing.objects}
        view.seqs = {key: seq for key, seq in view.seqs.items() if key in view.etags}
        view.stale = {folder: at for folder, at in view.stale.items() if at > seen - self.foreign_ttl}
        if first:
            view.baseline = seen
        view.checked_at = seen
        if not first and view.baseline != baseline:
            self.on_change(workspace, None)
        elif named:
            self.on_change(workspace, named)
