"""Resource limits, on real mounts of the embedded (``file://``) store.

- The daemon's RSS stays under 200 MiB while 100,000 files are listed and
  1,000 files are open (VmHWM from /proc, checked after every folder, so a
  failure stops as soon as the limit is crossed).
- The cache directory never grows past ``--cache-size`` plus unsynced bytes
  (``du`` of the cache directory, sampled every few milliseconds).

The 100,000-file test is slow: the daemon fetches every small file while
listing it (one GET and cache writes per file), ~4 minutes of listing on two
slow cores, plus ~30 s to fill the store and over a minute to delete it.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Self
from unittest import mock

import pytest
from mounting import Mount, is_mounted, require_fuse

from cowfs import daemon
from cowfs.attrs import DEFAULT_DIR_MODE, DEFAULT_FILE_MODE
from cowfs.journal import SPARE_AHEAD
from cowfs.store.local import LocalStore

#: Every test here mounts FUSE (``-m "not mount"`` leaves them out).
pytestmark = pytest.mark.mount

KiB = 1024
MiB = 1024 * KiB

RSS_LIMIT = 200 * MiB
FOLDERS = 100
FILES_PER_FOLDER = 1000  # 100 x 1,000 = 100,000 files, 9 bytes each
OPEN_FILES = 1000
#: Open files go to the daemon as descriptors too: both processes need this many.
NOFILE_NEEDED = OPEN_FILES + 512


@pytest.fixture
def file_mount_factory(tmp_path: Path) -> Iterator[Callable[..., Mount]]:
    """Start real mounts of ``file://`` stores under tmp_path; every one is unmounted at the end.

    Once nothing is mounted any more, stores and cache directories are removed
    (the 100,000-file test leaves ~1.5 GB in 300,000 files otherwise, which a
    later session's tmp_path clean-up would spend minutes deleting).
    """
    require_fuse()
    mounts: list[Mount] = []
    stores: list[Path] = []

    def make(store: Path, name: str = "mnt", extra: list[str] | tuple[str, ...] = ()) -> Mount:
        mount = Mount(f"file://{store}", tmp_path / name, tmp_path / f"{name}-cache",
                      ["--write-back-delay", "0.2", *extra])
        mounts.append(mount)
        stores.append(store)
        return mount.start()

    yield make
    for mount in reversed(mounts):
        mount.cleanup()
    if not any(is_mounted(mount.path) for mount in mounts):
        for path in [*stores, *(mount.cache_dir for mount in mounts)]:
            shutil.rmtree(path, ignore_errors=True)


def _proc_status(pid: int) -> dict[str, int]:
    """Memory lines of /proc/PID/status (VmRSS, VmHWM, RssAnon, RssFile ...) in bytes, and Threads."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if value.strip().endswith("kB"):
                fields[name] = int(value.split()[0]) * KiB
            elif name == "Threads":
                fields[name] = int(value)
    return fields


def _memory(fields: dict[str, int]) -> str:
    return (f"VmRSS {fields['VmRSS'] / MiB:.1f} MiB (anon {fields['RssAnon'] / MiB:.1f}, "
            f"file {fields['RssFile'] / MiB:.1f}), VmHWM {fields['VmHWM'] / MiB:.1f} MiB, "
            f"{fields['Threads']} threads")


def _raise_nofile(needed: int) -> None:
    """Let this process, and the daemon it starts (rlimits are inherited), hold ``needed`` descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.fail(f"RLIMIT_NOFILE hard limit {hard} < {needed}: cannot hold {OPEN_FILES} open files")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def _fill_store(root: Path, files: dict[str, bytes], folders: list[str]) -> None:
    """Objects as cowfs itself writes them: folder markers and files, with modes and mtimes.

    Goes through LocalStore.put, with durability switched off in this process
    only (the fill is scratch data; the daemon is another process and keeps
    its fsyncs): ~0.3 ms a put instead of ~3 ms.
    """
    store = LocalStore(root)
    store.check()
    store._db().execute("PRAGMA synchronous = OFF")
    file_meta = {"mode": str(DEFAULT_FILE_MODE), "uid": str(os.getuid()), "gid": str(os.getgid()),
                 "mtime": f"{time.time():.9f}"}
    dir_meta = {**file_meta, "mode": str(DEFAULT_DIR_MODE)}
    with mock.patch("os.fsync", lambda fd: None):
        for key in folders:
            store.put(key, b"", dir_meta)
        for key, body in files.items():
            store.put(key, body, file_meta)


def test_rss_stays_under_200_mib_with_100k_files_listed_and_1000_open(tmp_path, file_mount_factory):
    _raise_nofile(NOFILE_NEEDED)  # memory only here; the descriptor limit has its own test below
    t0 = time.monotonic()
    _fill_store(
        tmp_path / "store",
        {f"t1/ws1/d{d:03d}/f{f:04d}": f"{d:03d}/{f:04d}\n".encode()
         for d in range(FOLDERS) for f in range(FILES_PER_FOLDER)},
        ["t1/", "t1/ws1/", *(f"t1/ws1/d{d:03d}/" for d in range(FOLDERS))],
    )
    t_fill = time.monotonic() - t0

    mount = file_mount_factory(tmp_path / "store")
    assert mount.proc is not None
    pid = mount.proc.pid  # `cowfs mount -f` serves in the very process Mount started
    ws = mount.path / "t1" / "ws1"
    at_mount = _proc_status(pid)

    def check_rss(doing: str) -> dict[str, int]:
        """VmHWM only grows: fail as soon as it crosses the limit, with where it got there."""
        now = _proc_status(pid)
        assert now["VmHWM"] < RSS_LIMIT, (
            f"daemon peak RSS >= {RSS_LIMIT // MiB} MiB {doing} "
            f"({time.monotonic() - t0:.0f} s in; at mount {at_mount['VmRSS'] / MiB:.1f} MiB): {_memory(now)}"
        )
        return now

    t0 = time.monotonic()
    folders = sorted(os.scandir(ws), key=lambda e: e.name)
    assert [e.name for e in folders] == [f"d{d:03d}" for d in range(FOLDERS)]
    listed = 0
    for folder in folders:
        names = []
        with os.scandir(folder.path) as entries:
            for entry in entries:
                st = os.lstat(entry.path)
                assert stat.S_ISREG(st.st_mode) and st.st_size == 9, (entry.path, st)
                names.append(entry.name)
        assert len(names) == FILES_PER_FOLDER, folder.path
        listed += len(names)
        check_rss(f"after listing {listed:,} files")
    t_list = time.monotonic() - t0
    after_listing = _proc_status(pid)

    t0 = time.monotonic()
    fds: list[int] = []
    try:
        step = FILES_PER_FOLDER * FOLDERS // OPEN_FILES
        for d in range(FOLDERS):
            for f in range(0, FILES_PER_FOLDER, step):
                fd = os.open(ws / f"d{d:03d}" / f"f{f:04d}", os.O_RDONLY)
                fds.append(fd)
                assert os.read(fd, 4) == f"{d:03d}/".encode()
        assert len(fds) == OPEN_FILES
        t_open = time.monotonic() - t0
        daemon_fds = len(os.listdir(f"/proc/{pid}/fd"))
        with_open = check_rss(f"with {OPEN_FILES} files open")
    finally:
        for fd in fds:
            os.close(fd)

    print(
        f"\nfill {listed:,} objects {t_fill:.1f} s, list + lstat {t_list:.1f} s, open + read {OPEN_FILES} {t_open:.1f} s"
        f"\ndaemon at mount: {_memory(at_mount)}\nafter listing: {_memory(after_listing)}"
        f"\nwith {OPEN_FILES} open: {_memory(with_open)}; {daemon_fds} descriptors"
    )
    mount.umount()


#: The soft RLIMIT_NOFILE a systemd service gets unless its unit says otherwise
#: (DefaultLimitNOFILE=1024:524288 since systemd 240); systemd/cowfs@.service sets none.
SERVICE_NOFILE = 1024


def test_1000_open_files_under_the_default_descriptor_limit(tmp_path, file_mount_factory):
    """The daemon holds a descriptor per open file: 1,000 open files must work under systemd's default limit."""
    _raise_nofile(NOFILE_NEEDED)
    _fill_store(tmp_path / "store", {f"t1/ws1/d/f{i:04d}": b"%09d" % i for i in range(OPEN_FILES)},
                ["t1/", "t1/ws1/", "t1/ws1/d/"])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(SERVICE_NOFILE, hard), hard))
    try:
        mount = file_mount_factory(tmp_path / "store")  # inherits the service's limit
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert mount.proc is not None
    fds: list[int] = []
    try:
        for i in range(OPEN_FILES):
            fd = os.open(mount.path / "t1" / "ws1" / "d" / f"f{i:04d}", os.O_RDONLY)
            fds.append(fd)
            try:
                assert os.read(fd, 9) == b"%09d" % i
            except OSError as exc:
                raise AssertionError(
                    f"reading open file #{i + 1}: {exc}; daemon holds {len(os.listdir(f'/proc/{mount.proc.pid}/fd'))} "
                    f"descriptors: {mount.log_text()[-400:]}"
                ) from exc
    finally:
        for fd in fds:
            os.close(fd)
    mount.umount()


# -- the cache directory's size --------------------------------------------------

#: What the cache directory may hold beyond --cache-size and the unsynced
#: (staging) bytes. diskcache's ``cache.db`` pages are inside its own count
#: (``Cache.volume()``); this covers ``cache.db-shm`` (the WAL index, 32 KiB),
#: the lock file, the journal's log (a line < 1 KiB per pending upload: at most
#: 40 here; these 1 MiB files are not written into it), ``tmp/`` between download
#: and cache, and diskcache's metadata entries, which it counts at their length
#: (~120 bytes) but which take a 4 KiB block each (40 here). Not allowed for:
#: the WAL (``cache.db-wal``), which is data in the cache directory like any
#: other (SQLite checkpoints it at ``wal_autocheckpoint`` = 256 pages = 1 MiB,
#: or later while readers hold it; ``--cache-size`` leaves room for it), and
#: copies in flight into the cache beyond the limit.
SLACK = 1 * MiB
CACHE_SIZE = 4 * MiB


def _disk_use(cache_dir: Path) -> dict[str, int]:
    """What ``du`` counts under the cache directory (allocated blocks), by kind of file.

    Like ``du``, a file with several links (a large uploaded staging file
    handed to the cache by a hard link) counts once: as staging while it is
    still one.
    """
    use = dict.fromkeys(("entries", "cache.db", "cache.db-wal", "cache.db-shm", "staging", "other"), 0)
    staging = str(cache_dir / "journal" / "data")
    inodes: dict[int, tuple[str, int]] = {}
    for dirpath, _, files in os.walk(cache_dir):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:  # removed while we looked
                continue
            if dirpath == staging:
                kind = "staging"
            elif name.endswith(".val"):
                kind = "entries"
            else:
                kind = name if name in use else "other"
            if st.st_ino not in inodes or kind == "staging":
                inodes[st.st_ino] = (kind, st.st_blocks * 512)
    for kind, used in inodes.values():
        use[kind] += used
    return use


def _in_cache(use: dict[str, int]) -> int:
    """Bytes under CACHE_DIR/cache: diskcache's entries and its SQLite files."""
    return use["entries"] + use["cache.db"] + use["cache.db-wal"] + use["cache.db-shm"]


def _beyond_unsynced(use: dict[str, int]) -> int:
    """Bytes in the cache directory besides staging files (unsynced bytes, counted generously)."""
    return sum(use.values()) - use["staging"]


def _mib(use: dict[str, int]) -> str:
    return ", ".join(f"{kind} {n / MiB:.2f}" for kind, n in use.items()) + " (MiB)"


class DiskUseWatch:
    """Samples the cache directory every few ms ("never grows past" includes between steps).

    Keeps, for each phase, the sample with the most bytes beyond the staging
    files, and the one with the most bytes under ``cache/``.
    """

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = cache_dir
        self.phase = "mounted"
        self.samples = 0
        self.worst_dir: dict[str, dict[str, int]] = {}
        self.worst_cache: dict[str, dict[str, int]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        use = _disk_use(self.cache_dir)
        with self._lock:
            self.samples += 1
            worst_dir, worst_cache = self.worst_dir.get(self.phase), self.worst_cache.get(self.phase)
            if worst_dir is None or _beyond_unsynced(use) > _beyond_unsynced(worst_dir):
                self.worst_dir[self.phase] = use
            if worst_cache is None or _in_cache(use) > _in_cache(worst_cache):
                self.worst_cache[self.phase] = use

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.sample()

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def report(self) -> str:
        return "\n".join(
            f"  {phase}: cache dir beyond staging {_beyond_unsynced(self.worst_dir[phase]) / MiB:.2f} MiB "
            f"[{_mib(self.worst_dir[phase])}]; cache/ at most {_in_cache(self.worst_cache[phase]) / MiB:.2f} MiB"
            for phase in self.worst_dir
        )

    def check(self, cache_size: int) -> None:
        """The verdict over every phase, with where each one went over."""
        over = [
            f"{phase}: {_beyond_unsynced(use) - cache_size} bytes over --cache-size beyond staging files "
            f"[{_mib(use)}]"
            for phase, use in self.worst_dir.items()
            if _beyond_unsynced(use) > cache_size + SLACK
        ]
        over += [
            f"{phase}: cache/ held {_in_cache(use)} bytes [{_mib(use)}]"
            for phase, use in self.worst_cache.items()
            if _in_cache(use) > cache_size + SLACK
        ]
        assert not over, f"cache directory over --cache-size {cache_size} (+{SLACK} slack):\n" + "\n".join(over)


def _status(mount: Mount) -> dict:
    return json.loads((mount.path / ".cowfs" / "status.json").read_text())


def test_cache_dir_stays_within_cache_size_plus_unsynced(tmp_path, file_mount_factory):
    count, size = 40, 1 * MiB
    mount = file_mount_factory(tmp_path / "store", extra=["--cache-size", "4M"])
    staging = mount.cache_dir / "journal" / "data"
    ws = mount.path / "t1" / "ws1"
    ws.mkdir(parents=True)
    contents = {i: os.urandom(size) for i in range(count)}

    t0 = time.monotonic()
    with DiskUseWatch(mount.cache_dir) as watch:
        watch.phase = "writing (uploads and hand-over to the cache behind)"
        for i in range(count):
            (ws / f"f{i:02d}").write_bytes(contents[i])
            watch.sample()
        watch.phase = "cowfs sync"
        mount.sync()
        watch.sample()
        left = os.listdir(staging)
        assert len(left) <= SPARE_AHEAD + count and not [n for n in left if (staging / n).stat().st_size], \
            "staging files left after sync (other than empty spares)"
        status = _status(mount)
        assert status["dirtyBytes"] == 0 and status["pendingUploads"] == 0, status
        assert status["cacheBytes"] <= CACHE_SIZE, status
        store = LocalStore(tmp_path / "store")
        for i in range(count):
            assert store.get(f"t1/ws1/f{i:02d}")[0] == contents[i], f"f{i:02d} in the store"

        watch.phase = "reading back"  # 40 MiB through a 4 MiB cache
        for i in range(count):
            assert (ws / f"f{i:02d}").read_bytes() == contents[i], f"f{i:02d}"
            watch.sample()
        status = _status(mount)
        assert status["cacheBytes"] <= CACHE_SIZE, status
    elapsed = time.monotonic() - t0

    print(f"\n--cache-size {CACHE_SIZE // MiB} MiB; {count} x {size // MiB} MiB written, synced, read back in "
          f"{elapsed:.1f} s; {watch.samples} samples; diskcache's own count at the end "
          f"{status['cacheBytes'] / MiB:.2f} MiB; peaks:\n{watch.report()}")
    mount.umount()
    watch.check(CACHE_SIZE)


def test_cache_dir_stays_within_cache_size_with_small_files(tmp_path, file_mount_factory):
    """Small files cost a whole block each on disk, whatever size the cache counts them at."""
    count = 1000
    _fill_store(tmp_path / "store", {f"t1/ws1/s/f{i:04d}": b"%099d" % i for i in range(count)},
                ["t1/", "t1/ws1/", "t1/ws1/s/"])
    mount = file_mount_factory(tmp_path / "store", extra=["--cache-size", "4M"])
    small = mount.path / "t1" / "ws1" / "s"

    t0 = time.monotonic()
    with DiskUseWatch(mount.cache_dir) as watch:
        watch.phase = f"listing {count} files of 99 bytes"
        with os.scandir(small) as entries:
            sizes = [os.lstat(entry.path).st_size for entry in entries]
        assert sizes == [99] * count
        watch.sample()
        watch.phase = "reading them"
        for i in range(count):
            assert (small / f"f{i:04d}").read_bytes() == b"%099d" % i
        watch.sample()
        status = _status(mount)
        assert status["cacheBytes"] <= CACHE_SIZE, status
    elapsed = time.monotonic() - t0

    print(f"\n--cache-size {CACHE_SIZE // MiB} MiB; {count} files of 99 bytes listed and read in {elapsed:.1f} s; "
          f"diskcache's own count at the end {status['cacheBytes'] / MiB:.2f} MiB; peaks:\n{watch.report()}")
    mount.umount()
    watch.check(CACHE_SIZE)


def test_a_walk_of_a_folder_larger_than_one_subtree_listing_finds_every_file(tmp_path, file_mount_factory):
    """A walk lists a subtree in at most DEEP_PAGES pages; a folder the pages did not cover is listed whole."""
    from cowfs.namespace import DEEP_PAGES
    from cowfs.store.base import ObjectStore

    files = {f"t1/ws1/big/a/f{i:05d}": b"a" for i in range(DEEP_PAGES * ObjectStore.page_size + 200)}
    files.update({f"t1/ws1/big/b/g{i:03d}": b"b" for i in range(300)})
    _fill_store(tmp_path / "store", files, ["t1/", "t1/ws1/", "t1/ws1/big/", "t1/ws1/big/a/", "t1/ws1/big/b/"])
    mount = file_mount_factory(tmp_path / "store")
    found = {os.path.relpath(os.path.join(folder, name), mount.path)
             for folder, _, names in os.walk(mount.path / "t1" / "ws1" / "big") for name in names}
    assert len(found) == len(files) and found == set(files)


def test_the_daemon_hands_the_gil_back_to_the_kernel_thread_within_half_a_millisecond(tmp_path):
    """``_tune_process`` sets the switch interval; a mounted daemon shows it ran
    there too, by the descriptor limit the same call raises."""
    before = sys.getswitchinterval()
    try:
        daemon._tune_process()
        assert sys.getswitchinterval() == pytest.approx(daemon.GIL_SWITCH_INTERVAL)
        assert daemon.GIL_SWITCH_INTERVAL <= 0.0005
    finally:
        sys.setswitchinterval(before)
    require_fuse()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
    mount = Mount(f"file://{tmp_path / 'store'}", tmp_path / "mnt", tmp_path / "cache", [])
    try:
        mount.start()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert mount.proc is not None
        limits = Path(f"/proc/{mount.proc.pid}/limits").read_text()
        line = next(line for line in limits.splitlines() if line.startswith("Max open files"))
        assert line.split()[3:5] == [str(hard), str(hard)], line
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        mount.cleanup()


def test_a_mount_reads_ahead_in_requests_of_a_mebibyte(tmp_path):
    """The kernel's 128 KiB read-ahead cut sequential reads into 128 KiB requests;
    the daemon widens it once the kernel has its FUSE_INIT answer."""
    require_fuse()
    mount = Mount(f"file://{tmp_path / 'store'}", tmp_path / "mnt", tmp_path / "cache", [])
    try:
        mount.start()
        device = os.stat(mount.path).st_dev
        bdi = Path(f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb")
        deadline = time.monotonic() + 10  # set right after the daemon's own first stat answered
        while int(bdi.read_text()) != daemon.READ_AHEAD_KIB and time.monotonic() < deadline:
            time.sleep(0.05)
        assert int(bdi.read_text()) == daemon.READ_AHEAD_KIB >= 1024
    finally:
        mount.cleanup()
