"""The embedded ObjectStore: a directory on local disk.

``cowfs mount`` works on a laptop with no object store at all. Several
processes (a daemon and CLI commands) may use one store at once: an SQLite
index in WAL mode arbitrates them, and content lives in immutable blob files
that are written and fsync'ed before the index row naming them commits.
A reader that opened a blob keeps its content even if a writer replaces the
object meanwhile, as with S3.

Layout::

    ROOT/index.sqlite3     objects(key, size, etag, mtime, meta, blob)
    ROOT/blobs/<uuid>      content of one object version
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import BinaryIO, Iterator

from ..errors import AccessDenied, ObjectNotFound, PreconditionFailed, StoreError
from ..fds import pwrite_all
from .base import ListPage, ObjectInfo, ObjectStore, Piece, Progress, same_metadata

BUSY_TIMEOUT = 60.0  # seconds a writer waits for another process's transaction
CHUNK = 1024 * 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    key TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    etag TEXT NOT NULL,
    mtime REAL NOT NULL,
    meta TEXT NOT NULL,
    blob TEXT NOT NULL
) WITHOUT ROWID
"""


#: SQLite page cache per connection (one connection per worker thread).
CACHE_KIB = 256
_SETUP_LOCK = threading.Lock()


class LocalStore(ObjectStore):
    """Objects in a directory: an SQLite index plus one blob file per object."""

    remote = False

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).absolute()
        self.url = self.root.as_uri()
        self.prefix = ""
        self._blobs = self.root / "blobs"
        self._local = threading.local()

    # -- interface -------------------------------------------------------------

    def check(self) -> None:
        with self._guard("check", ""):
            self._blobs.mkdir(parents=True, exist_ok=True)
            if not os.access(self.root, os.W_OK | os.X_OK):
                raise AccessDenied(f"check {self.url}: directory is not writable")
            self._db()

    def head(self, key: str) -> ObjectInfo:
        with self._guard("head", key):
            row = self._db().execute("SELECT size, etag, mtime, meta FROM objects WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise ObjectNotFound(f"head {self._where(key)}: no such key")
        return _info(key, *row)

    def get(self, key: str, start: int | None = None, end: int | None = None) -> tuple[bytes, ObjectInfo]:
        with self._guard("get", key):
            blob, info = self._open(key)
            with blob:
                first = start or 0
                last = info.size if end is None else min(end, info.size)
                return os.pread(blob.fileno(), max(0, last - first), first), info

    def get_to_file(self, key: str, out: BinaryIO, progress: Progress | None = None) -> ObjectInfo:
        with self._guard("get", key):
            blob, info = self._open(key)
            pos = 0
            with blob:
                while chunk := blob.read(CHUNK):
                    out.write(chunk)
                    if progress is not None:
                        out.flush()
                        progress(info, pos, pos + len(chunk))
                    pos += len(chunk)
            return info

    def stream(self, key: str, piece: Piece) -> ObjectInfo:
        with self._guard("get", key):
            blob, info = self._open(key)
            pos = 0
            with blob:
                while chunk := blob.read(CHUNK):
                    piece(info, pos, chunk)
                    pos += len(chunk)
            return info

    def get_range_into(
        self, key: str, info: ObjectInfo, fd: int, start: int, end: int, progress: Progress | None = None
    ) -> None:
        with self._guard("get", key):
            blob, current = self._open(key)
            with blob:
                if current.etag != info.etag:
                    raise PreconditionFailed(f"get {self._where(key)}: the object changed")
                pos, end = start, min(end, current.size)
                while pos < end and (chunk := os.pread(blob.fileno(), min(CHUNK, end - pos), pos)):
                    pwrite_all(fd, chunk, pos)
                    if progress is not None:
                        progress(current, pos, pos + len(chunk))
                    pos += len(chunk)

    def put(
        self,
        key: str,
        body: bytes | BinaryIO,
        metadata: dict[str, str],
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> str:
        with self._guard("put", key):
            blob, size, etag = self._write_blob(body)
            stored_already = False
            try:
                with self._transaction() as db:
                    row = db.execute("SELECT etag, blob, meta FROM objects WHERE key = ?", (key,)).fetchone()
                    current = None if row is None else row[0]
                    if (if_none_match and current is not None) or (if_match is not None and current != if_match):
                        if current != etag or not same_metadata(json.loads(row[2]), metadata):
                            raise PreconditionFailed(f"put {self._where(key)}: the object changed")
                        stored_already = True
                    else:
                        self._upsert(db, key, size, etag, metadata, blob)
            except BaseException:
                self._remove_blob(blob)
                raise
            if stored_already:
                self._remove_blob(blob)
            elif row is not None:
                self._remove_blob(row[1])
            return etag

    def copy(self, src: str, dst: str, metadata: dict[str, str] | None = None) -> str:
        """Copy by hard-linking the immutable blob: instant at any size."""
        blob = uuid.uuid4().hex
        with self._guard("copy", src):
            try:
                with self._transaction() as db:
                    source = db.execute("SELECT size, etag, meta, blob FROM objects WHERE key = ?", (src,)).fetchone()
                    if source is None:
                        raise ObjectNotFound(f"copy {self._where(src)}: no such key")
                    size, etag, meta, source_blob = source
                    os.link(self._blobs / source_blob, self._blobs / blob)
                    _fsync_dir(self._blobs)
                    replaced = db.execute("SELECT blob FROM objects WHERE key = ?", (dst,)).fetchone()
                    self._upsert(db, dst, size, etag, json.loads(meta) if metadata is None else metadata, blob)
            except BaseException:
                self._remove_blob(blob)
                raise
            if replaced is not None:
                self._remove_blob(replaced[0])
            return etag

    def delete(self, key: str) -> None:
        self.delete_many([key])

    def delete_many(self, keys: list[str]) -> None:
        with self._guard("delete", ""):
            with self._transaction() as db:
                blobs = []
                for key in keys:
                    row = db.execute("SELECT blob FROM objects WHERE key = ?", (key,)).fetchone()
                    if row is not None:
                        db.execute("DELETE FROM objects WHERE key = ?", (key,))
                        blobs.append(row[0])
            for blob in blobs:
                self._remove_blob(blob)

    def list_pages(self, prefix: str, delimiter: str | None = "/",
                   start_after: str | None = None) -> Iterator[ListPage]:
        page = ListPage()
        for entry in self._entries(prefix, delimiter, start_after):
            if len(page.objects) + len(page.prefixes) == self.page_size:
                page.more = True
                yield page
                page = ListPage()
            if isinstance(entry, str):
                page.prefixes.append(entry)
            else:
                page.objects.append(entry)
        yield page

    # -- helpers ---------------------------------------------------------------

    def _entries(self, prefix: str, delimiter: str | None, start_after: str | None) -> Iterator[ObjectInfo | str]:
        """Objects (with their metadata: the index has it) and rolled-up prefixes in key order.

        A rolled-up prefix costs one index seek past it, however many keys it
        holds. Rows are fetched in batches, so no read transaction stays open
        while the caller holds a page.
        """
        cursor: str | None = prefix if start_after is None else max(prefix, start_after + "\0")
        upper = _successor(prefix)
        sql = "SELECT key, size, etag, mtime, meta FROM objects WHERE key >= ?"
        sql += " AND key < ? ORDER BY key LIMIT ?" if upper is not None else " ORDER BY key LIMIT ?"
        while cursor is not None:
            with self._guard("list", prefix):
                bounds = (cursor, upper) if upper is not None else (cursor,)
                rows = self._db().execute(sql, (*bounds, self.page_size)).fetchall()
            if not rows:
                return
            cursor = rows[-1][0] + "\0"
            for key, size, etag, mtime, meta in rows:
                cut = key.find(delimiter, len(prefix)) if delimiter else -1
                if cut < 0:
                    yield _info(key, size, etag, mtime, meta)
                    continue
                rolled_up = key[: cut + len(delimiter)]
                yield rolled_up
                cursor = _successor(rolled_up)
                break

    def _where(self, key: str) -> str:
        return f"{self.url}/{key}"

    def _db(self) -> sqlite3.Connection:
        """This thread's connection (SQLite connections must not cross threads or forks)."""
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            # Switching a new database to WAL fails at once ("database is locked",
            # no busy wait) while another connection does the same: one at a time.
            with _SETUP_LOCK:
                self._blobs.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self.root / "index.sqlite3", timeout=BUSY_TIMEOUT, isolation_level=None)
                db.execute("PRAGMA journal_mode = WAL")
                db.execute("PRAGMA synchronous = FULL")
                db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
                db.execute(_SCHEMA)
            local.db, local.pid = db, os.getpid()
        return local.db

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the lock up front, so conditions checked in it hold at commit."""
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _open(self, key: str) -> tuple[BinaryIO, ObjectInfo]:
        """The blob of ``key``, opened, with its info.

        A writer may replace the object and remove its blob between the lookup
        and the open; then look again.
        """
        missing = None
        while True:
            row = (
                self._db().execute("SELECT size, etag, mtime, meta, blob FROM objects WHERE key = ?", (key,)).fetchone()
            )
            if row is None:
                raise ObjectNotFound(f"get {self._where(key)}: no such key")
            if row[4] == missing:
                raise StoreError(f"get {self._where(key)}: content file {row[4]} is missing")
            try:
                return open(self._blobs / row[4], "rb"), _info(key, *row[:4])
            except FileNotFoundError:
                missing = row[4]

    def _write_blob(self, body: bytes | BinaryIO) -> tuple[str, int, str]:
        """Write ``body`` to a new durable blob; return its name, size and ETag."""
        name = uuid.uuid4().hex
        md5 = hashlib.md5(usedforsecurity=False)
        size = 0
        chunks = [body] if isinstance(body, (bytes, bytearray, memoryview)) else iter(lambda: body.read(CHUNK), b"")
        self._blobs.mkdir(parents=True, exist_ok=True)
        try:
            with open(self._blobs / name, "xb") as f:
                for chunk in chunks:
                    md5.update(chunk)
                    f.write(chunk)
                    size += len(chunk)
                f.flush()
                os.fsync(f.fileno())
            _fsync_dir(self._blobs)
        except BaseException:
            self._remove_blob(name)
            raise
        return name, size, f'"{md5.hexdigest()}"'

    def _upsert(
        self, db: sqlite3.Connection, key: str, size: int, etag: str, metadata: dict[str, str], blob: str
    ) -> None:
        meta = json.dumps({name.lower(): value for name, value in metadata.items()})
        db.execute(
            "INSERT OR REPLACE INTO objects (key, size, etag, mtime, meta, blob) VALUES (?, ?, ?, ?, ?, ?)",
            (key, size, etag, time.time(), meta, blob),
        )

    def _remove_blob(self, name: str) -> None:
        (self._blobs / name).unlink(missing_ok=True)

    @contextlib.contextmanager
    def _guard(self, op: str, key: str) -> Iterator[None]:
        """Let disk and SQLite errors out only as cowfs store errors."""
        try:
            yield
        except PermissionError as exc:
            raise AccessDenied(f"{op} {self._where(key)}: {exc.strerror}") from exc
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"{op} {self._where(key)}: {exc}") from exc


def _info(key: str, size: int, etag: str, mtime: float, meta: str) -> ObjectInfo:
    return ObjectInfo(key=key, size=size, etag=etag, last_modified=mtime, metadata=json.loads(meta))


def _successor(prefix: str) -> str | None:
    """The least string above every string that starts with ``prefix``; None when there is none.

    Code point order is UTF-8 byte order, which is both SQLite's and S3's key order.
    """
    stem = prefix.rstrip("\U0010ffff")
    if not stem:
        return None
    following = ord(stem[-1]) + 1
    if 0xD800 <= following <= 0xDFFF:  # surrogates are not characters
        following = 0xE000
    return stem[:-1] + chr(following)


def _fsync_dir(path: Path) -> None:
    """Make a new directory entry durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
