"""The local cache: ETag-tagged clean copies, LRU within a size limit."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from cowfs.cache import ContentCache
from mounting import Mount

MiB = 1024 * 1024


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


def test_an_entry_keeps_the_metadata_given_with_it_and_its_file_one_folder_down(tmp_path):
    cache = ContentCache(tmp_path / "c", 1 << 30)
    src = tmp_path / "src"
    src.write_bytes(b"body")
    fd = os.open(src, os.O_RDONLY)
    try:
        for i in range(300):
            cache.put_file(f"t/w/f{i}", f"e{i}", fd, {"mode": str(i)})
    finally:
        os.close(fd)
    moved = tmp_path / "c" / "incoming"
    moved.write_bytes(b"moved")
    cache.move_in("t/w/moved", "em", moved, {"mode": "420"})
    assert cache.get_meta("t/w/f7", "e7") == {"mode": "7"}
    assert cache.get_meta("t/w/moved", "em") == {"mode": "420"}
    assert read_fd(cache.open("t/w/f299", "e299")) == b"body"
    assert read_fd(cache.open("t/w/moved", "em")) == b"moved"
    files = list((tmp_path / "c").rglob("*.val"))
    assert len(files) == 301
    folders = {f.parent for f in files}
    assert all(folder.parent == tmp_path / "c" for folder in folders), "one level of folders, not diskcache's two"
    assert len(folders) <= 256


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


def test_move_in_keeps_the_file_itself_within_the_limit(tmp_path):
    cache = ContentCache(tmp_path / "c", 4 * MiB)
    src = tmp_path / "c" / "incoming"
    src.write_bytes(b"x" * MiB)
    inode = src.stat().st_ino
    cache.move_in("k", "e", src)
    assert not src.exists()
    fd = cache.open("k", "e")
    try:
        assert os.fstat(fd).st_ino == inode, "moved, not copied"
        assert os.pread(fd, 2 * MiB, 0) == b"x" * MiB
    finally:
        os.close(fd)
    too_big = tmp_path / "c" / "too-big"
    too_big.write_bytes(b"y" * 5 * MiB)
    cache.move_in("big", "e", too_big)
    assert too_big.exists(), "a file larger than the cache is left to the caller"
    assert cache.open("big", "e") is None
    assert cache.volume() <= 4 * MiB


def bytes_written(pid: int) -> int:
    """Bytes the process passed to write(2), send(2) and friends so far (files and sockets alike)."""
    with open(f"/proc/{pid}/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("wchar:"))


def cached_file(cache_dir: Path, size: int, timeout: float = 20) -> Path:
    """The clean cache's file entry of ``size`` bytes, once there is one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in (cache_dir / "cache").rglob("*.val"):
            if path.stat().st_size == size:
                return path
        time.sleep(0.05)
    raise AssertionError(f"no cache entry of {size} bytes after {timeout} s")


def test_large_files_enter_the_cache_without_a_copy(mount_factory):
    size = 24 * MiB
    data = os.urandom(size)
    first = mount_factory("one")
    ws = first.path / "t1" / "ws1"
    ws.mkdir(parents=True)
    before = bytes_written(first.proc.pid)
    (ws / "big.bin").write_bytes(data)
    first.sync()
    kept = cached_file(first.cache_dir, size)
    written = bytes_written(first.proc.pid) - before
    assert written < 2.5 * size, f"{written} bytes: staging and the upload's socket once each, no copy into the cache"
    for i in range(300):
        (ws / f"small{i}").write_bytes(b"s" * 100)
    first.sync()
    assert kept.read_bytes() == data, "the cache's copy shares the staging inode, which must never become a spare"

    second = mount_factory("two")
    before = bytes_written(second.proc.pid)
    assert (second.path / "t1" / "ws1" / "big.bin").read_bytes() == data
    assert cached_file(second.cache_dir, size).read_bytes() == data
    written = bytes_written(second.proc.pid) - before
    assert written < 2.5 * size, f"{written} bytes: the download and the replies to the kernel once each, no copy"
