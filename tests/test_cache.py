"""The local cache: ETag-tagged clean copies, LRU within a size limit."""

from __future__ import annotations

import os
import sqlite3

from cowfs.cache import ContentCache
from mounting import Mount


def put(cache: ContentCache, key: str, etag: str, data: bytes, tmp_path) -> None:
    path = tmp_path / "src"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        cache.put_file(key, etag, fd)
    finally:
        os.close(fd)


def read_fd(fd: int) -> bytes:
    try:
        return os.pread(fd, 1 << 20, 0)
    finally:
        os.close(fd)


def test_entry_is_valid_only_for_its_etag(tmp_path):
    cache = ContentCache(tmp_path / "c", 1 << 30)
    put(cache, "t/w/a", '"e1"', b"one", tmp_path)
    assert read_fd(cache.open("t/w/a", '"e1"')) == b"one"
    assert cache.open("t/w/a", '"e2"') is None
    assert cache.open("t/w/a", '"e1"') is None
    cache.put_meta("t/w/a", '"e1"', {"mode": "33188"})
    assert cache.get_meta("t/w/a", '"e1"') == {"mode": "33188"}
    assert cache.get_meta("t/w/a", '"e2"') is None


def test_size_limit_evicts_least_recently_used(tmp_path):
    limit = 4 * 1024 * 1024
    cache = ContentCache(tmp_path / "c", limit)
    for i in range(40):
        put(cache, f"k{i}", "e", os.urandom(256 * 1024), tmp_path)
        fd = cache.open("k0", "e")
        assert fd is not None, "the entry used most recently must survive eviction"
        os.close(fd)
    assert cache.volume() <= limit + 256 * 1024
    assert cache.open("k1", "e") is None


def test_remount_reuses_cached_copy_while_etag_unchanged(tmp_path):
    store_dir = tmp_path / "store"
    mnt, cache_dir = tmp_path / "mnt", tmp_path / "cache"
    first = Mount(f"file://{store_dir}", mnt, cache_dir, ["--write-back-delay", "0.1"])
    try:
        first.start()
        ws = mnt / "t1" / "ws1"
        ws.mkdir(parents=True)
        (ws / "a.txt").write_bytes(b"original bytes")
        first.umount()
        # Change the blob behind the store's back, keeping its ETag: only a
        # mount that reuses its cached copy still sees the original bytes.
        with sqlite3.connect(store_dir / "index.sqlite3") as db:
            (blob,) = db.execute("SELECT blob FROM objects WHERE key = 't1/ws1/a.txt'").fetchone()
        (store_dir / "blobs" / blob).write_bytes(b"tampered bytes")
        second = Mount(f"file://{store_dir}", mnt, cache_dir, [])
        try:
            second.start()
            assert (ws / "a.txt").read_bytes() == b"original bytes"
        finally:
            second.cleanup()
        third = Mount(f"file://{store_dir}", mnt, tmp_path / "empty-cache", [])
        try:
            third.start()
            assert (ws / "a.txt").read_bytes() == b"tampered bytes"
        finally:
            third.cleanup()
    finally:
        first.cleanup()
