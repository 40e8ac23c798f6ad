"""The write-back journal: durable intents for keys the store does not yet match.

Layout under ``CACHE_DIR/journal``::

    data/<id>          staging file: the bytes of a file written here, never evicted
    put-<id>.json      "make KEY hold this node": staging id (or empty / metadata only)
    del-<sha1>.json    "KEY must not exist"

Crash windows and how replay repairs them (``plan_replay``):

| crash after                          | found on disk                 | replay does                      |
|--------------------------------------|-------------------------------|----------------------------------|
| write(), before close                | staging bytes, old record     | uploads the last closed version* |
| close(): record renamed into place   | staging + put record          | uploads it                       |
| upload done, record not yet removed  | put record of an uploaded key | uploads the same bytes again     |
| unlink(): delete record written      | del record (+ maybe put rec.) | deletes first, then puts         |
| rename(): new record, old not gone   | two puts of one node          | both keys hold the bytes         |

(*) a record names the staging file and the size it had at close. Writes after
a close only append beyond that size, or go to a fresh copy of the staging file
(copy on write) while the record is pending, so replay uploads exactly the last
closed version, never a mix.

Records are whole files replaced atomically (write, rename), so a record is
either the old or the new version, never torn.

Durability of a close (group commit): a record and its staging bytes reach
the kernel at once, so a crash of the daemon loses nothing; ``sync_to_disk``
(run in the background within ``GROUP_COMMIT`` seconds of a change: an fsync
of every staging file and record written since the last one, then of the
folders) puts them on the disk, so a crash of the machine loses at most that
window, as a local disk loses an un-fsync'ed close. Only the journal's own
files are synced, never the rest of the file system (``syncfs`` would wait
for every other program's dirty data). A record whose staging file came back
from such a crash shorter than its committed size (file systems extend a
file's size only once its data is written) is reported lost by replay, never
uploaded torn.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from .errors import StagingLost

#: Seconds within which a closed file's journal record and bytes are on the disk.
GROUP_COMMIT = 0.2

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


class Journal:
    """Staging files and intent records in one folder of the cache directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self._dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        self._unsynced: set[Path] = set()

    def close(self) -> None:
        os.close(self._dir_fd)

    def take_unsynced(self) -> set[Path]:
        """The records and staging files written since the last call (on the thread that writes them)."""
        paths, self._unsynced = self._unsynced, set()
        return paths

    def sync_to_disk(self, paths: set[Path] | None = None) -> None:
        """Put ``paths`` (default: everything written so far) and the journal's folders on the disk; blocking."""
        for path in [*(self.take_unsynced() if paths is None else paths), self.data]:
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.fsync(self._dir_fd)

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex

    def staging_path(self, staging: str) -> Path:
        return self.data / staging

    def create_staging(self) -> tuple[str, int]:
        """A new empty staging file: its id and a read-write descriptor."""
        staging = self.new_id()
        fd = os.open(self.staging_path(staging), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        return staging, fd

    def discard_staging(self, staging: str) -> None:
        self.staging_path(staging).unlink(missing_ok=True)

    def clear_staging(self) -> None:
        """Remove every staging file; only safe when no record refers to one."""
        for path in self.data.iterdir():
            path.unlink(missing_ok=True)

    def _write(self, name: str, doc: dict) -> None:
        tmp = self.root / f".{name}.tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f)
        os.rename(tmp, self.root / name)
        self._unsynced.add(self.root / name)

    def _remove(self, name: str) -> None:
        """Drop a record whose change reached the store.

        No fsync: if a crash brings the record back, replay uploads (or
        deletes) the same thing again, or finds its staging file gone and
        drops it; either way nothing is lost.
        """
        (self.root / name).unlink(missing_ok=True)

    @staticmethod
    def _delete_name(key: str) -> str:
        return f"del-{hashlib.sha1(key.encode()).hexdigest()}.json"

    def write_put(self, record: PutRecord) -> None:
        if record.staging is not None:
            self._unsynced.add(self.staging_path(record.staging))
        self._write(
            f"put-{record.rid}.json",
            {
                "key": record.key,
                "body": record.body,
                "staging": record.staging,
                "metadata": record.metadata,
                "inline": base64.b64encode(record.inline).decode(),
                "size": record.size,
            },
        )

    def remove_put(self, rid: str) -> None:
        self._remove(f"put-{rid}.json")

    def write_delete(self, key: str) -> None:
        self._write(self._delete_name(key), {"key": key})

    def remove_delete(self, key: str) -> None:
        self._remove(self._delete_name(key))

    def records(self) -> list[PutRecord | DeleteRecord]:
        """Every intent on disk; unreadable leftovers of a torn write are skipped."""
        out: list[PutRecord | DeleteRecord] = []
        for path in sorted(self.root.glob("*.json")):
            try:
                doc = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if path.name.startswith("del-"):
                out.append(DeleteRecord(doc["key"]))
            elif path.name.startswith("put-"):
                rid = path.name[len("put-"):-len(".json")]
                inline = base64.b64decode(doc.get("inline", ""))
                out.append(
                    PutRecord(
                        rid, doc["key"], doc["body"], doc.get("staging"), doc.get("metadata", {}), inline,
                        doc.get("size", 0),
                    )
                )
        return out


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


def plan_replay(records: list[PutRecord | DeleteRecord]) -> tuple[list[str], list[PutRecord]]:
    """Order recovered intents: deletes first, then puts (a put is always newer).

    A delete record whose key a put record also names was superseded by that
    put (its removal was lost in the crash), so it is dropped.
    """
    puts = [r for r in records if isinstance(r, PutRecord)]
    put_keys = {r.key for r in puts}
    deletes = sorted({r.key for r in records if isinstance(r, DeleteRecord)} - put_keys)
    return deletes, puts
