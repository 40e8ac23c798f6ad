"""Clean local copies of objects and their metadata, in a size-limited diskcache.

Nothing here is ever the only copy: dirty bytes live in the journal's staging
area until the store has them, so diskcache may evict any entry (LRU) to stay
under ``--cache-size``. An entry is valid only for the ETag it was stored with.
"""

from __future__ import annotations

import functools
import logging
import os
import sqlite3
from pathlib import Path
from typing import Any, Callable, TypeVar

import diskcache

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


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
        self._cache = diskcache.Cache(
            str(directory),
            size_limit=size_limit,
            eviction_policy="least-recently-used",
            disk_min_file_size=0,
        )

    def close(self) -> None:
        self._cache.close()

    @_best_effort
    def open(self, key: str, etag: str) -> int | None:
        """A read-only descriptor on the cached copy of ``key`` at ``etag``, if any.

        The descriptor stays valid even if the entry is evicted meanwhile.
        """
        reader, tag = self._cache.get(("data", key), read=True, tag=True)
        if reader is None:
            return None
        with reader:
            if tag != etag or not hasattr(reader, "fileno"):
                self._cache.delete(("data", key))
                return None
            return os.dup(reader.fileno())

    @_best_effort
    def put_file(self, key: str, etag: str, fd: int) -> None:
        """Keep a clean copy of ``key`` at ``etag`` from an open descriptor."""
        with os.fdopen(os.dup(fd), "rb") as src:
            src.seek(0)
            self._cache.set(("data", key), src, read=True, tag=etag)

    @_best_effort
    def discard(self, key: str) -> None:
        self._cache.delete(("data", key))

    @_best_effort
    def get_meta(self, key: str, etag: str) -> dict[str, str] | None:
        """Object metadata remembered for ``key`` at ``etag`` (saves a HEAD)."""
        entry = self._cache.get(("meta", key))
        if entry is None or entry[0] != etag:
            return None
        return entry[1]

    @_best_effort
    def put_meta(self, key: str, etag: str, metadata: dict[str, str]) -> None:
        self._cache.set(("meta", key), (etag, metadata))

    def volume(self) -> int:
        """Bytes the cache occupies on disk."""
        return self._cache.volume()
