"""pyfuse3 Operations: translates between the kernel and the namespace.

Nothing here caches, talks to the store or decides semantics; each method
decodes the kernel's arguments, calls ``Namespace`` and encodes the answer.
Every error is turned into its errno in ``_errors`` (via ``errno_of``).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import stat
from typing import Any, Awaitable, Callable, TypeVar

import pyfuse3

from .errors import CowfsError, errno_of
from .namespace import Namespace, Node

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

#: Preferred I/O size reported to programs (cp, stdio): FUSE's max write.
BLOCK_SIZE = 128 * 1024


def _errors(fn: F) -> F:
    """Map every exception of a handler to a FUSEError carrying its errno."""

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except (CowfsError, OSError) as exc:
            code = errno_of(exc)
            if code == errno.EIO:
                log.warning("%s failed: %s", fn.__name__, exc)
            raise pyfuse3.FUSEError(code) from None
        except Exception:
            log.exception("unexpected error in %s", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper  # type: ignore[return-value]


def take_back(entries: list[tuple[int, bytes]], inodes: list[int]) -> None:
    """The kernel forgets these entries and these inodes' attributes (``Leases``), in a worker
    thread: it waits for the kernel's locks, which a request the event loop serves may hold."""
    for parent, name in entries:
        with contextlib.suppress(OSError):  # ENOENT: the kernel holds it no more
            pyfuse3.invalidate_entry(parent, name)
    for inode in inodes:
        with contextlib.suppress(OSError):
            pyfuse3.invalidate_inode(inode, attr_only=True)


def drop_pages(inode: int) -> None:
    """The kernel lets go of the pages it caches of ``inode`` (and asks for its attributes
    again), in a worker thread: it waits for the pages the kernel is filling."""
    with contextlib.suppress(OSError):  # ENOENT: the kernel holds it no more
        pyfuse3.invalidate_inode(inode)


class Operations(pyfuse3.Operations):
    """The kernel-facing side of a cowfs mount."""

    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(self, namespace: Namespace) -> None:
        super().__init__()
        self.ns = namespace

    def _entry(self, node: Node) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = node.ino
        attr.generation = 0
        attr.entry_timeout = attr.attr_timeout = self.ns.kernel_timeout(node)
        attr.st_mode = node.mode
        attr.st_nlink = node.nlink
        attr.st_uid = node.uid
        attr.st_gid = node.gid
        attr.st_rdev = node.rdev
        attr.st_size = node.size
        attr.st_blksize = BLOCK_SIZE
        attr.st_blocks = (node.size + 511) // 512
        attr.st_atime_ns = node.atime
        attr.st_mtime_ns = node.mtime_ns
        attr.st_ctime_ns = node.ctime_ns
        return attr

    @_errors
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if name == b".":
            node = self.ns.node(parent_inode)
            self.ns.remember(node)
        elif name == b"..":
            child = self.ns.node(parent_inode)
            node = child.parent or child
            self.ns.remember(node)
        else:
            node = await self.ns.lookup(parent_inode, name)
        return self._entry(node)

    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        for inode, count in inode_list:
            self.ns.forget(inode, count)

    @_errors
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry(await self.ns.getattr(inode))

    @_errors
    async def setattr(
        self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields, fh: int | None, ctx: Any
    ) -> pyfuse3.EntryAttributes:
        node = await self.ns.setattr(
            inode,
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            size=attr.st_size if fields.update_size else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
        )
        return self._entry(node)

    @_errors
    async def readlink(self, inode: int, ctx: Any) -> bytes:
        return await self.ns.readlink(inode)

    @_errors
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any) -> pyfuse3.EntryAttributes:
        if not stat.S_ISREG(mode):
            return self._entry(await self.ns.mknod(parent_inode, name, mode, rdev, ctx.uid, ctx.gid))
        node, fh = await self.ns.create(parent_inode, name, mode, ctx.uid, ctx.gid)
        await self.ns.release(fh)
        return self._entry(node)

    @_errors
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> pyfuse3.EntryAttributes:
        return self._entry(await self.ns.mkdir(parent_inode, name, mode, ctx.uid, ctx.gid))

    @_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        await self.ns.unlink(parent_inode, name)

    @_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        await self.ns.rmdir(parent_inode, name)

    @_errors
    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        return self._entry(await self.ns.symlink(parent_inode, name, target, ctx.uid, ctx.gid))

    @_errors
    async def rename(
        self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes, flags: int, ctx: Any
    ) -> None:
        await self.ns.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags)

    @_errors
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        return self._entry(await self.ns.link(inode, new_parent_inode, new_name))

    @_errors
    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        opened = await self.ns.open(inode, flags)
        return pyfuse3.FileInfo(fh=opened.fh, keep_cache=opened.keep_cache, direct_io=opened.direct_io)

    @_errors
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        node, fh = await self.ns.create(parent_inode, name, mode, ctx.uid, ctx.gid)
        return pyfuse3.FileInfo(fh=fh, keep_cache=True), self._entry(node)

    @_errors
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return await self.ns.read(fh, off, size)

    @_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return await self.ns.write(fh, off, buf)

    @_errors
    async def flush(self, fh: int) -> None:
        await self.ns.flush(fh)

    @_errors
    async def release(self, fh: int) -> None:
        await self.ns.release(fh)

    @_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self.ns.fsync(fh)

    @_errors
    async def opendir(self, inode: int, ctx: Any) -> int:
        return await self.ns.opendir(inode)

    @_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        entries = await self.ns.readdir(fh, start_id)
        for position, (name, node) in enumerate(entries, start_id + 1):
            if not pyfuse3.readdir_reply(token, name.encode(), self._entry(node), position):
                return
            self.ns.remember(node)

    @_errors
    async def releasedir(self, fh: int) -> None:
        self.ns.release_handle(fh)

    @_errors
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        return None

    @_errors
    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        info = self.ns.statfs()
        out = pyfuse3.StatvfsData()
        out.f_bsize = info.block_size
        out.f_frsize = info.block_size
        out.f_blocks = info.blocks
        out.f_bfree = info.blocks_free
        out.f_bavail = info.blocks_free
        out.f_files = info.files
        out.f_ffree = info.files_free
        out.f_favail = info.files_free
        out.f_namemax = info.name_max
        return out

    @_errors
    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        return await self.ns.getxattr(inode, name)

    @_errors
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any) -> None:
        await self.ns.setxattr(inode, name, value)

    @_errors
    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        return await self.ns.listxattr(inode)

    @_errors
    async def removexattr(self, inode: int, name: bytes, ctx: Any) -> None:
        await self.ns.removexattr(inode, name)
