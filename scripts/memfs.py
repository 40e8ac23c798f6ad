#!/usr/bin/env python3
"""The floor under cowfs in ``scripts/bench``: pyfuse3 and trio with nothing behind them.

A file system that keeps every file in memory and does nothing else, with
cowfs's kernel-facing surface: the same mount options, 1 s entry and
attribute timeouts, xattr queries answered (so the kernel sends the same
``security.capability`` question before every write), the page cache kept
for unchanged files, the same read-ahead and GIL switch interval. It has no
journal, cache or store, so a workload's time here is what the kernel's
requests cost a Python file system on this machine: cowfs, built on the same
stack, cannot go below it. Usage: ``memfs.py MOUNTPOINT`` (foreground; stops
on unmount, SIGTERM or SIGINT).
"""

from __future__ import annotations

import errno
import itertools
import os
import signal
import stat
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import pyfuse3
import trio

from cowfs.daemon import GIL_SWITCH_INTERVAL, widen_read_ahead
from cowfs.fs import BLOCK_SIZE

TTL = 1.0


@dataclass
class Node:
    """One inode: a folder's children by name, a file's bytes or a link's target."""

    ino: int
    mode: int
    uid: int
    gid: int
    data: bytearray = field(default_factory=bytearray)
    target: bytes = b""
    children: dict[bytes, int] = field(default_factory=dict)
    parent: int = pyfuse3.ROOT_INODE
    nlink: int = 1
    open_count: int = 0
    mtime_ns: int = field(default_factory=time.time_ns)
    ctime_ns: int = field(default_factory=time.time_ns)
    changed: bool = False  # written since the kernel last opened it: its page cache is stale


def fail(code: int) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(code)


class MemFs(pyfuse3.Operations):
    """Every operation the benchmark's workloads make, on a dict of nodes."""

    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(self) -> None:
        super().__init__()
        root = Node(pyfuse3.ROOT_INODE, stat.S_IFDIR | 0o755, os.getuid(), os.getgid(), nlink=2)
        self.nodes: dict[int, Node] = {root.ino: root}
        self.inos = itertools.count(pyfuse3.ROOT_INODE + 1)
        self.handles: dict[int, Node] = {}
        self.fhs = itertools.count(1)

    def node(self, ino: int) -> Node:
        try:
            return self.nodes[ino]
        except KeyError:
            raise fail(errno.ENOENT) from None

    def child(self, parent: int, name: bytes) -> Node:
        ino = self.node(parent).children.get(name)
        if ino is None:
            raise fail(errno.ENOENT)
        return self.nodes[ino]

    def entry(self, node: Node) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = node.ino
        attr.entry_timeout = TTL
        attr.attr_timeout = TTL
        attr.st_mode = node.mode
        attr.st_nlink = node.nlink
        attr.st_uid = node.uid
        attr.st_gid = node.gid
        size = len(node.target) if stat.S_ISLNK(node.mode) else len(node.data)
        attr.st_size = size
        attr.st_blksize = BLOCK_SIZE
        attr.st_blocks = (size + 511) // 512
        attr.st_atime_ns = attr.st_mtime_ns = node.mtime_ns
        attr.st_ctime_ns = node.ctime_ns
        return attr

    def add(self, parent: int, name: bytes, mode: int, ctx: Any, **fields: Any) -> Node:
        folder = self.node(parent)
        if name in folder.children:
            raise fail(errno.EEXIST)
        node = Node(next(self.inos), mode, ctx.uid, ctx.gid, parent=parent, **fields)
        self.nodes[node.ino] = node
        folder.children[name] = node.ino
        folder.mtime_ns = folder.ctime_ns = time.time_ns()
        return node

    def drop_link(self, node: Node) -> None:
        node.nlink -= 1
        if node.nlink == 0 and node.open_count == 0:
            node.data = bytearray()

    async def lookup(self, parent_inode: int, name: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        if name == b".":
            return self.entry(self.node(parent_inode))
        if name == b"..":
            return self.entry(self.node(self.node(parent_inode).parent))
        return self.entry(self.child(parent_inode, name))

    async def getattr(self, inode: int, ctx: Any) -> pyfuse3.EntryAttributes:
        return self.entry(self.node(inode))

    async def setattr(self, inode: int, attr: Any, fields: Any, fh: int | None, ctx: Any) -> pyfuse3.EntryAttributes:
        node = self.node(inode)
        if fields.update_size:
            del node.data[attr.st_size:]
            node.data.extend(bytes(attr.st_size - len(node.data)))
            node.changed = True
        if fields.update_mode:
            node.mode = stat.S_IFMT(node.mode) | stat.S_IMODE(attr.st_mode)
        if fields.update_uid:
            node.uid = attr.st_uid
        if fields.update_gid:
            node.gid = attr.st_gid
        if fields.update_mtime:
            node.mtime_ns = attr.st_mtime_ns
        node.ctime_ns = time.time_ns()
        return self.entry(node)

    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> pyfuse3.EntryAttributes:
        return self.entry(self.add(parent_inode, name, stat.S_IFDIR | (mode & 0o7777), ctx, nlink=2))

    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        return self.entry(self.add(parent_inode, name, stat.S_IFLNK | 0o777, ctx, target=target))

    async def readlink(self, inode: int, ctx: Any) -> bytes:
        return self.node(inode).target

    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        node = self.node(inode)
        folder = self.node(new_parent_inode)
        if new_name in folder.children:
            raise fail(errno.EEXIST)
        folder.children[new_name] = node.ino
        node.nlink += 1
        return self.entry(node)

    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        node = self.child(parent_inode, name)
        del self.node(parent_inode).children[name]
        self.drop_link(node)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        node = self.child(parent_inode, name)
        if node.children:
            raise fail(errno.ENOTEMPTY)
        del self.node(parent_inode).children[name]
        del self.nodes[node.ino]

    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes,
                     flags: int, ctx: Any) -> None:
        if flags:
            raise fail(errno.EINVAL)
        node = self.child(parent_inode_old, name_old)
        new_folder = self.node(parent_inode_new)
        replaced = new_folder.children.get(name_new)
        if replaced is not None:
            if self.nodes[replaced].children:
                raise fail(errno.ENOTEMPTY)
            self.drop_link(self.nodes[replaced])
        del self.node(parent_inode_old).children[name_old]
        new_folder.children[name_new] = node.ino
        node.parent = parent_inode_new

    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        node = self.node(inode)
        if flags & os.O_TRUNC:
            node.data.clear()
            node.changed = True
        keep_cache = not node.changed
        node.changed = False
        return self.opened(node, keep_cache)

    def opened(self, node: Node, keep_cache: bool) -> pyfuse3.FileInfo:
        fh = next(self.fhs)
        self.handles[fh] = node
        node.open_count += 1
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep_cache)

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: Any) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        node = self.add(parent_inode, name, stat.S_IFREG | (mode & 0o7777), ctx)
        return self.opened(node, keep_cache=True), self.entry(node)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return bytes(self.handles[fh].data[off:off + size])

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        node = self.handles[fh]
        if off > len(node.data):
            node.data.extend(bytes(off - len(node.data)))
        node.data[off:off + len(buf)] = buf
        node.mtime_ns = node.ctime_ns = time.time_ns()
        node.changed = True
        return len(buf)

    async def flush(self, fh: int) -> None:
        return None

    async def fsync(self, fh: int, datasync: bool) -> None:
        return None

    async def release(self, fh: int) -> None:
        node = self.handles.pop(fh)
        node.open_count -= 1
        if node.nlink == 0 and node.open_count == 0:
            node.data = bytearray()

    async def opendir(self, inode: int, ctx: Any) -> int:
        self.node(inode)
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        entries = list(self.node(fh).children.items())
        for position, (name, ino) in enumerate(entries[start_id:], start_id + 1):
            if not pyfuse3.readdir_reply(token, name, self.entry(self.nodes[ino]), position):
                return

    async def releasedir(self, fh: int) -> None:
        return None

    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        out = pyfuse3.StatvfsData()
        out.f_bsize = out.f_frsize = 4096
        out.f_blocks = out.f_bfree = out.f_bavail = 2**38
        out.f_files = out.f_ffree = out.f_favail = 2**32
        out.f_namemax = 255
        return out

    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        self.node(inode)
        raise fail(pyfuse3.ENOATTR)

    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        return []


async def serve(mountpoint: str) -> None:
    async def stop_on_signal() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                pyfuse3.terminate()
                return

    async def widen_once_mounted() -> None:
        widen_read_ahead((await trio.to_thread.run_sync(os.stat, mountpoint)).st_dev)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop_on_signal)
        nursery.start_soon(widen_once_mounted)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: memfs.py MOUNTPOINT", file=sys.stderr)
        return 2
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    pyfuse3.init(MemFs(), argv[0], {"fsname=memfs", "subtype=memfs", "default_permissions"})
    try:
        trio.run(serve, argv[0])
    finally:
        pyfuse3.close(unmount=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
