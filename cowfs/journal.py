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

(*) until the durability issue snapshots staging files on close, bytes written
after the last close but before the crash may be part of that upload.

Records are whole files replaced atomically (write, fsync, rename, fsync of
the folder), so a record is either the old or the new version, never torn.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

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

    def close(self) -> None:
        os.close(self._dir_fd)

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
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, self.root / name)
        os.fsync(self._dir_fd)

    def _remove(self, name: str) -> None:
        try:
            os.unlink(self.root / name)
        except FileNotFoundError:
            return
        os.fsync(self._dir_fd)

    @staticmethod
    def _delete_name(key: str) -> str:
        return f"del-{hashlib.sha1(key.encode()).hexdigest()}.json"

    def write_put(self, record: PutRecord) -> None:
        self._write(
            f"put-{record.rid}.json",
            {
                "key": record.key,
                "body": record.body,
                "staging": record.staging,
                "metadata": record.metadata,
                "inline": base64.b64encode(record.inline).decode(),
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
                out.append(PutRecord(rid, doc["key"], doc["body"], doc.get("staging"), doc.get("metadata", {}), inline))
        return out


def plan_replay(records: list[PutRecord | DeleteRecord]) -> tuple[list[str], list[PutRecord]]:
    """Order recovered intents: deletes first, then puts (a put is always newer).

    A delete record whose key a put record also names was superseded by that
    put (its removal was lost in the crash), so it is dropped.
    """
    puts = [r for r in records if isinstance(r, PutRecord)]
    put_keys = {r.key for r in puts}
    deletes = sorted({r.key for r in records if isinstance(r, DeleteRecord)} - put_keys)
    return deletes, puts
