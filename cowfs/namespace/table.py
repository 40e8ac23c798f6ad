"""The inode table and the open handles: what the kernel knows by number.

A node stays in the table while it is in the tree, the kernel holds lookups of
it, or a handle has it open; then its bytes are let go (``on_drop``). The
table also maps nodes to their paths and keys, through the mount's ``KeyMap``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..attrs import Attrs
from ..errors import InvalidArgument, NotADirectory, NotFound
from ..keys import KeyMap
from .node import ROOT_INODE, Kind, Node


@dataclass
class Handle:
    node: Node
    writable: bool
    #: A generated file's bytes, rendered at open.
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


class Inodes:
    """Nodes by inode number, handles by number, and the paths and keys of nodes."""

    def __init__(self, root: Node, keymap: KeyMap, on_drop: Callable[[Node], None]) -> None:
        """``on_drop(node)`` lets go of the bytes of a node that left the table."""
        assert root.ino == ROOT_INODE
        self.root = root
        self.keymap = keymap
        self.on_drop = on_drop
        self.inodes: dict[int, Node] = {ROOT_INODE: root}
        self._next_ino = ROOT_INODE + 1
        self.handles: dict[int, Handle | DirHandle] = {}
        self._next_fh = 1

    # -- nodes ------------------------------------------------------------------

    def new_node(self, parent: Node, name: str, kind: Kind, attrs: Attrs) -> Node:
        node = Node(self._next_ino, kind, name, parent, attrs)
        self._next_ino += 1
        self.inodes[node.ino] = node
        parent.children[name] = node
        return node

    def node(self, ino: int) -> Node:
        try:
            return self.inodes[ino]
        except KeyError:
            raise NotFound(f"inode {ino}") from None

    def dir(self, ino: int) -> Node:
        node = self.node(ino)
        if node.kind is not Kind.DIR:
            raise NotADirectory(node.name)
        return node

    def holds(self, node: Node) -> bool:
        """Whether ``node`` is (still) the table's node of its number."""
        return self.inodes.get(node.ino) is node

    def detach(self, node: Node) -> None:
        """``node`` leaves the tree (it stays in the table while the kernel or a handle holds it)."""
        if node.parent is not None and node.parent.children.get(node.name) is node:
            del node.parent.children[node.name]
        node.attached = False
        self.maybe_drop(node)

    def maybe_drop(self, node: Node) -> None:
        if node.attached or node.lookups > 0 or node.open_count > 0:
            return
        self.inodes.pop(node.ino, None)
        self.on_drop(node)

    def forget(self, ino: int, count: int) -> None:
        node = self.inodes.get(ino)
        if node is None or ino == ROOT_INODE:
            return
        node.lookups = max(0, node.lookups - count)
        self.maybe_drop(node)

    # -- paths and keys -----------------------------------------------------------

    def full(self, node: Node) -> tuple[str, ...]:
        """Path of ``node`` from the store root (what the layout rules speak of)."""
        return self.keymap.root + node.path()

    def key(self, node: Node) -> str:
        path = node.path()
        return self.keymap.dir_key(path) if node.kind is Kind.DIR else self.keymap.file_key(path)

    def checked_key(self, parent: Node, name: str, kind: Kind) -> str:
        """The key of an entry ``name`` of ``kind`` in ``parent``, refused with ENAMETOOLONG
        when the store cannot hold it."""
        return self.keymap.checked_key(parent.path() + (name,), kind is Kind.DIR)

    def key_in_use(self, key: str) -> bool:
        """Whether some node in the tree now maps to ``key`` (it must not be deleted)."""
        node: Node | None = self.root
        for name in self.keymap.path_of(key):
            node = node.children.get(name) if node is not None else None
            if node is None:
                return False
        return True

    # -- handles ------------------------------------------------------------------

    def add_handle(self, handle: Handle | DirHandle) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self.handles[fh] = handle
        return fh

    def open_handle(self, node: Node, writable: bool) -> int:
        content = node.need_content()
        content.open_count += 1
        if writable:
            content.writers += 1
        return self.add_handle(Handle(node, writable))

    def handle(self, fh: int) -> Handle:
        handle = self.handles.get(fh)
        if not isinstance(handle, Handle):
            raise InvalidArgument(f"bad file handle {fh}")
        return handle

    def dir_handle(self, fh: int) -> DirHandle:
        handle = self.handles[fh]
        assert isinstance(handle, DirHandle)
        return handle

    def release_handle(self, fh: int) -> Handle | DirHandle | None:
        return self.handles.pop(fh, None)
