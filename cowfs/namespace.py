"""The filesystem's semantics, with no FUSE in sight.

The namespace keeps the inode table (a tree of ``Node``), merges store
listings into it, and turns every file operation into cache reads, staging
writes, journal records and write-back intents. ``fs.py`` only translates
between the kernel and these methods; tests drive them directly too.

Ordering rules (why nothing is lost or resurrected):
- a key with a pending put is never shown as deleted, and a key with a
  pending delete is never shown again by a listing (``_merge``);
- a put of a key cancels a pending delete of it first, and store operations
  on one key never overlap (``WriteBack``);
- structural changes (create, mkdir, unlink, rmdir, rename, symlink, mknod) hold
  ``_tree_lock``, so a listing never interleaves with half a rename.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import math
import os
import stat
import tempfile
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

import trio

from .attrs import (
    DEFAULT_DIR_MODE,
    DEFAULT_FILE_MODE,
    Attrs,
    check_xattrs_fit,
    from_metadata,
    is_special,
    to_metadata,
)
from .cache import CacheBusy, ContentCache
from .changes import ChangeMarks
from .config import TenantOwner
from .errors import (
    AlreadyExists,
    CowfsError,
    InvalidArgument,
    IsADirectory,
    NoAttribute,
    NotADirectory,
    NotEmpty,
    NotFound,
    NotPermitted,
    ObjectNotFound,
    ReadOnly,
    StoreError,
    Unsupported,
)
from .fds import copy_fd
from .fetch import Fetch
from . import layout
from .hooks import LocalChanges
from .journal import BODY_EMPTY, BODY_INLINE, BODY_METADATA_ONLY, BODY_STAGING, Journal, PutRecord
from .keys import KeyMap
from .names import component, is_listable
from .store import ListPage, ObjectInfo, ObjectStore
from .reachability import Reachability
from .threads import Stall, blocking
from .writeback import Upload, WriteBack

log = logging.getLogger(__name__)

ROOT_INODE = 1
#: After a store failure, listings are served from memory for this long before trying again.
#: An fsync allows the store timeout plus this long per byte of the file (1 MiB/s).
FSYNC_BYTES_PER_SECOND = 1024 * 1024
#: Objects up to this size are fetched whole when their metadata is first needed.
PREFETCH_BYTES = 256 * 1024
#: Read-ahead of freshly listed folders: at most this many small files queued, this many fetched at a time.
READ_AHEAD_QUEUE = 4096
#: A folder read while its parent was read this recently is being walked
#: (rm -r, find, du, rsync): its whole subtree is listed at once ...
WALK_WINDOW = 5.0
#: A listing that started less than this long after this mount changed an entry may
#: lack it on a server whose listings lag its writes: a HEAD decides (``_confirm_gone``).
LISTING_LAG = 30.0
#: ... in at most this many flat pages (the store's page size each).
DEEP_PAGES = 5
#: A closed version up to this size is written into its journal record, so
#: the group commit syncs one log, not one staging file per small file.
INLINE_RECORD = 16 * 1024
#: An uploaded staging file at least this big is hard-linked into the clean cache, not copied
#: (a copy of 128 MiB cost 0.3 s); smaller ones are copied so that their inode can be a spare.
LINK_INTO_CACHE = 1024 * 1024
READ_AHEAD_PARALLEL = 8
#: Metadata of a folder's entries (readdir) is fetched this many at a time.
META_PARALLEL = 32
#: Node kinds; SPECIAL is a FIFO, socket or device (an empty object, its type in the mode).
FILE, DIR, LINK, SPECIAL = "file", "dir", "symlink", "special"
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
_PREFIX_ONLY = None  # a listing entry that is a folder
#: Set in tasks that fetch ahead of any reader: their store calls do not hold back write-back.
_AHEAD: contextvars.ContextVar[bool] = contextvars.ContextVar("cowfs_ahead", default=False)


_NO_CHILDREN: dict[str, "Node"] = {}


class Node:
    """One file, folder, symlink or special file the kernel may know by inode number.

    Slots, and a lock, journal id and write-back adapter made only when first
    needed: a mount lists hundreds of thousands of nodes and changes few.
    """

    __slots__ = (
        "ino", "kind", "name", "parent", "mode", "uid", "gid", "mtime_ns", "ctime_ns", "atime_ns", "rdev",
        "times_unsaved", "xattrs", "size",
        "etag", "remote", "shadows", "meta_known", "attached", "target", "children", "listed_at", "staging",
        "committed", "committed_size", "clean_size", "write_failed", "condition", "fd", "open_count", "writers",
        "dirty", "version", "content_gen", "kernel_gen", "touched", "virtual", "pinned", "lookups", "_lock",
        "_rid", "source", "used_at", "walked_at", "checked_at", "fetch",
    )

    def __init__(self, ino: int, kind: str, name: str, parent: Node | None, attrs: Attrs) -> None:
        self.ino = ino
        self.kind = kind
        self.name = name
        self.parent = parent
        self.take_attrs(attrs)
        #: A folder's times moved with its entries since its marker was last written (see ``_entries_changed``).
        self.times_unsaved = False
        self.size = 0
        self.etag: str | None = None
        self.remote = False
        self.shadows = False
        self.meta_known = True
        self.attached = True
        self.target: bytes | None = None
        self.children: dict[str, Node] = {} if kind == DIR else _NO_CHILDREN
        self.listed_at: float | None = None
        self.used_at = 0.0
        self.walked_at = -math.inf
        self.checked_at = -math.inf
        self.staging: str | None = None
        self.committed: str | None = None
        self.committed_size = 0
        self.clean_size = 0
        self.write_failed = False
        self.condition = "etag"
        self.fd: int | None = None
        #: The download of the clean bytes under way, while ``fd`` is None.
        self.fetch: Fetch | None = None
        self.open_count = 0
        self.writers = 0
        self.dirty = False
        self.version = 0
        self.content_gen = 0
        self.kernel_gen = -1
        self.touched = 0.0
        self.virtual: str | None = None
        self.pinned = False
        self.lookups = 0
        self._lock: trio.Lock | None = None
        self._rid: str | None = None
        self.source: _NodeSource | None = None

    @property
    def lock(self) -> trio.Lock:
        if self._lock is None:
            self._lock = trio.Lock()
        return self._lock

    @property
    def rid(self) -> str:
        """Names this node's journal record and write-back entry."""
        if self._rid is None:
            self._rid = Journal.new_id()
        return self._rid

    def path(self) -> tuple[str, ...]:
        parts: list[str] = []
        node: Node | None = self
        while node is not None and node.parent is not None:
            parts.append(node.name)
            node = node.parent
        return tuple(reversed(parts))

    def take_attrs(self, attrs: Attrs) -> None:
        """Mode, owner, times, device number and xattrs as stored (atime stays None unless it was set)."""
        self.mode, self.uid, self.gid, self.rdev = attrs.mode, attrs.uid, attrs.gid, attrs.rdev
        self.mtime_ns, self.atime_ns = attrs.mtime_ns, attrs.atime_ns
        self.ctime_ns = attrs.mtime_ns if attrs.ctime_ns is None else attrs.ctime_ns
        self.xattrs = attrs.xattrs

    @property
    def nlink(self) -> int:
        """0 once removed (an open file outlives its name); a folder's 2 and one per subfolder
        it is known to hold (each one's ``..``), as on a local disk; 1 for anything else."""
        if not self.attached:
            return 0
        if self.kind != DIR:
            return 1
        return 2 + sum(1 for c in self.children.values() if c.kind == DIR and c.attached and not c.virtual)

    @property
    def atime(self) -> int:
        return self.mtime_ns if self.atime_ns is None else self.atime_ns

    def attrs(self) -> Attrs:
        return Attrs(self.mode, self.uid, self.gid, self.mtime_ns, self.xattrs, self.rdev, self.atime_ns, self.ctime_ns)

    def walk(self) -> Iterable[Node]:
        yield self
        for child in list(self.children.values()):
            yield from child.walk()


class _NodeSource:
    """Adapter that lets the write-back engine upload a node."""

    __slots__ = ("node", "rid", "namespace")

    def __init__(self, node: Node, namespace: Namespace) -> None:
        self.node = node
        self.rid = node.rid
        self.namespace = namespace

    def snapshot(self) -> Upload | None:
        return self.namespace._snapshot(self.node)

    async def uploaded(self, upload: Upload, etag: str) -> bool:
        return await self.namespace._uploaded(self.node, upload, etag)

    def conflicted(self, upload: Upload, kept_as: str, etag: str) -> None:
        self.namespace._conflicted(self.node, upload, kept_as, etag)


class Hooks(Protocol):
    """What the namespace asks of the workspace layer (``hooks.py``)."""

    async def create_workspace(self, tenant: str, name: str, uid: int) -> None:
        """``mkdir TENANT/NAME``: write the workspace record."""

    def workspace_deleted(self, tenant: str, name: str) -> None:
        """The workspace is gone: stop tracking its activity."""

    def changed(self, parts: tuple[str, ...]) -> None:
        """An entry at ``parts`` was created, or a change to it closed (before any upload)."""

    async def last_active(self, tenant: str, name: str) -> float | None:
        """The record's ``lastActiveAt`` (epoch seconds): a workspace folder's mtime; None without a record."""

    async def render(self, kind: str, parts: tuple[str, ...], local: LocalChanges) -> bytes:
        """Content of a generated file (``workspace.json`` …) for the folder at ``parts``,
        with ``local``, this mount's changes under it that the store has not got yet."""


#: Generated files in ``.cowfs``: the daemon's status at the mount root, records in each workspace.
ROOT_GENERATED = ("status.json",)
WORKSPACE_GENERATED = ("workspace.json", "sessions.json")


@dataclass
class Handle:
    node: Node
    writable: bool
    data: bytes | None = None


@dataclass
class OpenResult:
    fh: int
    keep_cache: bool
    direct_io: bool = False


@dataclass
class DirHandle:
    node: Node
    entries: list[tuple[str, Node]] = field(default_factory=list)


@dataclass
class StatFs:
    block_size: int
    blocks: int
    blocks_free: int
    files: int
    files_free: int
    name_max: int


def _small_tree(node: Node, page_size: int) -> bool:
    """Whether ``node`` has a subfolder and, as far as listings of every folder under
    it told, no more entries below it than one page of a listing holds: a flat
    listing then costs the one request its own listing would. More pages are not
    worth it from the top of a walk: they come one after the other (on moto ~0.4 s
    each), and a folder the walker reaches a TTL after its listing began is
    listed again anyway."""
    folders = [c for c in node.children.values() if c.kind == DIR and c.attached and not c.virtual]
    room = page_size - len(node.children)
    if not folders or node.listed_at is None:
        return False
    while folders and room >= 0:
        folder = folders.pop()
        if folder.listed_at is None:
            return False
        room -= len(folder.children)
        folders.extend(c for c in folder.children.values() if c.kind == DIR and c.attached)
    return room >= 0


class Namespace:
    """Inode table plus every filesystem operation, over cache, journal and store."""

    def __init__(
        self,
        store: ObjectStore,
        keymap: KeyMap,
        cache: ContentCache,
        journal: Journal,
        writeback: WriteBack,
        limiter: trio.CapacityLimiter,
        tmp_dir: Path,
        hooks: Hooks,
        *,
        uid: int,
        gid: int,
        metadata_ttl: float = 1.0,
        store_timeout: float = 30.0,
        tenants: dict[str, TenantOwner] | None = None,
        clock: Callable[[], float] = time.monotonic,
        reachability: Reachability | None = None,
        marks: ChangeMarks | None = None,
    ) -> None:
        """``tenants`` (from the config file) makes a multi-user mount: only those
        tenants exist, each owned by its uid/gid/mode, and new entries take its group;
        each of their users has a trash folder at the root, as they may not create one there.
        ``marks`` (the change marks of the workspaces) vouch for folders' listings between LISTs."""
        self.store = store
        self.keymap = keymap
        self.cache = cache
        self.journal = journal
        self.writeback = writeback
        self.limiter = limiter
        self.tmp_dir = tmp_dir
        self.hooks = hooks
        self.uid = uid
        self.gid = gid
        self.ttl = metadata_ttl
        self.store_timeout = store_timeout
        self.clock = clock
        self.tenants = tenants
        self.reachability = reachability or Reachability(store.check)
        self.marks = marks
        self.mount_root = len(keymap.root)
        self.listings = 0
        root = Node(ROOT_INODE, DIR, "", None, Attrs(DEFAULT_DIR_MODE, uid, gid, time.time_ns()))
        root.remote = True
        self.root = root
        self.inodes: dict[int, Node] = {ROOT_INODE: root}
        self._next_ino = ROOT_INODE + 1
        self._decorate(root)
        self._own_tenant(root)
        if tenants is not None and not keymap.root:
            trash = sorted({f".Trash-{owner.uid}" for owner in tenants.values()})
            for name in sorted(tenants) + trash:
                tenant = self._new_node(root, name, DIR, Attrs(DEFAULT_DIR_MODE, uid, gid, time.time_ns()))
                tenant.remote, tenant.pinned = True, True
                self._own_tenant(tenant)
        self.handles: dict[int, Handle | DirHandle] = {}
        self._next_fh = 1
        self._tree_lock = trio.Lock()
        self._fetching: dict[Node, trio.Event] = {}
        self._read_ahead_queue: deque[Node] = deque(maxlen=READ_AHEAD_QUEUE)
        self._read_ahead_workers = 0
        self._background: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Host background work (listings behind, read-ahead, downloads); the daemon
        starts it with ``nursery.start`` before it serves the kernel."""
        async with trio.open_nursery() as nursery:
            self._background = nursery
            nursery.start_soon(self.reachability.run)
            task_status.started()
            await trio.sleep_forever()

    @property
    def _nursery(self) -> trio.Nursery:
        assert self._background is not None, "Namespace.run is not running"
        return self._background

    # -- helpers ------------------------------------------------------------

    async def _io(self, fn: Callable[..., Any], *args: Any, stall: Stall | None = None) -> Any:
        """A store call on a worker thread, failing with EIO after ``store_timeout``
        (with ``stall``, after that long without progress); its outcome tells
        ``reachability`` whether the store answers.

        While a caller waits on one, the write-back engine starts no new work.
        """
        waiting = not _AHEAD.get()
        if waiting:
            self.writeback.foreground_started()
        try:
            result = await blocking(fn, *args, limiter=self.limiter, timeout=stall or self.store_timeout)
        except StoreError as exc:
            self.reachability.failed(exc)
            raise
        else:
            self.reachability.answered()
            return result
        finally:
            if waiting:
                self.writeback.foreground_done()

    def _source(self, node: Node) -> _NodeSource:
        """The write-back engine's handle on ``node`` (made when it first has something to upload)."""
        if node.source is None:
            node.source = _NodeSource(node, self)
        return node.source

    def _drop_intent(self, node: Node) -> None:
        """``node`` left the tree: forget its waiting upload and, unless one is under way, its record."""
        if node.source is None:
            return
        self.writeback.cancel(node.source)
        if not self.writeback.is_pending(node.source):
            self.journal.remove_put(node.rid)

    def _pending(self, node: Node) -> bool:
        """Whether ``node`` has an upload waiting or under way."""
        return node.source is not None and self.writeback.is_pending(node.source)

    def _new_node(self, parent: Node, name: str, kind: str, attrs: Attrs) -> Node:
        node = Node(self._next_ino, kind, name, parent, attrs)
        self._next_ino += 1
        self.inodes[node.ino] = node
        parent.children[name] = node
        return node

    def full(self, node: Node) -> tuple[str, ...]:
        """Path of ``node`` from the store root (what the layout rules speak of)."""
        return self.keymap.root + node.path()

    def _decorate(self, node: Node) -> None:
        """Give a folder its generated ``.cowfs`` files, if its depth has any."""
        if node is self.root:
            names = ROOT_GENERATED
        elif node.kind == DIR and layout.is_workspace(self.full(node)):
            names = WORKSPACE_GENERATED
            if self.marks is not None and self._background is not None:
                self._nursery.start_soon(self._check_marks_behind, node)
        else:
            return
        now = time.time_ns()
        control = self._new_node(node, layout.CONTROL_DIR, DIR, Attrs(stat.S_IFDIR | 0o555, self.uid, self.gid, now))
        control.virtual = "dir"
        control.listed_at = math.inf
        for name in names:
            child = self._new_node(control, name, FILE, Attrs(stat.S_IFREG | 0o444, self.uid, self.gid, now))
            child.virtual = name
        for generated in (control, *control.children.values()):
            generated.remote = True

    def _owner(self, full: tuple[str, ...]) -> TenantOwner | None:
        return self.tenants.get(full[0]) if self.tenants and full else None

    def _own_tenant(self, node: Node) -> None:
        """A configured tenant's folder always shows its configured owner and mode, a trash folder its user and 0700."""
        full = self.full(node)
        owner = self._owner(full)
        if owner is not None and len(full) == layout.TENANT_DEPTH:
            node.uid, node.gid, node.mode = owner.uid, owner.gid, stat.S_IFDIR | owner.mode
        trash_uid = layout.trash_owner(full, self.mount_root)
        if trash_uid is not None:
            node.uid, node.mode = trash_uid, stat.S_IFDIR | layout.TRASH_MODE

    @staticmethod
    def _writable(node: Node) -> Node:
        if node.virtual:
            raise ReadOnly(f"{node.name} is generated by cowfs and read-only")
        return node

    def key(self, node: Node) -> str:
        return self.keymap.dir_key(node.path()) if node.kind == DIR else self.keymap.file_key(node.path())

    def node(self, ino: int) -> Node:
        try:
            return self.inodes[ino]
        except KeyError:
            raise NotFound(f"inode {ino}") from None

    def _dir(self, ino: int) -> Node:
        node = self.node(ino)
        if node.kind != DIR:
            raise NotADirectory(node.name)
        return node

    def _detach(self, node: Node) -> None:
        if node.parent is not None and node.parent.children.get(node.name) is node:
            del node.parent.children[node.name]
        node.attached = False
        self._maybe_drop(node)

    def _maybe_drop(self, node: Node) -> None:
        if node.attached or node.lookups > 0 or node.open_count > 0:
            return
        self.inodes.pop(node.ino, None)
        if node.fd is not None:
            os.close(node.fd)
            node.fd = None
        for staging in {node.staging, node.committed} - {None}:
            self.journal.discard_staging(staging)
        node.staging = node.committed = None

    def _claim_key(self, key: str) -> bool:
        """A new object is about to take ``key``: an older pending delete must not hit it.

        True when such a delete was pending (the old object may still be there).
        """
        if self.writeback.cancel_delete(key):
            self.journal.remove_delete(key)
            return True
        return False

    def _release_key(self, key: str) -> None:
        """``key`` must go from the store (after any in-flight put of it)."""
        self.writeback.changed()
        self.journal.write_delete(key)
        self.writeback.schedule_delete(key)

    def _unsynced(self, node: Node) -> bool:
        """Whether the store lacks something this node holds."""
        return not node.remote or node.staging is not None or self._pending(node)

    def _may_hold_object(self, node: Node) -> bool:
        """Whether the store may have an object at this node's key (ours, or an older one we replace)."""
        return node.remote or node.shadows

    def _carries_data(self, node: Node) -> bool:
        """Whether this node's next upload sends its bytes (else the store's copy is the only one)."""
        return (
            not node.remote
            or node.staging is not None
            or node.committed is not None
            or (node.kind == LINK and node.target is not None)
        )

    def _locally_owned(self, node: Node) -> bool:
        """Whether this mount knows better than a listing (unsynced or open)."""
        return self._unsynced(node) or node.open_count > 0 or node.virtual is not None or node.pinned

    # -- listings and metadata -------------------------------------------

    async def _refresh(self, dir_node: Node, *, wait: bool = True) -> None:
        """Make ``dir_node.children`` reflect the store (one LIST per TTL).

        With ``wait=False`` (lookups, getattr, create, rename, rmdir) a folder in continuous
        use — touched within the last TTL, listed within two — is answered from
        its listing while a fresh one is made in the background: a burst of
        creates never waits on a LIST, and another client's new name still
        shows within two TTLs. A folder left alone for a TTL is re-listed first.
        """
        now = self.clock()
        used, dir_node.used_at = dir_node.used_at, now
        if not self._due_for_listing(dir_node, now):
            return
        if (
            not wait
            and dir_node.listed_at is not None
            and now - dir_node.listed_at < 2 * self.ttl
            and now - used < self.ttl
        ):
            if not dir_node.lock.locked():
                self._nursery.start_soon(self._refresh_behind, dir_node)
            return
        await self._list(dir_node)

    async def _refresh_behind(self, dir_node: Node) -> None:
        _AHEAD.set(True)
        try:
            await self._list(dir_node)
        except (CowfsError, OSError) as exc:
            log.debug("listing %s ahead: %s", self.key(dir_node) or "/", exc)

    def _fresh(self, dir_node: Node, now: float) -> bool:
        """Whether ``dir_node``'s listing holds: less than a TTL old, or vouched for by the change marks."""
        if dir_node.listed_at is None:
            return False
        if now - dir_node.listed_at < self.ttl:
            return True
        return self.marks is not None and self.marks.vouches(self.key(dir_node), dir_node.listed_at, now)

    async def _check_marks_behind(self, workspace: Node) -> None:
        """A first check of a workspace's marks as soon as the mount meets it, so the
        folders it lists or makes there from then on are vouched for."""
        _AHEAD.set(True)
        with contextlib.suppress(CowfsError, OSError):
            await self._check_marks(workspace)

    async def _check_marks(self, dir_node: Node) -> None:
        """Read the change marks of ``dir_node``'s workspace before its listing is made or
        renewed (one LIST per workspace per TTL, whatever the number of folders it holds): a
        listing made after a check is vouched for by the next ones."""
        if self.marks is None or not self.reachability.reachable:
            return
        workspace = self.marks.workspace_of(self.key(dir_node))
        if workspace is not None:
            await self.marks.check(workspace, self._io)

    def _due_for_listing(self, dir_node: Node, now: float) -> bool:
        """Whether a LIST could change ``dir_node``: not fresh, not generated, and the
        store answering (a folder listed before is otherwise served as it was)."""
        if self._fresh(dir_node, now) or dir_node.virtual:
            return False
        return dir_node.listed_at is None or self.reachability.reachable

    async def _list(self, dir_node: Node) -> None:
        await self._check_marks(dir_node)
        async with dir_node.lock:
            if self._fresh(dir_node, self.clock()):
                return
            prefix = self.key(dir_node)
            started = self.clock()
            self.listings += 1
            try:
                page = await self._io(self.store.list_all, prefix, "/")
            except StoreError as exc:
                if dir_node.listed_at is None:
                    raise
                log.warning("listing %s failed, serving the last known listing: %s", prefix or "/", exc)
                return
            if dir_node.attached:
                fresh, doubtful = self._merge(dir_node, prefix, page, started)
                await self._confirm_gone(doubtful)
                self._read_ahead(fresh)
            dir_node.listed_at = started

    async def _refresh_walked(self, dir_node: Node) -> None:
        """``_refresh`` for a folder read by readdir: when a walker reached it, or its
        known subtree fits into one page of a flat listing, that listing folds into
        every folder under it, so a walk below costs a few pages instead of a LIST
        per folder (rclone's ``--fast-list``), from the top folder of the walk on."""
        now = self.clock()
        parent = dir_node.parent
        walking = parent is not None and now - parent.walked_at < WALK_WINDOW
        dir_node.walked_at = now
        pages = DEEP_PAGES if walking else 1 if _small_tree(dir_node, self.store.page_size) else 0
        if pages and self._due_for_listing(dir_node, now):
            await self._check_marks(dir_node)
            async with dir_node.lock:
                if not self._fresh(dir_node, self.clock()):
                    await self._list_subtree(dir_node, pages)
        await self._refresh(dir_node)

    async def _list_subtree(self, dir_node: Node, pages: int) -> None:
        prefix = self.key(dir_node)
        started = self.clock()
        self.listings += 1
        try:
            page, complete = await self._io(self.store.list_some, prefix, None, pages)
        except StoreError as exc:
            log.warning("listing under %s failed: %s", prefix or "/", exc)
            return
        last = page.objects[-1].key if page.objects else ""
        folders: dict[str, tuple[list[ObjectInfo], dict[str, None]]] = {}
        for info in page.objects:
            folder = prefix
            for part in info.key[len(prefix):].split("/")[:-1]:
                folders.setdefault(folder, ([], {}))[1][folder + part + "/"] = None
                folder += part + "/"
            folders.setdefault(folder, ([], {}))[0].append(info)
        pending = [dir_node]
        doubtful: list[Node] = []
        while pending:
            node = pending.pop()
            key = self.key(node)
            if complete or (last > key and not last.startswith(key)):
                objects, prefixes = folders.get(key, ([], {}))
                doubtful += self._merge(node, key, ListPage(objects, list(prefixes)), started)[1]
                node.listed_at = started
            pending.extend(c for c in node.children.values() if c.kind == DIR and c.attached and not c.virtual
                           and self.key(c) in folders)
        await self._confirm_gone(doubtful)

    def _merge(self, dir_node: Node, prefix: str, page: ListPage, started: float) -> tuple[list[Node], list[Node]]:
        """Fold a listing into the tree; what changed here since it started wins.

        Returns the nodes it added or whose object changed (their metadata is
        unknown), and the ones it lacks that this mount changed moments before
        it started (``_confirm_gone`` decides those).
        """
        fresh: list[Node] = []
        doubtful: list[Node] = []
        remote: dict[str, ObjectInfo | None] = {}
        base = self.full(dir_node)
        for sub in page.prefixes:
            name = KeyMap.child_name(prefix, sub)
            if (is_listable(name) and layout.visible(base + (name,), True, self.mount_root)
                    and self._may_exist(base + (name,))):
                remote[name] = _PREFIX_ONLY
        for info in page.objects:
            if info.key == prefix:
                continue
            name = KeyMap.child_name(prefix, info.key)
            if is_listable(name) and name not in remote and layout.visible(base + (name,), False, self.mount_root):
                remote[name] = info
        for name, info in remote.items():
            child = dir_node.children.get(name)
            key = prefix + name + ("/" if info is _PREFIX_ONLY else "")
            if child is not None and (self._locally_owned(child) or child.touched >= started):
                continue
            if child is None and self.writeback.may_still_list(key, started):
                continue
            if child is not None and (child.kind == DIR) == (info is _PREFIX_ONLY):
                if info is not None and child.etag != info.etag:
                    self._changed_remotely(child, info)
                    fresh.append(child)
                continue
            if child is not None:
                self._detach(child)
            fresh.append(self._node_from_listing(dir_node, name, info))
        for name, child in list(dir_node.children.items()):
            if name not in remote and not self._locally_owned(child) and child.touched < started:
                if started - child.touched < LISTING_LAG:
                    doubtful.append(child)
                else:
                    self._detach(child)
        return fresh, doubtful

    async def _confirm_gone(self, nodes: list[Node]) -> None:
        """Entries a listing lacks that this mount changed moments before it started:
        each is detached only once the store says it is gone. S3 lists what it stored
        at once, but not every server does (an index updated after the write's
        answer), and a file a listing misses must not vanish from under the program
        that just wrote it."""

        unconfirmed = iter(nodes)

        async def worker() -> None:
            for node in unconfirmed:
                key = self.key(node)
                try:
                    if node.kind == DIR:
                        listing, _ = await self._io(self.store.list_some, key, None, 1)
                        gone = not listing.objects
                    else:
                        await self._io(self.store.head, key)
                        gone = False
                except ObjectNotFound:
                    gone = True
                except (CowfsError, OSError) as exc:
                    log.debug("checking whether %s is gone: %s", key, exc)
                    continue
                if gone and node.attached and self.key(node) == key and not self._locally_owned(node):
                    self._detach(node)

        async with trio.open_nursery() as nursery:
            for _ in range(min(META_PARALLEL, len(nodes))):
                nursery.start_soon(worker)

    def _read_ahead(self, nodes: list[Node]) -> None:
        """Fetch the small files of a just-listed folder in the background, a few at a time.

        Whoever lists a folder usually reads its files next; each small object
        costs one GET either way, but in parallel and ahead of the reader.
        """
        if not self.store.remote:
            return
        self._read_ahead_queue.extend(n for n in nodes if n.kind != DIR and n.size <= PREFETCH_BYTES)
        while self._read_ahead_workers < min(READ_AHEAD_PARALLEL, len(self._read_ahead_queue)):
            self._read_ahead_workers += 1
            self._nursery.start_soon(self._read_ahead_worker)

    async def _read_ahead_worker(self) -> None:
        _AHEAD.set(True)
        try:
            while self._read_ahead_queue:
                node = self._read_ahead_queue.popleft()
                if node.attached:
                    await self._fetch_quietly(node)
        finally:
            self._read_ahead_workers -= 1

    def _may_exist(self, full: tuple[str, ...]) -> bool:
        """With a tenants table, only configured tenants (and trash folders) exist."""
        return (self.tenants is None or len(full) != layout.TENANT_DEPTH or full[0] in self.tenants
                or layout.in_trash(full))

    def _node_from_listing(self, parent: Node, name: str, info: ObjectInfo | None) -> Node:
        if info is _PREFIX_ONLY:
            node = self._new_node(parent, name, DIR, Attrs(DEFAULT_DIR_MODE, self.uid, self.gid, 0))
            self._decorate(node)
            self._own_tenant(node)
        else:
            attrs = Attrs(DEFAULT_FILE_MODE, self.uid, self.gid, int(info.last_modified * 1e9))
            node = self._new_node(parent, name, FILE, attrs)
            node.size, node.etag = info.size, info.etag
        node.remote = True
        node.meta_known = False
        if info is not None and info.metadata is not None:
            self._apply_meta(node, info.metadata, info.last_modified)
        return node

    def _changed_remotely(self, node: Node, info: ObjectInfo) -> None:
        node.etag, node.size = info.etag, info.size
        node.meta_known = False
        node.target = None
        node.content_gen += 1
        if node.fd is not None and node.open_count == 0:
            os.close(node.fd)
            node.fd = None
        if info.metadata is not None:
            self._apply_meta(node, info.metadata, info.last_modified)

    async def _ensure_meta(self, node: Node) -> None:
        """Fill in mode/uid/gid/mtime/xattrs of a listed object: from the cache, else one request.

        A small object is fetched whole (GET returns metadata and bytes at once),
        so a cold ``ls -l`` followed by reads costs one request per file, not two.
        One fetch per node at a time: a reader joins a read-ahead already under way.
        """
        while not (node.meta_known or node.virtual):
            under_way = self._fetching.get(node)
            if under_way is not None:
                await under_way.wait()
                if not node.attached:
                    raise NotFound(node.name)
                continue
            done = self._fetching[node] = trio.Event()
            try:
                await self._fetch_meta(node)
            finally:
                del self._fetching[node]
                done.set()

    async def _fetch_meta(self, node: Node) -> None:
        key = self.key(node)
        meta = await self._cached(self.cache.get_meta, key, node.etag) if node.etag else None
        if meta is not None:
            self._apply_meta(node, meta, node.mtime_ns / 1e9)
            return
        small = node.kind != DIR and node.size <= PREFETCH_BYTES and self.store.remote
        asked = self.clock()
        try:
            if small:
                fd, info = await self._io(self._download, key)
            else:
                info = await self._io(self._head, key)
        except (ObjectNotFound, NotFound):
            if node.kind == DIR:
                full = self.full(node)
                when = await self.hooks.last_active(*full) if layout.is_workspace(full) else None
                if when is not None:
                    node.mtime_ns = node.ctime_ns = int(when * 1e9)
                node.meta_known = True
                return
            self._detach(node)
            raise NotFound(node.name) from None
        if node.kind != DIR:
            node.etag, node.size = info.etag, info.size
            node.checked_at = asked
        self._apply_meta(node, info.metadata or {}, info.last_modified)
        if small:
            if node.kind == LINK:
                node.target = os.pread(fd, info.size, 0)
            os.close(fd)

    def _apply_meta(self, node: Node, meta: dict[str, str], last_modified: float) -> None:
        attrs = from_metadata(meta, is_dir=node.kind == DIR, last_modified=last_modified, uid=self.uid, gid=self.gid)
        node.take_attrs(attrs)
        if node.kind != DIR:
            node.kind = LINK if stat.S_ISLNK(attrs.mode) else SPECIAL if is_special(attrs.mode) else FILE
            if node.kind == FILE and not stat.S_ISREG(attrs.mode):
                node.mode = DEFAULT_FILE_MODE
        self._own_tenant(node)
        node.meta_known = True

    async def _ensure_meta_all(self, nodes: list[Node]) -> None:
        """Metadata of many nodes, a bounded number of fetches at a time."""
        unknown = iter([n for n in nodes if not n.meta_known])

        async def worker() -> None:
            for node in unknown:
                try:
                    await self._ensure_meta(node)
                except NotFound:
                    pass

        async with trio.open_nursery() as nursery:
            for _ in range(META_PARALLEL):
                nursery.start_soon(worker)

    async def _fetch_quietly(self, node: Node) -> None:
        """``_ensure_meta`` for work nobody waits on: a failure only costs a later fetch."""
        try:
            await self._ensure_meta(node)
        except (CowfsError, OSError) as exc:
            log.debug("fetching %s ahead: %s", node.name, exc)

    def _checked_by_parent(self, node: Node) -> bool:
        """Whether a lookup or getattr of ``node`` revalidates it against its parent's listing.

        Not a known folder: walking a path looks up every folder on it once per
        TTL, and re-listing each ancestor for that would make the LIST of a
        tree's root, which grows with the whole tree, part of every file
        access. A folder removed by another client goes when its parent is next
        listed (readdir, or a lookup of a file or of a new name there).
        Not a file whose own GET or HEAD answered within the TTL either: that
        answer is as fresh as a listing (mountpoint-s3's per-entry validation),
        and a reader going through the files of a few folders would otherwise
        have each of them re-listed once per TTL for as long as it reads.
        Nor a file this mount owns for now (unsynced or open): a listing leaves
        it as it is (``_merge``), so a LIST would change nothing about it.
        """
        return node.kind != DIR and self.clock() - node.checked_at >= self.ttl and not self._locally_owned(node)

    async def _child(self, parent: Node, name: str) -> Node:
        """``name`` in ``parent``, revalidated where ``_checked_by_parent`` says so.

        A known file's unknown metadata is fetched first: that request validates it.
        """
        child = parent.children.get(name)
        if child is not None and child.attached and not child.meta_known:
            with contextlib.suppress(NotFound):
                await self._ensure_meta(child)
        if child is None or not child.attached or self._checked_by_parent(child):
            await self._revalidate(parent, child)
            child = parent.children.get(name)
        if child is None:
            raise NotFound(name)
        await self._ensure_meta(child)
        if not child.attached:
            raise NotFound(name)
        return child

    async def _revalidate(self, parent: Node, child: Node | None) -> None:
        """Refresh ``parent``'s listing for ``child``; a child this mount knows is
        served as it is while the store does not answer (in a folder it wrote
        but never listed too), not refused or held up by a timeout."""
        known = child is not None and child.attached
        if known and not self.reachability.reachable:
            return
        try:
            await self._refresh(parent, wait=False)
        except StoreError:
            if not known:
                raise

    # -- lookups ------------------------------------------------------------

    async def lookup(self, parent_ino: int, raw_name: bytes) -> Node:
        parent = self._dir(parent_ino)
        child = await self._child(parent, component(raw_name))
        child.lookups += 1
        return child

    def remember(self, node: Node) -> None:
        """The kernel got an entry for ``node`` (readdirplus): count it."""
        node.lookups += 1

    def forget(self, ino: int, count: int) -> None:
        node = self.inodes.get(ino)
        if node is None or ino == ROOT_INODE:
            return
        node.lookups = max(0, node.lookups - count)
        self._maybe_drop(node)

    async def getattr(self, ino: int) -> Node:
        """Attributes, revalidated against the parent's listing once per TTL (where ``_checked_by_parent``)."""
        node = self.node(ino)
        await self._ensure_meta(node)
        if node.parent is not None and node.attached and self._checked_by_parent(node):
            await self._revalidate(node.parent, node)
            if not node.attached:
                raise NotFound(node.name)
        await self._ensure_meta(node)
        return node

    async def opendir(self, ino: int) -> int:
        return self._add_handle(DirHandle(self._dir(ino)))

    async def readdir(self, fh: int, start: int) -> list[tuple[str, Node]]:
        """Entries from position ``start`` of a listing snapshotted at position 0."""
        handle = self.handles[fh]
        assert isinstance(handle, DirHandle)
        if start == 0:
            node = handle.node
            await self._refresh_walked(node)
            children = list(node.children.values())
            await self._ensure_meta_all(children)
            handle.entries = sorted((c.name, c) for c in children if c.attached and c.virtual != "dir")
        return handle.entries[start:]

    def release_handle(self, fh: int) -> None:
        self.handles.pop(fh, None)

    def _add_handle(self, handle: Handle | DirHandle) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self.handles[fh] = handle
        return fh

    # -- creating and removing --------------------------------------------

    async def _new_entry(self, parent_ino: int, raw_name: bytes, kind: str) -> tuple[Node, str]:
        """Checks shared by create/mkdir/symlink: the name, the key, no clash."""
        parent = self._writable(self._dir(parent_ino))
        name = component(raw_name)
        layout.check_new_entry(self.full(parent) + (name,), kind == DIR, self.mount_root)
        if not self._may_exist(self.full(parent) + (name,)):
            raise NotPermitted(f"tenant {name!r} is not configured on this mount")
        self.keymap.checked_key(parent.path() + (name,), kind == DIR)
        await self._refresh(parent, wait=False)
        if name in parent.children:
            raise AlreadyExists(name)
        return parent, name

    def _group(self, parent: Node, gid: int) -> int:
        """New entries in a configured tenant take the tenant's group (like a setgid folder)."""
        owner = self._owner(self.full(parent))
        return owner.gid if owner is not None else gid

    async def create(self, parent_ino: int, raw_name: bytes, mode: int, uid: int, gid: int) -> tuple[Node, int]:
        async with self._tree_lock:
            parent, name = await self._new_entry(parent_ino, raw_name, FILE)
            gid = self._group(parent, gid)
            attrs = Attrs(stat.S_IFREG | (mode & 0o7777), uid, gid, time.time_ns())
            node = self._new_node(parent, name, FILE, attrs)
            node.staging, node.fd = self.journal.create_staging()
            node.dirty = True
            self.hooks.changed(self.full(node))
            node.shadows = self._claim_key(self.key(node))
            node.condition = "none" if node.shadows else "absent"
            node.lookups += 1
            self._entries_changed(parent)
        return node, self._open_handle(node, writable=True)

    async def mkdir(self, parent_ino: int, raw_name: bytes, mode: int, uid: int, gid: int) -> Node:
        async with self._tree_lock:
            parent, name = await self._new_entry(parent_ino, raw_name, DIR)
            gid = self._group(parent, gid)
            full = self.full(parent) + (name,)
            trash_uid = layout.trash_owner(full, self.mount_root)
            if trash_uid is not None and trash_uid != uid:
                raise NotPermitted(f"{name} is the trash of uid {trash_uid}")
            if layout.is_workspace(full):
                await self.hooks.create_workspace(full[0], name, uid)
            attrs = Attrs(stat.S_IFDIR | (mode & 0o7777), uid, gid, time.time_ns())
            node = self._new_node(parent, name, DIR, attrs)
            self._own_tenant(node)
            node.listed_at = self.clock()
            node.condition = "none"
            node.shadows = self._claim_key(self.key(node))
            if layout.is_workspace(full):
                node.remote, node.touched = True, self.clock()
                self._decorate(node)
            else:
                self._persist(node)
            node.lookups += 1
            self._entries_changed(parent)
            return node

    async def symlink(self, parent_ino: int, raw_name: bytes, target: bytes, uid: int, gid: int) -> Node:
        async with self._tree_lock:
            parent, name = await self._new_entry(parent_ino, raw_name, LINK)
            attrs = Attrs(stat.S_IFLNK | 0o777, uid, self._group(parent, gid), time.time_ns())
            node = self._new_node(parent, name, LINK, attrs)
            node.target = target
            node.size = len(target)
            return self._store_new(node)

    async def mknod(self, parent_ino: int, raw_name: bytes, mode: int, rdev: int, uid: int, gid: int) -> Node:
        """A FIFO, socket or device file: an empty object whose metadata holds its type and
        device number. The kernel has checked that the caller may make a device; the mount's
        ``nodev`` keeps the device from being opened through it."""
        if not is_special(mode):
            raise InvalidArgument(f"cannot make a file of type {stat.S_IFMT(mode):o}")
        async with self._tree_lock:
            parent, name = await self._new_entry(parent_ino, raw_name, SPECIAL)
            has_device = stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            attrs = Attrs(stat.S_IFMT(mode) | (mode & 0o7777), uid, self._group(parent, gid), time.time_ns(),
                          rdev=rdev if has_device else 0)
            return self._store_new(self._new_node(parent, name, SPECIAL, attrs))

    def _store_new(self, node: Node) -> Node:
        """A new symlink or special file (no staging bytes): record and schedule its object."""
        node.condition = "none"
        node.shadows = self._claim_key(self.key(node))
        self._persist(node)
        node.lookups += 1
        assert node.parent is not None
        self._entries_changed(node.parent)
        return node

    def _entries_changed(self, folder: Node) -> None:
        """An entry was added to, removed from or renamed in ``folder``: its mtime and ctime
        move (POSIX). They reach the store with the folder's marker: in its next upload if
        one is due anyway, else at sync or unmount (``sync``) — never a PUT per change."""
        folder.mtime_ns = folder.ctime_ns = time.time_ns()
        folder.times_unsaved = True

    async def readlink(self, ino: int) -> bytes:
        node = self.node(ino)
        await self._ensure_meta(node)
        if node.kind != LINK:
            raise InvalidArgument(f"{node.name} is not a symlink")
        if node.target is None:
            data, _ = await self._io(self.store.get, self.key(node))
            node.target = data
        return node.target

    def _forget_pending(self, node: Node) -> None:
        """``node`` left the tree: drop its not-yet-uploaded intent, delete its object."""
        key = self.key(node)
        self._detach(node)
        self._drop_intent(node)
        if self._may_hold_object(node):
            self._release_key(key)

    async def unlink(self, parent_ino: int, raw_name: bytes) -> None:
        async with self._tree_lock:
            parent = self._dir(parent_ino)
            node = self._writable(await self._child(parent, component(raw_name)))
            if node.kind == DIR:
                raise IsADirectory(node.name)
            self._forget_pending(node)
            self._entries_changed(parent)

    async def rmdir(self, parent_ino: int, raw_name: bytes) -> None:
        async with self._tree_lock:
            parent = self._dir(parent_ino)
            node = self._writable(await self._child(parent, component(raw_name)))
            if node.kind != DIR:
                raise NotADirectory(node.name)
            if node.pinned:
                raise NotPermitted(f"{node.name!r} is configured on this mount")
            await self._refresh(node, wait=False)
            if any(not child.virtual for child in node.children.values()):
                raise NotEmpty(node.name)
            full = self.full(node)
            if layout.is_workspace(full):
                await self._delete_prefix(self.key(node))
                self.hooks.workspace_deleted(full[0], full[1])
            self._forget_pending(node)
            self._entries_changed(parent)

    async def _delete_prefix(self, prefix: str) -> None:
        """Delete every object under ``prefix``, shown or not (a workspace's record too)."""
        listing = await self._io(self.store.list_all, prefix, None)
        for info in listing.objects:
            self._release_key(info.key)

    async def link(self, ino: int, new_parent_ino: int, raw_name: bytes) -> Node:
        """Hard links cannot be expressed as objects: always EPERM."""
        raise NotPermitted("hard links are not supported")

    # -- rename -------------------------------------------------------------

    async def rename(self, old_ino: int, old_raw: bytes, new_ino: int, new_raw: bytes, flags: int) -> None:
        if flags & RENAME_EXCHANGE or flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE):
            raise InvalidArgument("RENAME_EXCHANGE is not supported")
        async with self._tree_lock:
            old_parent, new_parent = self._dir(old_ino), self._dir(new_ino)
            node = self._writable(await self._child(old_parent, component(old_raw)))
            self._writable(new_parent)
            new_name = component(new_raw)
            new_full = self.full(new_parent) + (new_name,)
            if not (layout.can_rename(self.full(node), self.mount_root) and layout.can_rename(new_full, self.mount_root)):
                raise NotPermitted("tenants, workspaces and trash folders cannot be renamed")
            layout.check_new_entry(new_full, node.kind == DIR, self.mount_root)
            self.keymap.checked_key(new_parent.path() + (new_name,), node.kind == DIR)
            await self._refresh(new_parent, wait=False)
            target = new_parent.children.get(new_name)
            if target is node:
                return
            if target is not None:
                self._writable(target)
            ancestor: Node | None = new_parent
            while ancestor is not None:
                if ancestor is node:
                    raise InvalidArgument("cannot move a folder into itself")
                ancestor = ancestor.parent
            if target is not None:
                await self._check_replace(node, target, flags)
            old_key = self.key(node)
            new_key = (
                self.keymap.dir_key(new_parent.path() + (new_name,))
                if node.kind == DIR
                else self.keymap.file_key(new_parent.path() + (new_name,))
            )
            if target is not None:
                self._detach(target)
                self._drop_intent(target)
            shadows = self._claim_key(new_key) or (target is not None and self._may_hold_object(target))
            carries_data = node.kind != DIR and self._carries_data(node)
            node.ctime_ns = time.time_ns()
            if node.kind == DIR:
                await self._move_dir_objects(old_key, new_key)
                node.times_unsaved = True  # the copied marker has the old ctime
            elif not carries_data:
                await self.writeback.copy(old_key, new_key, to_metadata(node.attrs()))
            if self._may_hold_object(node):
                self._release_key(old_key)
            node.shadows = shadows
            del old_parent.children[node.name]
            node.name, node.parent = new_name, new_parent
            new_parent.children[new_name] = node
            node.condition = "none"
            for folder in {old_parent, new_parent}:
                self._entries_changed(folder)
            if carries_data:
                self._persist(node)
            now = self.clock()
            for moved in node.walk():
                moved.touched = now
                if self._pending(moved):
                    self._write_record(moved)

    async def _check_replace(self, node: Node, target: Node, flags: int) -> None:
        if flags & RENAME_NOREPLACE:
            raise AlreadyExists(target.name)
        if node.kind == DIR:
            if target.kind != DIR:
                raise NotADirectory(target.name)
            await self._refresh(target)
            if target.children:
                raise NotEmpty(target.name)
        elif target.kind == DIR:
            raise IsADirectory(target.name)

    async def _move_dir_objects(self, old_prefix: str, new_prefix: str) -> None:
        """Server-side copy of every object under a folder, then delete the old keys.

        The whole move is one journal intent, logged before the first copy and
        settled once every old key's delete is logged: replay after a crash
        anywhere in between finishes it (the new tree whole, the old one gone).
        A copy that fails fails the rename, and the copies made are deleted.
        """
        listing = await self._io(self.store.list_all, old_prefix, None)
        objects = [(o.key, o.etag) for o in listing.objects if not self.writeback.deleting(o.key)]
        move = self.journal.write_move(old_prefix, new_prefix, objects)
        copied: list[str] = []

        async def copy(key: str) -> None:
            target = self.keymap.rebase(key, old_prefix, new_prefix)
            await self.writeback.copy(key, target)
            copied.append(target)

        for key, _ in objects:
            self._claim_key(self.keymap.rebase(key, old_prefix, new_prefix))
        try:
            async with trio.open_nursery() as nursery:
                for key, _ in objects:
                    nursery.start_soon(copy, key)
        except BaseException:
            for target in copied:
                self._release_key(target)
            self.journal.remove_move(move)
            raise
        for key, _ in objects:
            self._release_key(key)
        self.journal.remove_move(move)

    # -- open files -----------------------------------------------------------

    def _open_handle(self, node: Node, writable: bool) -> int:
        node.open_count += 1
        if writable:
            node.writers += 1
        return self._add_handle(Handle(node, writable))

    def handle(self, fh: int) -> Handle:
        handle = self.handles.get(fh)
        if not isinstance(handle, Handle):
            raise InvalidArgument(f"bad file handle {fh}")
        return handle

    async def open(self, ino: int, flags: int) -> OpenResult:
        """Open a file; the kernel may keep its page cache while the content is unchanged."""
        node = self.node(ino)
        await self._ensure_meta(node)
        if node.kind == DIR:
            raise IsADirectory(node.name)
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        if node.virtual:
            if writable:
                self._writable(node)
            return await self._open_generated(node)
        if writable:
            await self._make_writable(node, truncate=bool(flags & os.O_TRUNC))
        keep_cache = node.kernel_gen == node.content_gen
        node.kernel_gen = node.content_gen
        return OpenResult(self._open_handle(node, writable), keep_cache)

    async def _open_generated(self, node: Node) -> OpenResult:
        """Render a generated file once per open; direct I/O, as its size is not known before."""
        assert node.parent is not None and node.virtual is not None
        owner = node.parent.parent or node.parent
        local = self._local_changes(owner) if owner is not self.root else LocalChanges()
        data = await self.hooks.render(node.virtual, self.full(owner), local)
        node.size = len(data)
        node.mtime_ns = node.ctime_ns = time.time_ns()
        fh = self._open_handle(node, writable=False)
        self.handle(fh).data = data
        return OpenResult(fh, keep_cache=False, direct_io=True)

    async def _make_writable(self, node: Node, truncate: bool) -> None:
        """Give ``node`` a staging file holding its current bytes (copy on write)."""
        async with node.lock:
            if node.staging is None:
                staging, fd = self.journal.create_staging()
                try:
                    if not truncate and node.size > 0:
                        src = await self._clean_fd(node)
                        await trio.to_thread.run_sync(copy_fd, src, fd, node.size)
                except BaseException:
                    os.close(fd)
                    self.journal.discard_staging(staging)
                    raise
                if node.fd is not None:
                    os.close(node.fd)
                node.staging, node.fd = staging, fd
                node.clean_size = node.size
        if truncate and node.size:
            await self._before_change(node, 0)
            os.ftruncate(node.fd, 0)
            self._modified(node, 0)

    async def _clean_fd(self, node: Node) -> int:
        """A descriptor on the clean bytes of ``node`` (``node.lock`` held): cache hit, else the whole download."""
        while node.fd is None:
            fetch = await self._start_fetch(node)
            if fetch is not None:
                await fetch.ended()
        return node.fd

    async def _start_fetch(self, node: Node) -> Fetch | None:
        """With ``node.lock`` held: the clean bytes from the cache (``node.fd`` set, None
        returned), else the download that brings them, started in the background
        when none is under way."""
        if node.fd is not None:
            return None
        if node.fetch is not None:
            return node.fetch
        key = self.key(node)
        fd = await self._cached(self.cache.open, key, node.etag) if node.etag else None
        if fd is not None:
            node.fd = fd
            return None
        fetch = node.fetch = Fetch(self.store_timeout)
        self._nursery.start_soon(self._fetch, node, fetch, key)
        return fetch

    async def _fetch(self, node: Node, fetch: Fetch, key: str) -> None:
        """Download ``node``'s object beside its readers; once whole, the node keeps
        the descriptor (unless it left the table or took a staging file meanwhile)."""
        asked = self.clock()
        try:
            fd, info = await self._io(self._download, key, fetch, stall=fetch.stall)
        except BaseException as exc:
            log.debug("download of %s failed: %s", key, exc)
            fetch.close()
            fetch.finish(exc if isinstance(exc, Exception) else StoreError(f"the download of {key} was stopped"))
            if not isinstance(exc, Exception):
                raise
            return
        finally:
            if node.fetch is fetch:
                node.fetch = None
        fetch.hand_over()
        fetch.finish()
        if node.fd is not None or self.inodes.get(node.ino) is not node:
            os.close(fd)
            return
        node.checked_at = asked
        if info.etag != node.etag:
            node.etag, node.size = info.etag, info.size
            self._apply_meta(node, info.metadata or {}, info.last_modified)
        node.fd = fd

    async def _arrival(self, node: Node, fetch: Fetch, offset: int, size: int) -> None:
        """Until the download has the bytes of a read; far ahead of its stream, a
        ranged GET brings them (and a window after them) sooner."""
        if not fetch.has(offset, size):
            await fetch.started()
            wanted = fetch.to_ask(offset)
            if wanted is not None:
                self._nursery.start_soon(self._fetch_range, fetch, self.key(node), *wanted)
        await fetch.wait_for(offset, size)

    async def _fetch_range(self, fetch: Fetch, key: str, start: int, end: int) -> None:
        try:
            await self._io(self._download_range, fetch, key, start, end)
        except (CowfsError, OSError) as exc:
            log.debug("ranged GET of %s failed, the stream brings those bytes: %s", key, exc)

    def _download_range(self, fetch: Fetch, key: str, start: int, end: int) -> None:
        """Bytes ``[start, end)`` of the stream's version into the file it is filling;
        blocking. The file is opened by name: once whole it is the cache's and
        renamed, and a range finishing after that has nothing to add."""
        assert fetch.info is not None
        fd = os.open(fetch.path, os.O_WRONLY)
        try:
            self.store.get_range_into(key, fetch.info, fd, start, end, fetch.report)
        finally:
            os.close(fd)

    async def _cached(self, lookup: Callable[..., Any], key: str, etag: str) -> Any:
        """A cache lookup that never holds up the event loop: when a worker thread is
        writing to the cache, it is repeated on a thread instead of waiting here."""
        try:
            return lookup(key, etag, wait=False)
        except CacheBusy:
            return await trio.to_thread.run_sync(lookup, key, etag)

    def _head(self, key: str) -> ObjectInfo:
        """An object's metadata, remembered in the cache when the store is remote; blocking."""
        info = self.store.head(key)
        if self.store.remote:
            self.cache.put_meta(key, info.etag, info.metadata or {})
        return info

    def _download(self, key: str, fetch: Fetch | None = None) -> tuple[int, ObjectInfo]:
        """Fetch a whole object into the cache; blocking, runs on a worker thread.

        The download is moved into the cache, not copied; the returned
        descriptor is read-only, since the file is now the cache's. With
        ``fetch``, that descriptor is the fetch's from the start, and each piece
        is reported to it as it lands.
        """
        fd, name = tempfile.mkstemp(dir=self.tmp_dir)
        path = Path(name)
        try:
            with os.fdopen(fd, "r+b") as tmp:
                reader = os.open(path, os.O_RDONLY)
                try:
                    if fetch is not None:
                        fetch.adopt(reader, name)
                    info = self.store.get_to_file(key, tmp, fetch.report if fetch else None)
                except BaseException as exc:
                    if fetch is None:
                        os.close(reader)
                    if isinstance(exc, ObjectNotFound):
                        raise NotFound(key) from None
                    raise
            self.cache.move_in(key, info.etag, path, info.metadata or {})
            return reader, info
        finally:
            path.unlink(missing_ok=True)

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        handle = self.handle(fh)
        if handle.data is not None:
            return handle.data[offset:offset + size]
        node = handle.node
        while node.fd is None:
            fetch = node.fetch
            if fetch is None:
                async with node.lock:
                    fetch = await self._start_fetch(node)
                if fetch is None:
                    break
            await self._arrival(node, fetch, offset, size)
            if fetch.fd is not None and node.fd is None:
                return os.pread(fetch.fd, size, offset)
        return os.pread(node.fd, size, offset)

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        handle = self.handle(fh)
        if not handle.writable:
            raise InvalidArgument("handle not open for writing")
        node = handle.node
        try:
            await self._before_change(node, offset)
            written = os.pwrite(node.fd, data, offset)
        except OSError:
            node.write_failed = True
            raise
        self._modified(node, max(node.size, offset + written))
        return written

    async def _before_change(self, node: Node, offset: int) -> None:
        """Copy on write: bytes a pending record refers to are never changed in place.

        Appends past the committed size need no copy: the record names the size.
        """
        if (
            node.committed is None
            or node.committed != node.staging
            or offset >= node.committed_size
            or not self._pending(node)
        ):
            return
        async with node.lock:
            if node.committed != node.staging:
                return
            staging, fd = self.journal.create_staging()
            try:
                await trio.to_thread.run_sync(copy_fd, node.fd, fd, node.size)
            except BaseException:
                os.close(fd)
                self.journal.discard_staging(staging)
                raise
            os.close(node.fd)
            node.staging, node.fd = staging, fd

    def _modified(self, node: Node, size: int) -> None:
        node.size = size
        node.mtime_ns = node.ctime_ns = time.time_ns()
        node.dirty = True

    async def flush(self, fh: int) -> None:
        handle = self.handle(fh)
        if handle.writable:
            self._commit(handle.node)

    async def fsync(self, fh: int) -> None:
        """Returns once the store has the file; ``EIO`` when it cannot take it now
        (an attempt failed, or none finished within the store timeout and a
        second per MiB). The file stays in the journal and goes up later."""
        node = self.handle(fh).node
        self._commit(node)
        await self.writeback.flush(self._source(node), self.store_timeout + node.size / FSYNC_BYTES_PER_SECOND)

    async def release(self, fh: int) -> None:
        handle = self.handles.pop(fh, None)
        if not isinstance(handle, Handle):
            return
        node = handle.node
        node.open_count -= 1
        if handle.writable:
            node.writers -= 1
            self._commit(node)
        if node.open_count == 0:
            if not node.attached:
                self._maybe_drop(node)
            elif node.staging is None and node.fd is not None:
                os.close(node.fd)
                node.fd = None
            elif node.staging is not None and not self._pending(node):
                await self._retire_staging(node)

    # -- persistence -------------------------------------------------------

    def _commit(self, node: Node) -> None:
        """Close/flush: record the node's changes in the journal (group commit), schedule upload."""
        if node.write_failed:
            self._revert_failed_writes(node)
        if not node.dirty or not node.attached:
            return
        self._persist(node)

    def _revert_failed_writes(self, node: Node) -> None:
        """A write failed (ENOSPC…): fall back to the last committed version, never store a torn file."""
        log.warning("a write to %s failed; keeping its last complete version", self.key(node))
        node.write_failed = False
        node.content_gen += 1
        if node.committed is not None and node.committed != node.staging:
            os.close(node.fd)
            self.journal.discard_staging(node.staging)
            node.staging, node.fd = node.committed, os.open(self.journal.staging_path(node.committed), os.O_RDWR)
        if node.committed is not None:
            os.ftruncate(node.fd, node.committed_size)
            node.size, node.dirty = node.committed_size, False
        elif node.remote:
            os.close(node.fd)
            self.journal.discard_staging(node.staging)
            node.staging, node.fd = None, None
            node.size, node.dirty = node.clean_size, False
        else:
            os.ftruncate(node.fd, 0)
            node.size, node.dirty = 0, True

    def _persist(self, node: Node) -> None:
        self.writeback.changed()
        self.hooks.changed(self.full(node))
        node.touched = self.clock()
        node.dirty = node.times_unsaved = False
        node.version += 1
        if node.staging != node.committed and node.committed is not None:
            self.journal.discard_staging(node.committed)
        node.committed, node.committed_size = node.staging, node.size
        log.debug("persist %s v%d staging=%s remote=%s", self.key(node), node.version, node.staging, node.remote)
        self._write_record(node)
        self.writeback.schedule(self._source(node))

    def _intent(self, node: Node) -> tuple[str, str | None, bytes]:
        if node.kind == DIR:
            return BODY_EMPTY, None, b""
        if node.kind == LINK:
            return BODY_INLINE, None, node.target or b""
        if node.committed is not None:
            return BODY_STAGING, node.committed, b""
        return (BODY_METADATA_ONLY if node.remote else BODY_EMPTY), None, b""

    def _record(self, node: Node) -> PutRecord:
        """The version of ``node`` to store, as the journal records it (a staging file by id)."""
        body, staging, inline = self._intent(node)
        return PutRecord(node.rid, self.key(node), body, staging, to_metadata(node.attrs()), inline, node.committed_size)

    def _write_record(self, node: Node) -> None:
        """Journal ``node``'s version; a small file's bytes go into the record itself."""
        record = self._record(node)
        if record.body == BODY_STAGING and record.staging is not None and record.size <= INLINE_RECORD:
            record = dataclasses.replace(record, body=BODY_INLINE, staging=None,
                                         inline=self._committed_bytes(node, record.staging))
        self.journal.write_put(record)

    def _committed_bytes(self, node: Node, staging: str) -> bytes:
        """The closed version of a small file (its staging file's first ``committed_size`` bytes)."""
        if node.fd is not None and node.staging == staging:
            return os.pread(node.fd, node.committed_size, 0)
        with open(self.journal.staging_path(staging), "rb") as f:
            return f.read(node.committed_size)

    def _snapshot(self, node: Node) -> Upload | None:
        if not node.attached:
            return None
        return Upload(
            self._record(node),
            node.version,
            # Not on a folder marker: every empty object has the same ETag, so it would guard nothing
            # but the marker's existence, and a lost condition leaves a conflict copy in the folder.
            if_match=node.etag if node.condition == "etag" and node.remote and node.kind != DIR else None,
            if_none_match=node.condition == "absent",
        )

    async def _uploaded(self, node: Node, upload: Upload, etag: str) -> bool:
        current = self.key(node) if node.attached else None
        if current != upload.key:
            if not self._key_in_use(upload.key):
                self._release_key(upload.key)
            return not node.attached
        node.etag, node.remote, node.condition = etag, True, "etag"
        node.touched = self.clock()
        retire = upload.version == node.version and node.open_count == 0 and node.staging is not None
        if not (retire and await self._retire_staging(node, upload.metadata)):
            await trio.to_thread.run_sync(self.cache.put_meta, upload.key, etag, upload.metadata)
        return True

    def _conflicted(self, node: Node, upload: Upload, kept_as: str, etag: str) -> None:
        """Another writer's version holds the key now: the path shows theirs, and ours is
        the conflict copy ``kept_as`` beside it.

        A file still open, changed since, or with a newer version on its way
        becomes the conflict copy (its inode moves to that name, and open
        descriptors and later closes write into the copy); a closed one drops
        its bytes and shows theirs.
        """
        node.condition = "etag"
        parent = node.parent
        if parent is None or not node.attached or self.key(node) != upload.key:
            return
        parent.listed_at = None
        if node.open_count or node.dirty or upload.version != node.version:
            del parent.children[node.name]
            node.name = kept_as.rsplit("/", 1)[-1]
            parent.children[node.name] = node
            node.etag, node.remote = etag, True
            node.touched = self.clock()
            if self._pending(node):
                self._write_record(node)
            return
        for staging in {node.staging, node.committed} - {None}:
            self.journal.discard_staging(staging)
        if node.fd is not None:
            os.close(node.fd)
        node.staging = node.committed = node.fd = None
        node.etag, node.meta_known, node.remote = None, False, True
        node.content_gen += 1
        node.touched = 0.0

    def _key_in_use(self, key: str) -> bool:
        """Whether some node in the tree now maps to ``key`` (it must not be deleted)."""
        node = self.root
        path = key[len(self.keymap.dir_key(())):].rstrip("/").split("/")
        for name in path:
            node = node.children.get(name)
            if node is None:
                return False
        return True

    async def _retire_staging(self, node: Node, metadata: dict[str, str] | None = None) -> bool:
        """Hand an uploaded, closed staging file to the clean cache and free it.

        ``metadata`` (the upload's) goes into the cache with the bytes, in one
        step; returns whether the cache was given it.
        """
        staging, version, key, etag = node.staging, node.version, self.key(node), node.etag
        if staging is None or etag is None:
            return False
        if node.committed != staging:
            if not node.dirty:
                log.debug("dropped unchanged staging of %s", key)
                os.close(node.fd)
                node.fd, node.staging = None, None
                self.journal.discard_staging(staging)
            return False
        fd = node.fd
        # The worker reads its own descriptor: a write meanwhile may close node.fd (copy on
        # write), and a number reused by another file must not fill the cache with its bytes.
        copy = os.dup(fd)
        try:
            linked = await trio.to_thread.run_sync(self._keep_clean, key, etag, staging, copy, metadata)
        finally:
            os.close(copy)
        if (
            node.staging != staging
            or node.committed != staging
            or node.version != version
            or node.dirty
            or node.open_count
        ):
            await trio.to_thread.run_sync(self.cache.discard, key)
            return True
        os.close(fd)
        node.fd = None
        node.staging = node.committed = None
        log.debug("retired %s v%d", key, version)
        self.journal.discard_staging(staging, reuse=not linked)
        return True

    def _keep_clean(self, key: str, etag: str, staging: str, fd: int, metadata: dict[str, str] | None) -> bool:
        """Give the cache an uploaded staging file's bytes; True when the cache now shares its inode."""
        if os.fstat(fd).st_size < LINK_INTO_CACHE:
            self.cache.put_file(key, etag, fd, metadata)
            return False
        path = self.tmp_dir / f"retired-{uuid.uuid4().hex}"
        try:
            os.link(self.journal.staging_path(staging), path)
        except OSError as exc:
            log.warning("could not keep a clean copy of %s: %s", key, exc)
            if metadata is not None:
                self.cache.put_meta(key, etag, metadata)
            return False
        try:
            self.cache.move_in(key, etag, path, metadata)
        finally:
            path.unlink(missing_ok=True)
        return True

    # -- attributes ---------------------------------------------------------

    async def setattr(
        self,
        ino: int,
        *,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        size: int | None = None,
        mtime_ns: int | None = None,
        atime_ns: int | None = None,
    ) -> Node:
        node = self._writable(self.node(ino))
        await self._ensure_meta(node)
        if size is not None:
            if node.kind == DIR:
                raise IsADirectory(node.name)
            if node.kind != FILE:
                raise InvalidArgument(f"{node.name} is not a regular file")
            await self._make_writable(node, truncate=size == 0)
            await self._before_change(node, size)
            os.ftruncate(node.fd, size)
            self._modified(node, size)
        if mode is not None:
            node.mode = stat.S_IFMT(node.mode) | (mode & 0o7777)
        if uid is not None:
            node.uid = uid
        if gid is not None:
            node.gid = gid
        if mtime_ns is not None:
            node.mtime_ns = mtime_ns
        if atime_ns is not None:
            node.atime_ns = atime_ns
        self._attrs_changed(node)
        return node

    def _derived_xattrs(self, node: Node) -> dict[str, bytes]:
        """``user.cowfs.type`` / ``user.cowfs.session``, which follow from the path."""
        full = self.full(node)
        if node.virtual or layout.workspace_of(full) is None:
            return {}
        kind, session = layout.artifact_type(full)
        derived = {"user.cowfs.type": kind.encode()}
        if session is not None:
            derived["user.cowfs.session"] = session.encode()
        return derived

    async def getxattr(self, ino: int, raw_name: bytes) -> bytes:
        """A stored or derived ``user.*`` value. Other names are never stored: the
        kernel asks for ``security.capability`` before every write, answered here
        without revalidating the file."""
        name = _xattr_name(raw_name)
        if not name.startswith("user."):
            self.node(ino)
            raise NoAttribute(name)
        node = await self.getattr(ino)
        value = self._derived_xattrs(node).get(name, node.xattrs.get(name))
        if value is None:
            raise NoAttribute(name)
        return value

    async def listxattr(self, ino: int) -> list[bytes]:
        """Stored names only: the derived ones are read by name, so copying tools never try to set them."""
        node = await self.getattr(ino)
        return [name.encode() for name in sorted(node.xattrs)]

    async def setxattr(self, ino: int, raw_name: bytes, value: bytes) -> None:
        node = self._writable(await self.getattr(ino))
        name = _xattr_name(raw_name)
        if not name.startswith("user."):
            raise Unsupported(f"only user.* extended attributes are stored ({name})")
        if name in layout.DERIVED_XATTRS:
            raise NotPermitted(f"{name} follows from the path and cannot be set")
        updated = dict(node.xattrs, **{name: bytes(value)})
        check_xattrs_fit(updated)
        node.xattrs = updated
        self._attrs_changed(node)

    async def removexattr(self, ino: int, raw_name: bytes) -> None:
        node = self._writable(await self.getattr(ino))
        name = _xattr_name(raw_name)
        if name in layout.DERIVED_XATTRS:
            raise NotPermitted(f"{name} follows from the path and cannot be removed")
        if name not in node.xattrs:
            raise NoAttribute(name)
        node.xattrs = {k: v for k, v in node.xattrs.items() if k != name}
        self._attrs_changed(node)

    def _attrs_changed(self, node: Node) -> None:
        node.ctime_ns = time.time_ns()
        node.dirty = True
        if node.writers == 0:
            self._commit(node)

    def statfs(self) -> StatFs:
        block = 4096
        total = 2**50 // block
        used = sum((n.size + block - 1) // block for n in self.inodes.values())
        return StatFs(block, total, total - used, 2**32, 2**32 - len(self.inodes), 255)

    # -- whole-mount operations ---------------------------------------------

    def _local_changes(self, folder: Node) -> LocalChanges:
        """Entries under ``folder`` the store has not got yet, and the deletes still to go."""
        files = {
            self.key(n): ObjectInfo(self.key(n), 0 if n.kind == DIR else n.size, "", n.mtime_ns / 1e9)
            for n in folder.walk()
            if n is not folder and n.virtual is None and self._unsynced(n)
        }
        return LocalChanges(files, self.writeback.deleting)

    def dirty_bytes(self) -> int:
        """Bytes held in staging files that the store does not have yet."""
        return sum(
            n.size
            for n in self.inodes.values()
            if n.staging is not None and (n.dirty or self._pending(n))
        )

    async def sync(self) -> None:
        """Everything written before this call reaches the store (sync, umount, SIGTERM)."""
        for node in list(self.inodes.values()):
            if node.dirty and node.open_count:
                self._commit(node)
            elif node.times_unsaved and node.attached and len(self.full(node)) > layout.WORKSPACE_DEPTH:
                self._persist(node)
        await self.writeback.drain()


def _xattr_name(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument("xattr name is not UTF-8") from None
