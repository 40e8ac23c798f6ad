"""The mount daemon: wires store, cache, journal, write-back and FUSE together.

Lifecycle: check the mount point (no mount there, no files unless allowed) ->
check the store (refuse to start if unreachable) -> lock the cache directory
and record its owner -> replay the journal -> mount -> announce readiness ->
serve -> on SIGTERM/SIGINT/SIGHUP or unmount: flush every pending upload ->
unmount -> exit.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

import pyfuse3
import trio

from . import cachedir, control, mounts, options
from .activity import Activity
from .batches import RecordCheck
from .changes import ChangeMarks, writer_id
from .summaries import Summaries
from .cache import ContentCache
from .config import TenantOwner
from .errors import CowfsError
from .fs import Operations, drop_pages, take_back
from .gateway import StoreCalls
from .hooks import WorkspaceHooks
from .journal import GROUP_COMMIT, Journal
from .keys import KeyMap
from .namespace import Namespace
from .notify import notify
from .private import PRIVATE_DIR_MODE, PRIVATE_UMASK, open_private, private_dir
from .reachability import Reachability
from .recovery import Report, replay
from .store import ObjectStore, open_store
from .workspaces import _iso
from .writeback import WriteBack

log = logging.getLogger(__name__)

READY_FD_ENV = "COWFS_READY_FD"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
THREADS = 32
M_ARENA_MAX = -8
#: Seconds a thread waiting for the GIL lets its holder run before asking for it
#: (CPython's default is 5 ms). The thread serving the kernel gives the GIL up
#: on every system call, and while worker threads run uploads, downloads or
#: cache bookkeeping it would wait up to that long to get it back, once per call.
GIL_SWITCH_INTERVAL = 0.0005
#: The kernel's read-ahead for the mount, KiB. Its default, 128, cuts every
#: sequential read into 128 KiB FUSE requests; with this much it sends 1 MiB
#: ones (the most a request carries) and keeps several in flight.
READ_AHEAD_KIB = 4096
#: Unless the mount asks for ``dev`` / ``suid`` (trusted, single-user use), a device file or
#: set-uid bit found in the bucket acts as neither: said explicitly, not left to libfuse's defaults.
SAFE_MOUNT_FLAGS = {"dev": "nodev", "suid": "nosuid"}


@dataclass
class MountOptions:
    """Everything ``cowfs mount`` takes; also the library entry point's argument."""

    mountpoint: Path
    store_url: str | None = None
    foreground: bool = False
    tenant: str | None = None
    cache_dir: Path | None = None
    cache_size: int = 10 * 1024**3
    write_back_delay: float = 1.0
    metadata_ttl: float = 1.0
    foreign_ttl: float = 30.0
    store_timeout: float = 30.0
    endpoint_url: str | None = None
    region: str | None = None
    path_style: bool = False
    fuse_options: list[str] = field(default_factory=list)
    debug: bool = False
    config_path: Path | None = None
    tenants: dict[str, TenantOwner] | None = None
    create_bucket: bool = False
    log_level: str | None = None
    log_file: Path | None = None

    def argv(self) -> list[str]:
        """The command line that mounts the same thing in the foreground."""
        args = (["--config", str(self.config_path)] if self.config_path else []) + ["mount"]
        args += ([self.store_url] if self.store_url else []) + [str(self.mountpoint), "-f", *options.argv(self)]
        if self.fuse_options:
            args += ["-o", ",".join(self.fuse_options)]
        return args


def default_cache_dir(store: ObjectStore, tenant: str | None) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cowfs"
    digest = hashlib.sha1(f"{store.url}|{tenant or ''}".encode()).hexdigest()[:16]
    return base / digest


def open_configured_store(opts: MountOptions) -> ObjectStore:
    """The mount's store; an S3 request that receives nothing for ``--store-timeout`` is given up."""
    return open_store(opts.store_url, endpoint_url=opts.endpoint_url, region=opts.region, path_style=opts.path_style,
                      read_timeout=opts.store_timeout)


def owner_of(opts: MountOptions, store: ObjectStore) -> cachedir.Owner:
    """What the mount's cache directory records: its store and tenant, and how the store is reached."""
    return cachedir.Owner(store.url, opts.tenant, opts.endpoint_url, opts.region, opts.path_style)


def mount(opts: MountOptions) -> None:
    """Mount; in the foreground until unmounted, else return once the mount answers."""
    mounts.check_free(opts.mountpoint, allow_nonempty=mounts.NONEMPTY in opts.fuse_options)
    store = open_configured_store(opts)
    if opts.create_bucket and store.create_bucket():
        log.info("created %s", store.url)
    store.check()
    cache_dir = private_dir(opts.cache_dir or default_cache_dir(store, opts.tenant), "cache directory")
    cachedir.check_owner(cache_dir, owner_of(opts, store))
    if opts.foreground:
        serve(opts, store)
    else:
        _spawn_background(opts, cache_dir)


def _spawn_background(opts: MountOptions, cache_dir: Path) -> None:
    """Start the foreground daemon detached and wait until it reports ready."""
    read_end, write_end = os.pipe()
    env = dict(os.environ, **{READY_FD_ENV: str(write_end)})
    log_path = cache_dir / "cowfs.log"
    with os.fdopen(open_private(log_path, os.O_WRONLY | os.O_APPEND), "ab") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cowfs", *opts.argv()],
            env=env,
            pass_fds=[write_end],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,
        )
    os.close(write_end)
    with os.fdopen(read_end) as ready:
        message = ready.read().strip()
    if message != "ready":
        proc.wait()
        tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["daemon exited"]
        raise CowfsError(message or tail[0])


def serve(opts: MountOptions, store: ObjectStore) -> None:
    """Run the daemon in this process until the file system is unmounted.

    Everything it creates under the cache directory is owner-only (0700
    folders, 0600 files: the cache, its database, the journal, staging and
    temporary files), whatever umask it was started with.
    """
    os.umask(PRIVATE_UMASK)
    cache_dir = private_dir(opts.cache_dir or default_cache_dir(store, opts.tenant), "cache directory")
    _log_to(cache_dir / "cowfs.log")
    control.private_runtime_dir()
    lock = cachedir.hold(cache_dir, opts.mountpoint)
    cachedir.record_owner(cache_dir, owner_of(opts, store))
    _tune_process()
    journal = Journal(cache_dir / "journal")
    recovered = replay(store, journal)
    if recovered.lines():
        log.info("recovered %d pending change(s) from the journal", len(recovered.lines()))
    tmp_dir = cache_dir / "tmp"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir(mode=PRIVATE_DIR_MODE)
    cache = ContentCache(cache_dir / "cache", opts.cache_size)
    try:
        trio.run(_serve, opts, store, cache, journal, tmp_dir, cache_dir, recovered)
    finally:
        cache.close()
        journal.close()
        lock.close()


def store_events(activity: Activity, marks: ChangeMarks | None,
                 summaries: Summaries | None) -> tuple[Callable[[str, str, dict[str, str] | None], None],
                                                      Callable[[str], None]]:
    """What write-back tells the parts that follow this mount's changes in the store: (each
    object stored, with its ETag and metadata, None where not known: a copy that kept its
    source's, an upload replayed from the journal; each key deleted)."""

    def stored(key: str, etag: str, metadata: dict[str, str] | None) -> None:
        activity.mark(key)
        if marks is not None:
            marks.changed(key)
        if summaries is not None:
            if metadata is None:
                summaries.removed(key)
            else:
                summaries.noted(key, etag, metadata)

    def deleted(key: str) -> None:
        activity.deleted(key)
        if marks is not None:
            marks.changed(key)
        if summaries is not None:
            summaries.removed(key)

    return stored, deleted


async def _serve(
    opts: MountOptions, store: ObjectStore, cache: ContentCache, journal: Journal, tmp_dir: Path, cache_dir: Path,
    recovered: Report,
) -> None:
    """Serve the mount; ``recovered``: what replay did (the sessions it wrote are indexed; the keys it
    found the store refusing are still in the journal)."""
    calls = StoreCalls(trio.CapacityLimiter(THREADS), Reachability(store.check), opts.store_timeout)
    activity = Activity(store, calls)
    records = RecordCheck(store, calls)
    marks = ChangeMarks(store, calls, writer_id(cache_dir), ttl=opts.metadata_ttl,
                        foreign_ttl=opts.foreign_ttl, records=records, removed=activity.forgotten)
    summaries = Summaries(store, calls, records=records, forgotten=activity.forgotten)
    stored, deleted = store_events(activity, marks, summaries)
    writeback = WriteBack(store, journal, calls, delay=opts.write_back_delay, on_stored=stored,
                          on_deleted=deleted)
    for key in recovered.uploaded:
        stored(key, "", None)
    for key in recovered.deleted:
        deleted(key)
    keymap = KeyMap(root=(opts.tenant,) if opts.tenant else (), store_prefix=getattr(store, "prefix", ""))
    started = time.time()

    def refused() -> dict[str, str]:
        return {**recovered.refused, **writeback.refused()}

    def status() -> dict[str, Any]:
        stats = writeback.stats()
        return {
            "pid": os.getpid(),
            "mountpoint": str(opts.mountpoint),
            "store": store.url,
            "tenant": opts.tenant,
            "cacheDir": str(cache_dir),
            "pendingUploads": stats.pending_uploads,
            "pendingDeletes": stats.pending_deletes,
            "dirtyBytes": ns.dirty_bytes(),
            "uploads": stats.uploads,
            "deletes": stats.deletes,
            "retries": stats.retries,
            "listings": ns.listings,
            "storeUnreachableSince": ns.reachability.since and _iso(ns.reachability.since),
            "lastError": stats.last_error if ns.reachability.reachable else ns.reachability.last_error,
            "activityPending": activity.pending,
            "activityFailures": activity.failures,
            "activityLastError": activity.last_error,
            "markChecks": marks.checks,
            "entriesTakenBack": ns.leases.taken_back,
            "markFailures": marks.failures,
            "markLastError": marks.last_error,
            "summaryFailures": summaries.failures,
            "summaryLastError": summaries.last_error,
            "cacheBytes": cache.volume(),
            "storeQuirks": store.quirks(),
            "refusedKeys": refused(),
            "uptime": round(time.time() - started, 3),
        }

    shared = bool(opts.tenants) or "allow_other" in opts.fuse_options
    hooks = WorkspaceHooks(store, calls, activity, _shown_to_all(status) if shared else status)
    ns = Namespace(
        store, keymap, cache, journal, writeback, calls, tmp_dir, hooks,
        uid=os.getuid(), gid=os.getgid(), metadata_ttl=opts.metadata_ttl, tenants=opts.tenants, marks=marks,
        summaries=summaries, kernel=take_back, kernel_pages=drop_pages,
    )

    async def sync_all() -> None:
        await ns.sync()
        await marks.flush()
        await summaries.flush()
        await activity.flush()
        await trio.to_thread.run_sync(journal.sync_to_disk)

    fuse_options = {"fsname=" + store.url.replace(",", "_"), "subtype=cowfs", "default_permissions"}
    fuse_options.update(o for o in opts.fuse_options if o and o != mounts.NONEMPTY)
    fuse_options.update(safe for lifted, safe in SAFE_MOUNT_FLAGS.items() if lifted not in fuse_options)
    if opts.debug:
        fuse_options.add("debug")
    control_path = control.socket_path(opts.mountpoint)
    control.write_record(opts.mountpoint, cache_dir)
    pyfuse3.init(Operations(ns), str(opts.mountpoint), fuse_options)

    async def handle(request: dict[str, Any]) -> dict[str, Any]:
        if request.get("cmd") == "sync":
            await sync_all()
            return {"ok": True, "refused": refused()}
        if request.get("cmd") == "status":
            return {"ok": True, **status()}
        return {"ok": False, "error": f"unknown command {request.get('cmd')!r}"}

    unmounted = False
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writeback.run)
            await nursery.start(ns.run)
            nursery.start_soon(_group_commit, journal)
            nursery.start_soon(activity.run)
            nursery.start_soon(marks.run)
            nursery.start_soon(summaries.run)
            nursery.start_soon(control.serve, control_path, handle)
            nursery.start_soon(_stop_on_signal, sync_all)
            nursery.start_soon(_announce_ready, opts.mountpoint)
            nursery.start_soon(_learn_the_server, store, calls)
            await pyfuse3.main()
            await sync_all()
            nursery.cancel_scope.cancel()
        unmounted = True
    finally:
        pyfuse3.close(unmount=True)
        if unmounted:
            control.forget(opts.mountpoint)
            log.info("unmounted %s; every pending change is in the store", opts.mountpoint)


#: Status fields that name paths or keys: ``.cowfs/status.json`` of a mount other
#: users can enter (a tenants table, ``allow_other``) leaves them out; ``cowfs
#: status``, which only the mount's owner can ask, has them all.
PRIVATE_STATUS = ("mountpoint", "store", "cacheDir", "lastError", "refusedKeys", "activityLastError",
                  "markLastError", "summaryLastError")


def _log_to(path: Path) -> None:
    """The log goes to ``path`` too, unless stderr is that file already (a background daemon's is)."""
    fd = open_private(path, os.O_WRONLY | os.O_APPEND)
    try:
        if os.path.sameopenfile(fd, sys.stderr.fileno()):
            os.close(fd)
            return
    except OSError:  # stderr closed
        pass
    handler = logging.StreamHandler(os.fdopen(fd, "a", buffering=1))
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.getLogger().addHandler(handler)


def _shown_to_all(status: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
    """The status without the fields that would tell one tenant about the cache or another tenant."""
    return lambda: {name: value for name, value in status().items() if name not in PRIVATE_STATUS}


def _tune_process() -> None:
    """Process-wide settings the daemon needs: descriptors, malloc arenas, GIL hand-over."""
    _raise_fd_limit()
    _limit_malloc_arenas()
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)


def _limit_malloc_arenas() -> None:
    """One malloc arena per worker thread (glibc's default) leaves most of the RSS in free lists."""
    try:
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, 2)
    except (OSError, AttributeError):
        pass


def _raise_fd_limit() -> None:
    """Every open file holds a descriptor here: take the hard limit, not the soft 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def widen_read_ahead(device: int) -> None:
    """Set the mount's read-ahead to ``READ_AHEAD_KIB`` (root only; others keep the kernel's).

    Only once the kernel has the daemon's answer to FUSE_INIT: that answer
    caps the read-ahead at what it proposed, 128 KiB.
    """
    try:
        Path(f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb").write_text(f"{READ_AHEAD_KIB}\n")
    except OSError as exc:
        log.info("read-ahead left at the kernel's default: %s", exc)


async def _group_commit(journal: Journal) -> None:
    """One batch of fsyncs for every batch of closes: on the disk within ``GROUP_COMMIT`` seconds."""
    while True:
        await trio.sleep(GROUP_COMMIT)
        if not journal.needs_sync():
            continue
        try:
            await trio.to_thread.run_sync(journal.sync_to_disk)
        except OSError as exc:
            log.error("cannot flush the journal to disk: %s", exc)


async def _learn_the_server(store: ObjectStore, calls: StoreCalls) -> None:
    """Learn once, in the background, what the server does where S3 servers differ."""
    try:
        await calls.call(store.probe, background=True, bounded=False)
    except CowfsError as exc:
        log.info("could not learn how the store behaves: %s", exc)


async def _stop_on_signal(sync_all: Callable[[], Awaitable[None]]) -> None:
    """SIGTERM, SIGINT, and SIGHUP (the terminal of ``mount -f`` closed): flush, then unmount."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("%s: flushing pending uploads, then unmounting", signal.Signals(signum).name)
            notify("STOPPING=1")
            await sync_all()
            pyfuse3.terminate()
            return


async def _announce_ready(mountpoint: Path) -> None:
    """Tell whoever started us (background parent) once the mount answers a stat."""
    answered = await trio.to_thread.run_sync(os.stat, mountpoint)
    widen_read_ahead(answered.st_dev)
    log.info("mounted at %s", mountpoint)
    notify("READY=1")
    fd = os.environ.pop(READY_FD_ENV, None)
    if fd is not None:
        with os.fdopen(int(fd), "w") as ready:
            ready.write("ready\n")
