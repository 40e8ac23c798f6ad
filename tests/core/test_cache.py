"""The local cache: ETag-tagged clean copies, LRU within a size limit."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from cowfs.cache import CacheBusy, ContentCache, free_space_floor
from mounting import Mount, tmpfs

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


@contextlib.contextmanager
def cache_written_elsewhere(cache_dir: Path) -> Iterator[None]:
    """Hold the cache database's write lock, as a worker thread storing a download does."""
    writer = sqlite3.connect(cache_dir / "cache.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_a_lookup_that_must_not_wait_reports_a_busy_cache_at_once(tmp_path):
    cache = ContentCache(tmp_path / "c", 1 << 30)
    put(cache, "k", "e", b"body", tmp_path)
    cache.put_meta("k", "e", {"mode": "33188"})
    with cache_written_elsewhere(tmp_path / "c"):
        start = time.monotonic()
        with pytest.raises(CacheBusy):
            cache.open("k", "e", wait=False)
        with pytest.raises(CacheBusy):
            cache.get_meta("k", "e", wait=False)
        assert time.monotonic() - start < 0.5
    assert read_fd(cache.open("k", "e", wait=False)) == b"body"
    assert cache.get_meta("k", "e", wait=False) == {"mode": "33188"}


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


@pytest.mark.mount
def test_a_busy_cache_holds_up_only_the_open_that_needs_it(tmp_path):
    """An append to a file with no local copy looks its clean copy up in the cache,
    while a worker thread may be writing there; other requests go on meanwhile."""
    store_dir = tmp_path / "store"
    mnt, cache_dir = tmp_path / "mnt", tmp_path / "cache"
    ws = mnt / "t1" / "ws1"
    first = Mount(f"file://{store_dir}", mnt, cache_dir, ["--write-back-delay", "0.1"])
    try:
        first.start()
        ws.mkdir(parents=True)
        (ws / "a.txt").write_bytes(b"cached bytes")
        first.umount()
        second = Mount(f"file://{store_dir}", mnt, cache_dir, [])
        try:
            second.start()
            assert sorted(os.listdir(ws)) == ["a.txt"]
            with cache_written_elsewhere(cache_dir / "cache"):
                appender = threading.Thread(target=append, args=(ws / "a.txt", b", appended"))
                appender.start()
                time.sleep(0.5)
                start = time.monotonic()
                (ws / "b.txt").write_bytes(b"meanwhile")
                took = time.monotonic() - start
                time.sleep(max(0.0, 3.0 - took))
                assert appender.is_alive(), "the append waits for the cache"
            appender.join(timeout=20)
            assert (ws / "a.txt").read_bytes() == b"cached bytes, appended"
            assert took < 1.5, f"a create waited {took:.2f} s on another file's cache lookup"
        finally:
            second.cleanup()
    finally:
        first.cleanup()


@pytest.mark.mount
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


def free_bytes(path: Path) -> int:
    fs = os.statvfs(path)
    return fs.f_bavail * fs.f_frsize


def test_the_free_space_floor_is_5_percent_or_1_gib_but_at_most_a_quarter_of_a_small_disk():
    GiB = 1024 * MiB
    assert free_space_floor(100 * GiB) == 5 * GiB
    assert free_space_floor(8 * GiB) == GiB
    assert free_space_floor(2 * GiB) == GiB // 2
    assert free_space_floor(64 * MiB) == 16 * MiB


def test_a_cache_on_a_small_disk_keeps_the_free_space_floor_whatever_its_limit(tmp_path):
    with tmpfs(tmp_path / "disk", "64m") as disk:
        floor = free_space_floor(os.statvfs(disk).f_blocks * os.statvfs(disk).f_frsize)
        cache = ContentCache(disk / "cache", 10 * 1024 * MiB)
        for i in range(30):
            put(cache, f"k{i}", "e", os.urandom(4 * MiB), tmp_path)
            assert free_bytes(disk) >= floor - MiB, f"after {i + 1} files of 4 MiB"
        assert read_fd(cache.open("k29", "e"))[:1], "the newest file is kept"
        assert cache.open("k0", "e") is None, "the oldest made room for it"
        for step in range(4):
            (disk / f"staging{step}").write_bytes(b"u" * 12 * MiB)
            put(cache, f"after-staging{step}", "e", b"x" * MiB, tmp_path)
            assert free_bytes(disk) >= floor - MiB, "unsynced bytes grew: clean entries made way for them"
        assert all((disk / f"staging{step}").stat().st_size == 12 * MiB for step in range(4))
        assert cache.open("after-staging2", "e") is None and cache.open("after-staging3", "e") is None, \
            "with 48 MiB of unsynced bytes no file fits above the floor: not cached"
        cache.close()


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


@pytest.mark.mount
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
