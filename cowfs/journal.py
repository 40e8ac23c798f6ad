"""The write-back journal: durable intents for keys the store does not yet match.

Layout under ``CACHE_DIR/journal``::

    data/<id>          staging file: the bytes of a file written here, never evicted
    log.jsonl          one JSON line per intent and per settled intent:
                       put (make KEY hold this node: staging id, inline body or
                       metadata only), done (that put reached the store),
                       del (KEY must not exist), undel (that delete is settled),
                       move (copy every listed object of a folder to its new
                       prefix, then delete it), moved (that move is settled)

The live intents are the log read in order; they are kept in memory too, and
when the log has grown well past them it is rewritten with only them
(``compact``: a new file, fsync'ed, renamed over the old one). A close costs
one ``write`` to an open file, not a file created, renamed and later removed
per record: on ext4 with online discard those metadata operations were most of
a small file's close.

Crash windows and how replay repairs them (``plan_replay``):

| crash after                          | found in the log              | replay does                      |
|--------------------------------------|-------------------------------|----------------------------------|
| write(), before close                | staging bytes, old record     | uploads the last closed version* |
| close(): put line appended           | staging + put record          | uploads it                       |
| upload done, done line not written   | put record of an uploaded key | uploads the same bytes again     |
| unlink(): del line appended          | del record (+ maybe put rec.) | deletes first, then puts         |
| rename(): new put, old not done      | two puts of one node          | both keys hold the bytes         |
| folder rename(): some objects copied | move record                   | copies the rest, deletes the old |

(*) a record names the staging file and the size it had at close. Writes after
a close only append beyond that size, or go to a fresh copy of the staging file
(copy on write) while the record is pending, so replay uploads exactly the last
closed version, never a mix.

A line cut short by a crash is not valid JSON and is skipped: the intent it
carried was never promised (its close or unlink had not returned).

Durability of a close (group commit): a line and its staging bytes reach the
kernel at once, so a crash of the daemon loses nothing; ``sync_to_disk`` (run
in the background within ``GROUP_COMMIT`` seconds of a change: an fsync of
every staging file written since the last one, of the data folder, then of
the log) puts them on the disk, so a crash of the machine loses at most that
window, as a local disk loses an un-fsync'ed close. Only the journal's own
files are synced, never the rest of the file system (``syncfs`` would wait
for every other program's dirty data). A record whose staging file came back
from such a crash shorter than its committed size (file systems extend a
file's size only once its data is written) is reported lost by replay, never
uploaded torn. Staging files of settled versions are removed in that
background pass too, off the thread that serves the kernel.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from .errors import StagingLost

#: Seconds within which a closed file's journal record and bytes are on the disk.
GROUP_COMMIT = 0.2

#: The log is rewritten with only its live intents once it is this large ...
COMPACT_BYTES = 1024 * 1024
#: ... and this many times larger than they are.
COMPACT_RATIO = 4

LOG = "log.jsonl"
#: Empty staging files ready for the next creates (settled ones emptied for
#: reuse, or made ahead), so that a create on the thread that serves the
#: kernel only opens an existing file: creating one where many were just
#: deleted makes ext4 scan for an inode it may reuse (``recently_deleted``),
#: many times the cost of the open.
#: Settled staging files are kept, emptied, up to this many (an inode each,
#: no bytes), so that bursts of files reuse the last burst's instead of
#: creating and deleting thousands ...
SPARE_STAGING = 2048
#: ... and while fewer than this many are ready, each group commit makes more.
SPARE_AHEAD = 256

#: Ids of records and staging files: random per process, then counted (a uuid4
#: per id read the kernel's random pool twice per small file).
_ID_PREFIX = uuid.uuid4().hex[:16]
_ID_COUNTER = itertools.count()

#: What a put record's object body is.
BODY_STAGING = "staging"
BODY_EMPTY = "empty"
BODY_METADATA_ONLY = "metadata"
BODY_INLINE = "inline"


@dataclass(frozen=True)
class PutRecord:
    rid: str
    key: str
    body: str
    staging: str | None
    metadata: dict[str, str]
    inline: bytes = b""
    size: int = 0


@dataclass(frozen=True)
class DeleteRecord:
    key: str


@dataclass(frozen=True)
class MoveRecord:
    """A folder rename under way: every object listed under ``src`` (key, ETag) is to
    be copied under ``dst`` and removed from ``src``, as one intent."""

    mid: str
    src: str
    dst: str
    objects: list[tuple[str, str]]


Record = PutRecord | DeleteRecord | MoveRecord


class Journal:
    """Staging files and an append-only intent log in one folder of the cache directory.

    Records are written on the trio thread; ``sync_to_disk`` runs on a worker
    thread. One lock orders the two (appends, the in-memory live set, the
    swap of the log for its compacted copy) and is never held across an
    fsync; a second one lets one sync pass run at a time.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self._dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        self._lock = threading.Lock()
        self._puts: dict[str, str] = {}
        self._deletes: dict[str, str] = {}
        self._moves: dict[str, str] = {}
        self._unsynced: set[Path] = set()
        self._doomed: list[tuple[Path, bool]] = []
        self._spares: list[str] = []
        self._log_dirty = False
        self._sync_lock = threading.Lock()
        self._appended_while_compacting: list[str] | None = None
        self._log_bytes = self._load()
        self._fd = os.open(root / LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def close(self) -> None:
        """Sync what is left (and remove settled staging files), then let go of the log."""
        self.sync_to_disk()
        os.close(self._fd)
        os.close(self._dir_fd)

    # -- the log ------------------------------------------------------------

    def _load(self) -> int:
        """Read the log (and records of the one-file-per-record layout before it) into the live set."""
        try:
            text = (self.root / LOG).read_text()
        except FileNotFoundError:
            text = ""
        for line in text.splitlines():
            try:
                doc = json.loads(line)
                self._apply(doc, line)
            except (ValueError, KeyError, TypeError):
                continue
        legacy = sorted(self.root.glob("put-*.json")) + sorted(self.root.glob("del-*.json"))
        for path in legacy:
            try:
                doc = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if path.name.startswith("put-"):
                doc = {"op": "put", "rid": path.name[len("put-"):-len(".json")], **doc}
            else:
                doc = {"op": "del", "key": doc["key"]}
            self._apply(doc, json.dumps(doc))
        if not legacy:
            return len(text.encode())
        size = self._rewrite()
        for path in legacy:
            path.unlink(missing_ok=True)
        return size

    def _apply(self, doc: dict, line: str) -> None:
        op = doc["op"]
        if op == "put":
            self._puts[doc["rid"]] = line
        elif op == "done":
            self._puts.pop(doc["rid"], None)
        elif op == "del":
            self._deletes[doc["key"]] = line
        elif op == "undel":
            self._deletes.pop(doc["key"], None)
        elif op == "move":
            self._moves[doc["mid"]] = line
        elif op == "moved":
            self._moves.pop(doc["mid"], None)

    def _append(self, doc: dict, line: str | None = None) -> None:
        """Log ``doc`` (as ``line`` when the caller encoded it already)."""
        if line is None:
            line = json.dumps(doc, separators=(",", ":"))
        data = (line + "\n").encode()
        with self._lock:
            self._apply(doc, line)
            _write_all(self._fd, data)
            if self._appended_while_compacting is not None:
                self._appended_while_compacting.append(line)
            self._log_bytes += len(data)
            self._log_dirty = True

    def _live_lines(self) -> list[str]:
        return [*self._moves.values(), *self._deletes.values(), *self._puts.values()]

    def _write_fresh_log(self, lines: list[str]) -> tuple[Path, int, int]:
        """``lines`` in a new file beside the log, on the disk: its path, an appending descriptor, its size."""
        data = "".join(line + "\n" for line in lines).encode()
        tmp = self.root / f".{LOG}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        return tmp, fd, len(data)

    def _rewrite(self) -> int:
        """Replace the log by its live lines, durably; returns the new size. Only while nothing else runs."""
        tmp, fd, size = self._write_fresh_log(self._live_lines())
        os.close(fd)
        os.rename(tmp, self.root / LOG)
        os.fsync(self._dir_fd)
        return size

    def compact(self) -> None:
        """Rewrite the log with only its live intents (after replay: empty)."""
        with self._sync_lock:
            self._compact()

    def _compact(self) -> None:
        """Replace the log by its live lines; the caller holds ``_sync_lock``.

        Closes and unlinks append lines on the thread that serves the kernel,
        which must not wait for this: the live lines are written and fsync'ed
        without the append lock (tens of milliseconds for the few MiB of an
        untar's pending small files), lines appended meanwhile are copied after
        them, and only the rename swaps the files under the lock. Either file
        is a complete log at every moment; the copied lines were appended after
        the last sync began, so no sync has promised them yet, and the next
        one (after this, under ``_sync_lock``) fsyncs the new file.
        """
        with self._lock:
            lines = self._live_lines()
            self._appended_while_compacting = []
        fd = -1
        try:
            tmp, fd, size = self._write_fresh_log(lines)
            with self._lock:
                later = "".join(line + "\n" for line in self._appended_while_compacting).encode()
                _write_all(fd, later)
                os.rename(tmp, self.root / LOG)
                fd, self._fd = self._fd, fd
                self._log_bytes = size + len(later)
        finally:
            with self._lock:
                self._appended_while_compacting = None
            if fd >= 0:
                os.close(fd)
        os.fsync(self._dir_fd)

    # -- durability ---------------------------------------------------------

    def needs_sync(self) -> bool:
        return self._log_dirty or bool(self._unsynced) or bool(self._doomed) or len(self._spares) < SPARE_AHEAD

    def sync_to_disk(self) -> None:
        """Put everything written so far on the disk, then remove settled staging files; blocking, thread-safe.

        One pass at a time (``_sync_lock``): a pass returns only when what was
        written before it began is on the disk, including across a compaction.
        """
        with self._sync_lock:
            self._sync_to_disk()

    def _sync_to_disk(self) -> None:
        with self._lock:
            paths, self._unsynced = self._unsynced, set()
            doomed, self._doomed = self._doomed, []
            self._log_dirty = False
            fd = os.dup(self._fd)
        try:
            for path in paths:
                try:
                    data_fd = os.open(path, os.O_RDONLY)
                except FileNotFoundError:
                    continue
                try:
                    os.fsync(data_fd)
                finally:
                    os.close(data_fd)
            if paths:
                data_dir = os.open(self.data, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(data_dir)
                finally:
                    os.close(data_dir)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._recycle(doomed)
        self._make_spares()
        if self._log_bytes > COMPACT_BYTES:
            with self._lock:
                live = sum(len(line) + 1 for line in self._live_lines())
            if self._log_bytes > COMPACT_RATIO * live:
                self._compact()

    # -- staging files --------------------------------------------------------

    @staticmethod
    def new_id() -> str:
        return f"{_ID_PREFIX}{next(_ID_COUNTER):08x}"

    def staging_path(self, staging: str) -> Path:
        return self.data / staging

    def create_staging(self) -> tuple[str, int]:
        """A new empty staging file (a spare when there is one): its id and a read-write descriptor.

        No record names a spare, so one left behind by a crash is removed by
        replay like any staging file nobody refers to.
        """
        with self._lock:
            spare = self._spares.pop() if self._spares else None
        if spare is not None:
            with contextlib.suppress(FileNotFoundError):
                return spare, os.open(self.staging_path(spare), os.O_RDWR)
        staging = self.new_id()
        return staging, os.open(self.staging_path(staging), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)

    def _make_spares(self) -> None:
        with self._lock:
            wanted = SPARE_AHEAD - len(self._spares)
        for _ in range(wanted):
            staging = self.new_id()
            os.close(os.open(self.staging_path(staging), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            with self._lock:
                self._spares.append(staging)

    def _recycle(self, doomed: list[tuple[Path, bool]]) -> None:
        """Empty reusable settled staging files into spares (up to ``SPARE_STAGING``), remove the rest.

        A spare takes a new id: a record of the settled version may still be in
        the log (its done line not yet on the disk), and replay must never find
        other bytes under that record's name.
        """
        for path, reuse in doomed:
            with self._lock:
                keep = reuse and len(self._spares) < SPARE_STAGING
            if not keep:
                path.unlink(missing_ok=True)
                continue
            staging = self.new_id()
            try:
                os.truncate(path, 0)
                os.rename(path, self.staging_path(staging))
            except FileNotFoundError:
                continue
            with self._lock:
                self._spares.append(staging)

    def discard_staging(self, staging: str, reuse: bool = False) -> None:
        """Forget a staging file; the next ``sync_to_disk`` removes it (ids are never reused).

        ``reuse``: nothing can still be reading it (its upload finished, no
        descriptor is open), so its inode may become a spare.
        """
        path = self.staging_path(staging)
        with self._lock:
            self._unsynced.discard(path)
            self._doomed.append((path, reuse))

    def reclaim_staging(self) -> None:
        """Keep the empty staging files left by the last daemon as spares (up to
        ``SPARE_STAGING``) and remove the rest but those a live record still names
        (a key the store refused); only safe after replay and ``compact``.

        A clean unmount leaves up to ``SPARE_STAGING`` spares: removing them all
        would mean making new ones at every mount, and on a journal-less
        ext4 every create after a mass removal scans past the freed inodes. The
        old names cannot meet new ones: ids start with a per-process prefix.
        """
        named = {r.staging for r in self.records() if isinstance(r, PutRecord)}
        kept: list[str] = []
        with os.scandir(self.data) as entries:
            for entry in entries:
                if entry.name in named:
                    continue
                if len(kept) < SPARE_STAGING and entry.is_file(follow_symlinks=False) and entry.stat().st_size == 0:
                    kept.append(entry.name)
                else:
                    Path(entry.path).unlink(missing_ok=True)
        with self._lock:
            self._spares = kept

    # -- records --------------------------------------------------------------

    def write_put(self, record: PutRecord) -> None:
        """Log a put. The inline body goes in as base64 spliced after the rest:
        base64 needs no JSON escaping, whose scan of the bytes would be a large
        part of what a small file's record costs."""
        if record.staging is not None:
            with self._lock:
                self._unsynced.add(self.staging_path(record.staging))
        doc = {
            "op": "put",
            "rid": record.rid,
            "key": record.key,
            "body": record.body,
            "staging": record.staging,
            "metadata": record.metadata,
            "size": record.size,
        }
        head = json.dumps(doc, separators=(",", ":"))
        self._append(doc, f'{head[:-1]},"inline":"{base64.b64encode(record.inline).decode()}"}}')

    def remove_put(self, rid: str) -> None:
        """The put reached the store. No fsync of its own: if a crash brings the
        record back, replay uploads the same bytes again or finds its staging gone."""
        if rid in self._puts:
            self._append({"op": "done", "rid": rid})

    def write_delete(self, key: str) -> None:
        self._append({"op": "del", "key": key})

    def remove_delete(self, key: str) -> None:
        if key in self._deletes:
            self._append({"op": "undel", "key": key})

    def write_move(self, src: str, dst: str, objects: list[tuple[str, str]]) -> str:
        """Log a folder rename before its first copy; returns the id that settles it."""
        mid = self.new_id()
        self._append({"op": "move", "mid": mid, "src": src, "dst": dst, "objects": objects})
        return mid

    def remove_move(self, mid: str) -> None:
        """Every object of the move is copied and its old key's delete is logged."""
        if mid in self._moves:
            self._append({"op": "moved", "mid": mid})

    def records(self) -> list[Record]:
        """Every live intent."""
        with self._lock:
            lines = self._live_lines()
        out: list[Record] = []
        for line in lines:
            doc = json.loads(line)
            if doc["op"] == "move":
                out.append(MoveRecord(doc["mid"], doc["src"], doc["dst"], [tuple(o) for o in doc["objects"]]))
            elif doc["op"] == "del":
                out.append(DeleteRecord(doc["key"]))
            else:
                out.append(
                    PutRecord(
                        doc["rid"], doc["key"], doc["body"], doc.get("staging"), doc.get("metadata", {}),
                        base64.b64decode(doc.get("inline", "")), doc.get("size", 0),
                    )
                )
        return out


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


#: Committed bytes up to this size are read into memory for upload.
SNAPSHOT_IN_MEMORY = 8 * 1024 * 1024


@contextlib.contextmanager
def committed_body(path: Path, size: int, spill_dir: Path) -> Iterator[bytes | BinaryIO]:
    """Exactly the first ``size`` bytes of a staging file: what was committed.

    Bytes appended after the commit may already follow in the file; they are
    not part of this version. Large bodies are copied to a temporary file so
    the upload reads a stable snapshot.
    """
    with open(path, "rb") as src:
        if size <= SNAPSHOT_IN_MEMORY:
            data = os.pread(src.fileno(), size, 0)
            if len(data) != size:
                raise StagingLost(f"staging file {path.name} is shorter than its committed size")
            yield data
            return
        with tempfile.TemporaryFile(dir=spill_dir) as snap:
            copied = 0
            while copied < size:
                sent = os.copy_file_range(src.fileno(), snap.fileno(), size - copied, copied, copied)
                if sent == 0:
                    raise StagingLost(f"staging file {path.name} is shorter than its committed size")
                copied += sent
            snap.seek(0)
            yield snap


def plan_replay(records: list[Record]) -> tuple[list[MoveRecord], list[str], list[PutRecord]]:
    """Order recovered intents: folder moves first, then deletes, then puts (a put is
    always newer: a file written into a moved folder has its put at the new key).

    A delete record whose key a put record also names was superseded by that
    put (its removal was lost in the crash), so it is dropped.
    """
    moves = [r for r in records if isinstance(r, MoveRecord)]
    puts = [r for r in records if isinstance(r, PutRecord)]
    put_keys = {r.key for r in puts}
    deletes = sorted({r.key for r in records if isinstance(r, DeleteRecord)} - put_keys)
    return moves, deletes, puts
