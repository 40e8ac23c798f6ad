"""Listings: the tree kept in line with the store, and the metadata of its entries.

A folder is listed at most once per TTL; one in continuous use is answered
from its listing while a fresh one is made behind it; a walk (``rm -r``,
``find``, ``du``) gets the whole subtree in a few flat pages. An entry is
revalidated by its parent's listing, or by its own GET or HEAD within the TTL
(per-entry validation). What a listing lacks that this mount changed moments
before it started goes only once the store says it is gone. Small files of a
freshly listed folder are read ahead. A folder of thousands of entries whose
attributes no summary gave is read by name first, and lookups fetch ahead of
a walk through it (``ahead.py``). A listing never overrides what this
mount holds unsynced or open, and never shows again a key with a pending
delete (``_merge``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections import OrderedDict, deque
from typing import Awaitable, Callable, TypeVar

import trio

from .. import layout
from ..attrs import DEFAULT_DIR_MODE, DEFAULT_FILE_MODE, Attrs
from ..changes import ChangeMarks
from ..summaries import Entry, Summaries, usable
from ..errors import CowfsError, NotFound, ObjectNotFound, StoreError
from ..keys import KeyMap
from ..names import is_listable
from ..store import ListPage, ObjectInfo
from .ahead import StatAhead
from .contents import Contents
from .leases import Leases
from .node import Kind, Node
from .persistence import Persistence
from .services import Part, Services
from .table import Inodes
from .view import WorkspaceView

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Objects up to this size are fetched whole when their metadata is first needed.
PREFETCH_BYTES = 256 * 1024
#: Read-ahead of freshly listed folders: at most this many small files queued, this many fetched at a time.
READ_AHEAD_QUEUE = 4096
READ_AHEAD_PARALLEL = 8
#: Metadata of a folder's entries (readdir) is fetched this many at a time ...
META_PARALLEL = 32
#: ... unless more than this many are unknown: readdir then gives the names first, and
#: lookups fetch the entries ahead of them (``StatAhead``), in this many folders at a time.
NAMES_FIRST_AFTER = 1000
NAMES_FIRST_FOLDERS = 8
#: A folder read while its parent was read this recently is being walked
#: (rm -r, find, du, rsync): its whole subtree is listed at once ...
WALK_WINDOW = 5.0
#: ... in at most this many flat pages (the store's page size each).
DEEP_PAGES = 5
#: A listing that started less than this long after this mount changed an entry may
#: lack it on a server whose listings lag its writes: a HEAD decides (``_confirm_gone``).
LISTING_LAG = 30.0
_PREFIX_ONLY = None  # a listing entry that is a folder


def small_tree(node: Node, page_size: int) -> bool:
    """Whether ``node`` has a subfolder and, as far as listings of every folder under
    it told, no more entries below it than one page of a listing holds: a flat
    listing then costs the one request its own listing would. More pages are not
    worth it from the top of a walk: they come one after the other, and a folder
    the walker reaches a TTL after its listing began is listed again anyway."""
    folders = node.subfolders()
    room = page_size - len(node.children)
    if not folders or node.listed_at is None:
        return False
    while folders and room >= 0:
        folder = folders.pop()
        if folder.listed_at is None:
            return False
        room -= len(folder.children)
        folders.extend(c for c in folder.children.values() if c.kind is Kind.DIR and c.attached)
    return room >= 0


class Listings(Part):
    """Folders' entries and entries' metadata, from the store, per TTL."""

    def __init__(
        self,
        services: Services,
        inodes: Inodes,
        view: WorkspaceView,
        contents: Contents,
        persistence: Persistence,
        leases: Leases,
        last_active: Callable[[str, str], Awaitable[float | None]],
        ttl: float,
        marks: ChangeMarks | None = None,
        summaries: Summaries | None = None,
    ) -> None:
        """``last_active(tenant, name)`` dates a workspace folder (``Hooks.last_active``);
        ``marks`` (the change marks of the workspaces) vouch for folders' listings between LISTs;
        ``summaries`` give the attributes of a listed folder's files without a request per file."""
        super().__init__(services, inodes)
        self.view = view
        self.contents = contents
        self.persistence = persistence
        self.leases = leases
        self.last_active = last_active
        self.ttl = ttl
        self.marks = marks
        self.summaries = summaries
        #: LISTs made (``status.json``).
        self.count = 0
        self._fetching: dict[Node, trio.Event] = {}
        self._read_ahead_queue: deque[Node] = deque(maxlen=READ_AHEAD_QUEUE)
        self._stat_ahead_queue: deque[Node] = deque(maxlen=READ_AHEAD_QUEUE)
        self._read_ahead_workers = 0
        self._names_first: OrderedDict[Node, StatAhead] = OrderedDict()

    # -- folders ------------------------------------------------------------------

    async def refresh(self, dir_node: Node, *, wait: bool = True) -> None:
        """Make ``dir_node.children`` reflect the store (one LIST per TTL).

        With ``wait=False`` (lookups, getattr, create, rename, rmdir) a folder in continuous
        use — touched within the last TTL, listed within two — is answered from
        its listing while a fresh one is made in the background: a burst of
        creates never waits on a LIST, and another client's new name still
        shows within two TTLs. A folder left alone for a TTL, or named by
        another mount's change mark since its listing, is re-listed first.
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
            and not (self.marks is not None
                     and self.marks.named_since(self.inodes.key(dir_node), dir_node.listed_at))
        ):
            if not dir_node.lock.locked():
                self.nursery().start_soon(self._refresh_behind, dir_node)
            return
        await self._list(dir_node)

    async def _refresh_behind(self, dir_node: Node) -> None:
        try:
            await self._list(dir_node, background=True)
        except (CowfsError, OSError) as exc:
            log.debug("listing %s ahead: %s", self.inodes.key(dir_node) or "/", exc)

    def _fresh(self, dir_node: Node, now: float) -> bool:
        """Whether ``dir_node``'s listing holds: less than a TTL old, or vouched for by the change marks."""
        if dir_node.listed_at is None:
            return False
        if now - dir_node.listed_at < self.ttl:
            return True
        return self.marks is not None and self.marks.vouches(self.inodes.key(dir_node), dir_node.listed_at,
                                                             dir_node.listed_at + dir_node.listing_took, now)

    def met(self, node: Node) -> None:
        """The mount just met a workspace folder: read its change marks now, so the folders
        it lists or makes there from then on are vouched for."""
        if self.marks is not None and layout.is_workspace(self.inodes.full(node)):
            self.nursery().start_soon(self._check_marks_behind, node)

    async def _check_marks_behind(self, workspace: Node) -> None:
        with contextlib.suppress(CowfsError, OSError):
            await self._check_marks(workspace, background=True)

    async def _check_marks(self, dir_node: Node, background: bool) -> None:
        """Read the change marks of ``dir_node``'s workspace before its listing is made or
        renewed (one LIST per workspace per TTL, whatever the number of folders it holds): a
        listing made after a check is vouched for by the next ones."""
        workspace = self.marks.workspace_of(self.inodes.key(dir_node)) if self.marks is not None else None
        if workspace is not None:
            await self.leases.check(workspace, background)

    def _due_for_listing(self, dir_node: Node, now: float) -> bool:
        """Whether a LIST could change ``dir_node``: not fresh, not generated, and the
        store answering (a folder listed before is otherwise served as it was)."""
        if self._fresh(dir_node, now) or dir_node.virtual:
            return False
        return dir_node.listed_at is None or self.reachable

    async def _list(self, dir_node: Node, background: bool = False) -> None:
        await self._check_marks(dir_node, background)
        async with dir_node.lock:
            if self._fresh(dir_node, self.clock()):
                return
            prefix = self.inodes.key(dir_node)
            started = self.clock()
            self.count += 1
            try:
                page, summary = await self._beside_summary(
                    dir_node, functools.partial(self.calls.paged, self.store.list_all, prefix, "/",
                                                background=background), background)
                took = self.clock() - started
            except StoreError as exc:
                if dir_node.listed_at is None:
                    raise
                log.warning("listing %s failed, serving the last known listing: %s", prefix or "/", exc)
                return
            if dir_node.attached:
                fresh, doubtful = self._merge(dir_node, prefix, page, started)
                await self._summarized(dir_node, fresh, background, summary)
                await self._confirm_gone(doubtful, background)
                self._read_ahead(fresh)
            dir_node.listed_at, dir_node.listing_took = started, took

    async def refresh_walked(self, dir_node: Node) -> None:
        """``refresh`` for a folder read by readdir: when a walker reached it, or its
        known subtree fits into one page of a flat listing, that listing folds into
        every folder under it, so a walk below costs a few pages instead of a LIST
        per folder (rclone's ``--fast-list``), from the top folder of the walk on."""
        now = self.clock()
        parent = dir_node.parent
        walking = parent is not None and now - parent.walked_at < WALK_WINDOW
        dir_node.walked_at = now
        pages = DEEP_PAGES if walking else 1 if small_tree(dir_node, self.store.page_size) else 0
        if pages and self._due_for_listing(dir_node, now):
            await self._check_marks(dir_node, background=False)
            async with dir_node.lock:
                if not self._fresh(dir_node, self.clock()):
                    await self._list_subtree(dir_node, pages)
        await self.refresh(dir_node)

    async def _list_subtree(self, dir_node: Node, pages: int) -> None:
        key = self.inodes.key
        prefix = key(dir_node)
        started = self.clock()
        self.count += 1
        try:
            (page, complete), summary = await self._beside_summary(
                dir_node, functools.partial(self.calls.paged, self.store.list_some, prefix, None, pages,
                                            background=False), False)
            took = self.clock() - started
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
        listed: list[tuple[Node, list[Node]]] = []
        while pending:
            node = pending.pop()
            node_key = key(node)
            if complete or (last > node_key and not last.startswith(node_key)):
                objects, prefixes = folders.get(node_key, ([], {}))
                fresh, gone = self._merge(node, node_key, ListPage(objects, list(prefixes)), started)
                doubtful += gone
                if fresh:
                    listed.append((node, fresh))
                node.listed_at, node.listing_took = started, took
            pending.extend(c for c in node.subfolders() if key(c) in folders)
        async with trio.open_nursery() as nursery:
            for node, fresh in listed:
                nursery.start_soon(self._summarized, node, fresh, False, summary if node is dir_node else None)
        await self._confirm_gone(doubtful, background=False)

    def _merge(self, dir_node: Node, prefix: str, page: ListPage, started: float) -> tuple[list[Node], list[Node]]:
        """Fold a listing into the tree; what changed here since it started wins.

        Returns the nodes it added or whose object changed (their metadata is
        unknown), and the ones it lacks that this mount changed moments before
        it started (``_confirm_gone`` decides those).
        """
        fresh: list[Node] = []
        doubtful: list[Node] = []
        changed: list[Node] = []
        remote: dict[str, ObjectInfo | None] = {}
        base = self.inodes.full(dir_node)
        mount_root = self.view.mount_root
        locally_owned = self.persistence.locally_owned
        for sub in page.prefixes:
            name = KeyMap.child_name(prefix, sub)
            if (is_listable(name) and layout.visible(base + (name,), True, mount_root)
                    and self.view.may_exist(base + (name,))):
                remote[name] = _PREFIX_ONLY
        for info in page.objects:
            if info.key == prefix:
                continue
            name = KeyMap.child_name(prefix, info.key)
            if is_listable(name) and name not in remote and layout.visible(base + (name,), False, mount_root):
                remote[name] = info
        for name, info in remote.items():
            child = dir_node.children.get(name)
            key = prefix + name + ("/" if info is _PREFIX_ONLY else "")
            if child is not None and (locally_owned(child) or child.touched >= started):
                continue
            if child is None and self.writeback.may_still_list(key, started):
                continue
            if child is not None and (child.kind is Kind.DIR) == (info is _PREFIX_ONLY):
                if info is not None and child.etag != info.etag:
                    self._changed_remotely(child, info)
                    fresh.append(child)
                    changed.append(child)
                continue
            if child is not None:
                self.inodes.detach(child)
                changed.append(child)
            fresh.append(self._node_from_listing(dir_node, name, info))
        for name, child in list(dir_node.children.items()):
            if name not in remote and not locally_owned(child) and child.touched < started:
                if started - child.touched < LISTING_LAG:
                    doubtful.append(child)
                else:
                    self.inodes.detach(child)
                    changed.append(child)
        if changed:
            self.leases.take_back(dir_node, changed)
        return fresh, doubtful

    async def _confirm_gone(self, nodes: list[Node], background: bool) -> None:
        """Entries a listing lacks that this mount changed moments before it started:
        each is detached only once the store says it is gone. S3 lists what it stored
        at once, but not every server does (an index updated after the write's
        answer), and a file a listing misses must not vanish from under the program
        that just wrote it."""

        unconfirmed = iter(nodes)

        async def worker() -> None:
            for node in unconfirmed:
                key = self.inodes.key(node)
                try:
                    if node.kind is Kind.DIR:
                        listing, _ = await self.calls.call(self.store.list_some, key, None, 1, background=background)
                        gone = not listing.objects
                    else:
                        await self.calls.call(self.store.head, key, background=background)
                        gone = False
                except ObjectNotFound:
                    gone = True
                except (CowfsError, OSError) as exc:
                    log.debug("checking whether %s is gone: %s", key, exc)
                    continue
                if (gone and node.attached and self.inodes.key(node) == key
                        and not self.persistence.locally_owned(node)):
                    self._gone(node)

        async with trio.open_nursery() as nursery:
            for _ in range(min(META_PARALLEL, len(nodes))):
                nursery.start_soon(worker)

    async def _beside_summary(self, dir_node: Node, listing: Callable[[], Awaitable[T]],
                              background: bool) -> tuple[T, dict[str, Entry] | None]:
        """``listing()``'s result and, the first time the folder is listed (its files' attributes
        all unknown), its summary read beside it: one round trip per folder of a cold walk, not two."""
        if self.summaries is None or dir_node.listed_at is not None:
            return await listing(), None
        summary: dict[str, Entry] = {}

        async def read() -> None:
            summary.update(await self._read_summary(dir_node, background))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            result = await listing()
        return result, summary

    async def _read_summary(self, dir_node: Node, background: bool) -> dict[str, Entry]:
        assert self.summaries is not None
        return await self.summaries.read(self.inodes.key(dir_node),
                                         functools.partial(self.calls.call, background=background))

    async def _summarized(self, dir_node: Node, nodes: list[Node], background: bool,
                          summary: dict[str, Entry] | None = None) -> None:
        """Attributes of a folder's newly listed files from its summary (one GET, or ``summary``
        when read already), each taken only while the listing shows the very object it
        describes: a walk after a remount needs no HEAD per file."""
        files = [n for n in nodes if n.kind is not Kind.DIR and not n.meta_known and n.etag]
        if self.summaries is None or not files:
            return
        entries = summary if summary is not None else await self._read_summary(dir_node, background)
        found = usable({n.name: n.etag for n in files}, entries)
        for node in files:
            meta = found.get(node.name)
            if meta is not None and node.attached and not node.meta_known:
                self.view.apply_meta(node, meta, node.mtime_ns / 1e9)

    def _read_ahead(self, nodes: list[Node]) -> None:
        """Fetch the small files of a just-listed folder in the background, a few at a time.

        Whoever lists a folder usually reads its files next; each small object
        costs one GET either way, but in parallel and ahead of the reader. Not past
        ``NAMES_FIRST_AFTER`` new entries: nobody reads a folder of thousands file
        by file soon, and their fetches would hold up those ahead of its lookups.
        """
        if not self.store.remote or len(nodes) > NAMES_FIRST_AFTER:
            return
        self._read_ahead_queue.extend(n for n in nodes if n.kind is not Kind.DIR and n.size <= PREFETCH_BYTES)
        self._start_read_ahead()

    def _start_read_ahead(self) -> None:
        """Workers for the queues, ``READ_AHEAD_PARALLEL`` at most, also while lookups wait
        for the HEADs ahead of them: on a server answering in a millisecond 8 keep ahead of
        ``ls -l``, and 32 cost the daemon more CPU (threads handing the GIL over) than they
        saved (``ls -l`` of 10,000 objects on Ceph RGW: 14 s with 32, 10–11 s with 8)."""
        queued = len(self._read_ahead_queue) + len(self._stat_ahead_queue)
        while self._read_ahead_workers < min(READ_AHEAD_PARALLEL, queued):
            self._read_ahead_workers += 1
            self.nursery().start_soon(self._read_ahead_worker)

    async def _read_ahead_worker(self) -> None:
        """Fetches ahead of lookups first (someone waits for them next), then small files."""
        try:
            while self._stat_ahead_queue or self._read_ahead_queue:
                if self._stat_ahead_queue:
                    node = self._stat_ahead_queue.popleft()
                    if node.attached and not node.meta_known:
                        await self._fetch_quietly(node, whole=False)
                    continue
                node = self._read_ahead_queue.popleft()
                if node.attached and node.meta_known:
                    await self._fetch_content_quietly(node)
                elif node.attached:
                    await self._fetch_quietly(node)
        finally:
            self._read_ahead_workers -= 1

    async def _fetch_content_quietly(self, node: Node) -> None:
        """A small file whose attributes a summary gave: its bytes into the cache, unless there."""
        key, etag = self.inodes.key(node), node.etag
        if etag is None:
            return
        try:
            fd = await self.contents.cached(self.cache.open, key, etag)
            if fd is None:
                fd, _ = await self.calls.call(self.contents.download, key, background=True)
        except (CowfsError, OSError) as exc:
            log.debug("fetching %s ahead: %s", node.name, exc)
            return
        os.close(fd)

    def _node_from_listing(self, parent: Node, name: str, info: ObjectInfo | None) -> Node:
        if info is _PREFIX_ONLY:
            node = self.inodes.new_node(parent, name, Kind.DIR, Attrs(DEFAULT_DIR_MODE, self.view.uid, self.view.gid, 0))
            self.view.decorate(node)
            self.met(node)
            self.view.own_tenant(node)
        else:
            attrs = Attrs(DEFAULT_FILE_MODE, self.view.uid, self.view.gid, int(info.last_modified * 1e9))
            node = self.inodes.new_node(parent, name, Kind.FILE, attrs)
            node.size, node.etag = info.size, info.etag
        node.remote = True
        node.meta_known = False
        if info is not None and info.metadata is not None:
            self.view.apply_meta(node, info.metadata, info.last_modified)
        return node

    def _gone(self, node: Node) -> None:
        """``node``'s object left the store: out of the tree, and out of the kernel."""
        if node.parent is not None:
            self.leases.take_back(node.parent, [node])
        self.inodes.detach(node)

    def _changed_remotely(self, node: Node, info: ObjectInfo) -> None:
        node.etag, node.size = info.etag, info.size
        node.meta_known = False
        node.target = None
        self.contents.changed_remotely(node)
        if info.metadata is not None:
            self.view.apply_meta(node, info.metadata, info.last_modified)

    # -- entries --------------------------------------------------------------------

    async def ensure_meta(self, node: Node, background: bool = False, whole: bool = True) -> None:
        """Fill in mode/uid/gid/mtime/xattrs of a listed object: from the cache, else one request.

        A small object is fetched whole (GET returns metadata and bytes at once),
        so a cold ``ls -l`` followed by reads costs one request per file, not two.
        Not ``whole``: a HEAD, its answer kept in the node only (a fetch ahead of
        the lookups in a folder of thousands of entries, where a file's bytes and a
        cache entry per file cost more than the HEAD and are seldom read again).
        One fetch per node at a time: a reader joins a read-ahead already under way.
        """
        while not node.attrs_known:
            under_way = self._fetching.get(node)
            if under_way is not None:
                await under_way.wait()
                if not node.attached:
                    raise NotFound(node.name)
                continue
            done = self._fetching[node] = trio.Event()
            try:
                await self._fetch_meta(node, background, whole)
            finally:
                del self._fetching[node]
                done.set()

    async def _fetch_meta(self, node: Node, background: bool, whole: bool) -> None:
        key = self.inodes.key(node)
        if whole:
            meta = await self.contents.cached(self.cache.get_meta, key, node.etag) if node.etag else None
            if meta is not None:
                self.view.apply_meta(node, meta, node.mtime_ns / 1e9)
                return
        small = whole and node.kind is not Kind.DIR and node.size <= PREFETCH_BYTES and self.store.remote
        asked = self.clock()
        try:
            if small:
                fd, info = await self.calls.call(self.contents.download, key, background=background)
            else:
                head = self.contents.head if whole else self.store.head
                info = await self.calls.call(head, key, background=background)
        except (ObjectNotFound, NotFound):
            if node.kind is Kind.DIR:
                full = self.inodes.full(node)
                when = await self.last_active(*full) if layout.is_workspace(full) else None
                if when is not None:
                    node.mtime_ns = node.ctime_ns = int(when * 1e9)
                node.meta_known = True
                return
            self._gone(node)
            raise NotFound(node.name) from None
        if node.kind is not Kind.DIR:
            node.etag, node.size = info.etag, info.size
            node.checked_at = asked
        self.view.apply_meta(node, info.metadata or {}, info.last_modified)
        if small:
            if node.kind is Kind.LINK:
                node.target = os.pread(fd, info.size, 0)
            os.close(fd)

    async def meta_for_readdir(self, folder: Node, children: list[Node]) -> None:
        """The attributes readdir gives with ``children`` (sorted by name): every unknown one
        fetched first, unless there are more than ``NAMES_FIRST_AFTER``: then the names go
        at once with their listing's attributes (``Node.meta_known`` stays False; the kernel
        is told to ask again), and lookups fetch the entries ahead of them."""
        unknown = [c for c in children if not c.attrs_known]
        if len(unknown) <= NAMES_FIRST_AFTER:
            self._names_first.pop(folder, None)
            await self.ensure_meta_all(unknown)
            return
        self._names_first[folder] = StatAhead(unknown)
        self._names_first.move_to_end(folder)
        while len(self._names_first) > NAMES_FIRST_FOLDERS:
            self._names_first.popitem(last=False)

    def _fetch_ahead_of(self, folder: Node, name: str) -> None:
        """``name`` of a folder listed by name first is looked up: the entries after it are next."""
        ahead = self._names_first.get(folder)
        if ahead is None:
            return
        self._stat_ahead_queue.extend(ahead.after(name))
        self._start_read_ahead()

    async def ensure_meta_all(self, nodes: list[Node]) -> None:
        """Metadata of many nodes, a bounded number of fetches at a time."""
        todo = [n for n in nodes if not n.meta_known]
        if not todo:
            return
        unknown = iter(todo)

        async def worker() -> None:
            for node in unknown:
                try:
                    await self.ensure_meta(node)
                except NotFound:
                    pass

        async with trio.open_nursery() as nursery:
            for _ in range(min(META_PARALLEL, len(todo))):
                nursery.start_soon(worker)

    async def _fetch_quietly(self, node: Node, whole: bool = True) -> None:
        """``ensure_meta`` for work nobody waits on: a failure only costs a later fetch."""
        try:
            await self.ensure_meta(node, background=True, whole=whole)
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
        return (node.kind is not Kind.DIR and self.clock() - node.checked_at >= self.ttl
                and not self.persistence.locally_owned(node))

    async def child(self, parent: Node, name: str) -> Node:
        """``name`` in ``parent``, revalidated where ``_checked_by_parent`` says so.

        A known file's unknown metadata is fetched first: that request validates it.
        """
        self._fetch_ahead_of(parent, name)
        child = parent.children.get(name)
        if child is not None and child.attached and not child.meta_known:
            with contextlib.suppress(NotFound):
                await self.ensure_meta(child)
        if child is None or not child.attached or self._checked_by_parent(child):
            await self._revalidate(parent, child)
            child = parent.children.get(name)
        if child is None:
            raise NotFound(name)
        await self.ensure_meta(child)
        if not child.attached:
            raise NotFound(name)
        return child

    async def revalidated(self, node: Node) -> Node:
        """``node`` with its metadata, revalidated against its parent's listing where
        ``_checked_by_parent`` says so (getattr)."""
        await self.ensure_meta(node)
        if node.parent is not None and node.attached and self._checked_by_parent(node):
            await self._revalidate(node.parent, node)
            if not node.attached:
                raise NotFound(node.name)
        await self.ensure_meta(node)
        return node

    async def _revalidate(self, parent: Node, child: Node | None) -> None:
        """Refresh ``parent``'s listing for ``child``; a child this mount knows is
        served as it is while the store does not answer (in a folder it wrote
        but never listed too), not refused or held up by a timeout."""
        known = child is not None and child.attached
        if known and not self.reachable:
            return
        try:
            await self.refresh(parent, wait=False)
        except StoreError:
            if not known:
                raise
