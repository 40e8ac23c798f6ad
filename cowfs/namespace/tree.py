"""Changes to the tree: create, mkdir, symlink, mknod, unlink, rmdir, rename.

Each holds ``tree_lock``, so a listing never interleaves with half a rename.
A new entry claims its key (an older pending delete must not hit it), and a
removed one releases its key; a folder's rename copies every object under it
as one journal intent, so a crash anywhere in between leaves the new tree whole
and the old one gone after replay.
"""

from __future__ import annotations

import contextlib

import stat
import time

import trio

from .. import layout
from ..attrs import Attrs, is_special, to_metadata
from ..errors import AlreadyExists, InvalidArgument, IsADirectory, NotADirectory, NotEmpty, NotPermitted
from ..hooks import Hooks
from ..names import component
from .listings import Listings
from .node import Condition, Kind, Node
from .persistence import Persistence
from .services import Part, Services
from .table import Inodes
from .view import WorkspaceView

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


class TreeChanges(Part):
    """The structural operations of the namespace."""

    def __init__(self, services: Services, inodes: Inodes, view: WorkspaceView, listings: Listings,
                 persistence: Persistence, hooks: Hooks) -> None:
        super().__init__(services, inodes)
        self.view = view
        self.listings = listings
        self.persistence = persistence
        self.hooks = hooks
        self.tree_lock = trio.Lock()

    async def _new_entry(self, parent_ino: int, raw_name: bytes, kind: Kind) -> tuple[Node, str]:
        """Checks shared by create/mkdir/symlink/mknod: the name, the key, no clash."""
        parent = self.view.writable(self.inodes.dir(parent_ino))
        name = component(raw_name)
        full = self.inodes.full(parent) + (name,)
        layout.check_new_entry(full, kind is Kind.DIR, self.view.mount_root)
        if not self.view.may_exist(full):
            raise NotPermitted(f"tenant {name!r} is not configured on this mount")
        self.inodes.checked_key(parent, name, kind)
        await self.listings.refresh(parent, wait=False)
        if name in parent.children:
            raise AlreadyExists(name)
        return parent, name

    def _attrs(self, parent: Node, kind: int, mode: int, uid: int, gid: int) -> Attrs:
        """A new entry's attributes: file type ``kind`` with ``mode``'s permission bits,
        ``uid``, and ``gid`` unless the parent's tenant gives its own; its times now."""
        return Attrs(kind | (mode & 0o7777), uid, self.view.group(parent, gid), time.time_ns())

    async def create(self, parent_ino: int, raw_name: bytes, mode: int, uid: int, gid: int) -> Node:
        """A new, empty file with a staging file to write to (its handle is the caller's to open)."""
        async with self.tree_lock:
            parent, name = await self._new_entry(parent_ino, raw_name, Kind.FILE)
            node = self.inodes.new_node(parent, name, Kind.FILE, self._attrs(parent, stat.S_IFREG, mode, uid, gid))
            content = node.need_content()
            content.staging, content.fd = self.journal.create_staging()
            node.dirty = True
            self.hooks.changed(self.inodes.full(node))
            self.persistence.claim_key(node, self.inodes.key(node), exclusive=True)
            return self._added(node)

    async def mkdir(self, parent_ino: int, raw_name: bytes, mode: int, uid: int, gid: int) -> Node:
        async with self.tree_lock:
            parent, name = await self._new_entry(parent_ino, raw_name, Kind.DIR)
            full = self.inodes.full(parent) + (name,)
            trash_uid = layout.trash_owner(full, self.view.mount_root)
            if trash_uid is not None and trash_uid != uid:
                raise NotPermitted(f"{name} is the trash of uid {trash_uid}")
            if layout.is_workspace(full):
                await self.hooks.create_workspace(full[0], name, uid)
            node = self.inodes.new_node(parent, name, Kind.DIR, self._attrs(parent, stat.S_IFDIR, mode, uid, gid))
            self.view.own_tenant(node)
            node.listed_at = self.clock()
            self.persistence.claim_key(node, self.inodes.key(node))
            if layout.is_workspace(full):
                node.remote, node.touched = True, self.clock()
                self.view.decorate(node)
                self.listings.met(node)
            else:
                self.persistence.persist(node)
            return self._added(node)

    async def symlink(self, parent_ino: int, raw_name: bytes, target: bytes, uid: int, gid: int) -> Node:
        async with self.tree_lock:
            parent, name = await self._new_entry(parent_ino, raw_name, Kind.LINK)
            node = self.inodes.new_node(parent, name, Kind.LINK, self._attrs(parent, stat.S_IFLNK, 0o777, uid, gid))
            node.target = target
            node.size = len(target)
            return self._store_new(node)

    async def mknod(self, parent_ino: int, raw_name: bytes, mode: int, rdev: int, uid: int, gid: int) -> Node:
        """A FIFO, socket or device file: an empty object whose metadata holds its type and
        device number. The kernel has checked that the caller may make a device; the mount's
        ``nodev`` keeps the device from being opened through it."""
        if not is_special(mode):
            raise InvalidArgument(f"cannot make a file of type {stat.S_IFMT(mode):o}")
        async with self.tree_lock:
            parent, name = await self._new_entry(parent_ino, raw_name, Kind.SPECIAL)
            attrs = self._attrs(parent, stat.S_IFMT(mode), mode, uid, gid)
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                attrs.rdev = rdev
            return self._store_new(self.inodes.new_node(parent, name, Kind.SPECIAL, attrs))

    def _store_new(self, node: Node) -> Node:
        """A new symlink or special file (no staging bytes): record and schedule its object."""
        self.persistence.claim_key(node, self.inodes.key(node))
        self.persistence.persist(node)
        return self._added(node)

    @staticmethod
    def _added(node: Node) -> Node:
        """A new entry is in its folder: the kernel's lookup of it is counted, the folder's times move."""
        node.lookups += 1
        assert node.parent is not None
        node.parent.entries_changed()
        return node

    async def unlink(self, parent_ino: int, raw_name: bytes) -> None:
        async with self.tree_lock:
            parent = self.inodes.dir(parent_ino)
            node = self.view.writable(await self.listings.child(parent, component(raw_name)))
            if node.kind is Kind.DIR:
                raise IsADirectory(node.name)
            self.persistence.forget(node)
            parent.entries_changed()

    async def rmdir(self, parent_ino: int, raw_name: bytes) -> None:
        async with self.tree_lock:
            parent = self.inodes.dir(parent_ino)
            node = self.view.writable(await self.listings.child(parent, component(raw_name)))
            if node.kind is not Kind.DIR:
                raise NotADirectory(node.name)
            if node.pinned:
                raise NotPermitted(f"{node.name!r} is configured on this mount")
            await self.listings.refresh(node, wait=False)
            if any(not child.virtual for child in node.children.values()):
                raise NotEmpty(node.name)
            full = self.inodes.full(node)
            if layout.is_workspace(full):
                await self._delete_prefix(self.inodes.key(node))
                self.hooks.workspace_deleted(full[0], full[1])
            self.persistence.forget(node)
            parent.entries_changed()

    async def _delete_prefix(self, prefix: str) -> None:
        """Delete every object under ``prefix``, shown or not (a workspace's record too)."""
        listing = await self.calls.paged(self.store.list_all, prefix, None, background=False)
        for info in listing.objects:
            self.persistence.release_key(info.key)

    # -- rename ---------------------------------------------------------------------

    async def rename(self, old_ino: int, old_raw: bytes, new_ino: int, new_raw: bytes, flags: int) -> None:
        if flags & RENAME_EXCHANGE or flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE):
            raise InvalidArgument("RENAME_EXCHANGE is not supported")
        persistence = self.persistence
        async with self.tree_lock:
            old_parent, new_parent = self.inodes.dir(old_ino), self.inodes.dir(new_ino)
            node = self.view.writable(await self.listings.child(old_parent, component(old_raw)))
            self.view.writable(new_parent)
            new_name = component(new_raw)
            new_full = self.inodes.full(new_parent) + (new_name,)
            mount_root = self.view.mount_root
            if not (layout.can_rename(self.inodes.full(node), mount_root) and layout.can_rename(new_full, mount_root)):
                raise NotPermitted("tenants, workspaces and trash folders cannot be renamed")
            layout.check_new_entry(new_full, node.kind is Kind.DIR, mount_root)
            new_key = self.inodes.checked_key(new_parent, new_name, node.kind)
            await self.listings.refresh(new_parent, wait=False)
            target = new_parent.children.get(new_name)
            if target is node:
                return
            if target is not None:
                self.view.writable(target)
            ancestor: Node | None = new_parent
            while ancestor is not None:
                if ancestor is node:
                    raise InvalidArgument("cannot move a folder into itself")
                ancestor = ancestor.parent
            if target is not None:
                await self._check_replace(node, target, flags)
            old_key = self.inodes.key(node)
            if target is not None:
                self.inodes.detach(target)
                persistence.drop_intent(target)
            shadows = persistence.cancel_delete(new_key) or (target is not None and persistence.may_hold_object(target))
            carries_data = node.kind is not Kind.DIR and persistence.carries_data(node)
            node.ctime_ns = time.time_ns()
            # No upload under a folder lands while it moves, until the tree has it at its new place.
            async with self.writeback.moving(old_key) if node.kind is Kind.DIR else contextlib.nullcontext():
                if node.kind is Kind.DIR:
                    await self._move_dir_objects(old_key, new_key)
                    node.times_unsaved = True  # the copied marker has the old ctime
                elif not carries_data:
                    await self.writeback.copy(old_key, new_key, to_metadata(node.attrs()))
                if persistence.may_hold_object(node):
                    persistence.release_key(old_key)
                pending = node.need_pending()
                pending.shadows, pending.condition = shadows, Condition.NONE
                del old_parent.children[node.name]
                node.name, node.parent = new_name, new_parent
                new_parent.children[new_name] = node
                for folder in {old_parent, new_parent}:
                    folder.entries_changed()
            if carries_data:
                persistence.persist(node)
            now = self.clock()
            for moved in node.walk():
                moved.touched = now
                if persistence.uploading(moved):
                    persistence.write_record(moved)

    async def _check_replace(self, node: Node, target: Node, flags: int) -> None:
        if flags & RENAME_NOREPLACE:
            raise AlreadyExists(target.name)
        if node.kind is Kind.DIR:
            if target.kind is not Kind.DIR:
                raise NotADirectory(target.name)
            await self.listings.refresh(target)
            if target.children:
                raise NotEmpty(target.name)
        elif target.kind is Kind.DIR:
            raise IsADirectory(target.name)

    async def _move_dir_objects(self, old_prefix: str, new_prefix: str) -> None:
        """Server-side copy of every object under a folder, then delete the old keys.

        The whole move is one journal intent, logged before the first copy and
        settled once every old key's delete is logged: replay after a crash
        anywhere in between finishes it (the new tree whole, the old one gone).
        A copy that fails fails the rename, and the copies made are deleted.
        """
        listing = await self.calls.paged(self.store.list_all, old_prefix, None, background=False)
        objects = [(o.key, o.etag) for o in listing.objects if not self.writeback.deleting(o.key)]
        move = self.journal.write_move(old_prefix, new_prefix, objects)
        copied: list[str] = []
        rebase = self.inodes.keymap.rebase

        async def copy(key: str) -> None:
            target = rebase(key, old_prefix, new_prefix)
            await self.writeback.copy(key, target)
            copied.append(target)

        for key, _ in objects:
            self.persistence.cancel_delete(rebase(key, old_prefix, new_prefix))
        try:
            async with trio.open_nursery() as nursery:
                for key, _ in objects:
                    nursery.start_soon(copy, key)
        except BaseException:
            for target in copied:
                self.persistence.release_key(target)
            self.journal.remove_move(move)
            raise
        for key, _ in objects:
            self.persistence.release_key(key)
        self.journal.remove_move(move)
