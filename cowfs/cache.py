"""Clean local copies of objects and their metadata, in a size-limited diskcache.

Nothing here is ever the only copy: dirty bytes live in the journal's staging
area until the store has them, so diskcache may evict any entry (LRU) to stay
under ``--cache-size``. An entry is valid only for the ETag it was stored with.

The limit is kept on what the folder really takes on disk: a file entry
counts whole blocks, room is made before a file is added (not after), a file
larger than the whole cache is not kept, and SQLite's write-ahead log is kept
small and counted out of the limit.

The limit also bends to the disk: before a file is added, the cache may
hold no more than leaves the file system a floor of free space
(``free_space_floor``), whatever ``--cache-size`` says, so a full disk is
never the clean cache's doing. Only clean entries are evicted for it: the
journal's staging files, the only copy of unsynced bytes, are not the
cache's to touch, and it is for their sake that the floor is kept.

A file too big for the cache is read through a window of it kept outside
the cache (``window.py``): its bytes are reserved here (``reserve``), so
that the folder as a whole stays within the limit while it is read.

A file already on the cache's file system (a download, an uploaded staging
file) is moved in by rename rather than copied: copying 128 MiB cost a
third of a cold sequential read.

Every object read or uploaded passes through here, so an entry costs little:
keys are strings (diskcache pickles any other key, on every lookup), files go
into at most 256 folders (diskcache's 65,536 made nearly every new file a
new folder), and an entry's metadata goes in with the removal of its old bytes, in one
transaction. Files are copied or moved outside any transaction: a lookup
(which, with LRU eviction, writes its access time) never waits on file I/O.

Every lookup, hit or miss, takes SQLite's write lock (diskcache's LRU
bookkeeping). The event loop's lookups go through a second handle that does
not wait for it: when a worker thread is writing, they raise ``CacheBusy``
and the caller repeats them on a thread, instead of the loop sleeping in
SQLite's busy handler while every other request waits.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import diskcache

from .fds import copy_fd

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])

BLOCK = 4096
#: SQLite's write-ahead log is checkpointed every this many pages and truncated to this size.
WAL_PAGES = 256
WAL_LIMIT = WAL_PAGES * BLOCK
#: Per-connection SQLite page cache (in pages; every worker thread has its own connection).
SQLITE_CACHE_PAGES = 64


#: Free space the cache leaves its file system: 5% of it or 1 GiB, whichever is larger,
#: but at most a quarter of it (a 64 MiB tmpfs keeps 16 MiB free, not more than it holds).
FLOOR_SHARE = 20
FLOOR_BYTES = 1024**3
FLOOR_MAX_SHARE = 4


def free_space_floor(total: int) -> int:
    """The free bytes the cache never takes from a file system of ``total`` bytes."""
    return min(max(total // FLOOR_SHARE, FLOOR_BYTES), total // FLOOR_MAX_SHARE)


def _on_disk(size: int) -> int:
    """What a file entry of ``size`` bytes takes: whole blocks, plus one for its inode and folder entry."""
    return -(-size // BLOCK) * BLOCK + BLOCK


class _Moved:
    """A file to move into the cache by rename (same file system), not to copy."""

    __slots__ = ("path",)

    def __init__(self, path: Path) -> None:
        self.path = path

    def place(self, full_path: str) -> None:
        os.rename(self.path, full_path)

    def freed_if_dropped(self, on_disk: int) -> int:
        """Its bytes are on the disk already, and leave it if the cache does not keep them."""
        return on_disk


class _Copied:
    """The first ``size`` bytes of an open descriptor, to copy into the cache."""

    __slots__ = ("fd", "size")

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size

    def place(self, full_path: str) -> None:
        dst = os.open(full_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            copy_fd(self.fd, dst, self.size)
        finally:
            os.close(dst)

    def freed_if_dropped(self, on_disk: int) -> int:
        """A copy takes its bytes from the free space only when it is made."""
        return 0


class _BlockDisk(diskcache.Disk):
    """Counts a file entry by the blocks it occupies, so many small files cannot overrun the limit."""

    def filename(self, key: Any = diskcache.core.UNKNOWN, value: Any = diskcache.core.UNKNOWN) -> tuple[str, str]:
        """A random name in one of 256 folders."""
        name = os.urandom(16).hex()
        filename = os.path.join(name[:2], name[2:] + ".val")
        return filename, os.path.join(self._directory, filename)

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> tuple:
        if isinstance(value, (_Moved, _Copied)):
            filename, full_path = self.filename(key, value)
            try:
                value.place(full_path)
            except FileNotFoundError:
                os.makedirs(os.path.dirname(full_path), exist_ok=True)
                value.place(full_path)
            return _on_disk(os.stat(full_path).st_size), diskcache.core.MODE_BINARY, filename, None
        size, mode, filename, db_value = super().store(value, read, key=key)
        if filename is not None:
            size = _on_disk(size)
        return size, mode, filename, db_value


class CacheBusy(Exception):
    """A lookup that must not wait found the cache's database being written."""


def _best_effort(fn: F) -> F:
    """A failing cache (disk full, I/O error) costs a re-download, never an operation."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (OSError, sqlite3.Error, diskcache.Timeout) as exc:
            log.warning("cache %s failed: %s", fn.__name__, exc)
            return None

    return wrapper  # type: ignore[return-value]


class ContentCache:
    """File contents and object metadata, keyed by store key, tagged by ETag."""

    def __init__(self, directory: Path, size_limit: int) -> None:
        self.directory = directory
        self.limit = max(0, size_limit - WAL_LIMIT)
        self._cache = diskcache.Cache(
            str(directory),
            disk=_BlockDisk,
            size_limit=self.limit,
            cull_limit=0,
            eviction_policy="least-recently-used",
            sqlite_cache_size=SQLITE_CACHE_PAGES,
            sqlite_mmap_size=0,
            sqlite_wal_autocheckpoint=WAL_PAGES,
            sqlite_journal_size_limit=WAL_LIMIT,
        )
        self._now = diskcache.Cache(str(directory), disk=_BlockDisk, timeout=0)
        self._room = threading.Lock()
        #: Bytes held outside the cache on its account (windows of big files), and their lock.
        self._reserved = 0
        self._reserving = threading.Lock()

    def close(self) -> None:
        self._now.close()
        self._cache.close()

    @_best_effort
    def open(self, key: str, etag: str, *, wait: bool = True) -> int | None:
        """A read-only descriptor on the cached copy of ``key`` at ``etag``, if any.

        The descriptor stays valid even if the entry is evicted meanwhile.
        With ``wait=False``, raises ``CacheBusy`` rather than wait for a writer.
        """
        with self._lookup(wait) as cache:
            reader, tag = cache.get(_data(key), read=True, tag=True)
            if reader is None:
                return None
            with reader:
                if tag != etag or not hasattr(reader, "fileno"):
                    cache.delete(_data(key))
                    return None
                return os.dup(reader.fileno())

    def fits(self, size: int) -> bool:
        """Whether a file of ``size`` bytes may be kept whole (else it is read through a window)."""
        return _on_disk(size) <= self.limit

    @_best_effort
    def reserve(self, size: int) -> None:
        """Hold ``size`` bytes of the limit for a window (until ``release``), evicting to make room;
        blocking."""
        with self._room:
            with self._reserving:
                self._reserved += size
            self._make_room(self._cache.volume(), 0, self.limit - self._reserved)

    @_best_effort
    def give_back(self, size: int) -> None:
        """Evict clean entries for ``size`` bytes a write needs on a full disk (blocking): a
        clean copy costs a re-download, a failed write the user's bytes."""
        with self._room:
            volume = self._cache.volume()
            try:
                self._make_room(volume, size, volume)
            except sqlite3.OperationalError:
                # The disk is too full for SQLite to record an eviction: the least recently
                # used entries' files go first (a read needs no room), then their rows.
                self._drop_files(size)
                self._make_room(volume, size, volume)

    def _drop_files(self, size: int) -> None:
        """Delete the files of the least recently used entries, ``size`` bytes of them; their
        rows stay until the next eviction (a read of such an entry is a miss)."""
        uri = (self.directory / "cache.db").resolve().as_uri() + "?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
            rows = db.execute("SELECT filename, size FROM Cache WHERE filename IS NOT NULL"
                              " ORDER BY access_time").fetchall()
        dropped = 0
        for filename, entry_size in rows:
            if dropped >= size:
                break
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.directory / filename)
                dropped += entry_size

    def release(self, size: int) -> None:
        """Give back bytes ``reserve`` held (never waits on the cache's work)."""
        with self._reserving:
            self._reserved -= size

    @_best_effort
    def put_file(self, key: str, etag: str, fd: int, metadata: dict[str, str] | None = None) -> None:
        """Keep a clean copy of ``key`` at ``etag`` from an open descriptor (and its
        metadata, if given), evicting first to make room."""
        size = os.fstat(fd).st_size
        self._keep(key, etag, size, _Copied(fd, size), metadata)

    @_best_effort
    def move_in(self, key: str, etag: str, path: Path, metadata: dict[str, str] | None = None) -> None:
        """Make the file at ``path`` the clean copy of ``key`` at ``etag``; it leaves ``path`` if kept.

        ``path`` must be on the cache's file system and never written again.
        """
        self._keep(key, etag, os.stat(path).st_size, _Moved(path), metadata)

    def _keep(self, key: str, etag: str, size: int, value: _Moved | _Copied, metadata: dict[str, str] | None) -> None:
        """Store a file entry of ``size`` bytes unless it exceeds what the cache may hold; room is made first."""
        on_disk = _on_disk(size)
        with self._room:
            with self._cache.transact():
                if metadata is not None:
                    self._cache.set(_meta(key), (etag, metadata))
                self._cache.delete(_data(key))
            volume = self._cache.volume()
            limit = min(self.limit - self._reserved, volume + self._room_on_disk(value.freed_if_dropped(on_disk)))
            if on_disk > limit:
                self._make_room(volume, 0, limit)
                return
            self._make_room(volume, on_disk, limit)
            self._cache.set(_data(key), value, read=True, tag=etag)

    def _room_on_disk(self, pending: int) -> int:
        """Bytes the cache may add with the file system's free space kept above its floor.

        ``pending`` bytes are on the disk already and would be freed by not keeping them.
        """
        fs = os.statvfs(self.directory)
        return pending + fs.f_bavail * fs.f_frsize - free_space_floor(fs.f_blocks * fs.f_frsize)

    def _make_room(self, volume: int, size: int, limit: int) -> None:
        """Evict least recently used entries until ``size`` more bytes fit beside ``volume`` under ``limit``."""
        if volume + size <= limit:
            return
        self._cache.reset("size_limit", max(0, limit - size))
        try:
            self._cache.cull()
        finally:
            self._cache.reset("size_limit", self.limit)

    @_best_effort
    def discard(self, key: str) -> None:
        self._cache.delete(_data(key))

    @_best_effort
    def get_meta(self, key: str, etag: str, *, wait: bool = True) -> dict[str, str] | None:
        """Object metadata remembered for ``key`` at ``etag`` (saves a HEAD).

        With ``wait=False``, raises ``CacheBusy`` rather than wait for a writer.
        """
        with self._lookup(wait) as cache:
            entry = cache.get(_meta(key))
        if entry is None or entry[0] != etag:
            return None
        return entry[1]

    @_best_effort
    def put_meta(self, key: str, etag: str, metadata: dict[str, str]) -> None:
        self._cache.set(_meta(key), (etag, metadata))

    def volume(self) -> int:
        """Bytes the cache occupies on disk."""
        return self._cache.volume()

    @contextlib.contextmanager
    def _lookup(self, wait: bool) -> Iterator[diskcache.Cache]:
        """The handle for a lookup; the non-waiting one's timeout becomes ``CacheBusy``
        (which ``_best_effort`` lets through)."""
        if wait:
            yield self._cache
            return
        try:
            yield self._now
        except diskcache.Timeout:
            raise CacheBusy from None


def _data(key: str) -> str:
    """The entry of a key's bytes (a string: diskcache stores it as it is)."""
    return "d:" + key


def _meta(key: str) -> str:
    """The entry of a key's metadata."""
    return "m:" + key
