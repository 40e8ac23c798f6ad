"""The filesystem's semantics, with no FUSE in sight: the parts, composed.

``Namespace`` answers the operations the kernel calls (``fs.py`` only
translates) by handing them to its parts, each with one job: the inode table
and handles (``table``), the tenant and workspace layout (``view``), folders'
listings and entries' metadata (``listing``), file contents (``contents``),
journal records and write-back (``persistence``), and changes to the tree
(``tree``). Tests drive these methods directly too.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import trio

from .. import layout
from ..attrs import DEFAULT_DIR_MODE, Attrs, check_xattrs_fit
from ..cache import ContentCache
from ..changes import ChangeMarks
from ..summaries import Summaries
from ..config import TenantOwner
from ..errors import InvalidArgument, IsADirectory, NoAttribute, NotPermitted, Unsupported
from ..gateway import StoreCalls
from ..hooks import Hooks, LocalChanges
from ..journal import Journal
from ..keys import KeyMap
from ..names import component
from ..store import ObjectStore
from ..writeback import WriteBack
from .contents import Contents, KernelPages
from .leases import Kernel, Leases
from .listings import Listings
from .node import ROOT_INODE, Kind, Node
from .persistence import Persistence
from .services import Services
from .table import DirHandle, Handle, Inodes, OpenResult
from .tree import TreeChanges
from .view import WorkspaceView

log = logging.getLogger(__name__)

#: An fsync allows the store timeout plus this long per byte of the file (1 MiB/s).
FSYNC_BYTES_PER_SECOND = 1024 * 1024


@dataclass
class StatFs:
    block_size: int
    blocks: int
    blocks_free: int
    files: int
    files_free: int
    name_max: int


class Namespace:
    """Every filesystem operation, over cache, journal and store."""

    def __init__(
        self,
        store: ObjectStore,
        keymap: KeyMap,
        cache: ContentCache,
        journal: Journal,
        writeback: WriteBack,
        calls: StoreCalls,
        tmp_dir: Path,
        hooks: Hooks,
        *,
        uid: int,
        gid: int,
        metadata_ttl: float = 1.0,
        tenants: dict[str, TenantOwner] | None = None,
        clock: Callable[[], float] = time.monotonic,
        marks: ChangeMarks | None = None,
        summaries: Summaries | None = None,
        kernel: Kernel | None = None,
        kernel_pages: KernelPages | None = None,
    ) -> None:
        """``tenants`` (from the config file) makes a multi-user mount (``WorkspaceView``).
        ``calls`` must report to a ``Reachability``: what a degraded mount serves follows it.
        ``marks``, ``summaries``: the change marks and attribute summaries of the workspaces (``Listings``).
        ``kernel`` takes entries back from the kernel (``Leases``): without it entries are kept a TTL.
        ``kernel_pages`` has the kernel let go of its pages of a file read through a window (``Window``)."""
        assert calls.reachability is not None
        self.store = store
        self.writeback = writeback
        self.calls = calls
        self.hooks = hooks
        self.reachability = calls.reachability
        root = Node(ROOT_INODE, Kind.DIR, "", None, Attrs(DEFAULT_DIR_MODE, uid, gid, time.time_ns()))
        root.remote = True
        self.root = root
        self.inodes = Inodes(root, keymap, self._drop)
        self.view = WorkspaceView(self.inodes, uid, gid, tenants)
        services = Services(store, cache, journal, writeback, calls, tmp_dir, clock, self._nursery)
        self.contents = Contents(services, self.inodes, self.view, kernel_pages)
        self.leases = Leases(services, self.inodes, marks, metadata_ttl, kernel)
        self.persistence = Persistence(services, self.inodes, self.contents, self.leases, hooks.changed)
        self.listing = Listings(services, self.inodes, self.view, self.contents, self.persistence, self.leases,
                                hooks.last_active, metadata_ttl, marks, summaries)
        self.tree = TreeChanges(services, self.inodes, self.view, self.listing, self.persistence, hooks)
        self._background: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Host background work (listings behind, read-ahead, downloads); the daemon
        starts it with ``nursery.start`` before it serves the kernel."""
        async with trio.open_nursery() as nursery:
            self._background = nursery
            nursery.start_soon(self.reachability.run)
            nursery.start_soon(self.leases.run)
            task_status.started()
            await trio.sleep_forever()

    def _nursery(self) -> trio.Nursery:
        assert self._background is not None, "Namespace.run is not running"
        return self._background

    def _drop(self, node: Node) -> None:
        self.contents.drop(node)

    @property
    def listings(self) -> int:
        """LISTs made so far (``status.json``)."""
        return self.listing.count

    def node(self, ino: int) -> Node:
        return self.inodes.node(ino)

    # -- lookups ------------------------------------------------------------

    async def lookup(self, parent_ino: int, raw_name: bytes) -> Node:
        parent = self.inodes.dir(parent_ino)
        child = await self.listing.child(parent, component(raw_name))
        child.lookups += 1
        return child

    def kernel_timeout(self, node: Node) -> float:
        """How long the kernel may keep ``node``'s entry and attributes (``Leases``)."""
        return self.leases.timeout(node)

    def remember(self, node: Node) -> None:
        """The kernel got an entry for ``node`` (readdirplus): count it."""
        node.lookups += 1

    def forget(self, ino: int, count: int) -> None:
        self.inodes.forget(ino, count)

    async def getattr(self, ino: int) -> Node:
        """Attributes, revalidated against the parent's listing once per TTL (where the listings say)."""
        return await self.listing.revalidated(self.inodes.node(ino))

    async def opendir(self, ino: int) -> int:
        return self.inodes.add_handle(DirHandle(self.inodes.dir(ino)))

    async def readdir(self, fh: int, start: int) -> list[tuple[str, Node]]:
        """Entries from position ``start`` of a listing snapshotted at position 0."""
        handle = self.inodes.dir_handle(fh)
        if start == 0:
            self.writeback.active()
            node = handle.node
            await self.listing.refresh_walked(node)
            children = sorted(node.children.items())
            await self.listing.meta_for_readdir(node, [child for _, child in children])
            handle.entries = [entry for entry in children if entry[1].attached and entry[1].virtual != "dir"]
        return handle.entries[start:]

    def release_handle(self, fh: int) -> None:
        self.inodes.release_handle(fh)

    def handle(self, fh: int) -> Handle:
        return self.inodes.handle(fh)

    async def readlink(self, ino: int) -> bytes:
        node = self.inodes.node(ino)
        await self.listing.ensure_meta(node)
        if node.kind is not Kind.LINK:
            raise InvalidArgument(f"{node.name} is not a symlink")
        if node.target is None:
            data, _ = await self.calls.call(self.store.get, self.inodes.key(node), background=False)
            node.target = data
        return node.target

    # -- changes to the tree ----------------------------------------------------

    async def create(self, parent_ino: int, raw_name: bytes, mode: int, uid: int, gid: int) -> tuple[Node, int]:
        node = await self.tree.create(parent_ino, raw_name, mode, uid, gid)
        return node, self.inodes.open_handle(node, writable=True)

    async def mkdir(self, parent_ino: int, raw_name: bytes, mode: int, uid: int, gid: int) -> Node:
        return await self.tree.mkdir(parent_ino, raw_name, mode, uid, gid)

    async def symlink(self, parent_ino: int, raw_name: bytes, target: bytes, uid: int, gid: int) -> Node:
        return await self.tree.symlink(parent_ino, raw_name, target, uid, gid)

    async def mknod(self, parent_ino: int, raw_name: bytes, mode: int, rdev: int, uid: int, gid: int) -> Node:
        return await self.tree.mknod(parent_ino, raw_name, mode, rdev, uid, gid)

    async def unlink(self, parent_ino: int, raw_name: bytes) -> None:
        await self.tree.unlink(parent_ino, raw_name)

    async def rmdir(self, parent_ino: int, raw_name: bytes) -> None:
        await self.tree.rmdir(parent_ino, raw_name)

    async def rename(self, old_ino: int, old_raw: bytes, new_ino: int, new_raw: bytes, flags: int) -> None:
        await self.tree.rename(old_ino, old_raw, new_ino, new_raw, flags)

    async def link(self, ino: int, new_parent_ino: int, raw_name: bytes) -> Node:
        """Hard links cannot be expressed as objects: always EPERM."""
        raise NotPermitted("hard links are not supported")

    # -- open files -----------------------------------------------------------

    async def open(self, ino: int, flags: int) -> OpenResult:
        """Open a file; the kernel may keep its page cache while the content is unchanged."""
        node = self.inodes.node(ino)
        await self.listing.ensure_meta(node)
        if node.kind is Kind.DIR:
            raise IsADirectory(node.name)
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        self.writeback.active()
        if node.virtual:
            if writable:
                self.view.writable(node)
            return await self._open_generated(node)
        if writable:
            await self.contents.make_writable(node, truncate=bool(flags & os.O_TRUNC))
        content = node.need_content()
        keep_cache = content.kernel_gen == content.gen
        content.kernel_gen = content.gen
        return OpenResult(self.inodes.open_handle(node, writable), keep_cache)

    async def _open_generated(self, node: Node) -> OpenResult:
        """Render a generated file once per open; direct I/O, as its size is not known before."""
        assert node.parent is not None and node.virtual is not None
        owner = node.parent.parent or node.parent
        local = self.persistence.local_changes(owner) if owner is not self.root else LocalChanges()
        data = await self.hooks.render(node.virtual, self.inodes.full(owner), local)
        node.size = len(data)
        node.mtime_ns = node.ctime_ns = time.time_ns()
        fh = self.inodes.open_handle(node, writable=False)
        self.inodes.handle(fh).data = data
        return OpenResult(fh, keep_cache=False, direct_io=True)

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        handle = self.inodes.handle(fh)
        if handle.data is not None:
            return handle.data[offset:offset + size]
        return await self.contents.read(handle.node, offset, size)

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        handle = self.inodes.handle(fh)
        if not handle.writable:
            raise InvalidArgument("handle not open for writing")
        return await self.contents.write(handle.node, offset, data)

    async def flush(self, fh: int) -> None:
        handle = self.inodes.handle(fh)
        if handle.writable:
            self.persistence.commit(handle.node)

    async def fsync(self, fh: int) -> None:
        """Returns once the store has the file; ``EIO`` when it cannot take it now
        (an attempt failed, or none finished within the store timeout and a
        second per MiB). The file stays in the journal and goes up later."""
        node = self.inodes.handle(fh).node
        self.persistence.commit(node)
        await self.writeback.flush(self.persistence.source(node),
                                   self.calls.timeout + node.size / FSYNC_BYTES_PER_SECOND)

    async def release(self, fh: int) -> None:
        handle = self.inodes.release_handle(fh)
        if not isinstance(handle, Handle):
            return
        node = handle.node
        content = node.need_content()
        content.open_count -= 1
        if handle.writable:
            content.writers -= 1
            self.persistence.commit(node)
        if content.open_count == 0 and self.contents.closed(node):
            await self.contents.retire(node)

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
        node = self.view.writable(self.inodes.node(ino))
        await self.listing.ensure_meta(node)
        if size is not None:
            if node.kind is Kind.DIR:
                raise IsADirectory(node.name)
            if node.kind is not Kind.FILE:
                raise InvalidArgument(f"{node.name} is not a regular file")
            await self.contents.make_writable(node, truncate=size == 0)
            await self.contents.writable(node, size)
            self.contents.truncate(node, size)
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

    async def getxattr(self, ino: int, raw_name: bytes) -> bytes:
        """A stored or derived ``user.*`` value. Other names are never stored: the
        kernel asks for ``security.capability`` before every write, answered here
        without revalidating the file."""
        name = _xattr_name(raw_name)
        if not name.startswith("user."):
            self.inodes.node(ino)
            raise NoAttribute(name)
        node = await self.getattr(ino)
        value = self.view.derived_xattrs(node).get(name, node.xattrs.get(name))
        if value is None:
            raise NoAttribute(name)
        return value

    async def listxattr(self, ino: int) -> list[bytes]:
        """Stored names only: the derived ones are read by name, so copying tools never try to set them."""
        node = await self.getattr(ino)
        return [name.encode() for name in sorted(node.xattrs)]

    async def setxattr(self, ino: int, raw_name: bytes, value: bytes) -> None:
        node = self.view.writable(await self.getattr(ino))
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
        node = self.view.writable(await self.getattr(ino))
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
        if node.content is None or node.content.writers == 0:
            self.persistence.commit(node)

    def statfs(self) -> StatFs:
        block = 4096
        total = 2**50 // block
        inodes = self.inodes.inodes
        used = sum((n.size + block - 1) // block for n in inodes.values())
        return StatFs(block, total, total - used, 2**32, 2**32 - len(inodes), 255)

    # -- whole-mount operations ---------------------------------------------

    def dirty_bytes(self) -> int:
        """Bytes held in staging files that the store does not have yet."""
        return self.persistence.dirty_bytes()

    async def sync(self) -> None:
        """Everything written before this call reaches the store (sync, umount, SIGTERM)."""
        for node in list(self.inodes.inodes.values()):
            if node.dirty and node.open_count:
                self.persistence.commit(node)
            elif node.times_unsaved and node.attached and len(self.inodes.full(node)) > layout.WORKSPACE_DEPTH:
                self.persistence.persist(node)
        await self.writeback.drain()


def _xattr_name(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument("xattr name is not UTF-8") from None
